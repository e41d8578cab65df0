"""The plan of a reproduction, printed before anything trains: runs, hours and disk.

:func:`make_plan` lists the distinct runs notebooks 04-06 will train with a profile's
parameters (the very studies the notebooks build, :mod:`cprfl_repro.experiments`), and for each
its epochs and images, its floating-point work (counted by torch's FLOP counter on the meta
device: no memory, no weights, a second per architecture) and the disk it leaves. The hours
come from that work and a measured rate: on a GPU the seconds per step of the paper model after
a few warm-up steps; on a CPU a matrix-multiply probe (nothing is trained). The disk counts the
decoded-image caches, the weights kept, the predictions and the checkpoints in flight.

:func:`write_commands` writes the plan as one ``cprfl train`` command per run (each with its
run folder in the run store), for a cluster's scheduler; the notebooks then read the finished
runs instead of training them.
"""

from __future__ import annotations

import ast
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cprfl_lib.errors import CprflError
from cprfl_lib.train.scoring import is_eval_epoch
from cprfl_repro.context import RunContext, profile_parameters
from cprfl_repro.experiments import NOTEBOOK_STUDIES, notebook_studies
from cprfl_repro.studies import finished, run_dir_for, start_run


@dataclass
class PlannedRun:
    notebook: str
    name: str  # "study: variant, seed k"
    config: dict
    run_dir: Path
    done: bool
    images_per_epoch: int
    eval_images: int  # per evaluation, over all evaluated splits and models
    evaluations: int
    flops: float = 0.0
    disk: int = 0  # bytes the run leaves
    checkpoint: int = 0  # bytes of its resumable checkpoint (in flight only)


@dataclass
class Plan:
    runs: list[PlannedRun]
    decoded_disk: int  # the decoded-image caches the runs fill
    features_disk: int
    extraction_flops: float = 0.0  # backbone features computed once for the cached-feature runs
    rate: float = 0.0  # FLOP/s of the device the hours are projected for
    rate_source: str = ""
    fixed_s: float = 0.0  # seconds each run costs beyond its FLOPs (model build, loader start, autotuning, saving)
    fixed_source: str = ""
    workers: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def todo(self) -> list[PlannedRun]:
        return [r for r in self.runs if not r.done]

    def hours(self, workers: int | None = None) -> float:
        """Projected wall hours with ``workers`` devices (independent runs spread over them, longest first): each run's
        FLOPs at ``rate`` plus the fixed seconds every run costs (``fixed_s``)."""
        if not self.rate:
            return float("nan")
        n = workers or self.workers
        seconds = [r.flops / self.rate + self.fixed_s for r in self.todo]
        return (self.extraction_flops / self.rate + max(sum(seconds) / n, max(seconds, default=0.0))) / 3600

    @property
    def disk(self) -> int:
        in_flight = max((r.checkpoint for r in self.todo), default=0) * self.workers
        return self.decoded_disk + self.features_disk + sum(r.disk for r in self.todo) + in_flight

    def lines(self) -> list[str]:
        out = []
        by_nb: dict[str, list[PlannedRun]] = {}
        for r in self.runs:
            by_nb.setdefault(r.notebook, []).append(r)
        for nb, runs in by_nb.items():
            todo = [r for r in runs if not r.done]
            epochs = sorted({r.config["optim"]["epochs"] for r in todo})
            images = sorted({r.images_per_epoch for r in todo})
            out.append(f"  {nb}: {len(runs)} distinct runs, {len(todo)} to train"
                       + (f" ({'/'.join(map(str, epochs))} epochs of {'/'.join(map(str, images))} images each)"
                          if todo else ""))
        pflop = (sum(r.flops for r in self.todo) + self.extraction_flops) / 1e15
        out.append(f"  work: {pflop:,.1f} PFLOP to train and evaluate")
        if self.rate:
            out.append(f"  time: about {self.hours():,.1f} h on this machine ({self.workers} worker"
                       f"{'s' if self.workers > 1 else ''}; {self.rate / 1e12:,.2f} TFLOP/s, {self.rate_source}; "
                       f"plus {self.fixed_s:,.0f} s fixed per run, {self.fixed_source or 'not measured'})")
        out.append(f"  disk: about {self.disk / 2**30:,.1f} GiB (decoded images {self.decoded_disk / 2**30:,.1f}, "
                   f"features {self.features_disk / 2**30:,.1f}, runs {sum(r.disk for r in self.todo) / 2**30:,.1f}, "
                   f"checkpoints in flight {max((r.checkpoint for r in self.todo), default=0) * self.workers / 2**30:,.1f})")
        return out + [f"  {n}" for n in self.notes]


# ---------------------------------------------------------------- the work of one architecture


def _counting_config(config: dict, num_classes: int = 80) -> dict:
    """The configuration with nothing to download: random backbone, class embeddings of the encoder's width."""
    from cprfl_lib.semantics import embedding_dim
    from cprfl_lib.train.recipes import apply_overrides

    s = config["semantics"]
    over = {"model.backbone_weights": None}
    if s["trainable"]:
        over["semantics.weights"] = None
    else:
        width = embedding_dim(s["encoder"], path=s["path"], dim=s["dim"], num_classes=num_classes) \
            if s["encoder"] not in ("glove", "word2vec") else 300
        over.update({"semantics.encoder": "randn", "semantics.weights": None, "semantics.dim": width,
                     "semantics.path": None})
    return apply_overrides(json.loads(json.dumps(config)), over)


_flop_memo: dict[str, dict] = {}
_backbone_flop_memo: dict[str, float] = {}


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def architecture_cost(config: dict, num_classes: int) -> dict:
    """FLOPs of one image and of one step's fixed part, training (forward + backward) and evaluating (forward),
    and the bytes of the model's state and of its trainable parameters; counted on the meta device.

    A pass is counted as its two parts, the backbone (forward, and backward where the head's gradient reaches
    its features) and the head on the backbone's feature map: the same operations as the whole model's pass,
    and the backbone's count (most of the time, on the meta device) is shared by every head over it.
    """
    from cprfl_lib.train import factory

    m = config["model"]
    key = json.dumps([m, config["data"]["image_size"], config["semantics"]["encoder"], config["semantics"]["trainable"],
                      num_classes, config["train"]["cache_features"]], sort_keys=True, default=str)
    if key in _flop_memo:
        return _flop_memo[key]
    counting = _counting_config(config, num_classes)
    size = config["data"]["image_size"]
    names = [f"class {i}" for i in range(num_classes)]
    with torch.device("meta"):
        model = factory.model_from(counting, names)
    frozen = m["freeze_backbone"]
    trains_backbone = any(p.requires_grad for p in model.backbone.parameters())
    signature = json.dumps([repr(model.backbone), size, [(n, list(p.shape), p.requires_grad) for n, p in
                                                         model.backbone.named_parameters()]])

    def backbone_flops(batch: int, train: bool, backward: bool) -> float:
        bkey = f"{signature}|{batch}|{train}|{backward}"
        if bkey not in _backbone_flop_memo:
            x = torch.zeros(batch, 3, size, size, dtype=torch.uint8, device="meta")
            model.train(train)
            with torch.set_grad_enabled(train):
                _backbone_flop_memo[bkey] = _flops(
                    (lambda: model.features(x).float().sum().backward()) if backward else (lambda: model.features(x)))
        return _backbone_flop_memo[bkey]

    with torch.no_grad():
        feature_shape = model.eval().features(torch.zeros(1, 3, size, size, dtype=torch.uint8, device="meta")).shape[1:]

    def flops(batch: int, train: bool) -> float:
        features = torch.zeros(batch, *feature_shape, device="meta", requires_grad=train and trains_backbone)
        model.train(train)
        with torch.set_grad_enabled(train):
            head = _flops((lambda: model.head(features).float().sum().backward()) if train
                          else (lambda: model.head(features)))
        # the backbone's backward runs only where the head's gradient reaches the features (not with no_feature_grad)
        return head + backbone_flops(batch, train, train and features.grad is not None)

    train1, train2 = flops(1, True), flops(2, True)
    eval1, eval2 = flops(1, False), flops(2, False)
    # frozen: the backbone runs once per image (cached features), not in every step
    backbone = backbone_flops(1, False, False) if frozen else 0.0
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values() if torch.is_tensor(t))
    trainable = sum(p.numel() * p.element_size() for p in (model.head if frozen else model).parameters()
                    if p.requires_grad)
    out = {"train_image": train2 - train1 - backbone, "train_step": 2 * train1 - train2,
           "eval_image": eval2 - eval1 - backbone, "eval_step": 2 * eval1 - eval2,
           "backbone_image": backbone, "state_bytes": state_bytes, "trainable_bytes": trainable}
    _flop_memo[key] = out
    return out


def _feature_bytes(config: dict, n: int) -> int:
    from cprfl_lib.backbones import build_backbone

    with torch.device("meta"):
        backbone = build_backbone(config["model"]["backbone"], None)
        size = config["data"]["image_size"]
        out = backbone(torch.zeros(1, 3, size, size, device="meta"))
    return n * out[0].numel() * 2  # float16


# ---------------------------------------------------------------- the plan


def notebook_defaults(notebook: Path) -> dict:
    """A notebook's parameters as its parameters cell (the code cell tagged ``parameters``) declares them.

    Read with ``json`` and ``ast`` alone (what papermill's ``inspect_notebook`` reports, without the notebook
    stack: a bare GPU image has no papermill, nbformat or nbclient). A value that is not a literal is kept as
    its source text.
    """
    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CprflError(f"{notebook}: not a readable notebook ({type(exc).__name__}: {exc})") from None
    tagged = [c for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"
              and "parameters" in (c.get("metadata") or {}).get("tags", [])]
    if not tagged:
        return {}
    source = tagged[0].get("source", "")
    source = "".join(source) if isinstance(source, list) else str(source)
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise CprflError(f"{notebook}: its parameters cell is not valid Python (line {exc.lineno}: {exc.msg})") \
            from None
    out = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) and node.value is not None else []
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = ast.literal_eval(node.value)
                except (ValueError, SyntaxError, TypeError):
                    out[target.id] = ast.unparse(node.value)
    return out


def make_plan(ctx: RunContext, params_by_notebook: dict[str, dict], notebooks: list[Path]) -> Plan:
    """The distinct runs of notebooks 04-06 with these parameters (a run two notebooks share counted once)."""
    from cprfl_lib.train import factory

    runs: dict[str, PlannedRun] = {}
    benchmarks = {}
    decoded: dict[tuple, int] = {}
    features: dict[tuple, int] = {}
    for nb in notebooks:
        if nb.stem not in NOTEBOOK_STUDIES:
            continue
        # the notebook's settings under the context's profile (the one source), then what the caller gives
        profile = ctx.params or profile_parameters(ctx.profile)
        params = {**notebook_defaults(nb), **profile.get(nb.stem, {}), **params_by_notebook.get(nb.stem, {})}
        for study_name, study in notebook_studies(nb.stem, ctx, params).items():
            for variant_name, seed, config in study.runs():
                run_dir = run_dir_for(config, ctx.work_dir)
                if str(run_dir) in runs:
                    continue
                bkey = json.dumps(config["data"], sort_keys=True, default=str)
                if bkey not in benchmarks:
                    benchmarks[bkey] = factory.benchmark_from(config)
                bench = benchmarks[bkey]
                runs[str(run_dir)] = r = _planned(nb.stem, f"{study_name}: {variant_name}, seed {seed}", config,
                                                  run_dir, bench)
                _add_caches(config, bench, decoded, features, r.done)
    return Plan(list(runs.values()), sum(decoded.values()), sum(b for b, _ in features.values()),
                sum(f for _, f in features.values()))


def _planned(notebook: str, name: str, config: dict, run_dir: Path, bench) -> PlannedRun:
    from cprfl_lib.data.decoded import decoded_bytes  # noqa: F401 - the same arithmetic as the cache

    tr, oc = config["train"], config["optim"]
    n_train = len(bench.train)
    batches = math.ceil(n_train / oc["batch_size"])
    if tr["max_steps_per_epoch"] is not None:
        batches = min(batches, tr["max_steps_per_epoch"] * oc["grad_accum"])
    images = min(n_train, batches * oc["batch_size"])
    evals = sum(is_eval_epoch(e, config) for e in range(1, oc["epochs"] + 1))
    models = 2 if tr["ema"] else 1
    eval_images = sum(len(s) for s in bench.eval_splits.values()) * models
    cost = architecture_cost(config, bench.num_classes)
    flops = oc["epochs"] * (images * cost["train_image"] + batches * cost["train_step"]) + evals * (
        eval_images * cost["eval_image"] + math.ceil(eval_images / tr["eval_batch_size"]) * cost["eval_step"])
    weights = cost["state_bytes"] * models if tr["save_weights"] else 0
    predictions = eval_images * bench.num_classes * 4
    checkpoint = (cost["state_bytes"] * models + 2 * cost["trainable_bytes"]) if tr["save_checkpoint"] else 0
    done = finished(config, run_dir) is not None if run_dir.exists() else False
    return PlannedRun(notebook, name, config, run_dir, done, images, eval_images, evals, flops, weights + predictions,
                      checkpoint)


def _add_caches(config: dict, bench, decoded: dict, features: dict, done: bool) -> None:
    from cprfl_lib.data.decoded import decoded_bytes

    if done:
        return
    data, tr, m = config["data"], config["train"], config["model"]
    cached = tr["cache_features"] is True or (tr["cache_features"] == "auto" and m["freeze_backbone"])
    splits = {"train": bench.train, **bench.eval_splits}
    for name, split in splits.items():
        key = (str(bench.image_root), bench.name, name, len(split), data["image_size"])
        if cached:
            fkey = (*key, m["backbone"], str(m["backbone_weights"]))
            if fkey not in features:
                per_image = architecture_cost(config, bench.num_classes)["backbone_image"]
                features[fkey] = (_feature_bytes(config, len(split)), per_image * len(split))
        elif data["decoded_cache"] is not False:
            decoded.setdefault(key, decoded_bytes(len(split), data["image_size"]))


# ---------------------------------------------------------------- rates


def cpu_rate(seconds: float = 0.5) -> tuple[float, str]:
    """FLOP/s of float32 matrix products on this CPU, times what a convolutional network reaches of it."""
    a = torch.randn(1024, 1024)
    a @ a
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        n += 1
    gemm = n * 2 * 1024**3 / (time.perf_counter() - start)
    return 0.5 * gemm, f"half of the {gemm / 1e9:,.0f} GFLOP/s this CPU multiplies matrices at; nothing was trained"


def step_seconds(config: dict, classes: int, device: torch.device, steps: int = 6, warmup: int = 3) -> dict:
    """Seconds per training step of ``config``'s model on random data, as a run trains it (its train state: autocast,
    channels-last, fused Adam, torch.compile per the recipe), after ``warmup`` steps; inputs in pinned memory and
    cuDNN autotuning on, as in a run. {"step_s", "warmup_s" (the warm-up steps' time beyond ``warmup`` steady
    steps: autotuning, compilation), "build_s" (building the model and moving it to the device)}."""
    from cprfl_lib.losses import build_loss
    from cprfl_lib.train import factory
    from cprfl_lib.train.engine import train_one_epoch
    from cprfl_lib.train.state import build_train_state

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # a run autotunes (device.seed_everything, unless deterministic)
    try:
        t0 = time.perf_counter()
        model = factory.model_from(config, [f"class {i}" for i in range(classes)]).to(device)
        sync()
        build = time.perf_counter() - t0
        batch, size = config["optim"]["batch_size"], config["data"]["image_size"]
        x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        y = (torch.rand(batch, classes) < 0.1).float()
        if device.type == "cuda":  # a run's loader pins its batches (pin_memory=True on CUDA)
            x, y = x.pin_memory(), y.pin_memory()
        state = build_train_state(config, model, build_loss("asl"), steps + warmup, device)
        t0 = time.perf_counter()
        train_one_epoch(state, [(x, y)] * warmup, show=False)
        sync()
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        train_one_epoch(state, [(x, y)] * steps, show=False)
        sync()
        per_step = (time.perf_counter() - t0) / steps
    finally:
        torch.backends.cudnn.benchmark = benchmark
    del model, state
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"step_s": per_step, "warmup_s": max(0.0, warm - warmup * per_step), "build_s": build}


def gpu_rate(ctx: RunContext, recipe: str = "paper-voc", steps: int = 6, warmup: int = 3) -> tuple[float, str, float,
                                                                                                  str]:
    """(FLOP/s the paper model trains at on this GPU, its source, fixed seconds per run, their source): seconds per
    step after a few warm-up steps on random data (cuDNN autotuning on, pinned inputs), and of the fixed cost what
    can be measured without a run: the model's build and the warm-up steps' extra time."""
    classes = 20 if "voc" in ctx.recipe(recipe)["data"]["dataset"] else 80
    config = _counting_config(ctx.recipe(recipe), classes)
    t = step_seconds(config, classes, torch.device("cuda"), steps, warmup)
    cost = architecture_cost(config, classes)
    batch = config["optim"]["batch_size"]
    flops = batch * cost["train_image"] + cost["train_step"]
    fixed = t["build_s"] + t["warmup_s"]
    return flops / t["step_s"], (f"{recipe} measured: {t['step_s'] * 1000:.0f} ms per step of {batch} images after "
                                 f"{warmup} warm-up steps on {torch.cuda.get_device_name(0)}"), fixed, (
        f"measured: model build {t['build_s']:.1f} s and warm-up {t['warmup_s']:.1f} s; loader start and saving not "
        "included (tools/gpu_check.sh measures a whole run's)")


def with_rate(plan: Plan, ctx: RunContext, workers: int) -> Plan:
    plan.workers = max(1, workers)
    if torch.cuda.is_available():
        plan.rate, plan.rate_source, plan.fixed_s, plan.fixed_source = gpu_rate(ctx)
    else:
        plan.rate, plan.rate_source = cpu_rate()
        plan.fixed_source = "not measured on a CPU (nothing is trained)"
    return plan


# ---------------------------------------------------------------- for a cluster


def write_commands(plan: Plan, path: Path) -> Path:
    """One ``cprfl train`` command per run still to train, each into its run folder (stamped, config written)."""
    from cprfl_lib.io import atomic_write_text
    from cprfl_lib.train.recipes import dump

    lines = ["#!/usr/bin/env bash", "# One line per run of the plan: give each to your scheduler (a SLURM array job, a",
             "# queue). Each resumes where it stopped; the notebooks read the finished runs afterwards.", "set -e"]
    for r in plan.todo:
        start_run(r.config, r.run_dir)
        atomic_write_text(r.run_dir / "recipe.yaml", dump(r.config))
        lines.append(f"cprfl train --recipe {r.run_dir / 'recipe.yaml'} --output-dir {r.run_dir} --resume"
                     f"  # {r.notebook} {r.name}")
    if not plan.todo:
        raise CprflError("every run of the plan has finished already; there is nothing to write")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
