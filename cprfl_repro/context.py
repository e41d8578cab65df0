"""The run context: what one reproduction runs on, resolved once and handed to every notebook.

The profile (``cprfl_repro/profiles/<profile>.yaml``) is the one source of a notebook's settings:
:func:`resolve` reads it, and a notebook takes its recipes, seeds and studies from
:meth:`RunContext.notebook`, whether ``make reproduce`` runs it or a user runs it by hand (JupyterLab,
nbclient, papermill). Its parameters cell holds only what a user changes: the profile, a variant's
name, the folders, the overrides (and notebook 05's studies). Where the results go:

- ``make reproduce PROFILE=p`` (plain): ``results/p/`` (through a staging folder, ``$CPRFL_RESULTS_DIR``);
- a named variant (``NAME=x``, or ``name = "x"`` by hand): ``results/p-x/``, never ``results/p/``;
- a notebook run by hand without a name: ``results/p-lab/`` (only a plain reproduction writes ``results/p/``).

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
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from cprfl_lib.errors import CprflError
from cprfl_lib.paths import cache_dir
from cprfl_lib.train.recipes import load_recipe, parse_overrides

PROFILES = ("smoke", "quick", "quick-extra", "paper", "paper-check", "own", "own-paper")
# a profile whose runs are another's (same recipes): it finds them trained already
RUNS_OF = {"paper-check": "paper", "quick-extra": "quick"}
# overrides that only locate the input files of a profile (the paper profiles' weight files), like DATA_ROOT and
# LIST_DIR: a plain reproduction takes them; every other override is a change, which needs a name
INPUT_KEYS = ("model.backbone_weights", "semantics.weights")
HAND_NAME = "lab"  # the variant name of a notebook run by hand without one: results/<profile>-lab/
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


def _profile_file(profile: str) -> dict:
    import yaml

    if profile not in PROFILES:
        raise CprflError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    path = resources.files("cprfl_repro") / "profiles" / f"{profile}.yaml"
    own = yaml.safe_load(path.read_text()) or {}
    if not isinstance(own, dict):
        raise CprflError(f"profile {profile}.yaml: a profile is a mapping of notebooks")
    return own


def profile_parameters(profile: str) -> dict[str, Any]:
    """Every notebook's settings under ``profile`` ({notebook stem: settings}) and ``overrides`` for every run.

    ``smoke.yaml`` holds every setting of every notebook (the smallest scale, what CI runs); another profile
    gives only what it changes, notebook by notebook, over its ``base:`` (else over smoke). A setting smoke
    does not have is refused by name."""
    own = _profile_file(profile)
    base = own.pop("base", None if profile == "smoke" else "smoke")
    if base is None:
        return own
    merged = profile_parameters(base)
    known = _profile_file("smoke")
    for stem, params in own.items():
        if stem == "overrides":
            merged["overrides"] = {**(merged.get("overrides") or {}), **(params or {})}
            continue
        if stem == "notebooks":  # the notebooks the profile runs (own: 01, 02, 04, 06); else every one
            unknown = sorted(set(params or ()) - set(known) - {"overrides"})
            if unknown:
                raise CprflError(f"profile {profile}.yaml: notebooks: no notebook {', '.join(map(repr, unknown))}")
            merged["notebooks"] = list(params or ())
            continue
        if stem not in known:
            raise CprflError(f"profile {profile}.yaml: {stem!r} is not a notebook (notebooks: "
                             f"{', '.join(k for k in known if k != 'overrides')})")
        unknown = sorted(set(params or {}) - set(known[stem]))
        if unknown:
            raise CprflError(f"profile {profile}.yaml: {stem} has no setting {', '.join(map(repr, unknown))} "
                             f"(its settings: {', '.join(known[stem])})")
        merged[stem] = {**merged.get(stem, {}), **(params or {})}
    return merged


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys down to their leaves: ``{loss: {params: {gamma_neg: 2}}}`` ->
    ``{"loss.params.gamma_neg": 2}`` (which changes that entry and keeps its siblings)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """A settings file (any YAML of recipe settings, nested or dotted keys) as dotted overrides, checked against
    the recipes' keys (an unknown key is refused naming the file)."""
    import yaml

    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CprflError(f"SETTINGS {path}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise CprflError(f"SETTINGS {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise CprflError(f"SETTINGS {path}: a settings file is a mapping of recipe settings, e.g. 'optim: {{lr: 0.002}}'")
    settings = flatten(data)
    try:
        check_keys(settings)
    except CprflError as exc:
        raise CprflError(f"SETTINGS {path}: {exc}") from None
    return settings


def check_keys(overrides: Mapping[str, Any], what: str = "") -> None:
    """Refuse, by name, a dotted key no recipe knows (a key inside a loss's ``params`` is the loss's to check)."""
    from cprfl_lib.train.recipes import OPAQUE, defaults

    known = defaults()
    for key in overrides:
        node, path = known, []
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                here = ", ".join(sorted(node)) if isinstance(node, dict) else "nothing: it is a value"
                raise CprflError(f"{what}unknown configuration key {key!r} (known under "
                                 f"{'.'.join(path) or 'the top'}: {here})")
            path.append(part)
            node = node[part]
            if part in OPAQUE:
                break
        if len(path) == 1 and isinstance(node, dict):
            raise CprflError(f"{what}configuration key {key!r} is a section; give one of its keys "
                             f"({', '.join(sorted(node))})")


VARIANT_NAME = re.compile(r"^[^\W_][\w.-]*$")


def check_name(profile: str, name: str) -> str:
    """A variant's name: letters (any script), digits, '.', '-', '_'; ``<profile>-<name>`` must not be a profile."""
    if not isinstance(name, str) or not VARIANT_NAME.match(name) or len(name) > 80:
        raise CprflError(f"NAME {name!r}: a variant's name is letters, digits, '.', '-' or '_' (starting with a "
                         "letter or digit, at most 80)")
    if name in PROFILES or f"{profile}-{name}" in PROFILES:
        clash = name if name in PROFILES else f"{profile}-{name}"
        raise CprflError(f"NAME {name!r}: {clash!r} is a built-in profile ({', '.join(PROFILES)}); choose another name")
    return name


@dataclass(frozen=True)
class RunContext:
    """One reproduction's inputs and outputs (see the module docstring)."""

    profile: str
    output_dir: Path  # tables/, figures/, metrics/ of this profile
    work_dir: Path  # the run store: one folder per distinct configuration
    data_root: Path | None = None  # the real benchmarks' images
    list_dir: Path | None = None  # the real benchmarks' split lists (one folder, or a parent of voc_lt/, coco_lt/)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, for every run
    name: str | None = None  # a named variant's name (results/<profile>-<name>/)
    user: dict[str, Any] = field(default_factory=dict)  # the user's overrides (in ``overrides``, after the profile's)
    params: dict[str, dict] = field(default_factory=dict)  # the profile's settings of each notebook

    @property
    def changes(self) -> dict[str, Any]:
        """The user's overrides that change what runs (not those that only locate input files: INPUT_KEYS)."""
        return {k: v for k, v in self.user.items() if k not in INPUT_KEYS}

    def notebook(self, stem: str) -> dict[str, Any]:
        """The settings of notebook ``stem`` under this profile (recipes, seeds, studies, ...): a copy."""
        import copy

        params = self.params or profile_parameters(self.profile)
        if stem not in params or stem == "overrides":
            raise CprflError(f"profile {self.profile}: no notebook {stem!r} (notebooks: "
                             f"{', '.join(k for k in params if k != 'overrides')})")
        return copy.deepcopy(params[stem])

    def reference(self) -> "RunContext":
        """The same context without the user's changes: the profile's own runs (the run store is the same)."""
        from dataclasses import replace

        plain = {k: v for k, v in self.overrides.items() if k not in self.changes}
        plain.update((self.params or profile_parameters(self.profile)).get("overrides") or {})
        return replace(self, overrides=plain, name=None, user={k: v for k, v in self.user.items() if k in INPUT_KEYS})

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
            section = key.partition(".")[0]
            if section not in known or not isinstance(known[section], dict):
                raise CprflError(f"OVERRIDES: unknown configuration key {key!r} (known sections: "
                                 f"{', '.join(k for k, v in known.items() if isinstance(v, dict))})")
        check_keys(self.overrides, "OVERRIDES: ")
        return self

    def describe(self) -> dict:
        """For the manifest: what this reproduction ran on."""
        return {"profile": self.profile, "name": self.name, "data_root": str(self.data_root) if self.data_root else None,
                "list_dir": str(self.list_dir) if self.list_dir else None, "overrides": dict(self.overrides),
                "changes": dict(self.changes), "work_dir": str(self.work_dir), "pipeline_check": self.is_check}

    def parameters(self) -> dict:
        """The papermill parameters every notebook takes for this context: what a user would type in its parameters
        cell (the profile, the name, the folders given, the user's own overrides; the output folder is passed in
        ``$CPRFL_RESULTS_DIR``, so that an executed copy re-run by hand never writes into it)."""
        return {"profile": self.profile, "name": self.name,
                "data_root": str(self.data_root) if self.data_root else None,
                "list_dir": str(self.list_dir) if self.list_dir else None, "overrides": dict(self.user)}

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
            overrides: Mapping[str, Any] | list[str] | None = None, name: str | None = None,
            create: bool = True) -> RunContext:
    """The context of a notebook run under ``profile`` (its settings read from the profile file). ``overrides``
    (dotted keys, nested mappings or ``key=value`` strings) apply to every run after the profile's own.

    Results go to ``output_dir``, else ``$CPRFL_RESULTS_DIR`` (make reproduce's staging folder, the tests'),
    else ``results/<profile>-<name>/`` (``name`` defaults to 'lab' by hand: only a plain reproduction writes
    ``results/<profile>/``). Runs go to ``work_dir``, else the profile's run store in the cache."""

    params = profile_parameters(profile)
    if name is not None:
        check_name(profile, name)
    changes = parse_overrides(overrides)
    # a section given as a mapping ({"loss": {"params": {"gamma_neg": 2}}}) changes the entries it names
    changes = {k2: v2 for k, v in changes.items()
               for k2, v2 in (flatten({k: v}) if "." not in k and isinstance(v, Mapping) else {k: v}).items()}
    out = Path(output_dir or os.environ.get("CPRFL_RESULTS_DIR") or results_root() / f"{profile}-{name or HAND_NAME}")
    work = Path(work_dir) if work_dir else cache_dir("runs", RUNS_OF.get(profile, profile))
    as_path = lambda p: Path(p).expanduser().resolve() if p else None  # noqa: E731
    ctx = RunContext(profile, out, work, as_path(data_root), as_path(list_dir),
                     {**(params.get("overrides") or {}), **changes}, name, changes, params).check()
    for folder in (out, out / "tables", out / "figures", out / "metrics", work) if create else ():
        folder.mkdir(parents=True, exist_ok=True)
    return ctx


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
