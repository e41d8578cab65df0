"""Shared test setup: import ``cprfl_lib`` from the repository root, find the reference data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The published split lists, kept outside the repository (never copied into it).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference split lists folder; the test is skipped where it is absent."""
    if not (SHARED_DATA / "voc_lt" / "train.txt").is_file():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def cprfl_cache(tmp_path_factory):
    """$CPRFL_CACHE when set (the Makefile sets it: generated data are reused between sessions), else one
    temporary cache for the whole session; the torch determinism switch is restored afterwards."""
    before = os.environ.get("CPRFL_CACHE")
    if not before:
        os.environ["CPRFL_CACHE"] = str(tmp_path_factory.getbasetemp() / "cprfl-cache")
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield Path(os.environ["CPRFL_CACHE"])
    torch.use_deterministic_algorithms(deterministic)
    if not before:
        del os.environ["CPRFL_CACHE"]


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A cache of the test's own, so that nothing is reused from (or left in) the shared one."""
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
