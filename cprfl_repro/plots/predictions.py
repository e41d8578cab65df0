"""Figures of what trained runs predict (notebook 06): Fig. 4, per-class AP, attention maps, group mAP; in the
style of :mod:`cprfl_repro.style`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from cprfl_lib.metrics import COLUMNS, GROUPS
from cprfl_repro.analysis.predictions import CATEGORIES, RunPredictions, top_k
from cprfl_repro.style import current, group_handles, legend_below, styled


@styled
def figure4_predictions(images: Sequence[Image.Image], image_ids: Sequence[int], targets: np.ndarray,
                        class_names: Sequence[str], groups: np.ndarray,
                        columns: Mapping[str, np.ndarray | str], k: int = 3, title: str = "") -> Figure:
    """Fig. 4: each image beside the top-``k`` classes of each method.

    ``columns`` maps a method's label to its scores for these images (n, C), or to a string
    that says why it is not available (shown in its panel, never dropped).
    """
    s = current()
    n, m = len(images), len(columns)
    col_in = s.width("page") / (m + 1)
    fig, axes = s.subplots("page", 1.55 * n + 0.6, n, m + 1, squeeze=False)
    for r, (img, i) in enumerate(zip(images, image_ids)):
        ax = axes[r, 0]
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        truth = [c for c in np.flatnonzero(targets[r])]
        ax.set_ylabel(f"test image {i}", fontsize=s.small)
        ax.set_xlabel(s.wrap("labels: " + ", ".join(class_names[c] for c in truth), col_in, s.small), fontsize=s.small)
        for c_ax, (label, scores) in zip(axes[r, 1:], columns.items()):
            c_ax.axis("off")
            if r == 0:
                c_ax.set_title(s.wrap(label, col_in))
            if isinstance(scores, str):
                c_ax.text(0.02, 0.5, s.wrap(f"{label}: not available ({scores})", col_in, s.small), fontsize=s.small,
                          color="0.4", va="center", transform=c_ax.transAxes)
                continue
            for j, (name, score, cat) in enumerate(top_k(scores[r], targets[r], groups, class_names, k)):
                c_ax.text(0.02, 0.8 - 0.25 * j, f"{j + 1}. {name}  {score:.2f}", fontsize=s.size, color=s.groups[cat],
                          va="center", transform=c_ax.transAxes, fontweight="bold" if cat != "incorrect" else None)
    labels = {"head": "head (correct)", "medium": "medium (correct)", "tail": "tail (correct)", "incorrect": "incorrect"}
    legend_below(fig, [Patch(color=s.groups[c], label=labels[c]) for c in CATEGORIES])
    if title:
        fig.suptitle(s.wrap(title, s.width("page")))
    return fig


@styled
def per_class_ap_vs_count(runs: Sequence[RunPredictions], title: str = "") -> Figure:
    """Per-class AP against the class's training images (log), one marker per run, colour by group."""
    s = current()
    base = runs[0]
    counts, groups = base.train_counts, base.groups
    markers = ("o", "^", "s", "D")
    fig, ax = s.subplots("column", 3.0)
    aps = [r.ap() * 100 for r in runs]
    for a, b in zip(aps[:-1], aps[1:]):  # a segment from the first run's AP to the next one's, per class
        for x, y0, y1 in zip(counts, a, b):
            ax.plot([x, x], [y0, y1], color="0.75", lw=0.8, zorder=1)
    for run, ap, marker in zip(runs, aps, markers):
        ax.scatter(counts, ap, c=[s.groups[g] for g in groups], marker=marker, s=16, edgecolor="0.2",
                   linewidth=0.4, zorder=2, label=run.label)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log)")
    ax.set_ylabel("test AP (%)")
    handles = [plt.Line2D([], [], marker=mk, ls="", color="0.5", label=r.label) for r, mk in zip(runs, markers)]
    legend_below(fig, handles + group_handles(with_counts=False, keys=GROUPS), ncols=3)
    ax.set_title(s.wrap(title, s.width("column")))
    return fig


@styled
def attention_maps(images: Sequence[Image.Image], image_ids: Sequence[int], attention: torch.Tensor,
                   targets: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], groups: np.ndarray,
                   max_classes: int = 4, title: str = "") -> Figure:
    """For each image, the attention (h, w) of its positive classes' prompts over it (each on its own scale)."""
    from cprfl_repro.plots.model import plot_attention

    s = current()
    per_row = [list(np.flatnonzero(t)[:max_classes]) for t in targets]
    ncols = 1 + max(len(c) for c in per_row)
    fig, axes = s.subplots("page", s.width("page") / max(ncols, 4) * 1.2 * len(images) + 0.4, len(images), ncols,
                           squeeze=False)
    for r, (img, i, classes) in enumerate(zip(images, image_ids, per_row)):
        plot_attention(img, attention[r], list(class_names), classes, groups, scores=probabilities[r],
                       ax_row=axes[r], title=f"test image {i}")
    if title:
        fig.suptitle(s.wrap(title, s.width("page")))
    return fig


@styled
def group_map_vs_paper(table: pd.DataFrame, title: str = "") -> Figure:
    """Grouped bars of mAP / head / medium / tail: ours (solid, ± std over seeds) and the paper's (hatched)."""
    s = current()
    fig, ax = s.subplots("page", 3.0)
    n = len(table)
    width = 0.8 / n
    colors = s.palette["series"]
    variants = list(dict.fromkeys(table["variant"]))
    x = np.arange(len(COLUMNS))
    for j, (_, row) in enumerate(table.iterrows()):
        paper = row["source"].startswith("paper")
        err = [row.get(f"{c} std", np.nan) for c in COLUMNS] if not paper else None
        err = None if err is None or np.all(np.isnan(err)) else err
        bars = ax.bar(x - 0.4 + width * (j + 0.5), [row[c] for c in COLUMNS], width, yerr=err, capsize=2,
                      color=colors[variants.index(row["variant"]) % len(colors)], alpha=0.45 if paper else 1.0,
                      hatch="//" if paper else None, edgecolor="0.2", linewidth=0.4,
                      label=f"{row['variant']} — {row['source']}")
        ax.bar_label(bars, fmt="%.1f", fontsize=s.small, padding=1, rotation=90 if n > 4 else 0)
    ax.set_xticks(x, ["mAP", "head", "medium", "tail"])
    ax.set_ylabel("mAP (%)")
    ax.set_ylim(0, 110)
    legend_below(fig, ax.get_legend_handles_labels()[0], ncols=2)
    ax.set_title(s.wrap(title, s.width("page")))
    return fig
