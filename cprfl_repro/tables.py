"""Tables for results/: every table as CSV, Markdown and LaTeX (booktabs), with what produced it.

A table is a pandas DataFrame; ``write_table`` writes ``<name>.csv``, ``<name>.md`` (caption and
notes above the table, so a reader of the Markdown sees which data produced "ours") and
``<name>.tex`` (booktabs, for write-ups), each atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cprfl_lib.io import atomic_write_text


def mean_std(values) -> str:
    """'44.70 ± 0.21' over seeds ('44.70' for one value, 'n/a' for none)."""
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.2f}" if v.size == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def write_table(df: pd.DataFrame, name: str, out_dir: str | Path, caption: str, notes: list[str] = (),
                label: str | None = None) -> dict[str, Path]:
    """Write ``df`` as tables/<name>.csv, .md and .tex under ``out_dir``; returns the paths.

    ``label``: a line that every file starts with (the CSV as a ``#`` comment: ``pandas.read_csv(comment="#")``).
    """
    folder = Path(out_dir) / "tables"
    paths = {ext: folder / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
    atomic_write_text(paths["csv"], (f"# {label}\n" if label else "") + df.to_csv(index=False))
    md = [f"**{caption}**", ""] + [f"> {n}" for n in notes] + ([""] if notes else [])
    shown = df.astype(object).where(df.notna(), "")  # empty cells, not 'nan', where a row has no value
    md.append(shown.to_markdown(index=False, floatfmt=".2f"))
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    tex = shown.to_latex(index=False, escape=True, float_format="%.2f", caption=caption, label=f"tab:{name}",
                      column_format="l" + "r" * (len(df.columns) - 1))
    # pandas emits booktabs rules (\toprule, \midrule, \bottomrule) by default
    atomic_write_text(paths["tex"], "% " + "\n% ".join(notes) + "\n" + tex if notes else tex)
    return paths
