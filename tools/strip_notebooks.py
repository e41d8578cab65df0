"""``make strip-notebooks``: drop the volatile metadata of executed notebooks, so that their diffs stay readable.

    python -m tools.strip_notebooks notebooks/*.ipynb

Removed: papermill's per-cell and per-notebook records (start and end times, durations, the
executed notebook's paths, exceptions), execution timestamps, and saved widget state. Kept:
the cells, their outputs (what a reader of the stored notebooks sees) and the kernelspec.
A notebook that is already clean is not rewritten.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

VOLATILE_CELL = ("papermill", "execution")
VOLATILE_NOTEBOOK = ("papermill", "widgets")


def strip(nb: nbformat.NotebookNode) -> bool:
    """Remove the volatile metadata in place; whether anything was removed."""
    changed = False
    for key in VOLATILE_NOTEBOOK:
        changed |= nb.metadata.pop(key, None) is not None
    for cell in nb.cells:
        for key in VOLATILE_CELL:
            changed |= cell.metadata.pop(key, None) is not None
    return changed


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m tools.strip_notebooks NOTEBOOK.ipynb ...", file=sys.stderr)
        return 2
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if strip(nb):
            nbformat.write(nb, path)
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
