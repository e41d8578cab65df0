"""Saving figures for results/: every figure as PNG (for reading) and vector PDF (for write-ups)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from cprfl_lib.io import atomic_path

GROUP_COLORS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#2ca02c", "incorrect": "#d62728"}


def group_legend(ax, groups, **kw: object) -> None:
    """A legend of the head / medium / tail colours with each group's class count, on an axes or figure."""
    from matplotlib.patches import Patch

    from cprfl_lib.metrics import GROUPS

    ax.legend(handles=[Patch(color=GROUP_COLORS[g], label=f"{g} ({int((groups == g).sum())})") for g in GROUPS], **kw)


def save_figure(fig: "matplotlib.figure.Figure", name: str, out_dir: str | Path, dpi: int = 150) -> dict[str, Path]:
    """Write figures/<name>.png and .pdf under ``out_dir`` atomically; returns the paths."""
    folder = Path(out_dir) / "figures"
    paths = {ext: folder / f"{name}.{ext}" for ext in ("png", "pdf")}
    for ext, path in paths.items():
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight")
    return paths
