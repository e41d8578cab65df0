"""What did my change do: a variant's rows beside the reference profile's own runs of them.

A named variant (``make reproduce NAME=x SETTINGS=...``, or a notebook run by hand with overrides)
trains its studies with the user's changes. The reference profile's runs of the same studies are
found in the run store by their configuration (the same study expansion, without the changes:
:meth:`RunContext.reference`); nothing is trained for them. Each row then gives the reference's
number, the variant's, and the difference with its 95 % interval: a paired bootstrap over the
test images (the same draws for both runs) and over the seeds both have (:mod:`cprfl_repro.stats`),
only where both runs scored the same test images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cprfl_lib.errors import CprflError
from cprfl_repro.stats import Bootstrap
from cprfl_repro.studies import Study, Unavailable, finished, run_config, run_dir_for

COLUMNS = ("mAP", "tail")
NOTE = ("Δ [95 % CI]: this variant minus the reference profile's run of the same row (found in the run store by its "
        "configuration, not retrained), seed means over the seeds both have; the interval is a paired bootstrap over "
        "the test images and the seeds (1000 draws)")
MISSING = "not in the run store"


def _last(metrics: dict, column: str) -> float:
    return float(((metrics.get("last_epoch") or {}).get("model") or {}).get(column, float("nan")))


def _targets(run_dir: str | Path) -> np.ndarray | None:
    path = Path(run_dir) / "predictions.npz"
    if not path.is_file():
        return None
    with np.load(path) as npz:
        return npz["targets"] if "targets" in npz else None


def reference_runs(study: Study, label: str, seeds, work_dir: str | Path) -> dict[int, tuple[str, dict]]:
    """{seed: (run folder, metrics)} of the finished runs of ``study``'s ``label`` row in the run store."""
    variant = study.variants.get(label)
    if variant is None or isinstance(variant, Unavailable):
        return {}
    out = {}
    for seed in seeds:
        # the study's own expansion where it has one (Study.config), else the same arithmetic
        config = (study.config(label, seed) if callable(getattr(study, "config", None))
                  else run_config(study.recipe, {**study.overrides, **variant}, seed))
        folder = run_dir_for(config, work_dir)
        metrics = finished(config, folder)
        if metrics is not None and "last_epoch" in metrics:
            out[seed] = (str(folder), metrics)
    return out


def versus_reference(runs: pd.DataFrame, reference: Study, work_dir: str | Path, label: str = "reference",
                     columns=COLUMNS) -> pd.DataFrame:
    """One study's rows (``runs``, as :func:`studies.run_studies` returns them) beside ``reference`` (the same study
    without the variant's changes): per row, the reference's and the variant's seed means and the difference with
    its paired-bootstrap interval."""
    ok = runs[runs["status"] == "ok"]
    boot = None
    rows = []
    for name in dict.fromkeys(runs["variant"]):
        mine = {int(r.seed): (str(r.run_dir), json.loads((Path(r.run_dir) / "metrics.json").read_text()))
                for r in ok[ok["variant"] == name].itertuples()}
        row = {"variant": name}
        if not mine:
            status = runs[runs["variant"] == name]["status"].iloc[0]
            rows.append({**row, "seeds": 0, "note": status})
            continue
        theirs = reference_runs(reference, name, sorted(mine), work_dir)
        seeds = sorted(set(mine) & set(theirs))
        row["seeds"] = len(seeds)
        for c in columns:
            row[f"{label} {c}"] = np.mean([_last(theirs[s][1], c) for s in seeds]) if seeds else np.nan
            row[c] = np.mean([_last(mine[s][1], c) for s in (seeds or sorted(mine))])
            row[f"Δ {c} [95 % CI]"] = ""
        if not seeds:
            rows.append({**row, "note": f"the reference run is {MISSING}"})
            continue
        a, b = [mine[s][0] for s in seeds], [theirs[s][0] for s in seeds]
        if a == b:
            rows.append({**row, **{f"Δ {c} [95 % CI]": "+0.00 (the same run)" for c in columns}, "note": ""})
            continue
        targets = _targets(a[0])
        same_images = targets is not None and all(
            (t := _targets(d)) is not None and np.array_equal(t, targets) for d in a + b)
        if not same_images:
            for c in columns:
                row[f"Δ {c} [95 % CI]"] = f"{row[c] - row[f'{label} {c}']:+.2f}"
            rows.append({**row, "note": "other test images: no paired interval"})
            continue
        if boot is None or not np.array_equal(boot.targets, targets):
            with np.load(Path(a[0]) / "predictions.npz") as npz:
                boot = Bootstrap(npz["targets"], npz["train_counts"])
        for c in columns:
            try:
                row[f"Δ {c} [95 % CI]"] = str(boot.compare(a, b, c, point=row[c] - row[f"{label} {c}"]))
            except CprflError as exc:  # a run scored on other images than its predictions say: no interval
                row[f"Δ {c} [95 % CI]"] = f"{row[c] - row[f'{label} {c}']:+.2f}"
                row["note"] = str(exc)
        rows.append({"note": "", **row})
    order = ["variant", "seeds", *(k for c in columns for k in (f"{label} {c}", c, f"Δ {c} [95 % CI]")), "note"]
    table = pd.DataFrame(rows).reindex(columns=order)
    for c in columns:
        table[[f"{label} {c}", c]] = table[[f"{label} {c}", c]].astype(float).round(2)
    return table


def versus_reference_all(plan: dict[str, Study], reference_plan: dict[str, Study], results: dict[str, pd.DataFrame],
                         work_dir: str | Path, label: str = "reference") -> dict[str, pd.DataFrame]:
    """:func:`versus_reference` for every study of ``plan`` that the reference plan has too."""
    return {name: versus_reference(results[name], reference_plan[name], work_dir, label)
            for name in plan if name in reference_plan and name in results}
