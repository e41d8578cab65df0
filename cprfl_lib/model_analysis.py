"""The CPRFL model opened up on one batch: every tensor of Eqs. 1-6, the prompts, the two gradient paths.

Everything here observes the model through its public submodules (``backbone``,
``head.visual_proj``, ``head.prompt_init``, ``head.vsi``) with forward hooks, so what is shown
is what :class:`cprfl_lib.model.CPRFLHead` computes, not a re-implementation of it:

- :func:`trace` records every tensor of Eqs. 1-6 for a batch;
- :func:`prompt_similarity` compares the class embeddings W with the prompts P they become;
- :func:`dual_path_gradients` measures dL/dP along both paths, P1 only and P2 only, and checks
  that the full gradient is their sum;
- :func:`initial_prompts` gives the prompts P a run starts from, and their mean cosine;
- :func:`text_tower` builds a CLIP text tower on the meta device, for counting its parameters.

Notebooks 03 and 06 show these (tables and figures in :mod:`cprfl_repro`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cprfl_lib.errors import CprflError
from cprfl_lib.model import CPRFLHead


# method.md §2, the arithmetic from the official code's shapes: a reference column, not the measurement.
@dataclass
class Trace:
    """The tensors of one forward pass, Eq. by Eq. (detached, CPU)."""

    feature_map: torch.Tensor  # f_loc (B, C_b, h, w)
    tokens: torch.Tensor  # (B, v, C_b)
    F: torch.Tensor  # Eq. 1 (B, v, d)
    W: torch.Tensor  # class embeddings (c, m)
    P: torch.Tensor  # Eq. 2 (c, d)
    Z: torch.Tensor  # Eq. 3 (B, v + c, d)
    vsi_out: torch.Tensor  # Eqs. 4-5 (B, v + c, d)
    P_refined: torch.Tensor  # P' (B, c, d)
    logits: torch.Tensor  # Eq. 6 (B, c)
    attention: torch.Tensor  # prompt i over visual token j, first VSI layer, mean over heads (B, c, h, w)
    eq6_max_abs_diff: float = field(default=0.0)  # |logits − Σ p'_i · p_i|: Eq. 6 re-checked from P' and P

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.feature_map.shape[2:])


def _cprfl_head(model: nn.Module) -> CPRFLHead:
    head = getattr(model, "head", None)
    if not isinstance(head, CPRFLHead):
        raise CprflError(f"expected a CPRFL model (MultiLabelClassifier with a CPRFLHead), got head "
                         f"{type(head).__name__}; the linear baseline has no prompts to show")
    return head


class _Recorder:
    """Forward hooks that keep the inputs/outputs of the head's submodules."""

    def __init__(self, model: nn.Module, head: CPRFLHead):
        self.seen: dict[str, torch.Tensor] = {}
        self.handles = [
            model.backbone.register_forward_hook(lambda m, a, out: self._keep("feature_map", out)),
            head.visual_proj.register_forward_hook(lambda m, a, out: self._keep("tokens", a[0], "F", out)),
            head.prompt_init.register_forward_hook(lambda m, a, out: self._keep("W", a[0], "P", out)),
            head.vsi[0].register_forward_pre_hook(lambda m, a: self._keep("Z", a[0])),
            head.vsi[-1].register_forward_hook(lambda m, a, out: self._keep("vsi_out", out)),
        ]

    def _keep(self, *pairs) -> None:
        for name, value in zip(pairs[::2], pairs[1::2]):
            self.seen[name] = value

    def __enter__(self) -> "_Recorder":
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


class _EvalMode:
    """Eval mode (dropout off) inside the block, the previous mode restored after it."""

    def __init__(self, module: nn.Module):
        self.module, self.modes = module, {m: m.training for m in module.modules()}

    def __enter__(self) -> nn.Module:
        return self.module.eval()

    def __exit__(self, *exc) -> None:
        for m, mode in self.modes.items():
            m.train(mode)


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise CprflError(f"expected images (B, 3, H, W), got shape {tuple(images.shape)}")


@torch.no_grad()
def trace(model: nn.Module, images: torch.Tensor) -> Trace:
    """Run ``model`` (in eval mode) on ``images`` and keep every intermediate tensor of Eqs. 1-6."""
    head = _cprfl_head(model)
    _check_images(images)
    with _EvalMode(model), _Recorder(model, head) as rec:
        logits, attn = model(images, return_attention=True)
    s = {k: v.detach().float().cpu() for k, v in rec.seen.items()}
    v = s["F"].shape[1]
    p_refined = s["vsi_out"][:, v:]
    b, _, h, w = s["feature_map"].shape
    logits = logits.float().cpu()
    eq6 = float((logits - (p_refined * s["P"]).sum(-1)).abs().max())
    return Trace(s["feature_map"], s["tokens"], s["F"], s["W"], s["P"], s["Z"], s["vsi_out"], p_refined, logits,
                 attn.float().cpu().reshape(b, -1, h, w), eq6)


def shape_metrics(t: Trace) -> dict[str, list[int]]:
    return {name: list(getattr(t, name).shape) for name in
            ("feature_map", "tokens", "F", "W", "P", "Z", "P_refined", "logits", "attention")}


def take_batch(dataset, batch_size: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The first ``batch_size`` items of a dataset from ``start``: images, targets and their indices."""
    if not 1 <= batch_size <= len(dataset) - start:
        raise CprflError(f"batch_size must be between 1 and {len(dataset) - start} here, got {batch_size}")
    idx = list(range(start, start + batch_size))
    items = [dataset[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]), idx


# ---------------------------------------------------------------- the prompt initialisation


def _cosine(x: torch.Tensor, centre: bool) -> np.ndarray:
    x = x.double()
    x = nn.functional.normalize(x - x.mean(0) if centre else x, dim=1)
    return (x @ x.T).numpy()


def prompt_similarity(t: Trace) -> dict:
    """Class-to-class cosines of W and of P, raw and centred, and how well P keeps W's neighbourhoods.

    At initialisation the PI network's output bias is shared by all classes and can dominate P
    (small unit-norm W such as MiniLM's gives prompts with cosines near 1), so the neighbourhoods
    are compared after removing the mean over classes: ``pearson_r`` correlates the centred
    cosines of all class pairs.
    """
    off = ~np.eye(len(t.W), dtype=bool)
    out = {f"cos_{k}{suffix}": _cosine(getattr(t, k), centre) for k in ("W", "P")
           for suffix, centre in (("", False), ("_centred", True))}
    for k in ("W", "P"):
        out[f"mean_cos_{k}"] = float(out[f"cos_{k}"][off].mean()) if off.any() else float("nan")
    a, b = out["cos_W_centred"][off], out["cos_P_centred"][off]
    out["pearson_r"] = float(np.corrcoef(a, b)[0, 1]) if len(t.W) > 2 else float("nan")
    return out


def initial_prompts(config: dict, class_names: list[str]) -> torch.Tensor:
    """P (c, d) as a run of ``config`` starts: the model built under the run's seed, exactly as training builds it."""
    from cprfl_lib.train import factory
    from cprfl_lib.train.device import seed_everything

    if config["model"]["head"] != "cprfl":
        raise CprflError(f"model.head={config['model']['head']!r} has no prompts")
    numpy_state = np.random.get_state()  # the caller's RNGs and switches are left as they were
    switches = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        with torch.random.fork_rng(devices=[]):
            seed_everything(config["train"]["seed"], config["train"]["deterministic"])
            model = factory.model_from(config, class_names)
            with torch.no_grad():
                return model.head.prompts().detach().cpu()
    finally:
        np.random.set_state(numpy_state)
        torch.use_deterministic_algorithms(switches[0])
        torch.backends.cudnn.benchmark = switches[1]


PATHS = {"both paths (full)": (False, False), "P1 only (cut P2)": (False, True), "P2 only (cut P1)": (True, False)}


@dataclass
class DualPath:
    grad_P: dict[str, torch.Tensor]  # per run: dL/dP (c, d)
    grad_PI: dict[str, torch.Tensor]  # per run: dL/dθ_PI, flattened
    loss: float
    max_abs_diff_P: float  # max |full − (P1 + P2)| over dL/dP
    max_abs_diff_PI: float  # the same over the PI network's parameters


def dual_path_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, loss_fn) -> DualPath:
    """dL/dP and dL/dθ_PI with both paths, with P1 only and with P2 only, on the same batch in eval mode.

    P is used twice (as VSI input: path P2; as the classifier of Eq. 6: path P1); the chain rule
    makes the full gradient the sum of the two, which the returned differences check numerically.
    """
    head = _cprfl_head(model)
    _check_images(images)
    pi_params = [p for p in head.prompt_init.parameters()]
    if not all(p.requires_grad for p in pi_params):
        raise CprflError("the PI network's parameters do not require gradients; nothing to show")
    saved = (head.cut_p1, head.cut_p2, head.no_feature_grad)
    grad_p, grad_pi, losses = {}, {}, {}
    try:
        with _EvalMode(model):
            with torch.no_grad():
                features = model.features(images)  # dL/dP needs no backbone gradient
            for name, (cut_p1, cut_p2) in PATHS.items():
                head.cut_p1, head.cut_p2, head.no_feature_grad = cut_p1, cut_p2, False
                with _Recorder(model, head) as rec:
                    loss = loss_fn(head(features).float(), targets.float())
                grads = torch.autograd.grad(loss, [rec.seen["P"], *pi_params])
                grad_p[name] = grads[0].detach().double().cpu()
                grad_pi[name] = torch.cat([g.detach().double().flatten() for g in grads[1:]]).cpu()
                losses[name] = float(loss.detach())
    finally:
        head.cut_p1, head.cut_p2, head.no_feature_grad = saved
    full, p1, p2 = PATHS
    if not np.allclose(list(losses.values()), losses[full], rtol=1e-6, atol=1e-8):
        raise CprflError(f"the three runs gave different losses {losses}: the forward pass is not deterministic")
    grad_p["P1 + P2"] = grad_p[p1] + grad_p[p2]
    grad_pi["P1 + P2"] = grad_pi[p1] + grad_pi[p2]
    d_p = float((grad_p[full] - grad_p["P1 + P2"]).abs().max())
    d_pi = float((grad_pi[full] - grad_pi["P1 + P2"]).abs().max())
    return DualPath(grad_p, grad_pi, losses[full], d_p, d_pi)


def text_tower(encoder: str, device: str | torch.device = "meta") -> nn.Module:
    """open_clip's text tower of a ``clip-*`` encoder (the image tower dropped), as :class:`CLIPTextEncoder` holds it.

    On the meta device by default: the structure without memory or initialisation, for counting.
    """
    import open_clip

    from cprfl_lib.semantics.clip import drop_visual, model_name

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that no weights were loaded: none are wanted here
    try:
        with torch.device(device):
            return drop_visual(open_clip.create_model(model_name(encoder), device=device))
    finally:
        root.setLevel(level)
