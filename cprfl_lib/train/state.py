"""The train state: everything one optimisation step needs, built in one place.

:func:`build_train_state` turns a configuration, a model and a loss into the optimizer
(parameter groups without decay on biases and 1-D tensors), the per-step schedule, autocast
and the gradient scaler, the EMA, and the DDP wrapper. The training engine, ``make bench`` and
the GPU check all build it here, so what they time is what a run does.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

from cprfl_lib.train.distributed import Dist, sync_batchnorm
from cprfl_lib.train.optim import ModelEma, build_optimizer, build_scheduler


@dataclass
class TrainState:
    """What the optimisation steps of a run hold."""

    model: nn.Module  # the whole MultiLabelClassifier
    trainable: nn.Module  # what the optimizer updates: the head on cached features, else the model
    module: nn.Module  # ``trainable``, in DDP when distributed: what the training forward calls
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: Callable[[], ContextManager]
    ema: ModelEma | None
    device: torch.device
    cached: bool  # the data are cached backbone features
    grad_accum: int
    max_batches: int | None  # batches per epoch (max_steps_per_epoch optimizer steps of grad_accum batches)
    clip_grad: float | None
    channels_last: bool
    freeze_backbone: bool
    step: int = 0  # optimizer steps taken (for messages)
    amp_dtype: torch.dtype | None = None  # the autocast dtype; None: float32

    def eval_models(self) -> dict[str, nn.Module]:
        """The models a test-set evaluation scores: the model, and its EMA when the run keeps one."""
        if self.ema is None:
            return {"model": self.model}
        ema = self.ema.module if not self.cached else type(self.model)(
            self.model.backbone, self.ema.module, self.model.input_mean, self.model.input_std)  # a shared frozen backbone
        return {"model": self.model, "ema": ema}


def autocast_for(device: torch.device, train_cfg: dict) -> tuple[Callable[[], ContextManager], bool, torch.dtype]:
    """(autocast context, on?, dtype) of a run: on CUDA by default (bf16 or fp16), off on the CPU."""
    enabled = train_cfg["amp"] is True or (train_cfg["amp"] == "auto" and device.type == "cuda")
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[train_cfg["amp_dtype"]]
    if not enabled:
        return nullcontext, False, dtype
    return (lambda: torch.autocast(device.type, dtype=dtype)), True, dtype


def cuts_a_path(model_cfg: dict) -> bool:
    """Whether the recipe's switches leave parameters without gradients (DDP must then look for them)."""
    return model_cfg["head"] == "cprfl" and (model_cfg["no_feature_grad"] or model_cfg["cut_p1"] and model_cfg["cut_p2"])


def build_train_state(config: dict, model: nn.Module, loss_fn: nn.Module, batches_per_epoch: int,
                      device: torch.device, d: Dist = Dist(), cached: bool = False) -> TrainState:
    """The train state of ``config`` for ``model`` (already on ``device``), with ``batches_per_epoch`` batches an epoch."""
    tr, oc = config["train"], config["optim"]
    trainable = model.head if cached else model
    if tr["channels_last"] and not cached:  # faster convolutions on CUDA and on the CPU alike (1.5x on this CPU)
        model.to(memory_format=torch.channels_last)
    if d.enabled and not cached and not config["model"]["freeze_backbone"]:
        sync_batchnorm(model, device.type)  # the same statistics on every rank, as in one process
    autocast, amp_on, amp_dtype = autocast_for(device, tr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_on and amp_dtype == torch.float16)
    max_batches = batches_per_epoch if tr["max_steps_per_epoch"] is None else min(
        batches_per_epoch, tr["max_steps_per_epoch"] * oc["grad_accum"])
    optimizer = build_optimizer(trainable, oc, device)
    scheduler = build_scheduler(optimizer, oc, math.ceil(max_batches / oc["grad_accum"]))
    ema = ModelEma(trainable, tr["ema"]).to(device) if tr["ema"] else None
    if tr.get("compile", False) is not False and not cached:  # in place, after the EMA's copy (which stays eager):
        # the state dict keeps its names, so checkpoints and weights are those of an uncompiled run
        model.backbone.compile(backend="inductor" if tr["compile"] is True else tr["compile"])
    module = trainable
    if d.enabled:
        module = nn.parallel.DistributedDataParallel(
            trainable, device_ids=[d.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=cuts_a_path(config["model"]))  # no_feature_grad leaves the VSI without gradients
    return TrainState(model=model, trainable=trainable, module=module, loss_fn=loss_fn.to(device), optimizer=optimizer,
                      scheduler=scheduler, scaler=scaler, autocast=autocast, ema=ema, device=device, cached=cached,
                      grad_accum=oc["grad_accum"], max_batches=max_batches, clip_grad=oc["clip_grad"],
                      channels_last=tr["channels_last"], freeze_backbone=config["model"]["freeze_backbone"],
                      amp_dtype=amp_dtype if amp_on else None)
