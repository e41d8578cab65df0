"""Plots of notebook 01: the long tail, labels per image, co-occurrence, sample images.

Every function returns a matplotlib Figure (saved by :func:`cprfl_lib.figures.save_figure`)
and puts :func:`cprfl_lib.notebook.describe_data` in its title, so generated data is never
read as VOC-LT or COCO-LT.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from cprfl_lib.data.benchmarks import Benchmark
from cprfl_lib.data.datasets import load_image
from cprfl_lib.metrics import group_thresholds
from cprfl_repro.analysis.data import DataChoice, conditional_cooccurrence, labels_per_image
from cprfl_repro.context import describe_data
from cprfl_repro.figures import GROUP_COLORS, group_legend


def _small(n: int) -> float:
    """Tick font size that keeps 80 class names readable."""
    return 8 if n <= 30 else 5


def plot_longtail(bench: Benchmark) -> Figure:
    """Training images per class, sorted, coloured by group, with the group thresholds."""
    order = np.argsort(-bench.train_counts, kind="stable")
    counts, groups = bench.train_counts[order], bench.groups[order]
    n = len(order)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * n + 2), 3.6))
    ax.bar(np.arange(n), counts, color=[GROUP_COLORS[g] for g in groups], width=0.85)
    ax.set_yscale("log")
    head, medium = group_thresholds(bench.thresholds)
    for y, label in ((head, f"head ≥ {head}"), (medium, f"tail < {medium}")):
        ax.axhline(y, color="0.4", lw=0.8, ls="--")
        ax.text(n - 0.5, y * 1.05, label, ha="right", va="bottom", fontsize=7, color="0.3")
    ax.set_xticks(np.arange(n), [bench.class_names[i] for i in order], rotation=90, fontsize=_small(n))
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("training images (log)")
    ax.set_title(describe_data(bench.name), fontsize=8)
    group_legend(ax, groups, fontsize=8, loc="upper center")  # sorted bars leave the top middle free
    fig.tight_layout()
    return fig


def plot_labels_per_image(choices: Mapping[str, DataChoice]) -> Figure:
    """Histogram of positive labels per image, train and test side by side, a panel per benchmark."""
    fig, axes = plt.subplots(1, len(choices), figsize=(4.2 * len(choices), 3.2), squeeze=False)
    for ax, choice in zip(axes[0], choices.values()):
        b = choice.benchmark
        per = {s: labels_per_image(getattr(b, s).targets) for s in ("train", "test")}
        bins = np.arange(0, max(int(v.max()) for v in per.values()) + 1)
        for shift, (split, values) in zip((-0.2, 0.2), per.items()):
            share = np.bincount(values, minlength=len(bins)) / len(values)
            ax.bar(bins + shift, 100 * share, width=0.4,
                   label=f"{split} ({len(values):,} images, mean {values.mean():.2f})")
        ax.set_xticks(bins)
        ax.set_xlabel("labels per image")
        ax.set_ylabel("% of images")
        ax.set_title(b.name, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_cooccurrence(bench: Benchmark) -> Figure:
    """P(column | row) on the training set, classes sorted head → tail, group bands on the axes."""
    order = np.argsort(-bench.train_counts, kind="stable")
    cond = conditional_cooccurrence(bench.train.targets)[np.ix_(order, order)]
    np.fill_diagonal(cond, np.nan)  # always 1: hide it so the colour scale shows the pairs
    n = len(order)
    names, groups = [bench.class_names[i] for i in order], bench.groups[order]
    size = max(5.0, 0.11 * n + 3)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(cond, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, label="P(column class | row class), train")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names, rotation=90, fontsize=_small(n))
    ax.set_yticks(ticks, names, fontsize=_small(n))
    for label_set in (ax.get_xticklabels(), ax.get_yticklabels()):
        for label, g in zip(label_set, groups):
            label.set_color(GROUP_COLORS[g])
    edges = np.flatnonzero(groups[1:] != groups[:-1]) + 0.5  # boundaries between groups
    for e in edges:
        ax.axhline(e, color="white", lw=0.8)
        ax.axvline(e, color="white", lw=0.8)
    ax.set_title(describe_data(bench.name), fontsize=8)
    group_legend(fig, groups, fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_samples(bench: Benchmark, indices: Sequence[int], ncols: int = 4) -> Figure:
    """Training images with their labels (tail labels marked), read from ``bench.image_root``."""
    nrows = max(1, -(-len(indices) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.9 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        ax.imshow(load_image(bench.image_root / bench.train.paths[i]))
        labels = np.flatnonzero(bench.train.targets[i])
        text = ", ".join(bench.class_names[c] + ("*" if bench.groups[c] == "tail" else "") for c in labels)
        ax.set_title(textwrap.fill(text, 32), fontsize=7)
    fig.suptitle(f"{describe_data(bench.name)}\n(* = tail class)", fontsize=8)
    fig.tight_layout()
    return fig
