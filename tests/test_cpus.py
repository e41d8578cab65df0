"""CPU counts and torch threads (cprfl_lib/cpus.py): the one place that reads and sets them."""

from __future__ import annotations

import pytest
import torch
from conftest import one_line_error

from cprfl_lib import cpus


def test_usable_cpus_are_capped_and_shared(monkeypatch):
    n = cpus.usable_cpus()
    assert n >= 1 and cpus.usable_cpus(at_most=1) == 1 and cpus.usable_cpus(at_most=10**6) == n
    monkeypatch.setattr(cpus, "usable_cpus", lambda at_most=None: 16)
    monkeypatch.setenv(cpus.CONCURRENT_RUNS_ENV, "3")
    assert cpus.cpu_share() == 5 and cpus.cpu_share(2) == 2 and cpus.cpu_share(64) == 1  # never below one
    monkeypatch.setenv(cpus.CONCURRENT_RUNS_ENV, "x")
    one_line_error(cpus.cpu_share, "CPRFL_CONCURRENT_RUNS='x' is not a whole number")


def test_torch_threads_are_restored_after_the_block_even_when_it_fails():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with cpus.torch_threads(before + 1):
            assert torch.get_num_threads() == before + 1
            raise RuntimeError
    assert torch.get_num_threads() == before
    with cpus.torch_threads(None):  # None: left as it is
        assert torch.get_num_threads() == before
