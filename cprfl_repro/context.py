"""The run context: what one reproduction runs on, resolved once and handed to every notebook.

``make reproduce`` (and a notebook run by hand) resolves the profile, the image root, the
split-list folder, the recipe overrides and the output folders once, records them in the
manifest, and passes them to each notebook as the same papermill parameters. A notebook then
loads every recipe through :meth:`RunContext.recipe` and writes every table and figure through
:meth:`RunContext.table` / :meth:`RunContext.figure`; it never works out a path or a list
location itself. The overrides apply to every run of every notebook (a key no recipe knows is
refused by name before anything runs), after the profile's own ones (the check scale's) and
before a study's variant (which says what the variant is).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cprfl_lib.errors import CprflError
from cprfl_lib.paths import cache_dir
from cprfl_lib.train.recipes import load_recipe, parse_overrides

PROFILES = ("smoke", "quick", "quick-extra", "paper", "paper-check", "own", "own-paper")
# a profile whose runs are another's (same recipes): it finds them trained already
RUNS_OF = {"paper-check": "paper", "quick-extra": "quick"}
CHECK_LABEL = "PIPELINE CHECK, NOT RESULTS"
CHECK_NOTE = ("pipeline check, not results: every run trained a step or two and was evaluated on a fixed subset of "
              "the test images; these numbers only show that the data, weights and code run end to end")


def project_root(start: Path | None = None) -> Path:
    """The checkout that holds notebooks/ and results/ (found from the working directory upwards)."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    raise CprflError(f"no cprfl checkout (a folder with notebooks/ and pyproject.toml) at or above {start}; "
                     "pass output_dir explicitly")


def results_root(root: Path | None = None) -> Path:
    """Where profiles' results go: ``$CPRFL_RESULTS_ROOT`` (tests), else the checkout's results/."""
    env = os.environ.get("CPRFL_RESULTS_ROOT")
    return Path(env).expanduser() if env else (root or project_root()) / "results"


@dataclass(frozen=True)
class RunContext:
    """One reproduction's inputs and outputs (see the module docstring)."""

    profile: str
    output_dir: Path  # tables/, figures/, metrics/ of this profile
    work_dir: Path  # the run store: one folder per distinct configuration
    data_root: Path | None = None  # the real benchmarks' images
    list_dir: Path | None = None  # the real benchmarks' split lists (one folder, or a parent of voc_lt/, coco_lt/)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, for every run

    @property
    def is_check(self) -> bool:
        return self.profile == "paper-check"

    @property
    def group_thresholds(self):
        """The overrides' data.group_thresholds (None: the recipes' default, the paper's 100 / 20)."""
        return self.overrides.get("data.group_thresholds")

    def run_overrides(self, recipe: str | Mapping) -> dict[str, Any]:
        """What every run of ``recipe`` gets: the image root and list folder (real datasets), then the overrides."""
        dataset = (recipe if isinstance(recipe, Mapping) else load_recipe(recipe))["data"]["dataset"]
        paths = {}
        if not dataset.startswith("synth-"):  # generated data live in the cache; their folders are not the user's
            paths = {k: str(v) for k, v in (("data.data_root", self.data_root), ("data.list_dir", self.list_dir))
                     if v is not None}
        return {**paths, **self.overrides}

    def recipe(self, name: str, extra: Mapping[str, Any] | None = None) -> dict:
        """A recipe resolved for this reproduction (validated), with ``extra`` overrides last."""
        config = load_recipe(name, {**self.run_overrides(name), **(extra or {})})
        return config

    def encoder_weights(self, encoder: str) -> Any:
        """The weights a CLIP ``encoder`` gets here: the OVERRIDES ``semantics.weights`` file for the runs' encoder
        (``semantics.encoder``, the paper recipes' clip-rn50 unless overridden), else the 'openai' tag."""
        if "semantics.weights" in self.overrides and encoder == self.overrides.get("semantics.encoder", "clip-rn50"):
            return self.overrides["semantics.weights"]
        return "openai"

    def check(self) -> "RunContext":
        """Refuse now, by name, an override no recipe of this reproduction knows (before any notebook runs)."""
        from cprfl_lib.train.recipes import defaults
        from cprfl_repro.style import current

        current()  # a style file with an unknown key or a bad value: refused now, before any notebook runs
        known = defaults()
        for key in self.overrides:
            section, _, leaf = key.partition(".")
            if section not in known or not isinstance(known[section], dict) or leaf not in known[section]:
                raise CprflError(f"OVERRIDES: unknown configuration key {key!r} (known sections: "
                                 f"{', '.join(k for k, v in known.items() if isinstance(v, dict))})")
        return self

    def describe(self) -> dict:
        """For the manifest: what this reproduction ran on."""
        return {"profile": self.profile, "data_root": str(self.data_root) if self.data_root else None,
                "list_dir": str(self.list_dir) if self.list_dir else None, "overrides": dict(self.overrides),
                "work_dir": str(self.work_dir), "pipeline_check": self.is_check}

    def parameters(self) -> dict:
        """The papermill parameters every notebook takes for this context."""
        return {"profile": self.profile, "output_dir": str(self.output_dir), "work_dir": str(self.work_dir),
                "data_root": str(self.data_root) if self.data_root else None,
                "list_dir": str(self.list_dir) if self.list_dir else None, "overrides": dict(self.overrides)}

    # -- outputs: every table and figure of a pipeline check says so

    def table(self, df, name: str, caption: str, notes=()) -> dict:
        from cprfl_repro.tables import write_table

        if not self.is_check:
            return self._indexed(write_table(df, name, self.output_dir, caption=caption, notes=list(notes)))
        return self._indexed(write_table(df, name, self.output_dir, caption=f"{CHECK_LABEL}: {caption}",
                                         notes=[CHECK_NOTE, *notes], label=f"{CHECK_LABEL}: {CHECK_NOTE}"))

    def figure(self, fig, name: str, caption: str | None = None) -> dict:
        """Save ``fig`` as figures/<name>.png and .pdf, its ``caption`` beside it (INDEX.md lists it; None: listed
        as missing)."""
        from cprfl_repro.figures import save_figure
        from cprfl_repro.style import current

        if self.is_check:
            small = current().small
            big = max(small, min(3 * small, 0.9 * fig.get_figwidth() * 72 / (0.62 * len(CHECK_LABEL))))  # fits
            fig.text(0.5, 0.5, CHECK_LABEL, fontsize=big, color="red", alpha=0.35, ha="center", va="center",
                     rotation=20, transform=fig.transFigure, zorder=1000)
            note = current().wrap(CHECK_NOTE, fig.get_figwidth() * 0.98, small)
            fig.text(0.5, 0.0, note, fontsize=small, color="red", ha="center", va="top")  # under it: covers nothing
            caption = f"{CHECK_LABEL}: {caption}" if caption else caption
        return self._indexed(save_figure(fig, name, self.output_dir, caption=caption))

    def _indexed(self, paths: dict) -> dict:
        """INDEX.md kept current after each table and figure (a notebook run by hand too)."""
        from cprfl_repro.index import write_index

        write_index(self.output_dir)
        return paths

    def metrics(self, notebook: str, metrics: dict) -> Path:
        from cprfl_lib.io import atomic_write_json

        path = self.output_dir / "metrics" / f"{notebook}.json"
        atomic_write_json(path, {**metrics, **({"pipeline_check": CHECK_NOTE} if self.is_check else {})})
        return path


def resolve(profile: str, output_dir: str | os.PathLike | None = None, work_dir: str | os.PathLike | None = None,
            data_root: str | os.PathLike | None = None, list_dir: str | os.PathLike | None = None,
            overrides: Mapping[str, Any] | list[str] | None = None) -> RunContext:
    """The context of a notebook run: results in ``output_dir`` (else ``$CPRFL_RESULTS_DIR``, else
    ``results/<profile>``), runs in ``work_dir`` (else the cache); folders created."""
    if profile not in PROFILES:
        raise CprflError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    out = Path(output_dir or os.environ.get("CPRFL_RESULTS_DIR") or results_root() / profile)
    work = Path(work_dir) if work_dir else cache_dir("runs", RUNS_OF.get(profile, profile))
    for folder in (out, out / "tables", out / "figures", out / "metrics", work):
        folder.mkdir(parents=True, exist_ok=True)
    as_path = lambda p: Path(p).expanduser().resolve() if p else None  # noqa: E731
    return RunContext(profile, out, work, as_path(data_root), as_path(list_dir), parse_overrides(overrides)).check()


def describe_data(name: str) -> str:
    """One line that says what data a number comes from (generated data is never called VOC or COCO)."""
    if name == "own" or name.startswith("own:"):
        return f"{name}: your own dataset (not VOC-LT or COCO-LT; no paper numbers to compare with)"
    if name.startswith("synth-"):
        real = name.removeprefix("synth-").upper()
        return f"{name}: generated data shaped like {real} (drawn scenes, not photographs; not a {real} result)"
    return f"{name}: the published {name.upper()} split lists on real images"


def describe_config(config: Mapping) -> str:
    """:func:`describe_data` of a resolved recipe's dataset; a user's dataset by its folder (``own:<folder>``)."""
    data = config["data"]
    if data["dataset"] == "own" and data["data_root"]:
        from cprfl_lib.data.own import display_name

        return describe_data(display_name(data["data_root"]))
    return describe_data(data["dataset"])
