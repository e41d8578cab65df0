"""Checkpoints and final weights: written atomically, read with ``weights_only=True``.

A run keeps one resumable ``checkpoint.pt`` while it trains (model and EMA weights, optimizer,
scheduler and gradient-scaler states, RNG states, the epoch, the history, the class names
and the resolved configuration, the precision it trained in), rewritten atomically after every
``train.checkpoint_every`` epochs once ``train.checkpoint_minutes`` have passed since the last one
(a run of a few minutes writes none). When the run ends, the model-only ``weights.pt`` (model and EMA weights, configuration,
class names, epoch; no optimizer state) replaces it, so a finished paper-size run keeps about a
third of the checkpoint's disk. Reading either never executes code from the file: a file that
is truncated, foreign, or would run code when unpickled is refused with one line saying it was
not loaded.

What a run puts in them, and how a resumed run takes its state back, is here too
(:func:`checkpoint_payload`, :func:`weights_payload`, :func:`restore`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_torch_save

if TYPE_CHECKING:
    from cprfl_lib.train.state import TrainState

FORMAT = "cprfl-checkpoint/1"
WEIGHTS_FORMAT = "cprfl-weights/1"
CHECKPOINT, WEIGHTS = "checkpoint.pt", "weights.pt"


def save_checkpoint(path: Path, **state) -> None:
    atomic_torch_save({"format": FORMAT, **state}, path)


def save_weights(path: Path, **state) -> None:
    atomic_torch_save({"format": WEIGHTS_FORMAT, **state}, path)


def find_run_file(path: str | Path) -> Path:
    """A checkpoint or weights file, or the run folder holding one (its weights.pt, else its checkpoint.pt)."""
    path = Path(path)
    if path.is_dir():
        found = next((path / n for n in (WEIGHTS, CHECKPOINT) if (path / n).is_file()), None)
        if found is None:
            raise CprflError(f"{path} holds neither {WEIGHTS} (a finished run) nor {CHECKPOINT} (a run in progress)")
        return found
    if not path.is_file():
        raise CprflError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A run's checkpoint or final weights (a file, or the run folder), loaded without running any code.

    ``mmap``: the tensors stay on disk until read (to look at the stored configuration only)."""
    path = find_run_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # weights-only loading met an object that would run code
        raise CprflError(f"{path}: not a cprfl checkpoint: it holds objects other than tensors and plain data, "
                         "which could run code; it was not loaded") from None
    except Exception as exc:  # a truncated zip, arbitrary bytes, an old pickle
        raise CprflError(f"{path}: not a readable cprfl checkpoint (truncated, or not a torch file: "
                         f"{type(exc).__name__}); it was not loaded") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (FORMAT, WEIGHTS_FORMAT):
        raise CprflError(f"{path}: not a cprfl checkpoint (no '{FORMAT}' or '{WEIGHTS_FORMAT}' marker); "
                         "it was not loaded")
    return ckpt


def check_compatible(ckpt: dict, path: str | Path, config: dict | None = None, class_names=None) -> None:
    """Refuse a checkpoint made for another class list or another model configuration."""
    if class_names is not None and list(ckpt["class_names"]) != list(class_names):
        raise CprflError(f"{path}: made for {len(ckpt['class_names'])} classes ({ckpt['config']['data']['dataset']}), "
                         f"this run has {len(class_names)} ({config['data']['dataset'] if config else '?'})")
    if config is not None:
        ours, theirs = config["model"], ckpt["config"]["model"]
        diff = [k for k in ours if ours[k] != theirs.get(k)]
        if diff or config["semantics"]["encoder"] != ckpt["config"]["semantics"]["encoder"]:
            what = ", ".join(f"model.{k}: {theirs.get(k)!r} vs {ours[k]!r}" for k in diff) or "semantics.encoder"
            raise CprflError(f"{path}: made by recipe {ckpt['config'].get('recipe')!r} with a different model "
                             f"({what}); it cannot resume recipe {config.get('recipe')!r}")


def save_or_stop(path: Path, saver, **payload) -> None:
    """An atomic save with ``saver`` (:func:`save_checkpoint`, :func:`save_weights`); a failure says how the run
    goes on (the previous file is intact)."""
    try:
        saver(path, **payload)
    except CprflError as exc:
        raise CprflError(f"{exc}; free space and continue the run with --resume") from None


def checkpoint_bytes(state: TrainState) -> int:
    """About what a checkpoint of this run takes on disk: the weights, Adam's two moments, the EMA."""
    weights = sum(t.numel() * t.element_size() for t in state.model.state_dict().values() if torch.is_tensor(t))
    trainable = sum(p.numel() * p.element_size() for p in state.trainable.parameters() if p.requires_grad)
    return weights + 2 * trainable + (weights if state.ema is not None else 0)


def precision_of(state: TrainState) -> str:
    """How this run computes, in words: the device and the autocast dtype (float16 with its gradient scaler)."""
    where = state.device.type
    if state.amp_dtype is None:
        return f"float32 on {where}"
    return f"{str(state.amp_dtype).replace('torch.', '')} autocast on {where}" + (
        " with a gradient scaler" if state.scaler.is_enabled() else "")


def input_norm(model) -> dict:
    """The model's input normalisation as plain lists (what ``factory.model_from_checkpoint`` rebuilds it from)."""
    as_list = lambda t: None if t is None else t.tolist()  # noqa: E731
    return {"mean": as_list(model.input_mean), "std": as_list(model.input_std)}


def checkpoint_payload(state: TrainState, config, benchmark, epoch: int, history, model) -> dict:
    """What checkpoint.pt holds after ``epoch``: everything a resumed run continues from."""
    return dict(model=model.state_dict(), ema=state.ema.module.state_dict() if state.ema else None,
                optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(),
                scaler=state.scaler.state_dict(), epoch=epoch, step=state.step, history=history, config=config,
                class_names=benchmark.class_names, input_norm=input_norm(model), precision=precision_of(state),
                rng={"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state() if state.device.type == "cuda" else None})


def weights_payload(state: TrainState, config, benchmark, history, model) -> dict:
    """What weights.pt holds when the run has ended: the weights (and the EMA's), no optimizer state."""
    return dict(model=model.state_dict(), ema=state.ema.module.state_dict() if state.ema else None,
                epoch=history[-1]["epoch"] if history else 0, history=history, config=config,
                class_names=benchmark.class_names, input_norm=input_norm(model))


def restore(state: TrainState, out: Path, config, benchmark, device, say: bool) -> tuple[list, int]:
    """(history, first epoch to train) from the run folder ``out``: its checkpoint, or a finished run's weights."""
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
