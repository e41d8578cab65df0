"""``make reproduce``: run notebooks 01-06 with papermill for one profile, in one run context.

    python -m cprfl_repro.reproduce --profile quick                       # the embedded default, offline
    python -m cprfl_repro.reproduce --profile paper-check --data-root D --list-dir L \\
        --override model.backbone_weights=/w/resnet101.pth --override semantics.weights=/w/RN50-openai.bin
    python -m cprfl_repro.reproduce --profile paper --data-root D --list-dir L   # a GPU machine
    python -m cprfl_repro.reproduce --profile quick --name lr --only 05 --settings lr.yaml   # a named variant

A plain reproduction writes ``results/<profile>/``. Anything that differs from the profile (an
override other than the weight files' paths, a settings file, notebook 05's studies, a subset of
the notebooks) is a named variant: it needs ``--name`` (make's NAME=) and writes
``results/<profile>-<name>/``, whose manifest records the base profile and every change; its
tables of notebooks 04 and 05 stand beside the profile's own runs (:mod:`cprfl_repro.compare`).
The notebooks get only what a user would type in their parameters cell (profile, name, the
user's overrides, folders, studies); their settings come from the profile through the context.

The run context (profile, image root, list folder, overrides, output folder) is resolved once,
checked (an override no recipe knows is refused by name), recorded in the manifest and handed
to every notebook. For the paper profiles the plan (runs, hours, disk) is printed first; the
paper profile refuses to start on a CPU unless ``--force``. While the notebooks run, one line
per finished run. Everything is written into a staging folder beside ``results/<profile>/`` and
moved into place only when every notebook has run: a failure or an interruption (Ctrl-C,
SIGTERM) leaves the previous results as they were. ``--refresh-notebooks`` re-executes the
stored notebooks in place at smoke scale (what ``make notebooks`` does before they are committed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

from cprfl_lib.errors import CprflError, run_command
from cprfl_lib.io import atomic_write_json, replace_dir, temp_dir_for
from cprfl_lib.runinfo import provenance
from cprfl_repro import context
from cprfl_repro.children import stop_children
from cprfl_repro.context import PROFILES, profile_parameters, project_root, results_root  # noqa: F401
from cprfl_repro.index import write_index
from cprfl_repro.studies import PROGRESS_ENV

KERNEL = "cprfl"
PLANNED = ("paper", "paper-check")  # profiles whose plan is printed before they start
REFUSE_ON_CPU = ("paper",)


def notebooks(root: Path) -> list[Path]:
    found = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise CprflError(f"no notebooks found in {root / 'notebooks'}")
    return found


def _declared(nb: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(nb)))


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
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: papermill may not get to shut the kernel down
        stop_children()
        raise
    return time.time() - start


class _Tail(threading.Thread):
    """Prints the lines appended to a file (the finished-run lines the notebooks' studies write)."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stop = path, threading.Event()
        path.write_text("")

    def run(self) -> None:
        with open(self.path) as fh:
            while not self.stop.is_set():
                line = fh.readline()
                if line:
                    print(f"reproduce: {line.rstrip()}", flush=True)
                else:
                    time.sleep(0.3)
            for line in fh:
                print(f"reproduce: {line.rstrip()}", flush=True)


def _plan(ctx, params_by_nb: dict, found: list[Path], force: bool, commands: str | None):
    import torch

    from cprfl_repro.plan import make_plan, with_rate, write_commands
    from cprfl_repro.studies import pool_size

    plan = with_rate(make_plan(ctx, params_by_nb, found), ctx, pool_size("auto")[0])
    print(f"reproduce [{ctx.profile}]: the plan", flush=True)
    for line in plan.lines():
        print(line, flush=True)
    if commands:
        path = write_commands(plan, Path(commands).expanduser().resolve())
        print(f"reproduce: {len(plan.todo)} `cprfl train` commands written to {path}; run them, then "
              f"`make reproduce PROFILE={ctx.profile}` with the same settings reads the finished runs", flush=True)
        return plan, True
    if ctx.profile in REFUSE_ON_CPU and not torch.cuda.is_available() and not force and plan.todo:
        raise CprflError(f"the {ctx.profile} profile would take about {plan.hours():,.0f} hours on this CPU "
                         f"({len(plan.todo)} runs); run it on a GPU machine, or pass FORCE=1 to run it here anyway")
    return plan, False


OVERRIDE_START = re.compile(r"\s+(?=[A-Za-z_][\w-]*(?:\.[\w-]+)+=)")


def split_overrides(text: str | None) -> list[str]:
    """``OVERRIDES="a.b=1 loss.params={gamma_neg: 2, clip: 0.05} c.d=/a path/x"``: one override starts at each
    ``section.key=`` after a space; a value keeps its spaces."""
    text = (text or "").strip()
    return [item for item in OVERRIDE_START.split(text) if item] if text else []


def split_list(text: str | None) -> list[str]:
    """``ONLY`` / ``STUDIES``: entries separated by commas (or, without a comma, by spaces); a whole string that
    names an existing file is one entry (a study file with a space in its path)."""
    text = (text or "").strip()
    if not text:
        return []
    if "," in text:
        return [t.strip() for t in text.split(",") if t.strip()]
    return [text] if Path(text).expanduser().is_file() else text.split()


def choose_notebooks(found: list[Path], only: list[str] | None) -> list[Path]:
    """The notebooks ``only`` names (a stem or its two-digit number); one that does not exist is refused."""
    if not only:
        return found
    known = {nb.stem for nb in found} | {nb.stem[:2] for nb in found}
    unknown = [o for o in only if o not in known]
    if unknown:
        raise CprflError(f"ONLY: no notebook {', '.join(map(repr, unknown))} (notebooks: "
                         f"{', '.join(nb.stem for nb in found)})")
    return [nb for nb in found if nb.stem in only or nb.stem[:2] in only]


def variant_changes(overrides, settings: str | None, studies, only) -> tuple[dict, dict]:
    """What makes a reproduction differ from its profile (recorded in the manifest): the overrides (OVERRIDES, then
    the SETTINGS file's), the studies of notebook 05, the notebook subset; and apart, the overrides that only locate
    input files (``context.INPUT_KEYS``: a plain reproduction of the paper profiles takes them)."""
    from cprfl_lib.train.recipes import parse_overrides
    from cprfl_repro.context import flatten, read_settings

    user = parse_overrides(overrides)
    user = {k2: v2 for k, v in user.items()
            for k2, v2 in (flatten({k: v}) if "." not in k and isinstance(v, dict) else {k: v}).items()}
    changes = {}
    if settings:
        changes["settings"] = {"file": str(Path(settings).expanduser().resolve()), "values": read_settings(settings)}
    merged = {**user, **(changes.get("settings") or {}).get("values", {})}
    if any(k not in context.INPUT_KEYS for k in merged):
        changes["overrides"] = {k: v for k, v in merged.items() if k not in context.INPUT_KEYS}
    inputs = {k: v for k, v in merged.items() if k in context.INPUT_KEYS}  # overrides that locate input files
    if studies:
        changes["studies"] = list(studies)
    if only:
        changes["only"] = list(only)
    return changes, inputs


def reproduce(profile: str, data_root: str | None = None, list_dir: str | None = None,
              overrides: list[str] | None = None, only: list[str] | None = None, force: bool = False,
              commands: str | None = None, root: Path | None = None, name: str | None = None,
              settings: str | None = None, studies: list[str] | None = None) -> Path:
    """Run the notebooks of ``profile``. Plain (no name, override, settings file, studies or subset): into
    ``results/<profile>/``. Anything else is a named variant: ``name`` is required and the results go to
    ``results/<profile>-<name>/``, whose manifest records the base profile and every change."""
    root = root or project_root()
    # a study file is named from the user's folder; the notebook runs in notebooks/: hand it on as an absolute path
    studies = [str(Path(s).expanduser().resolve()) if s.endswith((".yaml", ".yml")) or "/" in s else s
               for s in studies or []]
    changes, inputs = variant_changes(overrides, settings, studies, only)
    user = {**inputs, **changes.get("overrides", {})}
    if name is None and changes:
        raise CprflError(f"a reproduction that differs from the {profile} profile ({', '.join(changes)}) needs a name: "
                         f"NAME=... writes results/{profile}-<name>/ (only a plain `make reproduce PROFILE={profile}` "
                         f"writes results/{profile}/)")
    final = results_root(root) / (f"{profile}-{context.check_name(profile, name)}" if name is not None else profile)
    found = choose_notebooks(notebooks(root), only)
    if studies and not any(nb.stem == "05_ablations" for nb in found):
        raise CprflError("STUDIES: the studies run in notebook 05, which ONLY leaves out")
    # everything is checked before anything is written: the context (overrides), every notebook's recipes, the
    # user's studies (an unknown study, a variant's unknown key: refused by name)
    ctx = context.resolve(profile, output_dir=final, data_root=data_root, list_dir=list_dir,
                          overrides=user, name=name, create=False)
    params_by_nb = ctx.params
    subset = params_by_nb.get("notebooks")  # a profile's notebooks (own: 01, 02, 04, 06); None: all
    found = [nb for nb in found if subset is None or nb.stem in subset]
    for nb in found:
        recipes = params_by_nb.get(nb.stem, {}).get("recipes") or {}
        for recipe in [*recipes.values(), params_by_nb.get(nb.stem, {}).get("recipe")]:
            if recipe:
                ctx.recipe(recipe)
    if studies:
        from cprfl_repro import experiments

        nb05 = ctx.notebook("05_ablations")
        chosen = experiments.ablation_studies(ctx, nb05["recipe"], nb05["seeds"], list(studies), nb05["encoder_options"])
        for study_name, study in chosen.items():
            for label, variant in study.variants.items():
                if isinstance(variant, dict):
                    context.check_keys(context.flatten(variant), f"STUDIES: study {study_name!r}, variant {label!r}: ")
    staging = temp_dir_for(final)
    previous = {k: os.environ.get(k) for k in (PROGRESS_ENV, "CPRFL_RESULTS_DIR")}
    tail = None
    try:
        ctx = context.resolve(profile, output_dir=staging, data_root=data_root, list_dir=list_dir,
                              overrides=user, name=name)
        plan = None
        if profile in PLANNED:
            planned = {k: ({**v, "studies": list(studies)} if k == "05_ablations" and studies else v)
                       for k, v in params_by_nb.items() if k not in ("overrides", "notebooks")}
            plan, stop = _plan(ctx, planned, found, force, commands)
            if stop:
                return final
        manifest = {"profile": final.name, "base_profile": profile, "name": name, "changes": changes, "inputs": inputs,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "context": ctx.describe(),
                    "notebooks": {}, **provenance(),
                    **({"plan": {"runs": len(plan.runs), "to_train": len(plan.todo), "hours": plan.hours(),
                                 "disk_gib": plan.disk / 2**30, "rate": plan.rate_source}} if plan else {})}
        progress = staging / ".progress.log"
        tail = _Tail(progress)
        tail.start()
        os.environ[PROGRESS_ENV] = str(progress)
        os.environ["CPRFL_RESULTS_DIR"] = str(staging)  # the kernels' output folder (not a parameter: see parameters())
        for nb in found:
            declared = _declared(nb)
            params = {k: v for k, v in ctx.parameters().items() if k in declared}
            if studies and nb.stem == "05_ablations":
                params["studies"] = list(studies)
            print(f"reproduce [{final.name}]: {nb.name} ...", flush=True)
            seconds = execute(nb, staging / "notebooks" / nb.name, params)
            metrics_file = staging / "metrics" / f"{nb.stem}.json"
            if not metrics_file.is_file():
                raise CprflError(f"{nb.name} ran but wrote no metrics/{nb.stem}.json: its results are incomplete")
            manifest["notebooks"][nb.stem] = {"wall_s": round(seconds, 1), "parameters": params,
                                              "settings": ctx.params.get(nb.stem, {}),
                                              "metrics": json.loads(metrics_file.read_text())}
            print(f"reproduce [{final.name}]: {nb.name} done in {seconds:.0f} s", flush=True)
        tail.stop.set()
        tail.join()
        progress.unlink(missing_ok=True)
        manifest["wall_s"] = round(sum(v["wall_s"] for v in manifest["notebooks"].values()), 1)
        write_index(staging, final.name)  # INDEX.md: every table and figure with its caption
        atomic_write_json(staging / "manifest.json", manifest)
        _swap_in(staging, final, keep_old=bool(only))
    finally:
        if tail is not None:
            tail.stop.set()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _swap_in(staging: Path, final: Path, keep_old: bool) -> None:
    """Replace results/<profile> by the staging folder in two renames (with --only, merge into the old one)."""
    if keep_old and final.is_dir():
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = final / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
        write_index(final)  # the merged folder's tables and figures
        return
    replace_dir(staging, final)


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
    p = argparse.ArgumentParser(prog="python -m cprfl_repro.reproduce", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="quick", choices=PROFILES)
    p.add_argument("--data-root", help="images of the real benchmarks (VOCdevkit/, train2017/, val2017/)")
    p.add_argument("--list-dir", help="the real split lists: one folder, or a parent of voc_lt/ and coco_lt/")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every run of every notebook (repeatable)")
    p.add_argument("--overrides", default="", metavar="TEXT",
                   help="several overrides in one string (make's OVERRIDES): each starts at a 'section.key=' after a space")
    p.add_argument("--name", default="", help="a named variant: results/<profile>-<name>/ (required for any change)")
    p.add_argument("--settings", default="", metavar="FILE", help="a YAML file of recipe settings for every run")
    p.add_argument("--studies", default="", metavar="LIST",
                   help="notebook 05's studies: built-in names or YAML study files, separated by commas")
    p.add_argument("--only", nargs="*", help="run only these notebooks (e.g. 01 04, or '05,06'); merges into an "
                   "existing variant's results")
    p.add_argument("--force", action="store_true", help="run the paper profile on a CPU all the same")
    p.add_argument("--write-commands", metavar="FILE", help="write the plan as one `cprfl train` command per run "
                   "(for a cluster's scheduler) instead of running the notebooks")
    p.add_argument("--refresh-notebooks", action="store_true", help="re-execute notebooks/ in place at smoke scale")
    args = p.parse_args(argv)
    if args.refresh_notebooks:
        return run_command("reproduce", refresh_notebooks)

    def run() -> None:
        start = time.time()
        only = [o for item in args.only or [] for o in split_list(item)]
        out = reproduce(args.profile, args.data_root or None, args.list_dir or None,
                        [*args.override, *split_overrides(args.overrides)], only, args.force,
                        args.write_commands or None, name=args.name or None, settings=args.settings or None,
                        studies=split_list(args.studies))
        if args.write_commands:
            return
        tables = len(list((out / "tables").glob("*.csv")))
        figures = len(list((out / "figures").glob("*.png")))
        print(f"reproduce: {out} now holds {tables} tables and {figures} figures ({time.time() - start:.0f} s)")

    return run_command("reproduce", run, interrupted="interrupted; the previous results are unchanged")


if __name__ == "__main__":
    sys.exit(main())
