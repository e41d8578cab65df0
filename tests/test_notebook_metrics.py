"""The metrics the notebooks record, checked against the references of their stored smoke run.

`make test` runs the stored notebooks under nbval first (see the Makefile), with
CPRFL_RESULTS_DIR pointing at .cache/nbval-results; each writes metrics/<notebook>.json there.
This module compares those with tests/notebook_metrics/<notebook>.json (written by
`make notebooks` when the stored notebooks were executed): counts and names must match
exactly, measured figures within a tolerance. Where a notebook's fresh metrics are missing
(this module run on its own), the notebook is executed here first.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "notebook_metrics"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ABS_TOL = 1.0  # mAP points: smoke runs are tiny, and BLAS may differ from machine to machine
SKIP_KEYS = ("wall", "seconds", "_s", "time")


def _results_dir() -> Path:
    return Path(os.environ.get("CPRFL_RESULTS_DIR", ROOT / ".cache" / "nbval-results"))


@pytest.fixture(scope="module")
def fresh_metrics() -> dict[str, dict]:
    from cprfl_repro.reproduce import execute

    results = _results_dir()
    out = {}
    for nb in NOTEBOOKS:
        path = results / "metrics" / f"{nb.stem}.json"
        if not path.is_file() or path.stat().st_mtime < nb.stat().st_mtime:
            os.environ["CPRFL_RESULTS_DIR"] = str(results)
            execute(nb, results / "executed" / nb.name, {})
        out[nb.stem] = json.loads(path.read_text())
    return out


def _compare(ref, new, where: str, problems: list[str]) -> None:
    if isinstance(ref, dict):
        if not isinstance(new, dict):
            problems.append(f"{where}: expected a mapping, got {new!r}")
            return
        for key in sorted(set(ref) | set(new)):
            if any(s in key for s in SKIP_KEYS):
                continue
            if key not in new or key not in ref:
                problems.append(f"{where}.{key}: {'missing' if key not in new else 'unexpected'}")
            else:
                _compare(ref[key], new[key], f"{where}.{key}", problems)
    elif isinstance(ref, list):
        if not isinstance(new, list) or len(ref) != len(new):
            problems.append(f"{where}: {ref!r} != {new!r}")
        else:
            for i, (a, b) in enumerate(zip(ref, new)):
                _compare(a, b, f"{where}[{i}]", problems)
    elif isinstance(ref, float) or isinstance(new, float):
        both_nan = isinstance(ref, float) and isinstance(new, float) and math.isnan(ref) and math.isnan(new)
        if not both_nan and not (isinstance(new, (int, float)) and abs(ref - new) <= ABS_TOL):
            problems.append(f"{where}: {new!r} differs from the reference {ref!r} by more than {ABS_TOL}")
    elif ref != new:
        problems.append(f"{where}: {new!r} != reference {ref!r}")


@pytest.mark.parametrize("notebook", [nb.stem for nb in NOTEBOOKS])
def test_notebook_metrics_match_reference(notebook, fresh_metrics):
    ref_file = REFERENCE / f"{notebook}.json"
    assert ref_file.is_file(), f"no reference metrics for {notebook}: run `make notebooks`"
    problems: list[str] = []
    _compare(json.loads(ref_file.read_text()), fresh_metrics[notebook], notebook, problems)
    assert not problems, "\n".join(problems[:20])


def test_every_notebook_has_a_reference():
    assert sorted(p.stem for p in REFERENCE.glob("*.json")) == [nb.stem for nb in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_visible_to_papermill(notebook):
    """papermill skips a parameter line it cannot parse (e.g. '=' in its comment); then it can't be set."""
    import ast

    import nbformat
    import papermill

    cell = next(c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert {"profile", "output_dir", "work_dir"} <= assigned
    assert set(papermill.inspect_notebook(str(notebook))) == assigned
