"""Saving figures for results/: every figure as PNG (for reading) and vector PDF (for write-ups), with its caption.

``save_figure`` writes ``figures/<name>.png`` and ``.pdf`` (at the style's resolution: :mod:`cprfl_repro.style`)
and ``figures/<name>.json``: the caption and the style that drew it, which :func:`cprfl_repro.index.write_index`
lists in the results folder's INDEX.md.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

from cprfl_lib.io import atomic_path, atomic_write_json


def save_figure(fig: "matplotlib.figure.Figure", name: str, out_dir: str | Path, caption: str | None = None,
                dpi: float | None = None) -> dict[str, Path]:
    """Write figures/<name>.png, .pdf and .json (caption, style) under ``out_dir`` atomically; returns the paths."""
    from cprfl_repro.style import current

    style = current()
    folder = Path(out_dir) / "figures"
    paths = {ext: folder / f"{name}.{ext}" for ext in ("png", "pdf")}
    for ext, path in paths.items():
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi or style.dpi, bbox_inches="tight", pad_inches=0.02)  # the width as drawn
    paths["json"] = folder / f"{name}.json"
    atomic_write_json(paths["json"], {"caption": caption, "style": style.source})
    return paths
