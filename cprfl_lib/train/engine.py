"""Training and evaluation of one run: ``train(config, output_dir)``, ``train_one_epoch`` and ``evaluate``.

The file reads in the order a run happens: set-up (device, processes, seeds), the data (the
benchmark, decoded images or cached backbone features, loaders), the model and its train
state, resuming, the epochs, and the end of the run.

A run writes into its output folder:
  config.yaml       the resolved configuration
  summary.csv       one row per epoch: loss, lr, optimizer steps, seconds (and those spent waiting for
                    data), mAP and group mAPs of the evaluated splits for the model and its EMA
  checkpoint.pt     while it trains: the last saved epoch (atomic; ``resume=True`` continues from it)
  weights.pt        when it has ended: the model (and EMA) weights, without optimizer state
  metrics.json      the last epoch's figures; the best epoch *selected on the test set* as a
                    separately labelled figure (what the official code reported) when several were evaluated
  predictions.npz   logits of the last epoch (model and EMA) for the test split (and the validation
                    split, where there is one), with the targets
  run.lock          while it trains: the lock of the one process that writes the folder (runfolder.py)
  resumes.json      where ``resume=True`` changed a setting that cannot change the results: which, from what epoch

A folder holds one run: resuming with settings that change what the run computes is refused, and
a finished run resumed is kept as it is (runfolder.py).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset, TensorDataset
from tqdm.auto import tqdm

from cprfl_lib.data.datasets import MultiLabelImageDataset
from cprfl_lib.data.decoded import decoded_images
from cprfl_lib.errors import CprflError, NonFiniteError
from cprfl_lib.io import atomic_path, atomic_write_json, atomic_write_text
from cprfl_lib.metrics import group_thresholds, map_report, threshold_metrics, topk_metrics
from cprfl_lib.model import to_tokens
from cprfl_lib.runinfo import check_writable, provenance
from cprfl_lib.train import factory
from cprfl_lib.train.checkpoint import (
    CHECKPOINT,
    WEIGHTS,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from cprfl_lib.train.distributed import (
    Dist,
    GlobalBatchSampler,
    all_ranks_finite,
    gather_predictions,
    init_distributed,
    rank0_first,
    shard_indices,
)
from cprfl_lib.train.recipes import dump, validate
from cprfl_lib.train.runfolder import RunFolder
from cprfl_lib.train.state import TrainState, build_train_state

MAX_SKIPPED_STEPS = 20  # fp16: consecutive overflowing steps the gradient scaler may skip before the run stops


# ---------------------------------------------------------------- set-up


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CprflError("train.device is 'cuda' but no CUDA device is available; use train.device=cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:  # cuBLAS needs a fixed workspace for deterministic matrix products
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)  # set either way: a previous run's choice must not linger
    torch.backends.cudnn.benchmark = not deterministic  # autotuned convolutions, unless results must repeat
    if torch.cuda.is_available():  # TF32 for the float32 matmuls that remain (the EMA's evaluation), unless exact
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not deterministic


@contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``n`` torch threads (None: leave as is), then restore the previous number."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


CONCURRENT_RUNS_ENV = "CPRFL_CONCURRENT_RUNS"  # runs training side by side on this machine (a studies pool sets it)


def concurrent_runs() -> int:
    """How many runs share this machine's CPUs: $CPRFL_CONCURRENT_RUNS (set by the studies pool), else 1."""
    try:
        return max(1, int(os.environ.get(CONCURRENT_RUNS_ENV, "1")))
    except ValueError:
        raise CprflError(f"{CONCURRENT_RUNS_ENV}={os.environ[CONCURRENT_RUNS_ENV]!r} is not a whole number") from None


def worker_count(setting, device: torch.device, d: Dist, on_tensors: bool) -> int:
    """DataLoader workers: the recipe's number, or (auto) from this process's share of the CPUs.

    Cached features or decoded images in memory need none on the CPU; a GPU is fed by up to 8
    workers a process, leaving one core to the process itself. The CPUs are shared by the processes
    of a distributed run and by the runs a studies pool trains side by side.
    """
    if setting != "auto":
        return int(setting)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cpus // max(d.local_world, 1) // concurrent_runs())
    if device.type == "cuda":
        return max(1, min(8, share - 1))
    return 0 if on_tensors else min(2, share)


# ---------------------------------------------------------------- the data of a run


class RunData:
    """The training set and the evaluated splits of a run, as images or cached backbone features, and their loaders."""

    def __init__(self, config: dict, benchmark, model, device: torch.device, d: Dist, progress: bool = True):
        data, tr, m = config["data"], config["train"], config["model"]
        self.cached = tr["cache_features"] is True or (tr["cache_features"] == "auto" and m["freeze_backbone"])
        decoded = data["decoded_cache"] is True or (data["decoded_cache"] == "auto" and not self.cached)
        self.workers = worker_count(data["num_workers"], device, d, on_tensors=self.cached or decoded)
        prep = factory.preprocessing_from(config, model.backbone)
        splits = {"train": benchmark.train, **benchmark.eval_splits}

        def images(split: str, train: bool) -> MultiLabelImageDataset:
            s = splits[split]
            pixels = rank0_first(d, lambda: decoded_images(benchmark.image_root, s, prep, self.workers, progress
                                                           and d.is_main)) if decoded else None
            return MultiLabelImageDataset(benchmark.image_root, s, prep, train=train, decoded=pixels,
                                          seed=tr["seed"])

        sets = {"train": images("train", not self.cached), **{k: images(k, False) for k in benchmark.eval_splits}}
        if self.cached:  # rank 0 fills the cache, the others read it
            from cprfl_lib.train.features import cached_features

            sets = {k: _as_tokens(rank0_first(d, lambda k=k, ds=ds: cached_features(
                model, ds, batch_size=tr["eval_batch_size"], device=device, num_workers=self.workers,
                desc=f"{k} features", progress=progress and d.is_main))) for k, ds in sets.items()}
        self.train, self.eval = sets["train"], {k: sets[k] for k in benchmark.eval_splits}
        self.sampler = GlobalBatchSampler(len(self.train), config["optim"]["batch_size"], tr["seed"], True, d.rank,
                                          d.world, tag_epoch=not self.cached)
        self.train_loader = self._loader(self.train, device, batch_sampler=self.sampler)
        self.eval_loaders = {k: self._loader(Subset(ds, shard_indices(len(ds), d)), device,
                                             batch_size=tr["eval_batch_size"]) for k, ds in self.eval.items()}

    def _loader(self, dataset, device: torch.device, **kw) -> DataLoader:
        extra = dict(persistent_workers=True, prefetch_factor=4) if self.workers else {}
        # a private generator: a DataLoader draws its base seed from the global RNG otherwise, so evaluating
        # (more often, or an EMA too) would change the training's dropout draws
        return DataLoader(dataset, num_workers=self.workers, pin_memory=device.type == "cuda",
                          generator=torch.Generator(), **extra, **kw)

    def tokens(self) -> int | None:
        return to_tokens(self.train[0][0][None]).shape[1] if self.cached else None


def _as_tokens(features: TensorDataset) -> TensorDataset:
    """Cached feature maps (N, C, h, w) laid out as tokens (N, h·w, C): a batch then enters the visual projection
    without a transposing copy (about a tenth of a CPU head step)."""
    maps, targets = features.tensors
    return TensorDataset(to_tokens(maps).contiguous(), targets)


def prepare(config: dict, progress: bool = True) -> dict:
    """Fill what a run of ``config`` reads from the caches (generated data, class embeddings, decoded images,
    backbone features) without training; returns the sizes a scheduler orders runs by."""
    config = validate(config)
    device = resolve_device(config["train"]["device"])
    with torch.random.fork_rng(devices=[]):  # building the model draws its initialisation: not the caller's RNG
        benchmark = factory.benchmark_from(config)
        model = factory.model_from(config, benchmark.class_names).to(device)
        data = RunData(config, benchmark, model, device, Dist(), progress)
    sizes = {"classes": len(benchmark.class_names), "train_images": len(data.train), "tokens": data.tokens(),
             "cached_features": data.cached}
    del model, data
    if device.type == "cuda":  # the training processes need the memory, not this one
        torch.cuda.empty_cache()
    return sizes


# ---------------------------------------------------------------- one epoch, one evaluation


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch on the device: uint8 images (the model normalises them there), or cached float16 features as float32."""
    x = x.to(device, non_blocking=True)
    if x.is_floating_point():
        x = x.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _diverged(state: TrainState, epoch: int, what: str) -> CprflError:
    lr = state.optimizer.param_groups[0]["lr"]
    return CprflError(f"training diverged at epoch {epoch}, optimizer step {state.step + 1}: {what} (lr {lr:g}); "
                      "lower optim.lr or use optim.clip_grad")


def train_one_epoch(state: TrainState, loader: DataLoader, epoch: int = 1, desc: str = "train",
                    show: bool = True) -> dict:
    """One pass over the training data; {loss (mean over its batches), steps, train_s, wait_s}.

    ``wait_s`` is the time spent waiting for the next batch: what the loader costs the device.
    """
    state.trainable.train()
    if state.freeze_backbone:  # frozen BatchNorm statistics stay frozen
        state.model.backbone.eval()
    total, count, skipped, wait, steps0, start = 0.0, 0, 0, 0.0, state.step, time.perf_counter()
    state.optimizer.zero_grad(set_to_none=True)
    batches = min(len(loader), state.max_batches or len(loader))
    bar = tqdm(total=batches, desc=desc, leave=False, disable=not show)
    it = iter(loader)
    for i in range(batches):
        t0 = time.perf_counter()
        x, y = next(it)
        wait += time.perf_counter() - t0
        x = _to_device(x, state.device, state.channels_last and not state.cached)
        y = y.to(state.device, non_blocking=True)
        with state.autocast():
            logits = state.module(x)  # the head on cached features, else the whole model on images
        try:
            loss = state.loss_fn(logits, y)  # the losses compute in float32
            value = loss.item()  # the step's one host sync: the check and the running mean share it
            everywhere = all_ranks_finite(loss)  # every rank takes part: all skip (or stop) at the same step
            if not math.isfinite(value):
                raise NonFiniteError(f"the loss became {value}")
            if not everywhere:
                raise NonFiniteError("the loss became non-finite in another process")
        except NonFiniteError as exc:
            if not state.scaler.is_enabled():
                raise _diverged(state, epoch, str(exc)) from None
            skipped += 1  # float16 overflow: skip the step and lower the loss scale, as the scaler would
            if skipped > MAX_SKIPPED_STEPS:
                raise _diverged(state, epoch, f"{skipped} steps in a row overflowed in float16 ({exc})") from None
            state.optimizer.zero_grad(set_to_none=True)
            state.scaler.update(state.scaler.get_scale() * state.scaler.get_backoff_factor())
            continue
        skipped = 0
        state.scaler.scale(loss / state.grad_accum).backward()
        if (i + 1) % state.grad_accum == 0 or i + 1 == batches:
            if state.clip_grad:
                state.scaler.unscale_(state.optimizer)
                torch.nn.utils.clip_grad_norm_(state.trainable.parameters(), state.clip_grad)
            state.scaler.step(state.optimizer)
            state.scaler.update()
            state.optimizer.zero_grad(set_to_none=True)
            state.scheduler.step()
            state.step += 1
            if state.ema is not None:
                state.ema.update(state.trainable)
        total, count = total + value, count + 1
        bar.update()
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    bar.close()
    return {"loss": total / max(count, 1), "steps": state.step - steps0, "train_s": time.perf_counter() - start,
            "wait_s": wait}


@torch.no_grad()
def evaluate(models: dict, loader: DataLoader, n: int, device: torch.device, autocast=nullcontext,
             cached: bool = False, channels_last: bool = False, d: Dist = Dist(),
             show: bool = False) -> dict[str, torch.Tensor]:
    """Float32 logits (n, C) of each model over one split of ``n`` images, in order, gathered over all processes.

    ``loader`` iterates this process's shard (a ``Subset``). Every batch is loaded once and scored by
    all ``models`` (the model and its EMA): the model under ``autocast``, the EMA in float32 as the
    official code evaluates it. ``cached``: the batches are backbone features, scored by the heads.
    """
    from cprfl_lib.model import CPRFLHead

    for m in models.values():
        m.eval()
    heads = [m.head for m in models.values() if isinstance(getattr(m, "head", None), CPRFLHead)]
    out: dict[str, list] = {k: [] for k in models}
    with _prompts_once(heads):
        for x, _ in tqdm(loader, desc="evaluate", leave=False, disable=not (show and d.is_main)):
            x = _to_device(x, device, channels_last and not cached)
            for tag, m in models.items():
                with autocast() if tag == "model" else nullcontext():
                    out[tag].append((m.head(x) if cached else m(x)).float().cpu())
    idx = loader.dataset.indices
    return {tag: gather_predictions(idx, torch.cat(v), n, d) for tag, v in out.items()}


@contextmanager
def _prompts_once(heads):
    """Prompts (and a trainable text tower) computed once per evaluation, not once per batch."""
    for h in heads:
        h.freeze_prompts()
    try:
        yield
    finally:
        for h in heads:
            h.release_prompts()


def report_scores(scores, benchmark, threshold: float, split: str = "test") -> dict:
    """mAP and group mAPs, and the OP/OR/OF1/CP/CR/CF1 family: at ``threshold``, for the top 3 classes, and for
    the top 3 that also pass ``threshold`` (the official code's top-3 figures; docs/DIFFERENCES.md)."""
    targets = getattr(benchmark, split).targets
    r = map_report(scores, targets, benchmark.train_counts, benchmark.class_names, benchmark.thresholds)
    k = min(3, scores.shape[1])
    at = threshold_metrics(scores, targets, threshold)
    top = topk_metrics(scores, targets, k)
    official = topk_metrics(scores, targets, k, threshold)
    return {**r.as_dict(), **{f"{key}@{threshold}": v for key, v in at.items()},
            **{f"{key}@top3": v for key, v in top.items()},
            **{f"{key}@top3>={threshold}": v for key, v in official.items()}}


def is_eval_epoch(epoch: int, config: dict) -> bool:
    """Whether the evaluated splits are scored after ``epoch``: always the last, and from eval_start every
    eval_every epochs when the recipe asks for it (for the best-epoch column)."""
    tr, last = config["train"], config["optim"]["epochs"]
    every = tr["eval_every"]
    return epoch == last or (every is not None and epoch >= tr["eval_start"] and (epoch - tr["eval_start"]) % every == 0)


# ---------------------------------------------------------------- a run


def _checkpoint_bytes(state: TrainState) -> int:
    """About what a checkpoint of this run takes on disk: the weights, Adam's two moments, the EMA."""
    weights = sum(t.numel() * t.element_size() for t in state.model.state_dict().values() if torch.is_tensor(t))
    trainable = sum(p.numel() * p.element_size() for p in state.trainable.parameters() if p.requires_grad)
    return weights + 2 * trainable + (weights if state.ema is not None else 0)


def _save(path: Path, saver, **payload) -> None:
    """An atomic save; a failure says how the run goes on (the previous file is intact)."""
    try:
        saver(path, **payload)
    except CprflError as exc:
        raise CprflError(f"{exc}; free space and continue the run with --resume") from None


def train(config: dict, output_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train and evaluate one configuration; returns the content of metrics.json."""
    config = validate(config)
    out, tr, oc = Path(output_dir), config["train"], config["optim"]
    device = resolve_device(tr["device"])
    d = init_distributed(device.type)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    if oc["batch_size"] % d.world:
        raise CprflError(f"optim.batch_size ({oc['batch_size']}) must be divisible by the {d.world} processes")
    seed_everything(tr["seed"], tr["deterministic"])
    started = time.time()
    folder = RunFolder(out, config, resume, d.is_main)  # --resume with other settings is refused before anything
    if folder.finished is not None:  # a finished run resumed: its record is kept as it is
        if progress and d.is_main:
            print(f"{out} holds this finished run; it is kept as it is")
        return folder.finished
    with cpu_threads(tr["num_threads"]), folder:
        benchmark = rank0_first(d, lambda: factory.benchmark_from(config))
        if d.is_main:  # before any training: an unwritable output folder, or one another run holds, fails now
            folder.claim()  # writable, locked, what killed saves left removed, resumption recorded
        model = factory.model_from(config, benchmark.class_names).to(device)
        data = RunData(config, benchmark, model, device, d, progress)
        state = build_train_state(config, model, factory.loss_from(config, benchmark), len(data.train_loader), device,
                                  d, cached=data.cached)
        if d.is_main and tr["save_checkpoint"]:  # a checkpoint is written beside the previous one
            check_writable(out, min_free=2 * _checkpoint_bytes(state) + 2**27)
        history, start_epoch = _resume(state, out, config, benchmark, device, progress and d.is_main) if resume \
            else ([], 1)
        if d.is_main:
            atomic_write_text(out / "config.yaml", dump(config))
        scores, last_saved = {}, time.monotonic()  # a mid-run checkpoint once train.checkpoint_minutes have passed
        for epoch in range(start_epoch, oc["epochs"] + 1):
            data.sampler.set_epoch(epoch)
            row = {"epoch": epoch, **train_one_epoch(state, data.train_loader, epoch,
                                                     desc=f"epoch {epoch}/{oc['epochs']}", show=progress and d.is_main)}
            row["lr"] = state.optimizer.param_groups[0]["lr"]
            if is_eval_epoch(epoch, config):
                t0 = time.perf_counter()
                scores = _evaluate_all(state, data, benchmark, d, row, progress)
                row["eval_s"] = time.perf_counter() - t0
            history.append(row)
            if d.is_main:
                _write_summary(out / "summary.csv", history)
                if tr["save_checkpoint"] and (epoch % tr["checkpoint_every"] == 0) and epoch < oc["epochs"] \
                        and time.monotonic() - last_saved >= 60 * tr["checkpoint_minutes"]:
                    _save(out / CHECKPOINT, save_checkpoint, **_checkpoint_payload(state, config, benchmark, epoch,
                                                                                   history, model))
                    last_saved = time.monotonic()
        if not scores:  # resumed after the last epoch: evaluate the restored weights once more
            scores = _evaluate_all(state, data, benchmark, d, {}, progress)
        metrics = _final_metrics(config, benchmark, history, scores, time.time() - started, device)
        if d.is_main:
            _finish(out, state, config, benchmark, history, scores, metrics, model)
    return metrics


def _evaluate_all(state, data, benchmark, d, row: dict, progress: bool) -> dict[str, dict[str, torch.Tensor]]:
    """{split: {model tag: logits}} for every evaluated split; their mAPs go into ``row``."""
    models = state.eval_models()
    scores = {}
    for split, loader in data.eval_loaders.items():
        scores[split] = evaluate(models, loader, len(data.eval[split]), state.device, state.autocast, state.cached,
                                 state.channels_last, d, show=progress)
        for tag, s in scores[split].items():
            r = map_report(s, getattr(benchmark, split).targets, benchmark.train_counts, benchmark.class_names,
                           benchmark.thresholds)
            prefix = ("" if tag == "model" else "ema_") + ("" if split == "test" else f"{split}_")
            row.update({f"{prefix}{k}": v for k, v in r.as_dict().items()})
    return scores


def _checkpoint_payload(state: TrainState, config, benchmark, epoch: int, history, model) -> dict:
    return dict(model=model.state_dict(), ema=state.ema.module.state_dict() if state.ema else None,
                optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(),
                scaler=state.scaler.state_dict(), epoch=epoch, step=state.step, history=history, config=config,
                class_names=benchmark.class_names, input_norm=_input_norm(model), precision=precision_of(state),
                rng={"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state() if state.device.type == "cuda" else None})


def precision_of(state: TrainState) -> str:
    """How this run computes, in words: the device and the autocast dtype (float16 with its gradient scaler)."""
    where = state.device.type
    if state.amp_dtype is None:
        return f"float32 on {where}"
    return f"{str(state.amp_dtype).replace('torch.', '')} autocast on {where}" + (
        " with a gradient scaler" if state.scaler.is_enabled() else "")


def _input_norm(model) -> dict:
    as_list = lambda t: None if t is None else t.tolist()  # noqa: E731
    return {"mean": as_list(model.input_mean), "std": as_list(model.input_std)}


def _resume(state: TrainState, out: Path, config, benchmark, device, say: bool) -> tuple[list, int]:
    """(history, first epoch to train) from the run folder: its checkpoint, or a finished run's weights."""
    ckpt_path, weights_path = out / CHECKPOINT, out / WEIGHTS
    if not ckpt_path.is_file():
        if not weights_path.is_file():
            return [], 1
        done = load_checkpoint(weights_path)  # a finished run: its final weights are evaluated again
        check_compatible(done, weights_path, config, benchmark.class_names)
        state.model.load_state_dict(done["model"])
        if state.ema is not None and done.get("ema") is not None:
            state.ema.module.load_state_dict(done["ema"])
        return list(done["history"]), done["epoch"] + 1
    ckpt = load_checkpoint(ckpt_path)
    check_compatible(ckpt, ckpt_path, config, benchmark.class_names)
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] and state.scaler.is_enabled():  # a run saved without a scaler resumes under fp16 too
        state.scaler.load_state_dict(ckpt["scaler"])
    if state.ema is not None and ckpt.get("ema") is not None:
        state.ema.module.load_state_dict(ckpt["ema"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
    state.step = ckpt.get("step", 0)
    if say:
        print(f"resuming {out} from epoch {ckpt['epoch']}")
    before, now = ckpt.get("precision"), precision_of(state)
    if before is not None and before != now and not (dist.is_initialized() and dist.get_rank() > 0):
        print(f"resuming {out}: epochs 1-{ckpt['epoch']} trained in {before}, the rest trains in {now}; "
              "the result is not that of a run in one precision", flush=True)
    return list(ckpt["history"]), ckpt["epoch"] + 1


def _finish(out: Path, state: TrainState, config, benchmark, history, scores, metrics, model) -> None:
    """The run's results, then its final weights; the resumable checkpoint (optimizer state) goes."""
    with atomic_path(out / "predictions.npz") as tmp:
        with open(tmp, "wb") as fh:
            arrays = {f"{tag}" if split == "test" else f"{split}_{tag}": v.numpy()
                      for split, by_tag in scores.items() for tag, v in by_tag.items()}
            targets = {"targets" if s == "test" else f"{s}_targets": getattr(benchmark, s).targets for s in scores}
            np.savez_compressed(fh, class_names=np.array(benchmark.class_names), train_counts=benchmark.train_counts,
                                group_thresholds=np.array(group_thresholds(benchmark.thresholds)), **arrays, **targets)
    if config["train"]["save_weights"]:
        _save(out / WEIGHTS, save_weights, model=model.state_dict(),
              ema=state.ema.module.state_dict() if state.ema else None, epoch=history[-1]["epoch"] if history else 0,
              history=history, config=config, class_names=benchmark.class_names, input_norm=_input_norm(model))
    atomic_write_json(out / "metrics.json", metrics)
    (out / CHECKPOINT).unlink(missing_ok=True)


def _write_summary(path: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)] + [",".join("" if row.get(k) is None else f"{row[k]:.6g}" if isinstance(row.get(k), float)
                                         else str(row[k]) for k in keys) for row in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _best_epoch(history: list[dict], split: str) -> tuple[int, str, dict] | None:
    """(epoch, "model" | "ema", that row) of the best mAP on ``split``, where it was evaluated after several epochs."""
    where = "" if split == "test" else f"{split}_"
    evaluated = [(row["epoch"], tag, row[f"{p}{where}mAP"]) for row in history
                 for tag, p in (("model", ""), ("ema", "ema_")) if f"{p}{where}mAP" in row]
    if len({e for e, _, _ in evaluated}) < 2:
        return None
    epoch, tag, _ = max(evaluated, key=lambda t: t[2])
    return epoch, tag, next(r for r in history if r["epoch"] == epoch)


def _figures(row: dict, tag: str, split: str) -> dict:
    p = ("" if tag == "model" else "ema_") + ("" if split == "test" else f"{split}_")
    return {k: row[f"{p}{k}"] for k in ("mAP", "head", "medium", "tail") if f"{p}{k}" in row}


def _final_metrics(config, benchmark, history, scores, seconds, device) -> dict:
    thr = config["train"]["threshold"]
    splits = {split: {tag: report_scores(s, benchmark, thr, split) for tag, s in by_tag.items()}
              for split, by_tag in scores.items()}
    out = {"dataset": benchmark.name, "synthetic": benchmark.is_synthetic, "recipe": config["recipe"],
           "seed": config["train"]["seed"], "epochs": len(history), "wall_s": round(seconds, 1), "device": str(device)}
    if "test" in splits:
        out.update(test_images=len(benchmark.test), test_subset=benchmark.test.subset, last_epoch=splits["test"])
    if "val" in splits:
        out.update(val_images=len(benchmark.val), val_last_epoch=splits["val"])
    best = _best_epoch(history, "test")
    if "test" in splits:
        out["best_on_test"] = None if not best else {
            "epoch": best[0], "model": best[1], **_figures(best[2], best[1], "test"),
            "note": "epoch selected on the test set, as the official code reported; optimistic, not a held-out estimate"}
    best = _best_epoch(history, "val")
    if best:  # a held-out choice of the epoch: the validation split's best, with the test figures of that epoch
        out["best_on_val"] = {"epoch": best[0], "model": best[1], "val": _figures(best[2], best[1], "val"),
                              **({"test": _figures(best[2], best[1], "test")} if "test" in splits else {})}
    out["provenance"] = provenance(config)
    return out
