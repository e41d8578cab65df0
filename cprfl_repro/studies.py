"""Studies: one recipe, several variants, several seeds; each run trained once and reused.

A study is how the notebooks produce every table: ``run_study(recipe, variants, seeds)`` trains
each (variant, seed) into a folder named by the hash of its resolved configuration
(``<work_dir>/<recipe>/seed<k>-<hash>/``) and returns one row per run. A run whose folder
already holds a ``metrics.json`` for the same configuration and the same library source is
reused: an interrupted study resumes, the same configuration in two studies (Table 1's CPRFL
is Table 2's ASL row) trains once, and notebook 06 gets notebook 04's runs without training.
A variant that cannot run on this machine (an encoder without weights) is passed as
``Unavailable(reason)`` and comes back as a row that says so.

A notebook hands all its studies to :func:`run_studies` at once: the distinct runs of every
table then share one pool of worker processes, longest first, which keeps both cores busy to
the end instead of waiting, table after table, for each one's slowest run.
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

from cprfl_lib.train.engine import prepare, train
from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_write_json
from cprfl_repro.reported import COLUMNS
from cprfl_lib.train.recipes import apply_overrides, dump, load_recipe
from cprfl_repro.tables import mean_std

SOURCE_DIR = Path(__file__).resolve().parents[1] / "cprfl_lib"
# The modules whose code decides what a run computes; plotting, tables and notebooks do not retrain.
TRAINING_MODULES = ("backbones", "train/checkpoint", "data/datasets", "train/distributed", "train/engine",
                    "train/factory", "train/features", "losses", "metrics", "model", "train/optim", "train/recipes",
                    "semantics/__init__", "semantics/clip", "semantics/words", "data/lists", "data/synthetic",
                    "data/synthetic_draw", "data/transforms")


@dataclass(frozen=True)
class Unavailable:
    reason: str


def source_digest() -> str:
    """A hash of the training code and the recipes: a change of either retrains."""
    h = hashlib.sha256()
    for path in sorted([*(SOURCE_DIR / f"{m}.py" for m in TRAINING_MODULES), *SOURCE_DIR.glob("train/recipes/*.yaml")]):
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


def _stamp(config: dict) -> dict:
    """What a run folder's run.json must hold for its run to be reused: the configuration and the code."""
    return {"config": yaml.safe_load(dump(config)), "source": source_digest()}


def _has_stamp(run_dir: Path, stamp: dict) -> bool:
    stamp_file = run_dir / "run.json"
    return stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp


def finished(config: dict, run_dir: Path) -> dict | None:
    """The metrics of a finished run of ``config`` with the current code in ``run_dir``, else None."""
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file() and _has_stamp(run_dir, _stamp(config)):
        return json.loads(metrics_file.read_text())
    return None


def run_once(config: dict, run_dir: Path, progress: bool = False) -> dict:
    """Train ``config`` into ``run_dir``; reuse a finished identical run, resume an interrupted one."""
    stamp = _stamp(config)
    same, metrics_file = _has_stamp(run_dir, stamp), run_dir / "metrics.json"
    if same and metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    if not same and run_dir.exists():  # another configuration or older code: start afresh
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", stamp)
    return train(config, run_dir, resume=(run_dir / "checkpoint.pt").is_file(), progress=progress)


def _run_job(job: tuple[dict, str]) -> dict:
    """One run in a worker process (one thread each: two small runs in parallel beat one run on two threads)."""
    import torch

    config, run_dir = job
    torch.set_num_threads(1)
    return run_once(config, Path(run_dir))


ROW_COLUMNS = ["variant", "seed", "status", "dataset", "run_dir", *COLUMNS, *(f"best_{c}" for c in COLUMNS),
               "best_epoch", "wall_s"]


@dataclass(frozen=True)
class Study:
    """What one table needs: variants of a recipe (overrides, or ``Unavailable``), each trained once per seed."""

    recipe: str | dict
    variants: dict[str, dict | Unavailable]
    seeds: tuple[int, ...] = (0,)


def cache_key(config: dict) -> str:
    """What decides the caches a run reads: generated data, class embeddings and backbone features."""
    m = config["model"]
    parts = {"data": config["data"], "cache_features": config["train"]["cache_features"],
             "backbone": [m["backbone"], m["backbone_weights"], m["freeze_backbone"]], "device": config["train"]["device"],
             # only the CPRFL head reads class embeddings: a linear run must not stand in for it
             "semantics": config["semantics"] if m["head"] == "cprfl" else None}
    return json.dumps(parts, sort_keys=True, default=str)


def expected_cost(config: dict, sizes: dict) -> float:
    """A run's training cost in rough relative units, only to start the longest runs first."""
    m = config["model"]
    per_image = 1.0  # a linear head on pooled features
    if m["head"] == "cprfl":  # every visual token and class prompt goes through each VSI layer
        per_image = ((sizes["tokens"] or 16) + sizes["classes"]) * m["depth"]
    if not sizes["cached_features"]:  # the backbone's forward and backward dominate everything else
        per_image *= 100
    return sizes["train_images"] * config["optim"]["epochs"] * per_image


def run_studies(studies: dict[str, Study], work_dir: str | Path, base_overrides: dict | None = None,
                progress: bool = True, workers: int = 1) -> dict[str, pd.DataFrame]:
    """Train every (variant, seed) of several studies together; one table of rows per study.

    A configuration that several studies share trains once; a finished one is reused. With
    ``workers`` > 1 the caches the runs read are filled first, in this process with all its
    threads (each distinct data / semantics / backbone once); then the runs go to that many
    one-thread processes, the most expensive first, so that the last runs end together.
    """
    planned: dict[tuple[str, str, int], str] = {}  # (study, variant, seed) -> run folder
    configs: dict[str, dict] = {}  # run folder -> configuration (one entry per distinct run)
    for study_name, study in studies.items():
        for name, variant in study.variants.items():
            if isinstance(variant, Unavailable):
                continue
            for seed in study.seeds:
                config = run_config(study.recipe, {**(base_overrides or {}), **variant}, seed)
                planned[(study_name, name, seed)] = run_dir = str(run_dir_for(config, work_dir))
                configs.setdefault(run_dir, config)
    results = {d: m for d, c in configs.items() if (m := finished(c, Path(d))) is not None}
    todo = {d: c for d, c in configs.items() if d not in results}
    with tqdm(total=len(todo), desc=", ".join(studies), disable=not progress or not todo) as bar:
        if workers > 1 and len(todo) > 1:
            results.update(_train_in_parallel(todo, workers, bar, progress))
        else:
            for run_dir, config in todo.items():
                results[run_dir] = run_once(config, Path(run_dir))
                bar.update()
    return {name: _rows(name, study, planned, results) for name, study in studies.items()}


def _train_in_parallel(configs: dict[str, dict], workers: int, bar, progress: bool) -> dict[str, dict]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    keys = {d: cache_key(c) for d, c in configs.items()}
    sizes = {}
    for run_dir, key in keys.items():  # each distinct set of caches filled once, here, before the workers start
        if key not in sizes:
            sizes[key] = prepare(configs[run_dir], progress=progress)
    order = sorted(configs, key=lambda d: expected_cost(configs[d], sizes[keys[d]]), reverse=True)
    results = {}
    pool = ProcessPoolExecutor(min(workers, len(order)), mp_context=mp.get_context("spawn"))
    try:
        futures = {pool.submit(_run_job, (configs[d], d)): d for d in order}  # started in submission order
        for future in as_completed(futures):
            run_dir = futures[future]
            try:
                results[run_dir] = future.result()
            except CprflError as exc:
                raise CprflError(f"run {run_dir}: {exc}") from exc
            bar.update()
    except BaseException:  # a failed run or an interrupt: drop the queued runs instead of training them first
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def _rows(study_name: str, study: Study, planned: dict, results: dict) -> pd.DataFrame:
    rows = []
    for name, variant in study.variants.items():
        if isinstance(variant, Unavailable):
            rows.append({"variant": name, "seed": None, "status": f"not available: {variant.reason}"})
            continue
        for seed in study.seeds:
            run_dir = planned[(study_name, name, seed)]
            m = results[run_dir]
            last, best = m["last_epoch"]["model"], m["best_on_test"]
            rows.append({"variant": name, "seed": seed, "status": "ok", "dataset": m["dataset"], "run_dir": run_dir,
                         **{c: last[c] for c in COLUMNS}, **{f"best_{c}": best[c] for c in COLUMNS},
                         "best_epoch": best["epoch"], "wall_s": m["wall_s"]})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)  # the same columns when no variant could run


def run_study(study: str, recipe: str | dict, variants: dict[str, dict | Unavailable], seeds, work_dir: str | Path,
              base_overrides: dict | None = None, progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """One study on its own: :func:`run_studies` with a single entry."""
    return run_studies({study: Study(recipe, variants, tuple(seeds))}, work_dir, base_overrides, progress,
                       workers)[study]


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
