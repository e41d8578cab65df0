"""Figures of the model walk-through (notebook 03) and of a trained model's attention (notebook 06), in the style
of :mod:`cprfl_repro.style`."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from cprfl_lib.model_analysis import PATHS, DualPath, Trace, prompt_similarity
from cprfl_repro.style import class_ticks, current, group_handles, legend_below, named_note, styled


@styled
def plot_prompt_init(t: Trace, class_names: list[str], groups, title: str = "") -> Figure:
    """Class-to-class cosine (centred) of W (text) and of P (prompts), and one against the other."""
    s = current()
    sim = prompt_similarity(t)
    order = np.argsort([("head", "medium", "tail").index(g) for g in groups], kind="stable")
    fig, axes = s.subplots("page", 3.0, 1, 3)
    names = [class_names[i] for i in order]
    colors = [s.groups[groups[i]] for i in order]
    step = 1
    for ax, k, label in ((axes[0], "W", "class embeddings"), (axes[1], "P", "prompts = PI(W)")):
        m = sim[f"cos_{k}_centred"][np.ix_(order, order)]
        im = ax.imshow(m, cmap=s.palette["diverging"], vmin=-1, vmax=1)
        ax.set_title(s.wrap(f"{k} {tuple(getattr(t, k).shape)}: {label} (raw mean cosine {sim[f'mean_cos_{k}']:.2f})",
                            s.width("page") / 3.6, s.small), fontsize=s.small)
        span = 0.8 * s.width("page") / 3
        step = max(step, class_ticks(ax, names, span, "x", colors))
        if k == "W":  # the rows of P are in the same order: named once
            step = max(step, class_ticks(ax, names, span, "y", colors))
        else:
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="cosine, class mean removed")
    off = ~np.eye(len(class_names), dtype=bool)
    axes[2].scatter(sim["cos_W_centred"][off], sim["cos_P_centred"][off], s=4, alpha=0.5, color=s.palette["series"][0])
    axes[2].set_xlabel("centred cos(w_i, w_j)")
    axes[2].set_ylabel("centred cos(p_i, p_j)")
    axes[2].set_title(s.wrap(f"class pairs: Pearson r = {sim['pearson_r']:.2f}", s.width("page") / 3.6, s.small),
                      fontsize=s.small)
    legend_below(fig, group_handles(with_counts=False))
    if title or step > 1:
        fig.suptitle(s.wrap(title + named_note(step), s.width("page")))
    return fig


# ---------------------------------------------------------------- attention


@styled
def plot_attention(image: Image.Image, attention: torch.Tensor, class_names: list[str], classes, groups,
                   scores=None, ax_row=None, title: str = "") -> Figure:
    """The image, then the attention map (h, w) of each class in ``classes`` over it (each map on its own scale)."""
    s = current()
    classes = list(classes)
    if ax_row is None:
        ncols = len(classes) + 1
        _, ax_row = s.subplots("page", s.width("page") / max(ncols, 4) * 1.25, 1, ncols, squeeze=False)
        ax_row = ax_row[0]
    fig = ax_row[0].figure
    w, h = image.size
    ax_row[0].imshow(image)
    ax_row[0].set_title(s.wrap(title or "image", fig.get_figwidth() / len(ax_row), s.small), fontsize=s.small)
    for ax in ax_row:
        ax.axis("off")
    for ax, c in zip(ax_row[1:], classes):
        a = attention[c].float().numpy()
        ax.imshow(image)
        ax.imshow(a, cmap=s.palette["sequential"], alpha=0.5, extent=(0, w, h, 0), interpolation="bilinear",
                  vmin=float(a.min()), vmax=float(a.max()) + 1e-12)
        label = class_names[c] + (f" ({scores[c]:.2f})" if scores is not None else "")
        ax.set_title(s.wrap(label, fig.get_figwidth() / len(ax_row), s.small), fontsize=s.small,
                     color=s.groups[groups[c]])
    return fig


# ---------------------------------------------------------------- the two gradient paths


@styled
def plot_dual_path(result: DualPath, class_names: list[str], groups, title: str = "") -> Figure:
    """Per class: ‖dL/dp_i‖ through P1 and through P2 (the full gradient is their vector sum)."""
    s = current()
    _, p1, p2 = PATHS
    order = np.argsort([("head", "medium", "tail").index(g) for g in groups], kind="stable")
    n = len(class_names)
    x = np.arange(n)
    fig, ax = s.subplots("page", 2.8)
    for shift, key, hatch in ((-0.2, p1, ""), (0.2, p2, "//")):
        ax.bar(x + shift, result.grad_P[key].norm(dim=1).numpy()[order], width=0.4, hatch=hatch,
               color=[s.groups[groups[i]] for i in order], edgecolor="0.2", linewidth=0.4)
    step = class_ticks(ax, [class_names[i] for i in order], s.width("page") - 0.6)
    ax.set_xlabel("class, head to tail" + named_note(step))
    handles = [Patch(facecolor="white", edgecolor="0.2", label=p1), Patch(facecolor="white", edgecolor="0.2",
                                                                           hatch="//", label=p2)]
    legend_below(fig, handles + group_handles(with_counts=False), ncols=5)
    ax.set_ylabel("‖dL/dp_i‖")
    ax.set_title(s.wrap(title or "gradient reaching each prompt along each path", s.width("page")))
    return fig
