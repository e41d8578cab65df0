"""The CPRFL model opened up on one batch (notebook 03): shapes, prompts, attention, gradient paths, size.

Everything here observes the model through its public submodules (``backbone``,
``head.visual_proj``, ``head.prompt_init``, ``head.vsi``) with forward hooks, so what is shown
is what :class:`cprfl_lib.model.CPRFLHead` computes, not a re-implementation of it:

- :func:`trace` records every tensor of Eqs. 1-6 for a batch;
- :func:`dual_path_gradients` measures dL/dP along both paths, P1 only and P2 only, and checks
  that the full gradient is their sum;
- :func:`paper_parameter_table` counts the parameters of the paper configuration, built without
  any weights, with the frozen text tower (the paper) and the fine-tuned one (the official code).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image
from torch import nn

from cprfl_lib.errors import CprflError
from cprfl_repro.figures import GROUP_COLORS
from cprfl_lib.model import CPRFLHead, count_parameters

# method.md §2, the arithmetic from the official code's shapes: a reference column, not the measurement.
METHOD_MD_COUNTS = {"backbone": 42_500_160, "phi": 4_196_352, "vsi": 41_957_376, "pi": 3_148_800,
                    "text": 63_690_240}


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


def shapes_table(t: Trace) -> pd.DataFrame:
    """One row per step of the method with its symbolic and measured shape."""
    rows = [
        ("backbone", "f_loc", "(B, C_b, h, w)", t.feature_map, "feature map of the last conv stage"),
        ("flatten", "tokens", "(B, v, C_b)", t.tokens, "v = h·w visual tokens"),
        ("Eq. 1", "F = φ(f_loc)", "(B, v, d)", t.F, "linear projection to the model width d"),
        ("text encoder", "W", "(c, m)", t.W, "class-name embeddings of the text encoder"),
        ("Eq. 2", "P = PI(W)", "(c, d)", t.P, "prompts: GELU MLP, hidden τ·d"),
        ("Eq. 3", "Z = [F; P]", "(B, v + c, d)", t.Z, "visual tokens first, prompts last"),
        ("Eqs. 4-5", "VSI(Z)", "(B, v + c, d)", t.vsi_out, "pre-LN attention + FFN, no residual"),
        ("slice", "P' = VSI(Z)[:, v:]", "(B, c, d)", t.P_refined, "category-specific features"),
        ("Eq. 6", "logit_i = p'_i · p_i", "(B, c)", t.logits, "sigmoid in the loss / metrics"),
        ("attention", "α (prompt → visual)", "(B, c, h, w)", t.attention, "first VSI layer, mean over heads"),
    ]
    return pd.DataFrame([{"step": a, "tensor": b, "shape": c, "measured": str(tuple(x.shape)), "what": d}
                         for a, b, c, x, d in rows])


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


def plot_prompt_init(t: Trace, class_names: list[str], groups, title: str = "") -> Figure:
    """Class-to-class cosine (centred) of W (text) and of P (prompts), and one against the other."""
    sim = prompt_similarity(t)
    order = np.argsort([("head", "medium", "tail").index(g) for g in groups], kind="stable")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), layout="constrained")
    n = len(class_names)
    for ax, k, label in ((axes[0], "W", "class embeddings"), (axes[1], "P", "prompts = PI(W)")):
        m = sim[f"cos_{k}_centred"][np.ix_(order, order)]
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(f"{k} {tuple(getattr(t, k).shape)}: {label}\n(raw mean cosine {sim[f'mean_cos_{k}']:.2f})",
                     fontsize=9)
        fs = 6 if n <= 30 else 3
        ax.set_xticks(range(n), [class_names[i] for i in order], rotation=90, fontsize=fs)
        ax.set_yticks(range(n), [class_names[i] for i in order], fontsize=fs)
        for lab, i in zip(ax.get_yticklabels(), order):
            lab.set_color(GROUP_COLORS[groups[i]])
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="cosine after removing the mean over classes")
    off = ~np.eye(n, dtype=bool)
    axes[2].scatter(sim["cos_W_centred"][off], sim["cos_P_centred"][off], s=6, alpha=0.5)
    axes[2].set_xlabel("centred cos(w_i, w_j)")
    axes[2].set_ylabel("centred cos(p_i, p_j)")
    axes[2].set_title(f"class pairs: Pearson r = {sim['pearson_r']:.2f}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig


# ---------------------------------------------------------------- attention


def plot_attention(image: Image.Image, attention: torch.Tensor, class_names: list[str], classes, groups,
                   scores=None, ax_row=None, title: str = "") -> Figure:
    """The image, then the attention map (h, w) of each class in ``classes`` over it (each map on its own scale)."""
    classes = list(classes)
    if ax_row is None:
        fig, ax_row = plt.subplots(1, len(classes) + 1, figsize=(2.3 * (len(classes) + 1), 2.6), squeeze=False)
        ax_row = ax_row[0]
    fig = ax_row[0].figure
    w, h = image.size
    ax_row[0].imshow(image)
    ax_row[0].set_title(title or "image", fontsize=7)
    for ax in ax_row:
        ax.axis("off")
    for ax, c in zip(ax_row[1:], classes):
        a = attention[c].float().numpy()
        ax.imshow(image)
        ax.imshow(a, cmap="jet", alpha=0.5, extent=(0, w, h, 0), interpolation="bilinear",
                  vmin=float(a.min()), vmax=float(a.max()) + 1e-12)
        label = class_names[c] + (f" ({scores[c]:.2f})" if scores is not None else "")
        ax.set_title(label, fontsize=7, color=GROUP_COLORS[groups[c]])
    return fig


# ---------------------------------------------------------------- the two gradient paths

PATHS = {"both paths (full)": (False, False), "P1 only (cut P2)": (False, True), "P2 only (cut P1)": (True, False)}


@dataclass
class DualPath:
    grad_P: dict[str, torch.Tensor]  # per run: dL/dP (c, d)
    grad_PI: dict[str, torch.Tensor]  # per run: dL/dθ_PI, flattened
    loss: float
    max_abs_diff_P: float  # max |full − (P1 + P2)| over dL/dP
    max_abs_diff_PI: float  # the same over the PI network's parameters
    table: pd.DataFrame


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
                features = model.backbone(images)  # dL/dP needs no backbone gradient
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
    table = pd.DataFrame([{"gradient": k, "‖dL/dP‖": float(grad_p[k].norm()), "‖dL/dθ_PI‖": float(grad_pi[k].norm()),
                           "cos with full (dL/dP)": float(nn.functional.cosine_similarity(
                               grad_p[k].flatten(), grad_p[full].flatten(), dim=0))} for k in grad_p])
    return DualPath(grad_p, grad_pi, losses[full], d_p, d_pi, table)


def plot_dual_path(result: DualPath, class_names: list[str], groups, title: str = "") -> Figure:
    """Per class: ‖dL/dp_i‖ through P1 and through P2 (the full gradient is their vector sum)."""
    _, p1, p2 = PATHS
    order = np.argsort([("head", "medium", "tail").index(g) for g in groups], kind="stable")
    n = len(class_names)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * n + 2), 3.4))
    for shift, key, hatch in ((-0.2, p1, ""), (0.2, p2, "//")):
        ax.bar(x + shift, result.grad_P[key].norm(dim=1).numpy()[order], width=0.4, hatch=hatch,
               color=[GROUP_COLORS[groups[i]] for i in order], edgecolor="0.2", linewidth=0.4)
    ax.set_xticks(x, [class_names[i] for i in order], rotation=90, fontsize=6 if n <= 30 else 4)
    handles = [Patch(facecolor="white", edgecolor="0.2", label=p1), Patch(facecolor="white", edgecolor="0.2",
                                                                           hatch="//", label=p2)]
    handles += [Patch(color=GROUP_COLORS[g], label=g) for g in ("head", "medium", "tail")]
    ax.legend(handles=handles, fontsize=7, ncols=2)
    ax.set_ylabel("‖dL/dp_i‖")
    ax.set_title(title or "gradient reaching each prompt along each path", fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- size of the paper configuration


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


def paper_parameter_table(recipe: str = "paper-coco") -> pd.DataFrame:
    """Parameters of the paper's model per component, built from ``recipe`` without any weights.

    The backbone and head come from :mod:`cprfl_lib.factory` with the text embeddings W as a
    (c, m) buffer (the paper: text tower frozen, embeddings precomputed); the text tower is
    open_clip's (the official code trains it inside the model). Everything is built on the meta
    device: shapes only, so the count takes a second. Counts are measured from the modules.
    """
    from cprfl_lib.train import factory
    from cprfl_lib import semantics
    from cprfl_lib.data import synthetic
    from cprfl_lib.train.recipes import load_recipe

    config = load_recipe(recipe, {"model.backbone_weights": None, "semantics.weights": None,
                                  "semantics.trainable": False})
    dataset, encoder = config["data"]["dataset"], config["semantics"]["encoder"]
    names = synthetic.class_names(dataset if dataset.startswith("synth-") else f"synth-{dataset}")  # same names
    m = semantics.embedding_dim(encoder)
    with torch.device("meta"):
        backbone = factory.backbone_from(config)
        head = factory.head_from(config, backbone.out_channels, names, class_embeddings=torch.zeros(len(names), m))
    text = text_tower(encoder) if encoder.startswith("clip") else None
    parts = [("backbone", f"{config['model']['backbone']} convs (gives f_loc)", backbone),
             ("phi", "φ, visual projection (Eq. 1)", head.visual_proj),
             ("vsi", f"VSI, {config['model']['depth']} Transformer layer (Eqs. 4-5)", head.vsi),
             ("pi", "PI network (Eq. 2)", head.prompt_init),
             ("text", f"{encoder} text tower (open_clip)", text)]
    rows = []
    for key, label, module in parts:
        if module is None:
            continue
        n = count_parameters(module, trainable_only=False)
        rows.append({"component": label, "parameters": n,
                     "trainable in the paper (frozen text)": 0 if key == "text" else count_parameters(module),
                     "trainable as the official code runs": count_parameters(module),
                     "method.md §2": METHOD_MD_COUNTS[key] if recipe.startswith("paper-") else None})
    df = pd.DataFrame(rows)
    total = {"component": "total", **{c: int(df[c].sum()) for c in df.columns[1:4]}, "method.md §2": None}
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def parameter_metrics(table: pd.DataFrame) -> dict[str, int]:
    """The counts of :func:`paper_parameter_table` by component key, and the two trainable totals."""
    keys = ["backbone", "phi", "vsi", "pi", "text"][: len(table) - 1]
    out = {k: int(v) for k, v in zip(keys, table["parameters"])}
    total = table.iloc[-1]
    out["trainable_paper"] = int(total["trainable in the paper (frozen text)"])
    out["trainable_official_code"] = int(total["trainable as the official code runs"])
    return out
