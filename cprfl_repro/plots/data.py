"""Plots of notebook 01: the long tail, labels per image, co-occurrence, sample images.

Every function returns a matplotlib Figure (saved by :func:`cprfl_repro.figures.save_figure`),
drawn in the style of :mod:`cprfl_repro.style`, and puts :func:`cprfl_repro.context.describe_data`
in its title, so generated data is never read as VOC-LT or COCO-LT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cprfl_lib.data.benchmarks import Benchmark
from cprfl_lib.data.datasets import load_image
from cprfl_lib.metrics import group_thresholds
from cprfl_repro.analysis.data import DataChoice, conditional_cooccurrence, labels_per_image
from cprfl_repro.context import describe_data
from cprfl_repro.style import class_ticks, current, group_handles, legend_below, named_note, styled


@styled
def plot_longtail(bench: Benchmark) -> Figure:
    """Training images per class, sorted, coloured by group, with the group thresholds."""
    s = current()
    order = np.argsort(-bench.train_counts, kind="stable")
    counts, groups = bench.train_counts[order], bench.groups[order]
    n = len(order)
    fig, ax = s.subplots("page", 2.8)
    ax.bar(np.arange(n), counts, color=[s.groups[g] for g in groups], width=0.85)
    ax.set_yscale("log")
    head, medium = group_thresholds(bench.thresholds)
    for y, label in ((head, f"head ≥ {head}"), (medium, f"tail < {medium}")):
        ax.axhline(y, color="0.4", lw=0.8, ls="--")
        ax.text(n - 0.5, y * 1.05, label, ha="right", va="bottom", fontsize=s.small, color="0.3")
    step = class_ticks(ax, [bench.class_names[i] for i in order], s.width("page") - 0.6)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("class, most images first" + named_note(step))
    ax.set_ylabel("training images (log)")
    ax.set_title(s.wrap(describe_data(bench.name), s.width("page")))
    legend_below(fig, group_handles(groups))
    return fig


@styled
def plot_labels_per_image(choices: Mapping[str, DataChoice]) -> Figure:
    """Histogram of positive labels per image, train and test side by side, a panel per benchmark."""
    s = current()
    kind = "column" if len(choices) == 1 else "page"
    fig, axes = s.subplots(kind, 2.4, 1, len(choices), squeeze=False)
    colors = s.palette["series"]
    for ax, choice in zip(axes[0], choices.values()):
        b = choice.benchmark
        per = {split: labels_per_image(getattr(b, split).targets) for split in ("train", "test")}
        bins = np.arange(0, max(int(v.max()) for v in per.values()) + 1)
        for shift, color, values in zip((-0.2, 0.2), colors, per.values()):
            share = np.bincount(values, minlength=len(bins)) / len(values)
            ax.bar(bins + shift, 100 * share, width=0.4, color=color)
        ax.set_xticks(bins)
        ax.set_xlabel("labels per image")
        ax.set_ylabel("% of images")
        sizes = "; ".join(f"{split}: {len(v):,} images, mean {v.mean():.2f}" for split, v in per.items())
        ax.set_title(s.wrap(f"{b.name} ({sizes})", s.width(kind) / len(choices), s.small), fontsize=s.small)
    legend_below(fig, [Patch(color=c, label=split) for c, split in zip(colors, ("train", "test"))])
    return fig


@styled
def plot_cooccurrence(bench: Benchmark) -> Figure:
    """P(column | row) on the training set, classes sorted head → tail, group bands on the axes."""
    s = current()
    order = np.argsort(-bench.train_counts, kind="stable")
    cond = conditional_cooccurrence(bench.train.targets)[np.ix_(order, order)]
    np.fill_diagonal(cond, np.nan)  # always 1: hide it so the colour scale shows the pairs
    names, groups = [bench.class_names[i] for i in order], bench.groups[order]
    fig, ax = s.subplots("page", s.width("page"))
    image = ax.imshow(cond, cmap=s.palette["sequential"], vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, label="P(column class | row class), train")
    colors = [s.groups[g] for g in groups]
    span = 0.7 * s.width("page")
    step = max(class_ticks(ax, names, span, "x", colors), class_ticks(ax, names, span, "y", colors))
    edges = np.flatnonzero(groups[1:] != groups[:-1]) + 0.5  # boundaries between groups
    for e in edges:
        ax.axhline(e, color="white", lw=0.8)
        ax.axvline(e, color="white", lw=0.8)
    ax.set_title(s.wrap(describe_data(bench.name) + named_note(step), s.width("page")))
    legend_below(fig, group_handles(groups))
    return fig


@styled
def plot_samples(bench: Benchmark, indices: Sequence[int], ncols: int = 4) -> Figure:
    """Training images with their labels (tail labels marked), read from ``bench.image_root``."""
    s = current()
    nrows = max(1, -(-len(indices) // ncols))
    fig, axes = s.subplots("page", 2.0 * nrows + 0.4, nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        ax.imshow(load_image(bench.image_root / bench.train.paths[i]))
        labels = np.flatnonzero(bench.train.targets[i])
        text = ", ".join(bench.class_names[c] + ("*" if bench.groups[c] == "tail" else "") for c in labels)
        ax.set_title(s.wrap(text, s.width("page") / ncols, s.small, max_lines=4), fontsize=s.small)
    fig.suptitle(s.wrap(f"{describe_data(bench.name)}\n(* = tail class)", s.width("page")))
    return fig
