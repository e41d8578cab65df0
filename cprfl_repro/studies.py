"""Studies: one recipe, several variants, several seeds; each run trained once and reused.

A study is how the notebooks produce every table. :func:`run_studies` trains each (variant,
seed) of several studies into a folder named by the hash of its resolved configuration
(``<work_dir>/<recipe>/seed<k>-<hash>/``, the run store) and returns one table of rows per study.
A run whose folder holds a ``metrics.json`` and a ``run.json`` stamp for the same configuration,
the same code (the library modules a run imports: :func:`run_modules`) and the same inputs (lists, images and
weight files, by content) is reused: an interrupted study resumes, the same configuration in
two studies (Table 1's CPRFL is Table 2's ASL row) trains once, and notebook 06 gets notebook
04's runs without training. A variant that cannot run on this machine (an encoder without
weights) is passed as ``Unavailable(reason)`` and comes back as a row that says so.

The distinct runs of all the studies a notebook hands over share one pool of worker processes
(one per GPU, or N one-thread processes on a CPU), longest first, so that the last runs end
together. Each finished run is announced in one line (variant, seed, mAP, minutes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping

import pandas as pd
import yaml

from cprfl_lib.digest import files_digest, import_closure
from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_write_json
from cprfl_lib.metrics import COLUMNS
from cprfl_lib.train.engine import prepare, train
from cprfl_lib.train.recipes import apply_overrides, dump, load_recipe
from cprfl_repro.children import stop_pids

LIBRARY = Path(__file__).resolve().parents[1] / "cprfl_lib"
RUN_ENTRY = ("cprfl_lib.train.engine",)  # what a run executes: the engine (train, prepare) and what it imports
PROGRESS_ENV = "CPRFL_PROGRESS"  # a file finished-run lines are appended to (make reproduce shows them)


@dataclass(frozen=True)
class Unavailable:
    reason: str


@dataclass(frozen=True)
class Study:
    """One table's runs as data: variants of a recipe, each trained once per seed, and the row(s) they are
    compared with.

    ``variants``: row label -> recipe overrides (a mapping of dotted keys or nested sections, as a SETTINGS file
    or :func:`cprfl_lib.train.recipes.apply_overrides` takes them), or :class:`Unavailable` (an encoder this
    machine lacks). ``overrides`` apply to every run before the variant's (the run context's: image root, list
    folder, OVERRIDES). ``reference``: the label of the row every other row is compared with, or a mapping row ->
    its reference row (rows it does not name are compared with nothing), or None. ``recipe`` None and ``seeds``
    () mean "the notebook's" (a study file that names neither); :func:`Study.bind` fills them.

    :meth:`config` is the one expansion (variant, seed) -> run configuration: the notebooks, the plan, the run
    store and tools/design.py all go through it.
    """

    recipe: str | dict | None
    variants: dict[str, dict | Unavailable]
    seeds: tuple[int, ...] = (0,)
    overrides: dict = field(default_factory=dict)
    reference: str | dict[str, str] | None = None

    def config(self, variant: str, seed: int) -> dict:
        """The run configuration of ``variant`` with ``seed``: the recipe, the study's overrides, the variant's.

        A variant that resolves to the recipe itself keeps its weights (``train.save_weights``): it is the same run
        as Table 1's CPRFL row, whose weights notebook 06 reads, trained once whichever study asks for it.
        """
        if self.recipe is None:
            raise CprflError(f"study variant {variant!r}: the study names no recipe (bind it to the notebook's)")
        over = self.variants[variant]
        if isinstance(over, Unavailable):
            raise CprflError(f"study variant {variant!r} cannot run here: {over.reason}")
        config = run_config(self.recipe, {**self.overrides, **over}, seed)
        if not config["train"]["save_weights"] and config == run_config(self.recipe, self.overrides, seed):
            config["train"]["save_weights"] = True
        return config

    def runs(self) -> Iterator[tuple[str, int, dict]]:
        """(variant, seed, configuration) of every run of the study, variants that cannot run here left out."""
        for name, over in self.variants.items():
            if not isinstance(over, Unavailable):
                for seed in self.seeds:
                    yield name, seed, self.config(name, seed)

    def reference_of(self, variant: str) -> str | None:
        """The row ``variant`` is compared with (None: none; its own label: it is a reference)."""
        if isinstance(self.reference, Mapping):
            return self.reference.get(variant, variant)
        return self.reference

    @property
    def compared_with(self) -> str | Callable[[str], str | None] | None:
        """The reference as :mod:`cprfl_repro.reports` takes it: a row label, or row -> its reference row."""
        return self.reference_of if isinstance(self.reference, Mapping) else self.reference

    def bind(self, recipe: str | dict, seeds, overrides: Mapping | None = None) -> "Study":
        """This study with the notebook's recipe and seeds where it names none, and ``overrides`` for every run."""
        return replace(self, recipe=self.recipe if self.recipe is not None else recipe,
                       seeds=tuple(self.seeds) if self.seeds else tuple(seeds), overrides=dict(overrides or {}))

    def describe(self) -> dict:
        """The study as plain data (for a manifest or a metrics file)."""
        return {"recipe": self.recipe if isinstance(self.recipe, (str, type(None))) else self.recipe.get("recipe"),
                "seeds": list(self.seeds), "reference": self.reference,
                "variants": {k: ({"not available": v.reason} if isinstance(v, Unavailable) else v)
                             for k, v in self.variants.items()}}


# ---------------------------------------------------------------- a study as a YAML file

STUDY_KEYS = {"name": "the table's name (default: the file's name)", "recipe": "optional: else the notebook's",
              "reference": "the row every other row is compared with, or row -> its reference row",
              "seeds": "optional: else the notebook's", "variants": "row label -> recipe overrides"}
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def read_study(path: str | os.PathLike) -> tuple[str, Study]:
    """A study file: (its name, the study, recipe and seeds possibly unset). The format::

        name: tau_fine            # optional: else the file's name; letters, digits, _ . -
        recipe: cpu-voc           # optional: a recipe name (or a recipe file, relative to this file)
        reference: tau=0.5        # a variant's label, or a mapping {row: the row it is compared with}
        seeds: [0, 1]             # optional: whole numbers >= 0
        variants:                 # at least one; a variant is a mapping of recipe overrides
          tau=0.25: {model.tau: 0.25}         # dotted keys ...
          gamma 2: {loss: {params: {gamma_neg: 2}}}   # ... or nested sections (or both)
          as is: {}                           # the recipe itself

    Refused with one line naming the file: an unknown key, no variants, a reference that is not a variant, seeds
    that are not whole numbers. Keys inside a variant are checked against the recipe when the study is bound
    (:func:`cprfl_repro.experiments.ablation_studies`).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CprflError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CprflError(f"study file {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(data, dict):
        raise CprflError(f"{path}: a study file is a mapping with the keys {', '.join(STUDY_KEYS)}")
    unknown = [k for k in data if k not in STUDY_KEYS]
    if unknown:
        raise CprflError(f"{path}: unknown key {unknown[0]!r} (a study file has: "
                         f"{'; '.join(f'{k}: {v}' for k, v in STUDY_KEYS.items())})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not STUDY_NAME.match(name):
        raise CprflError(f"{path}: name must be letters, digits, '_', '.' or '-' (it names the table's files), "
                         f"got {name!r}")
    recipe = data.get("recipe")
    if recipe is not None:
        if not isinstance(recipe, str) or not recipe:
            raise CprflError(f"{path}: recipe must be a recipe's name or a recipe file, got {recipe!r}")
        if recipe.endswith((".yaml", ".yml")):
            recipe = str((path.parent / recipe).resolve())
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise CprflError(f"{path}: seeds must be a list of distinct whole numbers >= 0, got {seeds!r}")
    variants = data.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise CprflError(f"{path}: variants must be a non-empty mapping of row label -> recipe overrides, "
                         f"got {variants!r}")
    out = {}
    for label, over in variants.items():
        if not isinstance(label, str) or not label.strip():
            raise CprflError(f"{path}: a variant's label must be a text, got {label!r}")
        over = {} if over is None else over
        if not isinstance(over, dict) or not all(isinstance(k, str) for k in over):
            raise CprflError(f"{path}: variant {label!r} must be a mapping of recipe overrides "
                             f"(e.g. {{model.tau: 0.25}}), got {over!r}")
        out[label] = over
    reference = data.get("reference")
    check_reference(reference, out, str(path))
    return name, Study(recipe, out, tuple(seeds or ()), {}, reference)


def check_reference(reference, variants: Mapping, where: str) -> None:
    """A reference names variants: one label, or a mapping of labels to labels."""
    labels = list(variants)
    if isinstance(reference, str):
        if reference not in variants:
            raise CprflError(f"{where}: reference {reference!r} is not one of its variants {labels}")
    elif isinstance(reference, dict) and reference:
        for row, ref in reference.items():
            for label in (row, ref):
                if label not in variants:
                    raise CprflError(f"{where}: reference {{{row!r}: {ref!r}}}: {label!r} is not one of its "
                                     f"variants {labels}")
    else:
        raise CprflError(f"{where}: reference must be one variant's label (the row every other row is compared "
                         f"with) or a mapping row -> reference row, got {reference!r}")


def run_modules() -> list[str]:
    """The library's source files a training run executes: the engine's modules and everything they import, lazily
    imported ones included (backbones, encoders, losses, the generator), relative to ``LIBRARY``'s parent. Not the
    CLI, the notebooks or the analysis modules; not the recipe files (a run's resolved configuration holds their
    values)."""
    return import_closure(LIBRARY.parent, RUN_ENTRY)


def source_digest() -> str:
    """A hash of the code a run executes (:func:`run_modules`, names and bytes). A change there retrains; an edit
    anywhere else in the library (the CLI, a recipe the run does not read) keeps every finished run."""
    return files_digest(LIBRARY.parent, run_modules())[:16]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def run_config(recipe: str | dict, overrides: dict | None = None, seed: int = 0) -> dict:
    config = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    return apply_overrides(config, {**(overrides or {}), "train.seed": seed})


def run_dir_for(config: dict, work_dir: str | Path) -> Path:
    """``<work_dir>/<recipe>/<hash of the configuration>``: identical runs of different studies share one folder."""
    body = {k: v for k, v in config.items() if k != "description"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(work_dir) / slug(config["recipe"]) / f"seed{config['train']['seed']}-{digest}"


_inputs_memo: dict[str, dict] = {}


def inputs_fingerprint(config: dict) -> dict:
    """What the run reads besides its configuration and code, by content (memoised per data and weights)."""
    from cprfl_lib.train import factory

    memo = json.dumps({k: config[k] for k in ("data", "semantics")} | {"model": config["model"]["backbone_weights"],
                                                                       "head": config["model"]["head"]},
                      sort_keys=True, default=str)
    if memo not in _inputs_memo:
        _inputs_memo[memo] = factory.inputs_fingerprint(config, factory.benchmark_from(config))
    return _inputs_memo[memo]


def _stamped(config: dict) -> dict:
    """The configuration as a stamp holds it: without its description (a recipe's prose changes no result)."""
    return yaml.safe_load(dump({k: v for k, v in config.items() if k != "description"}))


def stamp(config: dict) -> dict:
    """What a run folder's run.json must hold for its run to be reused: configuration, code and inputs."""
    return {"config": _stamped(config), "source": source_digest(), "inputs": inputs_fingerprint(config)}


def _same_stamp(run_dir: Path, config: dict) -> bool:
    stamp_file = run_dir / "run.json"
    if not stamp_file.is_file():
        return False
    stored = json.loads(stamp_file.read_text())
    cheap = {"config": _stamped(config), "source": source_digest()}
    return all(stored.get(k) == v for k, v in cheap.items()) and stored.get("inputs") == inputs_fingerprint(config)


def finished(config: dict, run_dir: Path) -> dict | None:
    """The metrics of a finished run of ``config`` with the current code and inputs in ``run_dir``, else None."""
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file() and _same_stamp(run_dir, config):
        return json.loads(metrics_file.read_text())
    return None


def start_run(config: dict, run_dir: Path) -> None:
    """Make ``run_dir`` the folder of ``config``: another configuration's or older code's run there is removed."""
    if run_dir.exists() and not _same_stamp(run_dir, config):
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", stamp(config))


def run_once(config: dict, run_dir: Path, progress: bool = False) -> dict:
    """Train ``config`` into ``run_dir``; reuse a finished identical run, resume an interrupted one."""
    done = finished(config, run_dir)
    if done is not None:
        return done
    start_run(config, run_dir)
    return train(config, run_dir, resume=True, progress=progress)


def _run_job(job: tuple[dict, str]) -> dict:
    config, run_dir = job
    return run_once(config, Path(run_dir))


_WORKER_GPU: int | None = None  # the GPU this pool process trains on (set by _init_worker)


def _init_worker(gpu_ids, threads: int | None, concurrent: int = 1, pids=None) -> None:
    """A pool process: its own GPU, taken from ``gpu_ids`` (a queue holding one id per pool process), or its share
    of the CPU threads; and its share of the loader workers (``concurrent`` runs train side by side). It reports its
    pid to ``pids`` (a queue), by which the pool stops it."""
    global _WORKER_GPU
    from cprfl_lib.cpus import CONCURRENT_RUNS_ENV, set_torch_threads

    if pids is not None:
        pids.put(os.getpid())
    os.environ[CONCURRENT_RUNS_ENV] = str(max(1, concurrent))
    if gpu_ids is not None:
        import torch

        _WORKER_GPU = gpu_ids.get(timeout=60)
        torch.cuda.set_device(_WORKER_GPU)
    set_torch_threads(threads)


ROW_COLUMNS = ["variant", "seed", "status", "dataset", "run_dir", *COLUMNS, *(f"val_{c}" for c in COLUMNS),
               *(f"best_{c}" for c in COLUMNS), "best_epoch", "wall_s"]


def cache_key(config: dict) -> str:
    """What decides the caches a run reads: generated data, class embeddings, decoded images, backbone features."""
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


def pool_size(workers: int | str) -> tuple[int, list[int]]:
    """(processes, GPU ids): ``auto`` = one process per visible GPU, else one; a number = that many."""
    import torch

    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    if workers == "auto":
        return max(1, len(gpus)), gpus
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise CprflError(f"workers must be a whole number >= 1 or 'auto', got {workers!r}")
    return workers, gpus


def announce(line: str) -> None:
    """One line for a finished run: printed, and appended to $CPRFL_PROGRESS (what make reproduce shows)."""
    print(line, flush=True)
    target = os.environ.get(PROGRESS_ENV)
    if target:
        with open(target, "a") as fh:
            fh.write(line + "\n")


def run_studies(studies: dict[str, Study], work_dir: str | Path, progress: bool = True,
                workers: int | str = 1, label: str = "") -> dict[str, pd.DataFrame]:
    """Train every (variant, seed) of several studies together; one table of rows per study.

    A configuration that several studies share trains once; a finished one is reused. With more
    than one worker the caches the runs read are filled first, in this process (each distinct data /
    semantics / backbone once); then the runs go to the pool, the most expensive first.
    """
    planned: dict[tuple[str, str, int], str] = {}  # (study, variant, seed) -> run folder
    configs: dict[str, dict] = {}  # run folder -> configuration (one entry per distinct run)
    names: dict[str, str] = {}  # run folder -> "variant, seed k" for the progress lines
    for study_name, study in studies.items():
        for name, seed, config in study.runs():
            planned[(study_name, name, seed)] = run_dir = str(run_dir_for(config, work_dir))
            configs.setdefault(run_dir, config)
            names.setdefault(run_dir, f"{name}, seed {seed}")
    results = {d: m for d, c in configs.items() if (m := finished(c, Path(d))) is not None}
    todo = {d: c for d, c in configs.items() if d not in results}
    if progress and configs:
        announce(f"{label + ': ' if label else ''}{len(configs)} distinct runs, {len(results)} finished earlier, "
                 f"{len(todo)} to train")

    def done(run_dir: str, metrics: dict, seconds: float) -> None:
        results[run_dir] = metrics
        if progress:
            split, key = ("test", "last_epoch") if "last_epoch" in metrics else ("val", "val_last_epoch")
            m = metrics[key]["model"]["mAP"]
            announce(f"  {label + ': ' if label else ''}{names[run_dir]}: {split} mAP {m:.2f} ({seconds / 60:.1f} min) "
                     f"[{len(results) - (len(configs) - len(todo))}/{len(todo)}]")

    n, gpus = pool_size(workers)
    if n > 1 and len(todo) > 1:
        _train_in_parallel(todo, n, gpus, progress, done)
    else:
        for run_dir, config in todo.items():
            start = time.time()
            done(run_dir, run_once(config, Path(run_dir), progress=progress and sys.stderr.isatty()),
                 time.time() - start)
    return {name: _rows(name, study, planned, results) for name, study in studies.items()}


def _train_in_parallel(configs: dict[str, dict], workers: int, gpus: list[int], progress: bool, done) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    keys = {d: cache_key(c) for d, c in configs.items()}
    sizes = {}
    for run_dir, key in keys.items():  # each distinct set of caches filled once, here, before the workers start
        if key not in sizes:
            sizes[key] = prepare(configs[run_dir], progress=progress)
    order = sorted(configs, key=lambda d: expected_cost(configs[d], sizes[keys[d]]), reverse=True)
    ctx = mp.get_context("spawn")
    # one thread each on a CPU (two small runs in parallel beat one run on two threads)
    threads = None if gpus else 1
    n = min(workers, len(order))
    gpu_ids = None
    if gpus:  # one id per pool process, handed out as each starts (no private process attributes)
        gpu_ids = ctx.Queue()
        for i in range(n):
            gpu_ids.put(gpus[i % len(gpus)])
    pids = ctx.Queue()  # each pool process puts its pid as it starts: the executor lists its processes nowhere
    pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(gpu_ids, threads, n, pids))
    try:
        started = {}
        futures = {}
        for d in order:  # started in submission order
            started[d] = time.time()
            futures[pool.submit(_run_job, (configs[d], d))] = d
        for future in as_completed(futures):
            run_dir = futures[future]
            try:
                metrics = future.result()
            except CprflError as exc:
                raise CprflError(f"run {run_dir}: {exc}") from exc
            # the run's own time in its worker (time since submission would count its wait in the queue)
            done(run_dir, metrics, metrics.get("wall_s", time.time() - started[run_dir]))
    except BaseException:  # a failed run or an interrupt: drop the queued runs and stop the running ones (their
        # checkpoints are atomic: the next call resumes them); else the pool would train them to the end first
        pool.shutdown(wait=False, cancel_futures=True)
        stop_pids(_reported(pids, n, wait=60), timeout=30)  # with their loader workers
        raise
    pool.shutdown()


def _reported(pids, n: int, wait: float) -> list[int]:
    """The pids of the ``n`` pool processes (all started by the submissions), as they reported them; one still
    starting (it would take a queued run) is waited for, up to ``wait`` seconds in all."""
    import queue

    found, deadline = [], time.monotonic() + wait
    while len(found) < n:
        try:
            found.append(pids.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            break
    return found


def _metric(m: dict | None, key: str) -> float:
    return float("nan") if not m else m.get(key, float("nan"))


def _rows(study_name: str, study: Study, planned: dict, results: dict) -> pd.DataFrame:
    rows = []
    for name, variant in study.variants.items():
        if isinstance(variant, Unavailable):
            rows.append({"variant": name, "seed": None, "status": f"not available: {variant.reason}"})
            continue
        for seed in study.seeds:
            run_dir = planned[(study_name, name, seed)]
            m = results[run_dir]
            last, best = (m.get("last_epoch") or {}).get("model"), m.get("best_on_test")  # no test: a design run
            val = (m.get("val_last_epoch") or {}).get("model")
            rows.append({"variant": name, "seed": seed, "status": "ok", "dataset": m["dataset"], "run_dir": run_dir,
                         **{c: _metric(last, c) for c in COLUMNS}, **{f"val_{c}": _metric(val, c) for c in COLUMNS},
                         **{f"best_{c}": _metric(best, c) for c in COLUMNS},
                         "best_epoch": best["epoch"] if best else None, "wall_s": m["wall_s"]})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)  # the same columns when no variant could run


def run_study(study: str, recipe: str | dict, variants: dict[str, dict | Unavailable], seeds, work_dir: str | Path,
              base_overrides: dict | None = None, progress: bool = True, workers: int | str = 1) -> pd.DataFrame:
    """One study on its own: :func:`run_studies` with a single entry."""
    return run_studies({study: Study(recipe, variants, tuple(seeds), dict(base_overrides or {}))}, work_dir, progress,
                       workers)[study]


def _seed_of(folder: Path) -> int | None:
    seed = folder.name.split("-", 1)[0][4:]
    return int(seed) if seed.isdigit() else None


def finished_seeds(work_dir: str | Path, study: Study, variant: str) -> list[Path]:
    """Every seed's run folder of ``variant`` of ``study`` in the run store that finished with the current code."""
    parent = run_dir_for(study.config(variant, 0), work_dir).parent
    found = []
    for folder in parent.glob("seed*-*"):
        seed = _seed_of(folder)
        if seed is None:
            continue
        config = study.config(variant, seed)
        if run_dir_for(config, work_dir) == folder and finished(config, folder) is not None:
            found.append(folder)
    return sorted(found, key=_seed_of)


def seeds_of(runs: pd.DataFrame, work_dir: str | Path, study: Study) -> dict[str, list[Path]]:
    """Per available variant of ``study``: its run folders in ``runs`` plus every other finished seed of it."""
    ok = runs[runs["status"] == "ok"]
    out = {}
    for label, variant in study.variants.items():
        if isinstance(variant, Unavailable):
            continue
        shown = {Path(d) for d in ok[ok["variant"] == label]["run_dir"]}
        out[label] = sorted(shown | set(finished_seeds(work_dir, study, label)), key=_seed_of)
    return out
