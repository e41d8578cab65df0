"""Figures of what trained runs predict (notebook 06): Fig. 4, per-class AP, attention maps, group mAP."""

from __future__ import annotations

import textwrap
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
from cprfl_repro.figures import GROUP_COLORS


def _category_legend(fig: Figure, **kw) -> None:
    labels = {"head": "head (correct)", "medium": "medium (correct)", "tail": "tail (correct)", "incorrect": "incorrect"}
    fig.legend(handles=[Patch(color=GROUP_COLORS[c], label=labels[c]) for c in CATEGORIES], ncols=4, fontsize=8, **kw)


def figure4_predictions(images: Sequence[Image.Image], image_ids: Sequence[int], targets: np.ndarray,
                        class_names: Sequence[str], groups: np.ndarray,
                        columns: Mapping[str, np.ndarray | str], k: int = 3, title: str = "") -> Figure:
    """Fig. 4: each image beside the top-``k`` classes of each method.

    ``columns`` maps a method's label to its scores for these images (n, C), or to a string
    that says why it is not available (shown in its panel, never dropped).
    """
    n, m = len(images), len(columns)
    fig, axes = plt.subplots(n, m + 1, figsize=(2.2 + 2.3 * m, 2.0 * n + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0] + [1.1] * m})
    for r, (img, i) in enumerate(zip(images, image_ids)):
        ax = axes[r, 0]
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        truth = [c for c in np.flatnonzero(targets[r])]
        ax.set_ylabel(f"test image {i}", fontsize=7)
        ax.set_xlabel(textwrap.fill("labels: " + ", ".join(class_names[c] for c in truth), 30), fontsize=6)
        for c_ax, (label, scores) in zip(axes[r, 1:], columns.items()):
            c_ax.axis("off")
            if r == 0:
                c_ax.set_title(label, fontsize=8)
            if isinstance(scores, str):
                c_ax.text(0.02, 0.5, textwrap.fill(f"{label}: not available ({scores})", 34), fontsize=6,
                          color="0.4", va="center", transform=c_ax.transAxes)
                continue
            for j, (name, s, cat) in enumerate(top_k(scores[r], targets[r], groups, class_names, k)):
                c_ax.text(0.02, 0.8 - 0.25 * j, f"{j + 1}. {name}  {s:.2f}", fontsize=8, color=GROUP_COLORS[cat],
                          va="center", transform=c_ax.transAxes, fontweight="bold" if cat != "incorrect" else None)
    _category_legend(fig, loc="lower center")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97 if title else 1))
    return fig


def per_class_ap_vs_count(runs: Sequence[RunPredictions], title: str = "") -> Figure:
    """Per-class AP against the class's training images (log), one marker per run, colour by group."""
    base = runs[0]
    counts, groups = base.train_counts, base.groups
    markers = ("o", "^", "s", "D")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    aps = [r.ap() * 100 for r in runs]
    for a, b in zip(aps[:-1], aps[1:]):  # a segment from the first run's AP to the next one's, per class
        for x, y0, y1 in zip(counts, a, b):
            ax.plot([x, x], [y0, y1], color="0.75", lw=0.8, zorder=1)
    for run, ap, marker in zip(runs, aps, markers):
        ax.scatter(counts, ap, c=[GROUP_COLORS[g] for g in groups], marker=marker, s=28, edgecolor="0.2",
                   linewidth=0.4, zorder=2, label=run.label)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log)")
    ax.set_ylabel("test AP (%)")
    handles = [plt.Line2D([], [], marker=mk, ls="", color="0.5", label=r.label) for r, mk in zip(runs, markers)]
    handles += [Patch(color=GROUP_COLORS[g], label=g) for g in GROUPS]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def attention_maps(images: Sequence[Image.Image], image_ids: Sequence[int], attention: torch.Tensor,
                   targets: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], groups: np.ndarray,
                   max_classes: int = 4, title: str = "") -> Figure:
    """For each image, the attention (h, w) of its positive classes' prompts over it (each on its own scale)."""
    from cprfl_repro.plots.model import plot_attention

    per_row = [list(np.flatnonzero(t)[:max_classes]) for t in targets]
    ncols = 1 + max(len(c) for c in per_row)
    fig, axes = plt.subplots(len(images), ncols, figsize=(2.1 * ncols, 2.3 * len(images)), squeeze=False)
    for r, (img, i, classes) in enumerate(zip(images, image_ids, per_row)):
        plot_attention(img, attention[r], list(class_names), classes, groups, scores=probabilities[r],
                       ax_row=axes[r], title=f"test image {i}")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def group_map_vs_paper(table: pd.DataFrame, title: str = "") -> Figure:
    """Grouped bars of mAP / head / medium / tail: ours (solid, ± std over seeds) and the paper's (hatched)."""
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    n = len(table)
    width = 0.8 / n
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
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
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(x, ["mAP", "head", "medium", "tail"])
    ax.set_ylabel("mAP (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
