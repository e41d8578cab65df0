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
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_torch_save

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
