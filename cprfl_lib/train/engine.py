"""Training and evaluation: ``train(config, output_dir)``, ``train_one_epoch`` and ``evaluate``.

A run writes into its output folder:
  config.yaml       the resolved configuration
  summary.csv       one row per epoch: loss, lr, mAP and group mAPs for the model and its EMA
  checkpoint.pt     the last epoch (atomic; ``resume=True`` continues from it)
  metrics.json      the last epoch's figures, and the best epoch *selected on the test set* as a
                    separately labelled figure (what the official code reported)
  predictions.npz   test-set logits of the last epoch (model and EMA) with the targets
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cprfl_lib.train import factory
from cprfl_lib.train.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from cprfl_lib.data.datasets import MultiLabelImageDataset
from cprfl_lib.train.distributed import Dist, GlobalBatchSampler, barrier, gather_predictions, init_distributed, shard_indices
from cprfl_lib.errors import CprflError
from cprfl_lib.train.features import cached_features
from cprfl_lib.io import atomic_path, atomic_write_json, atomic_write_text
from cprfl_lib.metrics import map_report, threshold_metrics, topk_metrics
from cprfl_lib.model import to_tokens
from cprfl_lib.train.optim import ModelEma, build_optimizer, build_scheduler
from cprfl_lib.train.recipes import dump
from cprfl_lib.runinfo import check_writable, provenance
from cprfl_lib.data.transforms import build_transform


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CprflError("train.device is 'cuda' but no CUDA device is available; use train.device=cpu")
    return torch.device(name)


def autocast_for(device: torch.device, train_cfg: dict):
    """The autocast context of a run: on CUDA by default (bf16 or fp16), off on the CPU."""
    enabled = train_cfg["amp"] is True or (train_cfg["amp"] == "auto" and device.type == "cuda")
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(train_cfg["amp_dtype"])
    if dtype is None:
        raise CprflError(f"train.amp_dtype must be bfloat16 or float16, got {train_cfg['amp_dtype']!r}")
    if not enabled:
        return lambda: nullcontext(), False, dtype
    return lambda: torch.autocast(device.type, dtype=dtype), True, dtype


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:  # cuBLAS needs a fixed workspace for deterministic matrix products
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)  # set either way: a previous run's choice must not linger
    torch.backends.cudnn.benchmark = not deterministic  # autotuned convolutions, unless results must repeat


class Data:
    """The train/test datasets of a run: images, or cached backbone features when the backbone is frozen."""

    def __init__(self, config: dict, benchmark, backbone, device: torch.device, d: Dist, progress: bool = True):
        data, tr = config["data"], config["train"]
        mean, std = backbone.input_mean, backbone.input_std
        preset, size = data["transform"], data["image_size"]
        self.cached = tr["cache_features"] is True or (tr["cache_features"] == "auto" and config["model"]["freeze_backbone"])
        if self.cached and not config["model"]["freeze_backbone"]:
            raise CprflError("train.cache_features=true needs model.freeze_backbone=true")
        test_tf = build_transform(preset, size, train=False, mean=mean, std=std)
        train_tf = test_tf if self.cached else build_transform(preset, size, train=True, mean=mean, std=std)
        root = benchmark.image_root
        self.train = MultiLabelImageDataset(root, benchmark.train, train_tf)
        self.test = MultiLabelImageDataset(root, benchmark.test, test_tf, check=True)
        if self.cached:  # rank 0 fills the cache, the others read it
            for rank_turn in (True, False):
                if d.is_main == rank_turn:
                    kw = dict(batch_size=tr["eval_batch_size"], device=device, num_workers=data["num_workers"],
                              progress=progress)
                    self.train = cached_features(backbone, self.train, test_tf, desc="train features", **kw)
                    self.test = cached_features(backbone, self.test, test_tf, desc="test features", **kw)
                barrier(d)


def _forward(model, data_cached: bool, x):
    return model.head(x) if data_cached else model(x)


@torch.no_grad()
def evaluate(model, dataset, device, autocast, cached: bool, batch_size: int, d: Dist = Dist(),
             show: bool = True) -> torch.Tensor:
    """Test-set logits (N, C) in dataset order, gathered over all processes."""
    model.eval()
    idx = shard_indices(len(dataset), d)
    # a private generator: a DataLoader draws its base seed from the global RNG, so evaluating (more
    # often, or an EMA too) would otherwise change the training's dropout draws
    loader = DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=batch_size, shuffle=False,
                        generator=torch.Generator())
    out = []
    for x, _ in tqdm(loader, desc="evaluate", leave=False, disable=not (show and d.is_main)):
        with autocast():
            out.append(_forward(model, cached, x.to(device, non_blocking=True).float()).float().cpu())
    return gather_predictions(idx, torch.cat(out), len(dataset), d)


def train_one_epoch(model, trainable, loader, loss_fn, optimizer, scheduler, scaler, autocast, device, cfg,
                    cached: bool, ema=None, desc="train", show=True) -> float:
    """One pass over the training data; returns the mean loss over its batches.

    ``trainable`` is what the optimizer updates, possibly wrapped in DDP: the head when the
    data are cached features, else the whole model.
    """
    trainable.train()
    if cfg["model"]["freeze_backbone"]:  # frozen BatchNorm statistics stay frozen
        model.backbone.eval()
    accum, max_steps = cfg["optim"]["grad_accum"], cfg["train"]["max_steps_per_epoch"]
    total, count = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=desc, leave=False, disable=not show)
    for i, (x, y) in enumerate(bar):
        if max_steps is not None and i >= max_steps * accum:
            break
        x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
        if cfg["train"]["channels_last"] and x.dim() == 4 and not cached:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = trainable(x)  # the head on cached features, else the whole model on images
        loss = loss_fn(logits, y)  # the losses compute in float32
        value = loss.item()  # the step's one host sync: the check and the running mean share it
        if not math.isfinite(value):
            raise CprflError(f"the loss became {value} at step {i}; lower optim.lr or check the data")
        scaler.scale(loss / accum).backward()
        if (i + 1) % accum == 0 or i + 1 == len(loader):
            if cfg["optim"]["clip_grad"]:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable.parameters(), cfg["optim"]["clip_grad"])
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(trainable.module if hasattr(trainable, "module") else trainable)
        total, count = total + value, count + 1
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


def report_scores(scores, benchmark, threshold: float) -> dict:
    r = map_report(scores, benchmark.test.targets, benchmark.train_counts, benchmark.class_names)
    return {**r.as_dict(), **{f"{k}@{threshold}": v for k, v in threshold_metrics(scores, benchmark.test.targets,
                                                                                     threshold).items()},
            **{f"{k}@top3": v for k, v in topk_metrics(scores, benchmark.test.targets, min(3, scores.shape[1])).items()}}


def train(config: dict, output_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train and evaluate one configuration; returns the content of metrics.json."""
    out = Path(output_dir)
    tr, oc = config["train"], config["optim"]
    device = resolve_device(tr["device"])
    d = init_distributed(device.type)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    seed_everything(tr["seed"], tr["deterministic"])
    started = time.time()

    for rank_turn in (True, False):  # rank 0 first: it generates or downloads what is missing, the others read
        if d.is_main == rank_turn:
            benchmark = factory.benchmark_from(config)
        barrier(d)
    if d.is_main:  # before any training: an unwritable or full output folder fails now, not after an epoch
        check_writable(out)
    model, data = _model_and_data(config, benchmark, device, d, progress)
    trainable = model.head if data.cached else model
    if tr["channels_last"]:  # faster convolutions on CUDA and on the CPU alike (measured 1.5x on this CPU)
        model.to(memory_format=torch.channels_last)
    loss_fn = factory.loss_from(config, benchmark).to(device)
    autocast, amp_on, amp_dtype = autocast_for(device, tr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_on and amp_dtype == torch.float16)
    if oc["batch_size"] % d.world:
        raise CprflError(f"optim.batch_size ({oc['batch_size']}) must be divisible by the {d.world} processes")
    sampler = GlobalBatchSampler(len(data.train), oc["batch_size"], tr["seed"], True, d.rank, d.world)
    loader = DataLoader(data.train, batch_sampler=sampler, num_workers=config["data"]["num_workers"],
                        pin_memory=device.type == "cuda")
    # batches per epoch (max_steps_per_epoch counts optimizer steps, each of grad_accum batches)
    steps = len(loader) if tr["max_steps_per_epoch"] is None else min(len(loader),
                                                                      tr["max_steps_per_epoch"] * oc["grad_accum"])
    optimizer = build_optimizer(trainable, oc)
    scheduler = build_scheduler(optimizer, oc, math.ceil(steps / oc["grad_accum"]))
    ema = ModelEma(trainable, tr["ema"]).to(device) if tr["ema"] else None
    wrapped = trainable
    if d.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(trainable, device_ids=[d.local_rank] if device.type == "cuda" else None)

    run = Run(config, out, progress, d, device, benchmark, model, data, trainable, wrapped, loss_fn, autocast, scaler,
              sampler, loader, optimizer, scheduler, ema, started)
    with cpu_threads(tr["num_threads"]):
        return _fit(run, resume)


def _model_and_data(config: dict, benchmark, device: torch.device, d: Dist, progress: bool):
    model = factory.model_from(config, benchmark.class_names).to(device)
    return model, Data(config, benchmark, model.backbone, device, d, progress)


def prepare(config: dict, progress: bool = True) -> dict:
    """Fill what a run of ``config`` reads from the caches (generated data, class embeddings,
    backbone features) without training; returns the sizes a scheduler orders runs by.

    Several runs sharing these caches can then start in parallel instead of one filling them first.
    """
    device = resolve_device(config["train"]["device"])
    with torch.random.fork_rng(devices=[]):  # building the model draws its initialisation: not the caller's RNG
        benchmark = factory.benchmark_from(config)
        model, data = _model_and_data(config, benchmark, device, Dist(), progress)
    tokens = to_tokens(data.train[0][0][None]).shape[1] if data.cached else None
    sizes = {"classes": len(benchmark.class_names), "train_images": len(data.train), "tokens": tokens,
             "cached_features": data.cached}
    del model, data
    if device.type == "cuda":  # the training processes need the memory, not this one
        torch.cuda.empty_cache()
    return sizes


@dataclass
class Run:
    """Everything a training run holds once it is set up."""

    config: dict
    out: Path
    progress: bool
    d: Dist
    device: torch.device
    benchmark: object
    model: torch.nn.Module
    data: Data
    trainable: torch.nn.Module  # what the optimizer updates: the head on cached features, else the model
    wrapped: torch.nn.Module  # ``trainable``, in DDP when distributed
    loss_fn: torch.nn.Module
    autocast: object
    scaler: object
    sampler: GlobalBatchSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: object
    ema: ModelEma | None
    started: float


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


def _fit(run: Run, resume: bool) -> dict:
    (config, out, progress, d, device, benchmark, model, data, wrapped, loss_fn, autocast, scaler, sampler, loader,
     optimizer, scheduler, ema, started) = (run.config, run.out, run.progress, run.d, run.device, run.benchmark,
                                            run.model, run.data, run.wrapped, run.loss_fn, run.autocast, run.scaler,
                                            run.sampler, run.loader, run.optimizer, run.scheduler, run.ema, run.started)
    tr, oc = config["train"], config["optim"]
    history, start_epoch, ckpt_path = [], 1, out / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        check_compatible(ckpt, ckpt_path, config, benchmark.class_names)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        history, start_epoch = list(ckpt["history"]), ckpt["epoch"] + 1
        if progress and d.is_main:
            print(f"resuming {out} from epoch {ckpt['epoch']}")
    if d.is_main:
        atomic_write_text(out / "config.yaml", dump(config))

    last_scores: dict[str, torch.Tensor] = {}
    for epoch in range(start_epoch, oc["epochs"] + 1):
        sampler.set_epoch(epoch)
        t0 = time.time()
        loss = train_one_epoch(model, wrapped, loader, loss_fn, optimizer, scheduler, scaler, autocast, device, config,
                               data.cached, ema, desc=f"epoch {epoch}/{oc['epochs']}", show=progress and d.is_main)
        row = {"epoch": epoch, "loss": loss, "lr": optimizer.param_groups[0]["lr"], "train_s": time.time() - t0}
        if is_eval_epoch(epoch, config):
            models = {"model": model} if ema is None else {"model": model, "ema": _ema_view(model, ema, data.cached)}
            for tag, m in models.items():
                scores = evaluate(m, data.test, device, autocast if tag == "model" else nullcontext,
                                  data.cached, tr["eval_batch_size"], d, show=progress)
                last_scores[tag] = scores
                r = map_report(scores, benchmark.test.targets, benchmark.train_counts, benchmark.class_names)
                prefix = "" if tag == "model" else "ema_"
                row.update({f"{prefix}{k}": v for k, v in r.as_dict().items()})
        history.append(row)
        if d.is_main:
            _write_summary(out / "summary.csv", history)
            if tr["save_checkpoint"]:
                save_checkpoint(ckpt_path, model=model.state_dict(), ema=ema.module.state_dict() if ema else None,
                                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                scaler=scaler.state_dict(), epoch=epoch, history=history, config=config,
                                class_names=benchmark.class_names,
                                rng={"torch": torch.get_rng_state(),
                                     "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None})
        barrier(d)

    if not last_scores:  # resumed after the last epoch: evaluate the restored weights once more
        last_scores["model"] = evaluate(model, data.test, device, autocast, data.cached, tr["eval_batch_size"], d)
        if ema is not None:
            last_scores["ema"] = evaluate(_ema_view(model, ema, data.cached), data.test, device, nullcontext,
                                          data.cached, tr["eval_batch_size"], d)
    metrics = _final_metrics(config, benchmark, history, last_scores, time.time() - started, device)
    if d.is_main:
        with atomic_path(out / "predictions.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, targets=benchmark.test.targets, class_names=np.array(benchmark.class_names),
                                    train_counts=benchmark.train_counts,
                                    **{k: v.numpy() for k, v in last_scores.items()})
        atomic_write_json(out / "metrics.json", metrics)
    return metrics


def is_eval_epoch(epoch: int, config: dict) -> bool:
    """Whether the test set is evaluated after ``epoch``: always the last, else from eval_start every eval_every."""
    tr, last = config["train"], config["optim"]["epochs"]
    return epoch == last or (epoch >= tr["eval_start"] and (epoch - tr["eval_start"]) % tr["eval_every"] == 0)


def _ema_view(model, ema: ModelEma, cached: bool):
    """A model whose trainable part is the EMA copy (the frozen backbone is shared)."""
    if cached:
        return type(model)(model.backbone, ema.module)
    return ema.module


def _write_summary(path: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)] + [",".join("" if row.get(k) is None else f"{row[k]:.6g}" if isinstance(row.get(k), float)
                                         else str(row[k]) for k in keys) for row in history]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _final_metrics(config, benchmark, history, last_scores, seconds, device) -> dict:
    thr = config["train"]["threshold"]
    last = {tag: report_scores(s, benchmark, thr) for tag, s in last_scores.items()}
    evaluated = [(row["epoch"], tag, row[f"{p}mAP"]) for row in history
                 for tag, p in (("model", ""), ("ema", "ema_")) if f"{p}mAP" in row]
    best = max(evaluated, key=lambda t: t[2]) if evaluated else None
    row = next(r for r in history if r["epoch"] == best[0]) if best else None
    p = "" if not best or best[1] == "model" else "ema_"
    return {
        "dataset": benchmark.name, "synthetic": benchmark.is_synthetic, "recipe": config["recipe"],
        "seed": config["train"]["seed"], "epochs": len(history), "wall_s": round(seconds, 1), "device": str(device),
        "last_epoch": last,
        "best_on_test": None if not best else {
            "epoch": best[0], "model": best[1], **{k: row[f"{p}{k}"] for k in ("mAP", "head", "medium", "tail")},
            "note": "epoch selected on the test set, as the official code reported; optimistic, not a held-out estimate"},
        "provenance": provenance(config),
    }
