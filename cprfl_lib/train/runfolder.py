"""A run folder holds one run: one configuration, one writer at a time, and a finished record kept as it is.

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
  run.lock          while it trains: the lock of the one process that writes the folder
  resumes.json      where ``resume=True`` changed a setting that cannot change the results: which, from what epoch

- **One configuration.** ``train(..., resume=True)`` compares the configuration with the one the
  folder's run was trained with (its ``checkpoint.pt``, or a finished run's ``weights.pt``) before
  anything is built or written. A key that changes what the run computes is refused, in one line
  naming every differing key (dotted, nested ones included: ``loss.params.gamma_neg``); a key that
  cannot (:data:`NEUTRAL`: loader workers, checkpoint and weight saving, the description) may
  change, and each such change is recorded in ``resumes.json`` with the epoch it applied from.
- **A finished record is kept.** Resuming a finished run (``metrics.json`` and no checkpoint)
  returns its metrics and writes nothing. A run started without ``resume`` in a folder that holds
  another run's files removes them first (with a note), so the folder never mixes two runs.
- **One writer.** The process that trains into the folder holds ``run.lock`` (an ``flock``, with
  its pid and host in the file) until it ends; a second process is refused in one line naming
  the folder and the holder. The kernel releases the lock of a process that dies, so a lock file
  left by a killed run is taken over, with a note naming the process that left it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_path, atomic_write_json, atomic_write_text, clean_stale_temp
from cprfl_lib.metrics import group_thresholds
from cprfl_lib.runinfo import check_writable
from cprfl_lib.train.checkpoint import CHECKPOINT, WEIGHTS, load_checkpoint, save_or_stop, save_weights, weights_payload

LOCK, RESUMES = "run.lock", "resumes.json"
# What a run writes (the list above); a fresh run removes another run's copies of them first.
RUN_FILES = ("config.yaml", "summary.csv", CHECKPOINT, WEIGHTS, "metrics.json", "predictions.npz", RESUMES)
# Keys that cannot change what a run computes: the loader's worker processes (augmentation draws from
# (seed, epoch, index), whatever the workers), what is saved and how often, the recipe's description.
NEUTRAL = ("data.num_workers", "train.save_checkpoint", "train.checkpoint_every", "train.checkpoint_minutes",
           "train.save_weights", "description")


class _Absent:
    def __repr__(self) -> str:
        return "(not set)"


_ABSENT = _Absent()  # a key one of the two configurations does not have


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a configuration, nested mappings (``loss.params``) included."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):  # an empty one adds no key
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a: Any, b: Any) -> bool:
    return a is b or a == b and isinstance(a, bool) == isinstance(b, bool)  # 1 == True, yet not the same setting


def differences(stored: Mapping, config: Mapping) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored value, new value)} for every key whose value differs, in the configuration's order."""
    a, b = flatten(stored), flatten(config)
    keys = list(dict.fromkeys([*a, *b]))
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in keys if not _same(a.get(k, _ABSENT), b.get(k, _ABSENT))}


def _describe(diff: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {old!r} vs {new!r}" for k, (old, new) in diff.items())


class RunFolder:
    """The output folder of one ``train`` call: its resume check, its lock, its record of resumptions.

    Made before anything is built or written: the resume check only reads (of a finished run resumed, the
    ``main`` process only removes what dead writers left). :meth:`claim` (the main process) then checks that
    the folder is writable, takes the lock, removes what dead writers left, and records or clears; leaving
    the ``with`` block releases the lock.
    """

    def __init__(self, out: str | Path, config: dict, resume: bool, main: bool = True):
        self.out, self.config, self.resume = Path(out), config, resume
        self.finished: dict | None = None  # a finished run's metrics, when resumed: nothing to do
        self.neutral: dict[str, tuple[Any, Any]] = {}
        self.stored: Path | None = None  # the checkpoint or weights file of the run the folder holds
        self.stored_epoch = 0
        self._fd: int | None = None
        if resume:
            self._check_resume()
        if self.finished is not None and main and os.access(self.out, os.W_OK):  # what dead writers left goes
            self._lock()
            clean_stale_temp(self.out)
            self.release()

    # ---------------------------------------------------------------- one configuration

    def _stored(self) -> tuple[Path, dict] | None:
        for name in (CHECKPOINT, WEIGHTS):  # a run in progress, else a finished run
            path = self.out / name
            if path.is_file():
                return path, load_checkpoint(path, mmap=True)
        return None

    def _check_resume(self) -> None:
        stored = self._stored()
        if stored is None:
            return  # nothing trained is kept: the run starts at epoch 1
        path, ckpt = stored
        diff = differences(ckpt["config"], self.config)
        changed = {k: v for k, v in diff.items() if k not in NEUTRAL}
        if changed:
            raise CprflError(
                f"{path}: --resume with settings the run was not trained with ({_describe(changed)}); a run folder "
                f"holds one configuration: drop those overrides to continue recipe {ckpt['config'].get('recipe')!r}, "
                f"or train recipe {self.config.get('recipe')!r} into another --output-dir")
        self.neutral, self.stored, self.stored_epoch = diff, path, ckpt.get("epoch", 0)
        metrics = self.out / "metrics.json"
        if path.name == WEIGHTS and metrics.is_file():
            try:
                self.finished = json.loads(metrics.read_text())
            except (OSError, ValueError):
                self.finished = None  # unreadable: the run's weights are evaluated again and the record completed

    # ---------------------------------------------------------------- one writer

    def claim(self) -> None:
        """Before any training (main process): writable, locked, dead writers' files gone, resumption recorded."""
        check_writable(self.out)
        self._lock()
        clean_stale_temp(self.out)  # what a killed save left
        if self.resume and self.stored is not None:
            if self.neutral:
                self._record(self.neutral)
            return
        old = [n for n in RUN_FILES if (self.out / n).exists()]
        if old:
            print(f"note: {self.out} held files of an earlier run ({', '.join(old)}); this run "
                  f"{'(with --resume, but nothing it could continue) ' if self.resume else '(no --resume) '}"
                  "replaces them", file=sys.stderr)
            for name in old:
                (self.out / name).unlink()

    def _record(self, diff: Mapping[str, tuple[Any, Any]]) -> None:
        path = self.out / RESUMES
        try:
            entries = json.loads(path.read_text()) if path.is_file() else []
        except (OSError, ValueError):
            entries = []
        entries.append({"from_epoch": self.stored_epoch + 1, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "changed": {k: {"was": old, "now": new} for k, (old, new) in diff.items()}})
        atomic_write_json(path, entries)
        print(f"note: {self.out} resumes with {_describe(diff)} (cannot change the results; recorded in {RESUMES})",
              file=sys.stderr)

    def _lock(self) -> None:
        path = self.out / LOCK
        for _ in range(100):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise CprflError(f"output directory {self.out} is not writable ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise CprflError(f"{self.out} is in use: {holder or 'another process'} is training into it "
                                     f"(it holds {path}); wait for that run to end, or give another --output-dir") \
                        from None
                raise CprflError(f"{path}: cannot lock the run folder ({exc.strerror or exc}); the file system "
                                 "does not support file locks: give an --output-dir on a local disk") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as it released it: lock the new one
        else:
            raise CprflError(f"{path}: could not be locked (it was replaced 100 times in a row)")
        left = _holder(fd)
        if left:
            print(f"note: {path} was left by {left}, which has ended; this run takes the folder over",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # removed while still held: a waiting process then locks a new file
            (self.out / LOCK).unlink()
        os.close(self._fd)
        self._fd = None

    # ---------------------------------------------------------------- what the run writes (the main process)

    def write_summary(self, history: list[dict]) -> None:
        """summary.csv: one row per epoch, the columns of every row in order of appearance (blank where a row has
        none), floats to 6 significant digits."""
        keys = list(dict.fromkeys(k for row in history for k in row))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(keys)
        writer.writerows([_cell(row.get(k)) for k in keys] for row in history)
        atomic_write_text(self.out / "summary.csv", text.getvalue())

    def finish(self, state, benchmark, history: list[dict], scores, metrics: dict, model) -> None:
        """The run's results, then its final weights; the resumable checkpoint (optimizer state) goes."""
        with atomic_path(self.out / "predictions.npz") as tmp:
            with open(tmp, "wb") as fh:
                arrays = {f"{tag}" if split == "test" else f"{split}_{tag}": v.numpy()
                          for split, by_tag in scores.items() for tag, v in by_tag.items()}
                targets = {"targets" if s == "test" else f"{s}_targets": getattr(benchmark, s).targets for s in scores}
                np.savez_compressed(fh, class_names=np.array(benchmark.class_names),
                                    train_counts=benchmark.train_counts,
                                    group_thresholds=np.array(group_thresholds(benchmark.thresholds)), **arrays,
                                    **targets)
        if self.config["train"]["save_weights"]:
            save_or_stop(self.out / WEIGHTS, save_weights, **weights_payload(state, self.config, benchmark, history,
                                                                              model))
        atomic_write_json(self.out / "metrics.json", metrics)
        (self.out / CHECKPOINT).unlink(missing_ok=True)

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _cell(value) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)
