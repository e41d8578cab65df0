"""What every cache fill shares: one filler at a time, and no draw from a run's random streams.

A run gives the same numbers on a cold cache as on a warm one only if filling a cache leaves
the run's random streams alone: a DataLoader iterated without a generator of its own draws its
base seed from the global torch generator, a model built to compute embeddings draws its
initialisation from it, a helper may draw from numpy's. :func:`filling` runs a fill with the
global torch (CPU and CUDA), numpy and Python generators saved and restored around it.

Two processes that need the same entry at once (two runs started together on a cold cache, a
study's workers) would both compute it; :func:`filling` also holds an exclusive lock on a
``.<entry name>.lock`` file beside the entry while the block runs, so the second waits and then finds the
entry made (the caller checks again under the lock). The lock is ``flock``: the kernel releases
it when its holder dies, so a killed filler never blocks the next one; the file goes when the
fill ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from cprfl_lib.errors import CprflError
from cprfl_lib.io import write_error


@contextlib.contextmanager
def private_rng() -> Iterator[None]:
    """Run the block with the global torch, numpy and Python random states restored afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextlib.contextmanager
def entry_lock(entry: str | os.PathLike, say: bool = True) -> Iterator[None]:
    """Hold ``.<entry name>.lock`` (beside the cache entry, a file or a folder) exclusively while the block runs."""
    entry = Path(entry)
    lock = entry.parent / f".{entry.name}.lock"
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CprflError(f"the cache entry {entry} cannot be made: {write_error(lock, exc)}; set CPRFL_CACHE to a "
                         "writable folder") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if say:
                print(f"waiting for another process that fills the cache entry {entry}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock: fillers may then both compute; each writes atomically
            pass
        yield
    finally:
        # the file goes while still held: a process that waited on it finds the entry made when it wakes (and a
        # rare second filler after a failed fill writes the same content atomically)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


@contextlib.contextmanager
def filling(entry: str | os.PathLike, say: bool = True) -> Iterator[None]:
    """A cache fill of ``entry``: under its lock, with the global random states left as they were."""
    with entry_lock(entry, say), private_rng():
        yield
