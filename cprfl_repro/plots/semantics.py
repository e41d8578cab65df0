"""Figures of the category-embedding comparison (notebook 02)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from cprfl_repro.analysis.semantics import ClassInfo, EncoderResult, cosine_matrix
from cprfl_repro.context import describe_data
from cprfl_repro.figures import GROUP_COLORS, group_legend


def _head_to_tail(info: ClassInfo) -> np.ndarray:
    return np.argsort(-np.asarray(info.train_counts), kind="stable")


def plot_similarity(result: EncoderResult, info: ClassInfo) -> Figure:
    """Cosine similarity heatmap, classes sorted head → tail, names coloured by group."""
    order = _head_to_tail(info)
    sim = cosine_matrix(result.embeddings)[np.ix_(order, order)]
    n, names, groups = len(order), [info.names[i] for i in order], info.groups[order]
    size = max(5.0, 0.11 * n + 3)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    off = sim[~np.eye(n, dtype=bool)]
    image = ax.imshow(sim, cmap="magma", vmin=min(off.min(), 0.0), vmax=max(off.max(), 1e-6), interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, label="cosine similarity (diagonal = 1, off the scale)")
    fontsize = 8 if n <= 30 else 5
    ax.set_xticks(np.arange(n), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(np.arange(n), names, fontsize=fontsize)
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for label, g in zip(labels, groups):
            label.set_color(GROUP_COLORS[g])
    for edge in np.flatnonzero(groups[1:] != groups[:-1]) + 0.5:  # head | medium | tail boundaries
        ax.axhline(edge, color="white", lw=0.8)
        ax.axvline(edge, color="white", lw=0.8)
    ax.set_title(f"{result.encoder} (m = {result.dim}) — {info.dataset}", fontsize=9)
    group_legend(fig, groups, fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_projection(results: Mapping[str, EncoderResult], info: ClassInfo) -> Figure:
    """2-D PCA of the L2-normalised embeddings, one panel per available encoder, coloured by group."""
    from sklearn.decomposition import PCA

    shown = [r for r in results.values() if r.available]
    ncols = max(1, min(3, len(shown)))
    nrows = max(1, -(-len(shown) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    fontsize = 7 if len(info.names) <= 30 else 4.5
    for ax, r in zip(axes.flat, shown):
        e = r.embeddings / np.maximum(np.linalg.norm(r.embeddings, axis=1, keepdims=True), 1e-12)
        xy = PCA(n_components=2, random_state=0).fit_transform(e)
        ax.axis("on")
        ax.scatter(xy[:, 0], xy[:, 1], c=[GROUP_COLORS[g] for g in info.groups], s=18)
        for (x, y), name in zip(xy, info.names):
            ax.annotate(name, (x, y), fontsize=fontsize, xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"{r.encoder} (m = {r.dim})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    group_legend(axes.flat[0], info.groups, fontsize=7, loc="best")
    fig.suptitle(f"PCA of the class-name embeddings — {describe_data(info.dataset)}", fontsize=8)
    fig.tight_layout()
    return fig
