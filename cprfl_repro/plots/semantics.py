"""Figures of the category-embedding comparison (notebook 02), in the style of :mod:`cprfl_repro.style`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from cprfl_repro.analysis.semantics import ClassInfo, EncoderResult, cosine_matrix
from cprfl_repro.context import describe_data
from cprfl_repro.style import class_ticks, current, group_handles, legend_below, named_note, styled


def _head_to_tail(info: ClassInfo) -> np.ndarray:
    return np.argsort(-np.asarray(info.train_counts), kind="stable")


@styled
def plot_similarity(result: EncoderResult, info: ClassInfo) -> Figure:
    """Cosine similarity heatmap, classes sorted head → tail, names coloured by group."""
    s = current()
    order = _head_to_tail(info)
    sim = cosine_matrix(result.embeddings)[np.ix_(order, order)]
    n, names, groups = len(order), [info.names[i] for i in order], info.groups[order]
    fig, ax = s.subplots("page", s.width("page"))
    off = sim[~np.eye(n, dtype=bool)]
    image = ax.imshow(sim, cmap=s.palette["sequential"], vmin=min(off.min(), 0.0), vmax=max(off.max(), 1e-6),
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, label="cosine similarity (diagonal = 1, off the scale)")
    colors = [s.groups[g] for g in groups]
    span = 0.7 * s.width("page")
    step = max(class_ticks(ax, names, span, "x", colors), class_ticks(ax, names, span, "y", colors))
    for edge in np.flatnonzero(groups[1:] != groups[:-1]) + 0.5:  # head | medium | tail boundaries
        ax.axhline(edge, color="white", lw=0.8)
        ax.axvline(edge, color="white", lw=0.8)
    ax.set_title(s.wrap(f"{result.encoder} (m = {result.dim}) — {info.dataset}{named_note(step)}", s.width("page")))
    legend_below(fig, group_handles(groups))
    return fig


@styled
def plot_projection(results: Mapping[str, EncoderResult], info: ClassInfo) -> Figure:
    """2-D PCA of the L2-normalised embeddings, one panel per available encoder, coloured by group."""
    from sklearn.decomposition import PCA

    s = current()
    shown = [r for r in results.values() if r.available]
    ncols = max(1, min(3, len(shown)))
    nrows = max(1, -(-len(shown) // ncols))
    fig, axes = s.subplots("page", 2.4 * nrows * 3 / max(ncols, 2) + 0.6, nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, shown):
        e = r.embeddings / np.maximum(np.linalg.norm(r.embeddings, axis=1, keepdims=True), 1e-12)
        xy = PCA(n_components=2, random_state=0).fit_transform(e)
        ax.axis("on")
        ax.scatter(xy[:, 0], xy[:, 1], c=[s.groups[g] for g in info.groups], s=12)
        for (x, y), name in zip(xy, info.names):
            ax.annotate(name, (x, y), fontsize=s.small, xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"{r.encoder} (m = {r.dim})")
        ax.set_xticks([])
        ax.set_yticks([])
    legend_below(fig, group_handles(info.groups))
    fig.suptitle(s.wrap(f"PCA of the class-name embeddings — {describe_data(info.dataset)}", s.width("page")))
    return fig
