"""Studies: one recipe, several variants, several seeds; each run trained once and reused.

A study is how the notebooks produce every table: ``run_study(recipe, variants, seeds)`` trains
each (variant, seed) into a folder named by the hash of its resolved configuration
(``<work_dir>/<recipe>/seed<k>-<hash>/``) and returns one row per run. A run whose folder
already holds a ``metrics.json`` for the same configuration and the same library source is
reused: an interrupted study resumes, the same configuration in two studies (Table 1's CPRFL
is Table 2's ASL row) trains once, and notebook 06 gets notebook 04's runs without training.
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
# The modules whose code decides what a run computes; plotting, tables and notebooks do not retrain.
TRAINING_MODULES = ("backbones", "checkpoint", "datasets", "distributed", "engine", "factory", "features", "losses",
                    "metrics", "model", "optim", "recipes", "semantics", "semantics_clip", "semantics_words", "splits",
                    "synthetic", "synthetic_draw", "transforms")


@dataclass(frozen=True)
class Unavailable:
    reason: str


def source_digest() -> str:
    """A hash of the training code and the recipes: a change of either retrains."""
    h = hashlib.sha256()
    for path in sorted([*(SOURCE_DIR / f"{m}.py" for m in TRAINING_MODULES), *SOURCE_DIR.glob("recipes/*.yaml")]):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def run_config(recipe: str | dict, overrides: dict | None = None, seed: int = 0) -> dict:
    config = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    apply_overrides(config, overrides or {})
    return apply_overrides(config, {"train.seed": seed})


def run_dir_for(config: dict, work_dir: str | Path) -> Path:
    """``<work_dir>/<recipe>/<hash of the configuration>``: identical runs of different studies share one folder."""
    body = {k: v for k, v in config.items() if k != "description"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(work_dir) / slug(config["recipe"]) / f"seed{config['train']['seed']}-{digest}"


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
    planned: dict[tuple[str, int], str] = {}  # (variant, seed) -> run folder
    configs: dict[str, dict] = {}  # run folder -> configuration (one entry per distinct run)
    for name, variant in variants.items():
        if isinstance(variant, Unavailable):
            continue
        for seed in seeds:
            config = run_config(recipe, {**(base_overrides or {}), **variant}, seed)
            planned[(name, seed)] = run_dir = str(run_dir_for(config, work_dir))
            configs.setdefault(run_dir, config)
    jobs = [(config, run_dir, 1) for run_dir, config in configs.items()]
    results: dict[str, dict] = {}
    with tqdm(total=len(jobs), desc=study, disable=not progress) as bar:
        if workers > 1 and len(jobs) > 2:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            results[jobs[0][1]] = run_once(jobs[0][0], Path(jobs[0][1]))
            bar.update()
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                for job, metrics in zip(jobs[1:], pool.map(_run_job, jobs[1:])):
                    results[job[1]] = metrics
                    bar.update()
        else:
            for config, run_dir, _ in jobs:
                results[run_dir] = run_once(config, Path(run_dir))
                bar.update()

    rows = []
    for name, variant in variants.items():
        if isinstance(variant, Unavailable):
            rows.append({"variant": name, "seed": None, "status": f"not available: {variant.reason}"})
            continue
        for seed in seeds:
            run_dir = planned[(name, seed)]
            m = results[run_dir]
            last, best = m["last_epoch"]["model"], m["best_on_test"]
            rows.append({"variant": name, "seed": seed, "status": "ok", "dataset": m["dataset"], "run_dir": run_dir,
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
