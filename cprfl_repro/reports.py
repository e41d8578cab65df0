"""The paper's tables rebuilt from our runs: our figures beside the paper's, in separate columns.

Every table built here has: our last-epoch figures (mean ± std over seeds) on the validation
split (where there is one) beside the test split, our best epoch selected on the test set in its
own, flagged column (what the official code reported), each comparison's difference with a 95 %
interval (a paired bootstrap over test images combined over seeds, :mod:`cprfl_repro.stats`), and
the paper's number for the same row. Which data produced "ours" goes into the caption.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cprfl_repro.reported import COLUMNS, avg_delta, paper_row
from cprfl_repro.stats import Bootstrap
from cprfl_repro.tables import mean_std

CI_COLUMNS = ("mAP", "tail")  # the differences given with an interval
CI_NOTE = ("Δ [95 % CI]: the difference of the seed means on the test split, with the 2.5-97.5 % range of a paired "
           "bootstrap over test images and seeds (1,000 replicates)")

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


def _run_dirs(runs: pd.DataFrame, variant: str) -> dict[int, str]:
    ok = runs[(runs["status"] == "ok") & (runs["variant"] == variant)]
    return dict(zip(ok["seed"].astype(int), ok["run_dir"]))


def _bootstrap(runs: pd.DataFrame) -> Bootstrap | None:
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return None
    with np.load(f"{ok['run_dir'].iloc[0]}/predictions.npz") as npz:
        if "targets" not in npz:  # runs that evaluated no test split (design studies): nothing to resample
            return None
        thresholds = npz["group_thresholds"].tolist() if "group_thresholds" in npz else None
        return Bootstrap(npz["targets"], npz["train_counts"], thresholds=thresholds)


def intervals(runs: pd.DataFrame, reference, reverse: bool = False, columns=CI_COLUMNS) -> dict[str, dict[str, str]]:
    """Per variant: its difference from ``reference`` (a variant name, or variant -> name) in each column, as
    'Δ [low, high]' over the seeds both have; ``reverse``: reference minus variant. Empty where there is nothing
    to compare (the reference itself, a variant that could not run)."""
    boot = _bootstrap(runs)
    out: dict[str, dict[str, str]] = {}
    for name in runs["variant"].unique():
        ref = reference(name) if callable(reference) else reference
        a, b = _run_dirs(runs, name), _run_dirs(runs, ref)
        seeds = sorted(set(a) & set(b))
        if boot is None or name == ref or not seeds:
            out[name] = {c: "" for c in columns}
            continue
        x, y = [a[k] for k in seeds], [b[k] for k in seeds]
        if reverse:
            x, y = y, x
        out[name] = {c: str(boot.compare(x, y, c, point=_seed_mean_diff(runs, x, y, c))) for c in columns}
    return out


def _seed_mean_diff(runs: pd.DataFrame, a: list, b: list, column: str) -> float:
    by_dir = runs.set_index("run_dir")[column]
    return float(np.mean([by_dir[d] for d in a]) - np.mean([by_dir[d] for d in b]))


def interval_columns(runs: pd.DataFrame, reference, reverse: bool = False) -> dict[str, list[str]]:
    """:func:`intervals` as table columns in the variants' order, named after the comparison."""
    what = "{ref} − row" if reverse else "row − {ref}"
    label = what.format(ref=reference if isinstance(reference, str) else "reference")
    found = intervals(runs, reference, reverse)
    names = list(runs["variant"].unique())
    return {f"{label}: Δ {c} [95 % CI]": [found[n][c] for n in names] for c in CI_COLUMNS}


def compare_with_paper(runs: pd.DataFrame, paper_table: dict, family: str, paper_names: dict | None = None,
                       reference=None, reverse: bool = False) -> pd.DataFrame:
    """One row per variant: ours on validation and test (mean ± std), ours best-on-test (flagged), the difference
    from ``reference`` with its interval (see :func:`interval_columns`), the paper's row of the same name (none
    when ``paper_table`` is None: a user's own dataset has no paper numbers)."""
    ours = summarize(runs)
    best = summarize(runs, columns=("mAP",), best=True).set_index("variant")["mAP"]
    has_val = runs["val_mAP"].notna().any()
    val = summarize(runs, prefix="val_").set_index("variant") if has_val else None
    deltas = interval_columns(runs, reference, reverse) if reference is not None else {}
    rows = []
    for i, (_, r) in enumerate(ours.iterrows()):
        name = r["variant"]
        paper = paper_row(paper_table, (paper_names or {}).get(name, name), family) or {} if paper_table else None
        rows.append({"method": name, "seeds": r["seeds"],
                     **({f"ours val {c}": val.loc[name, c] for c in ("mAP", "tail")} if has_val else {}),
                     **{f"ours {c}": r[c] for c in COLUMNS}, **{k: v[i] for k, v in deltas.items()},
                     f"ours {BEST_FLAG}": best.get(name, "n/a"),
                     **({f"paper {c}": paper.get(c, np.nan) for c in COLUMNS} if paper is not None else {}),
                     "note": r["note"]})
    return pd.DataFrame(rows)


NO_VAL_NOTE = ("no validation split (val.txt / val.json): any choice made on these test figures (an epoch, a "
               "setting, a method) is optimistic")


def own_notes(runs: pd.DataFrame) -> list[str]:
    """What a table on a user's own dataset says beside the usual notes: whether choices can be made on validation."""
    return [] if runs["val_mAP"].notna().any() else [NO_VAL_NOTE]


def study_table(runs: pd.DataFrame, reference=None, extra: dict | None = None) -> pd.DataFrame:
    """A study the paper does not report: ours on validation and test, differences from ``reference`` with their
    intervals, and ``extra`` columns (variant -> value)."""
    table = summarize(runs)
    if runs["val_mAP"].notna().any():
        val = summarize(runs, prefix="val_").set_index("variant")
        for i, c in enumerate(("mAP", "tail")):
            table.insert(2 + i, f"val {c}", [val.loc[v, c] for v in table["variant"]])
    for name, values in (extra or {}).items():
        table[name] = [values.get(v, np.nan) for v in table["variant"]]
    if reference is not None:
        for k, v in interval_columns(runs, reference).items():
            table[k] = v
    return table


def reported_only(paper_table: dict, family: str, exclude) -> pd.DataFrame:
    """The paper's other rows, marked as reported (copied by the paper from earlier work, not run here)."""
    rows = [{"method": name, **{f"paper {c}": v for c, v in paper_row(paper_table, name, family).items()},
             "note": "reported by the paper (from earlier work), not run here"}
            for name in paper_table if name not in set(exclude)]
    return pd.DataFrame(rows)


def with_avg_delta(runs: pd.DataFrame, paper_table: dict, family: str, baseline: str) -> pd.DataFrame:
    """Table 3: ours and the paper's avg.Δ (mean of the four column gains over the baseline) and total-mAP gain;
    each row's difference from the baseline with its interval."""
    table = compare_with_paper(runs, paper_table, family, reference=baseline)
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
