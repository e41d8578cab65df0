"""This machine's CPUs and torch's threads, in one place.

How many CPUs this process may use (its affinity, else all the machine has), its share of them when
several runs train side by side (``$CPRFL_CONCURRENT_RUNS``, set by the studies pool) or several
processes make one run, and the number of torch threads: set for a process, or for a block and then
restored. torch is imported only where threads are set (the CLI reads CPU counts without it).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from cprfl_lib.errors import CprflError

CONCURRENT_RUNS_ENV = "CPRFL_CONCURRENT_RUNS"  # runs training side by side on this machine (a studies pool sets it)


def usable_cpus(at_most: int | None = None) -> int:
    """The CPUs this process may run on (its affinity where the system has one, else all), at most ``at_most``."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return n if at_most is None else max(1, min(at_most, n))


def concurrent_runs() -> int:
    """How many runs share this machine's CPUs: $CPRFL_CONCURRENT_RUNS (set by the studies pool), else 1."""
    try:
        return max(1, int(os.environ.get(CONCURRENT_RUNS_ENV, "1")))
    except ValueError:
        raise CprflError(f"{CONCURRENT_RUNS_ENV}={os.environ[CONCURRENT_RUNS_ENV]!r} is not a whole number") from None


def cpu_share(processes: int = 1) -> int:
    """This process's CPUs: the usable ones shared by the ``processes`` of one run on this machine and by the runs
    trained side by side (at least 1)."""
    return max(1, usable_cpus() // max(processes, 1) // concurrent_runs())


def set_torch_threads(n: int | None) -> None:
    """torch's threads for the rest of this process (None or 0: leave as is)."""
    if n:
        import torch

        torch.set_num_threads(n)


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch threads (None or 0: leave as is), then restore the previous number."""
    import torch

    before = torch.get_num_threads()
    set_torch_threads(n)
    try:
        yield
    finally:
        set_torch_threads(before)
