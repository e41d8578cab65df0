"""What every notebook does first and last: where to write, what data this is, what it measured.

Notebooks hold no logic: they take papermill parameters, call the library, and write tables,
figures and a ``metrics/<notebook>.json`` (which the tests check) into the profile's results
folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_write_json
from cprfl_lib.paths import cache_dir

PROFILES = ("smoke", "quick", "paper")


def project_root(start: Path | None = None) -> Path:
    """The checkout that holds notebooks/ and results/ (found from the working directory upwards)."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    raise CprflError(f"no cprfl checkout (a folder with notebooks/ and pyproject.toml) at or above {start}; "
                     "pass output_dir explicitly")


def setup(profile: str, output_dir: str | None = None, work_dir: str | None = None) -> tuple[Path, Path]:
    """(results folder, work folder for runs) of a notebook run; both created.

    Results go to ``output_dir`` if given (``make reproduce`` passes a staging folder), else
    ``$CPRFL_RESULTS_DIR``, else ``<checkout>/results/<profile>``. Runs (checkpoints,
    predictions) go to ``work_dir``, else the cache: they are too large for results/.
    """
    if profile not in PROFILES:
        raise CprflError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    out = Path(output_dir or os.environ.get("CPRFL_RESULTS_DIR") or project_root() / "results" / profile)
    work = Path(work_dir) if work_dir else cache_dir("runs", profile)
    for folder in (out, out / "tables", out / "figures", out / "metrics", work):
        folder.mkdir(parents=True, exist_ok=True)
    return out, work


def describe_data(name: str) -> str:
    """One line that says what data a number comes from (generated data is never called VOC or COCO)."""
    if name.startswith("synth-"):
        real = name.removeprefix("synth-").upper()
        return f"{name}: generated data shaped like {real} (drawn scenes, not photographs; not a {real} result)"
    return f"{name}: the published {name.upper()} split lists on real images"


def write_metrics(out_dir: str | Path, notebook: str, metrics: dict) -> Path:
    path = Path(out_dir) / "metrics" / f"{notebook}.json"
    atomic_write_json(path, metrics)
    return path
