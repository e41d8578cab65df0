"""``make reproduce``: run notebooks 01-06 with papermill and one parameter file per profile.

    python -m cprfl_lib.reproduce --profile quick                     # the embedded default, offline
    python -m cprfl_lib.reproduce --profile paper --data-root /data   # real VOC-LT / COCO-LT, GPU

Everything is written into a staging folder next to ``results/<profile>/`` and moved into
place only when every notebook has run: a failure or an interruption (Ctrl-C, SIGTERM)
leaves the previous results as they were. A failing notebook stops the run with its name and
the failing cell. ``--refresh-notebooks`` re-executes the stored notebooks in place at smoke
scale (what ``make notebooks`` does before they are committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from importlib import resources
from pathlib import Path

import yaml

from cprfl_lib.errors import CprflError, run_command
from cprfl_lib.io import atomic_write_json
from cprfl_repro.notebook import PROFILES, project_root
from cprfl_lib.runinfo import provenance

KERNEL = "cprfl"


def profile_parameters(profile: str) -> dict[str, dict]:
    """{notebook stem: papermill parameters} of a profile (cprfl_lib/profiles/<profile>.yaml)."""
    if profile not in PROFILES:
        raise CprflError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    text = (resources.files("cprfl_repro") / "profiles" / f"{profile}.yaml").read_text()
    return yaml.safe_load(text) or {}


def notebooks(root: Path) -> list[Path]:
    found = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise CprflError(f"no notebooks found in {root / 'notebooks'}")
    return found


def check_parameters(notebook: Path, params: dict) -> None:
    """Reject a parameter the notebook does not declare, by name (papermill would silently add it)."""
    declared = _declared(notebook)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise CprflError(f"{notebook.name}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                         f"it declares {', '.join(sorted(declared))}")


def execute(notebook: Path, out_path: Path, params: dict) -> float:
    """Run one notebook with papermill; a failing cell becomes a CprflError naming the notebook and cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    check_parameters(notebook, params)
    out_path.parent.mkdir(parents=True, exist_ok=True)  # papermill writes into an existing folder only
    start = time.time()
    try:
        papermill.execute_notebook(str(notebook), str(out_path), parameters=params, kernel_name=KERNEL,
                                   cwd=str(notebook.parent), progress_bar=False, log_output=False)
    except PapermillExecutionError as exc:
        raise CprflError(f"{notebook.name} failed in cell [{exc.exec_count}]: {exc.ename}: {exc.evalue} "
                         f"(executed copy: {out_path})") from None
    return time.time() - start


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def reproduce(profile: str, data_root: str | None = None, list_dir: str | None = None, only: list[str] | None = None,
              root: Path | None = None) -> Path:
    root = root or project_root()
    params_by_nb = profile_parameters(profile)
    final = root / "results" / profile
    staging = root / "results" / f".staging-{profile}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "notebooks").mkdir(parents=True)
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM,)}
    manifest = {"profile": profile, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "notebooks": {},
                **provenance()}
    try:
        for nb in notebooks(root):
            if only and nb.stem not in only and nb.stem[:2] not in only:
                continue
            params = {"profile": profile, "output_dir": str(staging), **params_by_nb.get(nb.stem, {})}
            declared = _declared(nb)
            for key, value in (("data_root", data_root), ("list_dir", list_dir)):
                if value is not None and key in declared:
                    params[key] = str(Path(value).resolve())
            print(f"reproduce [{profile}]: {nb.name} ...", flush=True)
            seconds = execute(nb, staging / "notebooks" / nb.name, params)
            metrics_file = staging / "metrics" / f"{nb.stem}.json"
            if not metrics_file.is_file():
                raise CprflError(f"{nb.name} ran but wrote no metrics/{nb.stem}.json: its results are incomplete")
            manifest["notebooks"][nb.stem] = {"wall_s": round(seconds, 1), "parameters": params | {"output_dir": "."},
                                              "metrics": json.loads(metrics_file.read_text())}
            print(f"reproduce [{profile}]: {nb.name} done in {seconds:.0f} s", flush=True)
        manifest["wall_s"] = round(sum(v["wall_s"] for v in manifest["notebooks"].values()), 1)
        atomic_write_json(staging / "manifest.json", manifest)
        _swap_in(staging, final, keep_old=bool(only))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return final


def _declared(nb: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(nb)))


def _swap_in(staging: Path, final: Path, keep_old: bool) -> None:
    """Replace results/<profile> by the staging folder in two renames (with --only, merge into the old one)."""
    if keep_old and final.is_dir():
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = final / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        return
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def refresh_notebooks(root: Path | None = None) -> None:
    """Re-execute the stored notebooks in place at smoke scale (their committed outputs)."""
    import tempfile

    root = root or project_root()
    reference = root / "tests" / "notebook_metrics"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CPRFL_RESULTS_DIR"] = tmp  # the stored notebooks keep their own (smoke) parameters
        for nb in notebooks(root):
            print(f"refresh: {nb.name} ...", flush=True)
            execute(nb, nb, {})
            # what the stored run measured becomes the reference that `make test` checks
            reference.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / "metrics" / f"{nb.stem}.json", reference / f"{nb.stem}.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cprfl_lib.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="quick", choices=PROFILES)
    p.add_argument("--data-root", help="images of the real benchmarks (VOCdevkit/, train2017/, val2017/)")
    p.add_argument("--list-dir", help="a folder holding the real split lists")
    p.add_argument("--only", nargs="*", help="run only these notebooks (e.g. 01 04); merges into existing results")
    p.add_argument("--refresh-notebooks", action="store_true", help="re-execute notebooks/ in place at smoke scale")
    args = p.parse_args(argv)
    if args.refresh_notebooks:
        return run_command("reproduce", refresh_notebooks)

    def run() -> None:
        start = time.time()
        out = reproduce(args.profile, args.data_root, args.list_dir, args.only)
        tables = len(list((out / "tables").glob("*.csv")))
        figures = len(list((out / "figures").glob("*.png")))
        print(f"reproduce: {out} now holds {tables} tables and {figures} figures ({time.time() - start:.0f} s)")

    return run_command("reproduce", run, interrupted="interrupted; the previous results are unchanged")


if __name__ == "__main__":
    sys.exit(main())
