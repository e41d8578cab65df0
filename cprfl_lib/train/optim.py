"""Optimizer, learning-rate schedule and weight EMA for a run.

- Weight decay is never applied to biases or 1-D tensors (LayerNorm, BatchNorm), as the
  official ``add_weight_decay``.
- The backbone learning-rate multiplier really applies: the backbone is its own parameter
  group, and every schedule scales each group's own base lr. (In the official code the
  backbone groups are empty under DataParallel and OneCycle overwrites their lr, so its
  intended 0.1x never happened; method.md §3.)
- Schedules step once per optimizer step.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from cprfl_lib.errors import CprflError

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("constant", "cosine", "onecycle")


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0) -> list[dict]:
    """Four groups: {head, backbone} x {decay, no decay}; frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        decay = p.ndim >= 2 and not name.endswith(".bias")
        groups.setdefault((is_backbone, decay), []).append(p)
    out = []
    for (is_backbone, decay), params in sorted(groups.items()):
        out.append({"params": params, "lr": lr * (backbone_lr_mult if is_backbone else 1.0),
                    "weight_decay": weight_decay if decay else 0.0,
                    "name": f"{'backbone' if is_backbone else 'head'}/{'decay' if decay else 'no_decay'}"})
    if not out:
        raise CprflError("the model has no trainable parameter")
    return out


def fused_for(optim_cfg: dict, device: torch.device | str | None) -> bool:
    """Whether the optimizer runs its fused kernels: ``optim.fused`` (auto: on CUDA only)."""
    setting = optim_cfg.get("fused", "auto")
    return setting is True or (setting == "auto" and device is not None and torch.device(device).type == "cuda")


def build_optimizer(model: nn.Module, optim_cfg: dict, device: torch.device | str | None = None) -> torch.optim.Optimizer:
    """Adam or AdamW over :func:`param_groups`; fused kernels per :func:`fused_for` (``device``: the parameters')."""
    name = optim_cfg["optimizer"]
    if name not in OPTIMIZERS:
        raise CprflError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    groups = param_groups(model, optim_cfg["lr"], optim_cfg["weight_decay"], optim_cfg["backbone_lr_mult"])
    # Adam's weight_decay is L2 in the gradient, AdamW's is decoupled; both honour the per-group value.
    fused = fused_for(optim_cfg, device if device is not None else next(model.parameters()).device)
    return OPTIMIZERS[name](groups, lr=optim_cfg["lr"], **({"fused": True} if fused else {}))


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: dict, steps_per_epoch: int):
    """A per-step schedule; ``schedule_epochs`` sizes it (the official OneCycle: 80 epochs, run for 79)."""
    kind = optim_cfg["schedule"]
    if kind not in SCHEDULES:
        raise CprflError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    total = steps_per_epoch * (optim_cfg["schedule_epochs"] or optim_cfg["epochs"])
    warmup = steps_per_epoch * optim_cfg["warmup_epochs"]
    if kind == "onecycle":
        # torch defaults as the official code: div_factor 25, final_div 1e4, cosine, beta1 cycled 0.95 → 0.85.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total, 1),
            pct_start=optim_cfg["pct_start"])

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelEma(nn.Module):
    """An exponential moving average of a module's weights *and* buffers (as the official ModelEma).

    Updated after every optimizer step: ema = decay * ema + (1 - decay) * current. The copy is
    always in eval mode and never receives gradients.
    """

    def __init__(self, module: nn.Module, decay: float):
        super().__init__()
        if not 0 < decay < 1:
            raise CprflError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """ema = decay * ema + (1 - decay) * module, over every parameter and buffer, in a few fused kernels."""
        ema_state, current = self.module.state_dict(), module.state_dict()
        floats = [(v, current[k].detach()) for k, v in ema_state.items()
                  if isinstance(v, torch.Tensor) and v.dtype.is_floating_point]
        ema_f = [e for e, _ in floats]
        torch._foreach_mul_(ema_f, self.decay)
        torch._foreach_add_(ema_f, [c.to(e.dtype) for e, c in floats], alpha=1 - self.decay)
        for k, v in ema_state.items():  # counters (num_batches_tracked): copied
            if isinstance(v, torch.Tensor) and not v.dtype.is_floating_point:
                v.copy_(current[k])

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True):  # the EMA copy stays in eval mode
        return super().train(False)
