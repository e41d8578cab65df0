"""Figures of the model walk-through (notebook 03) and of a trained model's attention (notebook 06)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from cprfl_lib.model_analysis import PATHS, DualPath, Trace, prompt_similarity
from cprfl_repro.figures import GROUP_COLORS


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
