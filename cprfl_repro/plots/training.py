"""Plots of training runs and studies: learning curves and per-variant bars with the seeds' spread."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from cprfl_repro.figures import GROUP_COLORS
from cprfl_repro.reported import COLUMNS


def learning_curves(run_dirs: dict[str, list[str]], title: str = "") -> plt.Figure:
    """Training loss and test mAP per epoch; one colour per variant, one thin line per seed."""
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (name, dirs) in enumerate(run_dirs.items()):
        color = f"C{i}"
        for j, d in enumerate(dirs):
            s = pd.read_csv(Path(d) / "summary.csv")
            label = name if j == 0 else None
            ax_loss.plot(s["epoch"], s["loss"], color=color, lw=1, alpha=0.8, label=label)
            ev = s.dropna(subset=["mAP"]) if "mAP" in s else s.iloc[:0]
            ax_map.plot(ev["epoch"], ev["mAP"], color=color, lw=1, alpha=0.8, marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    ax_map.set(xlabel="epoch", ylabel="test mAP (%)", title="test mAP (last epoch is reported)")
    ax_map.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def study_bars(runs: pd.DataFrame, title: str = "", paper: dict[str, dict] | None = None) -> plt.Figure:
    """mAP per group for each variant: the mean over seeds with the seeds' std as error bars (seaborn); the
    paper's values as black marks."""
    import seaborn as sns

    ok = runs[runs["status"] == "ok"]
    long = ok.melt(id_vars=["variant", "seed"], value_vars=list(COLUMNS), var_name="figure", value_name="mAP (%)")
    variants = list(dict.fromkeys(ok["variant"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(variants) + 2), 3.8))
    colors = {"mAP": "#555555", **GROUP_COLORS}
    sns.barplot(long, x="variant", y="mAP (%)", hue="figure", order=variants, hue_order=list(COLUMNS),
                palette=colors, errorbar="sd", capsize=0.1, err_kws={"linewidth": 1}, ax=ax)
    if paper:
        width = 0.8 / len(COLUMNS)
        for k, col in enumerate(COLUMNS):
            xs = [i + (k - 1.5) * width for i, v in enumerate(variants) if (paper.get(v) or {}).get(col) is not None]
            ys = [paper[v][col] for v in variants if (paper.get(v) or {}).get(col) is not None]
            ax.scatter(xs, ys, marker="_", s=120, color="black", zorder=3, label="paper" if k == 0 and xs else None)
    ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize=8)
    ax.set(xlabel="", title=title)
    ax.legend(fontsize=7, ncols=5)
    fig.tight_layout()
    return fig
