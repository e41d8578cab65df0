"""Plots of training runs and studies: learning curves and per-variant bars with the seeds' spread; in the style
of :mod:`cprfl_repro.style`."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Patch

from cprfl_repro.reported import COLUMNS
from cprfl_repro.style import current, legend_below, styled


@styled
def learning_curves(run_dirs: dict[str, list[str]], title: str = "") -> plt.Figure:
    """Training loss and test mAP per epoch; one colour per variant, one thin line per seed."""
    s = current()
    series = s.palette["series"]
    fig, (ax_loss, ax_map) = s.subplots("page", 2.8, 1, 2)
    handles = []
    for i, (name, dirs) in enumerate(run_dirs.items()):
        color = series[i % len(series)]
        handles.append(plt.Line2D([], [], color=color, marker=".", label=name))
        for d in dirs:
            summary = pd.read_csv(Path(d) / "summary.csv")
            ax_loss.plot(summary["epoch"], summary["loss"], color=color, lw=1, alpha=0.8)
            ev = summary.dropna(subset=["mAP"]) if "mAP" in summary else summary.iloc[:0]
            ax_map.plot(ev["epoch"], ev["mAP"], color=color, lw=1, alpha=0.8, marker=".")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    ax_map.set(xlabel="epoch", ylabel="test mAP (%)", title="test mAP (last epoch is reported)")
    if handles:
        legend_below(fig, handles)
    if title:
        fig.suptitle(s.wrap(title, s.width("page")))
    return fig


@styled
def study_bars(runs: pd.DataFrame, title: str = "", paper: dict[str, dict] | None = None) -> plt.Figure:
    """mAP per group for each variant: the mean over seeds with the seeds' std as error bars (seaborn); the
    paper's values as black marks. A column wide for up to three variants, else a page."""
    import seaborn as sns

    s = current()
    ok = runs[runs["status"] == "ok"]
    long = ok.melt(id_vars=["variant", "seed"], value_vars=list(COLUMNS), var_name="figure", value_name="mAP (%)")
    variants = list(dict.fromkeys(ok["variant"]))
    kind = "column" if len(variants) <= 3 else "page"
    fig, ax = s.subplots(kind, 2.8)
    colors = {"mAP": s.palette["overall"], **s.groups}
    sns.barplot(long, x="variant", y="mAP (%)", hue="figure", order=variants, hue_order=list(COLUMNS),
                palette=colors, errorbar="sd", capsize=0.1, err_kws={"linewidth": 1}, ax=ax, legend=False)
    handles = [Patch(color=colors[c], label=c) for c in COLUMNS]
    if paper:
        width, marked = 0.8 / len(COLUMNS), False
        for k, col in enumerate(COLUMNS):
            xs = [i + (k - 1.5) * width for i, v in enumerate(variants) if (paper.get(v) or {}).get(col) is not None]
            ys = [paper[v][col] for v in variants if (paper.get(v) or {}).get(col) is not None]
            ax.scatter(xs, ys, marker="_", s=60, color="black", zorder=3)
            marked = marked or bool(xs)
        if marked:
            handles.append(plt.Line2D([], [], marker="_", ls="", color="black", markersize=8, label="paper"))
    ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right")
    ax.set(xlabel="", title=s.wrap(title, s.width(kind)))
    legend_below(fig, handles, ncols=len(handles))
    return fig
