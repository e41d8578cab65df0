"""Training and evaluation of one run: ``train(config, output_dir)``, ``train_one_epoch`` and ``evaluate``.

The file reads in the order a run happens: :func:`prepare` (the caches a run reads, filled without
training), :func:`train_one_epoch`, :func:`evaluate`, and :func:`train` (set-up, the data, the model and
its train state, resuming, the epochs, and the end of the run).

What a run writes into its output folder, and the folder's rules, are in runfolder.py; the data and
its loaders in loaders.py; checkpoints, resuming and the final weights in checkpoint.py; the figures
and metrics.json in scoring.py; the device and seeds in device.py.

A folder holds one run: resuming with settings that change what the run computes is refused, and
a finished run resumed is kept as it is (runfolder.py).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cprfl_lib.cpus import torch_threads
from cprfl_lib.errors import CprflError, NonFiniteError
from cprfl_lib.io import atomic_write_text
from cprfl_lib.metrics import map_report
from cprfl_lib.runinfo import check_writable
from cprfl_lib.train import factory
from cprfl_lib.train.checkpoint import (
    CHECKPOINT,
    checkpoint_bytes,
    checkpoint_payload,
    restore,
    save_checkpoint,
    save_or_stop,
)
from cprfl_lib.train.device import resolve_device, seed_everything
from cprfl_lib.train.distributed import Dist, all_ranks_finite, gather_predictions, init_distributed, rank0_first
from cprfl_lib.train.loaders import RunData
from cprfl_lib.train.recipes import dump, validate
from cprfl_lib.train.runfolder import RunFolder
from cprfl_lib.train.scoring import final_metrics, is_eval_epoch
from cprfl_lib.train.state import TrainState, build_train_state

MAX_SKIPPED_STEPS = 20  # fp16: consecutive overflowing steps the gradient scaler may skip before the run stops


# ---------------------------------------------------------------- the caches a run reads


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
            # host syncs: .item() here (the finiteness check and the running mean share it); with several processes
            # a second one, where the ranks agree; under float16 the gradient scaler's step adds its own
            value = loss.item()
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


# ---------------------------------------------------------------- a run


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
    with torch_threads(tr["num_threads"]), folder:
        benchmark = rank0_first(d, lambda: factory.benchmark_from(config))
        if d.is_main:  # before any training: an unwritable output folder, or one another run holds, fails now
            folder.claim()  # writable, locked, what killed saves left removed, resumption recorded
        model = factory.model_from(config, benchmark.class_names).to(device)
        data = RunData(config, benchmark, model, device, d, progress)
        state = build_train_state(config, model, factory.loss_from(config, benchmark), len(data.train_loader), device,
                                  d, cached=data.cached)
        if d.is_main and tr["save_checkpoint"]:  # a checkpoint is written beside the previous one
            check_writable(out, min_free=2 * checkpoint_bytes(state) + 2**27)
        history, start_epoch = restore(state, out, config, benchmark, device, progress and d.is_main) if resume \
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
                folder.write_summary(history)
                if tr["save_checkpoint"] and (epoch % tr["checkpoint_every"] == 0) and epoch < oc["epochs"] \
                        and time.monotonic() - last_saved >= 60 * tr["checkpoint_minutes"]:
                    save_or_stop(out / CHECKPOINT, save_checkpoint, **checkpoint_payload(state, config, benchmark, epoch,
                                                                                         history, model))
                    last_saved = time.monotonic()
        if not scores:  # resumed after the last epoch: evaluate the restored weights once more
            scores = _evaluate_all(state, data, benchmark, d, {}, progress)
        metrics = final_metrics(config, benchmark, history, scores, time.time() - started, device)
        if d.is_main:
            folder.finish(state, benchmark, history, scores, metrics, model)
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
