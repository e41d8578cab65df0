"""Studies: one recipe, several variants, several seeds; each run trained once and reused.

A study is how the notebooks produce every table: ``run_study(recipe, variants, seeds)`` trains
each (variant, seed) into ``<work_dir>/<study>/<variant>/seed<k>/`` and returns one row per
run. A run whose folder already holds a ``metrics.json`` for the same resolved configuration
and the same library source is reused, so an interrupted study resumes, and a later notebook
that needs the same run (e.g. the figures of notebook 06) gets it without training again.
A variant that cannot run on this machine (an encoder without weights) is passed as
``Unavailable(reason)`` and comes back as a row that says so.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from tqdm.auto import tqdm

from .engine import train
from .io import atomic_write_json
from .paper import COLUMNS
from .recipes import apply_overrides, dump, load_recipe
from .tables import mean_std

SOURCE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Unavailable:
    reason: str


def source_digest() -> str:
    """A hash of the library's code and recipes: a change of either retrains."""
    h = hashlib.sha256()
    for path in sorted([*SOURCE_DIR.glob("*.py"), *SOURCE_DIR.glob("recipes/*.yaml")]):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def run_config(recipe: str | dict, overrides: dict | None = None, seed: int = 0) -> dict:
    config = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    apply_overrides(config, overrides or {})
    return apply_overrides(config, {"train.seed": seed})


def run_once(config: dict, run_dir: Path, progress: bool = False) -> dict:
    """Train ``config`` into ``run_dir``; reuse a finished identical run, resume an interrupted one."""
    stamp = {"config": yaml.safe_load(dump(config)), "source": source_digest()}
    stamp_file, metrics_file = run_dir / "run.json", run_dir / "metrics.json"
    same = stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp
    if same and metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    if not same and run_dir.exists():  # another configuration or older code: start afresh
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp_file, stamp)
    return train(config, run_dir, resume=(run_dir / "checkpoint.pt").is_file(), progress=progress)


def _run_job(job: tuple[dict, str, int]) -> dict:
    """One run in a worker process (one thread each: two small runs in parallel beat one run on two threads)."""
    import torch

    config, run_dir, threads = job
    torch.set_num_threads(threads)
    return run_once(config, Path(run_dir))


def run_study(study: str, recipe: str | dict, variants: dict[str, dict | Unavailable], seeds, work_dir: str | Path,
              base_overrides: dict | None = None, progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """Train every (variant, seed); one row per run with last-epoch and best-on-test figures.

    With ``workers`` > 1 the runs go to that many processes of one thread each; the first run
    is made alone, so that the caches it fills (generated data, embeddings, backbone
    features) are complete before the others start.
    """
    jobs, results = [], {}
    for name, variant in variants.items():
        if isinstance(variant, Unavailable):
            continue
        for seed in seeds:
            config = run_config(recipe, {**(base_overrides or {}), **variant}, seed)
            jobs.append(((name, seed), (config, str(Path(work_dir) / slug(study) / slug(name) / f"seed{seed}"), 1)))
    bar = tqdm(total=len(jobs), desc=study, disable=not progress)
    if jobs:
        key, (config, run_dir, _) = jobs[0]
        results[key] = run_once(config, Path(run_dir))
        bar.update()
    rest = jobs[1:]
    if workers > 1 and len(rest) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for key, metrics in zip((k for k, _ in rest), pool.map(_run_job, (j for _, j in rest))):
                results[key] = metrics
                bar.update()
    else:
        for key, (config, run_dir, _) in rest:
            results[key] = run_once(config, Path(run_dir))
            bar.update()
    bar.close()

    rows = []
    for name, variant in variants.items():
        if isinstance(variant, Unavailable):
            rows.append({"variant": name, "seed": None, "status": f"not available: {variant.reason}"})
            continue
        for seed in seeds:
            m = results[(name, seed)]
            last, best = m["last_epoch"]["model"], m["best_on_test"]
            rows.append({"variant": name, "seed": seed, "status": "ok", "dataset": m["dataset"],
                         "run_dir": str(Path(work_dir) / slug(study) / slug(name) / f"seed{seed}"),
                         **{c: last[c] for c in COLUMNS}, **{f"best_{c}": best[c] for c in COLUMNS},
                         "best_epoch": best["epoch"], "wall_s": m["wall_s"]})
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame, columns=COLUMNS, best: bool = False) -> pd.DataFrame:
    """Mean ± std over seeds per variant, in the variants' order; unavailable variants keep their reason."""
    out = []
    for name, group in runs.groupby("variant", sort=False):
        ok = group[group["status"] == "ok"]
        row = {"variant": name, "seeds": str(len(ok))}
        for c in columns:
            row[c] = mean_std(ok[f"best_{c}" if best else c])
        row["note"] = "" if len(ok) else group["status"].iloc[0]
        out.append(row)
    return pd.DataFrame(out)


def means(runs: pd.DataFrame, columns=COLUMNS) -> pd.DataFrame:
    """Numeric mean and std over seeds per variant (for plots and deltas)."""
    ok = runs[runs["status"] == "ok"]
    stats = ok.groupby("variant", sort=False)[list(columns)].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    return stats
