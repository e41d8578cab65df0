"""The paper's tables rebuilt from our runs: our figures beside the paper's, in separate columns.

Every table built here has: our last-epoch figures (mean ± std over seeds), our best epoch
selected on the test set in its own, flagged column (what the official code reported), and
the paper's number for the same row. Which data produced "ours" goes into the caption.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cprfl_repro.reported import COLUMNS, avg_delta, paper_row
from cprfl_repro.tables import mean_std

BEST_FLAG = "best-on-test mAP †"
BEST_NOTE = ("† best epoch selected on the test set, as the official code reported: optimistic, shown only "
             "for comparison; the other columns are the last epoch")


def summarize(runs: pd.DataFrame, columns=COLUMNS, best: bool = False, prefix: str = "") -> pd.DataFrame:
    """Mean ± std over seeds per variant, in the variants' order; unavailable variants keep their reason.

    ``best``: the best-on-test columns; ``prefix`` "val_": the validation split's.
    """
    out = []
    for name, group in runs.groupby("variant", sort=False):
        ok = group[group["status"] == "ok"]
        row = {"variant": name, "seeds": str(len(ok))}
        for c in columns:
            row[c] = mean_std(ok[f"best_{c}" if best else f"{prefix}{c}"])
        row["note"] = "" if len(ok) else group["status"].iloc[0]
        out.append(row)
    return pd.DataFrame(out)


def means(runs: pd.DataFrame, columns=COLUMNS) -> pd.DataFrame:
    """Numeric mean and std over seeds per variant (for plots and deltas)."""
    ok = runs[runs["status"] == "ok"]
    stats = ok.groupby("variant", sort=False)[list(columns)].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    return stats


def study_metrics(runs: pd.DataFrame) -> dict:
    """What a notebook records of a study: each variant's mean figures over seeds, and the unavailable ones."""
    m = means(runs)
    out = {v: {c: round(float(m.loc[v, f"{c}_mean"]), 3) for c in COLUMNS} for v in m.index}
    out["_unavailable"] = {r.variant: r.status for r in runs.itertuples() if r.status != "ok"}
    return out


def compare_with_paper(runs: pd.DataFrame, paper_table: dict, family: str, paper_names: dict | None = None) -> pd.DataFrame:
    """One row per variant: ours (mean ± std), ours best-on-test (flagged), the paper's row of the same name."""
    ours = summarize(runs)
    best = summarize(runs, columns=("mAP",), best=True).set_index("variant")["mAP"]
    has_val = runs["val_mAP"].notna().any()
    val = summarize(runs, prefix="val_").set_index("variant") if has_val else None
    rows = []
    for _, r in ours.iterrows():
        name = r["variant"]
        paper = paper_row(paper_table, (paper_names or {}).get(name, name), family) or {}
        rows.append({"method": name, "seeds": r["seeds"],
                     **({f"ours val {c}": val.loc[name, c] for c in ("mAP", "tail")} if has_val else {}),
                     **{f"ours {c}": r[c] for c in COLUMNS}, f"ours {BEST_FLAG}": best.get(name, "n/a"),
                     **{f"paper {c}": paper.get(c, np.nan) for c in COLUMNS}, "note": r["note"]})
    return pd.DataFrame(rows)


def reported_only(paper_table: dict, family: str, exclude) -> pd.DataFrame:
    """The paper's other rows, marked as reported (copied by the paper from earlier work, not run here)."""
    rows = [{"method": name, **{f"paper {c}": v for c, v in paper_row(paper_table, name, family).items()},
             "note": "reported by the paper (from earlier work), not run here"}
            for name in paper_table if name not in set(exclude)]
    return pd.DataFrame(rows)


def with_avg_delta(runs: pd.DataFrame, paper_table: dict, family: str, baseline: str) -> pd.DataFrame:
    """Table 3: ours and the paper's avg.Δ (mean of the four column gains over the baseline) and total-mAP gain."""
    table = compare_with_paper(runs, paper_table, family)
    m = means(runs)
    paper_base = paper_row(paper_table, "Baseline", family)
    ours_delta, ours_gain, paper_delta, paper_gain = [], [], [], []
    for name in table["method"]:
        have = name in m.index and baseline in m.index
        row = {c: m.loc[name, f"{c}_mean"] for c in COLUMNS} if have else None
        base = {c: m.loc[baseline, f"{c}_mean"] for c in COLUMNS} if have else None
        ours_delta.append(avg_delta(row, base) if have and name != baseline else np.nan)
        ours_gain.append(row["mAP"] - base["mAP"] if have and name != baseline else np.nan)
        p = paper_row(paper_table, name, family)
        paper_delta.append(avg_delta(p, paper_base) if p and name != "Baseline" else np.nan)
        paper_gain.append(p["mAP"] - paper_base["mAP"] if p and name != "Baseline" else np.nan)
    return table.assign(**{"ours avg.Δ": ours_delta, "ours ΔmAP": ours_gain,
                           "paper avg.Δ": paper_delta, "paper ΔmAP": paper_gain})


def seed_spread(runs: pd.DataFrame, a: str, b: str, column: str = "mAP") -> dict:
    """How ``a`` compares with ``b`` over seeds: mean difference, its std, and per-seed wins."""
    ok = runs[runs["status"] == "ok"].pivot(index="seed", columns="variant", values=column)
    diff = (ok[a] - ok[b]).dropna()
    return {"mean_diff": float(diff.mean()), "std_diff": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
            "wins": int((diff > 0).sum()), "seeds": int(len(diff))}
