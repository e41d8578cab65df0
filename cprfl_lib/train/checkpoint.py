"""Checkpoints: written atomically every epoch, read with ``weights_only=True``.

A checkpoint holds everything needed to continue or to evaluate a run: the model and EMA
weights, the optimizer, scheduler and gradient-scaler states, the RNG states, the epoch, the
class names and the resolved configuration. Reading one never executes code from it, and a
file that is truncated, not a checkpoint, or from another recipe or class count is a clear
error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_torch_save

FORMAT = "cprfl-checkpoint/1"


def save_checkpoint(path: Path, **state) -> None:
    atomic_torch_save({"format": FORMAT, **state}, path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CprflError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, arbitrary bytes
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CprflError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {detail})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CprflError(f"{path}: not a cprfl checkpoint (no '{FORMAT}' marker)")
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
