"""Child processes stopped in one way: asked to terminate, waited for, killed if they linger (psutil).

``make reproduce`` stops a notebook's kernel and everything under it when it is interrupted
(:func:`stop_children`); the studies pool stops its worker processes, and the loader workers
under them, when a run fails or the study is interrupted (:func:`stop_pids` on the pids the
workers reported as they started).
"""

from __future__ import annotations

from typing import Iterable

import psutil


def stop_pids(pids: Iterable[int], timeout: float = 10) -> None:
    """Stop the processes ``pids`` and their descendants: SIGTERM, then SIGKILL after ``timeout`` seconds.
    A process that has already ended is skipped."""
    procs = []
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            procs += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    _stop(procs, timeout)


def stop_children(timeout: float = 10) -> None:
    """Stop this process's children and theirs (the notebook's kernel, its training workers): left alone, a kernel
    would run its cell to the end, holding this process's output open."""
    _stop(psutil.Process().children(recursive=True), timeout)


def _stop(procs: list[psutil.Process], timeout: float) -> None:
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
