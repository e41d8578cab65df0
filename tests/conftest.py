"""Shared test setup: import ``cprfl_lib`` from the repository root, find the reference data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The published split lists, kept outside the repository (never copied into it).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The reference split lists folder; the test is skipped where it is absent."""
    if not (SHARED_DATA / "voc_lt" / "train.txt").is_file():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA
