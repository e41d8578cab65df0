"""The paper's experiments as studies: for each table or figure, its variants as recipe overrides.

A variant's name is the row label of the paper's table. Notebook 05's studies are data: one YAML
file each in ``cprfl_repro/study_files/`` (Tables 2 and 3, Fig. 3, the embedding scale, and the
studies beyond the paper), read by :func:`cprfl_repro.studies.read_study` like a user's own study
file, and bound to the notebook's recipe, seeds and run context by :func:`ablation_studies`. A
variant that needs something this machine lacks (CLIP weights offline, a GloVe file) becomes an
:class:`~cprfl_repro.studies.Unavailable` with the reason (:func:`with_encoder`). The studies of
notebooks 04-06 are built here, by :func:`training_studies`, :func:`ablation_studies` and
:func:`visualization_studies`, so that the notebooks and the plan ``make reproduce`` prints before
it starts (:mod:`cprfl_repro.plan`) count the same runs.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from cprfl_lib.errors import CprflError
from cprfl_lib.semantics import encoder_status
from cprfl_repro.context import RunContext
from cprfl_repro.studies import Study, Unavailable, read_study, run_config

ENCODER_LABELS = {"clip-rn50": "CLIP-RN50", "clip-vit-b-16": "CLIP-ViT-B/16", "minilm": "MiniLM", "glove": "GloVe",
                  "word2vec": "Word2Vec", "randn": "Randn", "onehot": "One-hot", "clip-tiny": "CLIP-tiny"}
LINEAR = {"model.head": "linear"}
KEEP_WEIGHTS = {"train.save_weights": True}  # notebook 06 reads this run's weights (the attention maps)
PAPER_CPRFL = "CPRFL-CLIP (RN50)"  # the paper's row our CPRFL row is compared with


def semantics_variant(encoder: str, options: dict | None = None) -> dict | Unavailable:
    """Overrides that switch the prompt initialization to ``encoder``, or why it cannot run here."""
    options = dict(options or {})
    if encoder.startswith("clip"):
        options.setdefault("weights", "openai")
    ok, reason = encoder_status(encoder, **options)
    if not ok:
        return Unavailable(reason)
    if not encoder.startswith("clip"):
        options["weights"] = None  # weights name CLIP checkpoints only
    if encoder != "randn":  # a pretrained encoder decides its width; the recipe's dim is randn's
        options.setdefault("dim", None)
    return {"semantics.encoder": encoder, **{f"semantics.{k}": v for k, v in options.items()}}


def cprfl_label(encoder: str) -> str:
    return f"CPRFL-{ENCODER_LABELS.get(encoder, encoder)}"


def paper_names(encoder: str) -> dict[str, str]:
    """Our row label -> the paper's Table 1 row it is compared with."""
    return {cprfl_label(encoder): PAPER_CPRFL}


def loss(name: str) -> dict:
    """Switch the loss; its parameters are the loss's own defaults (a recipe's ASL γ do not carry over)."""
    return {"loss.name": name, "loss.params": {}}


def table1(encoder: str, glove: dict | None = None) -> dict:
    """Table 1: the ResNet-based baselines that share the backbone and recipe, and CPRFL."""
    return {
        "ERM": {**LINEAR, **loss("bce")},
        "RW": {**LINEAR, **loss("rw")},
        "CB Focal": {**LINEAR, **loss("cb_focal")},
        "DB Focal": {**LINEAR, **loss("db_focal")},
        "ASL": {**LINEAR, "loss.name": "asl"},  # the recipe's ASL, with its γ and clip
        "CPRFL-GloVe": semantics_variant("glove", glove),
        cprfl_label(encoder): dict(KEEP_WEIGHTS),
    }


def finetune(epochs: int, steps: int | None = None) -> dict:
    """The short end-to-end run: the backbone trains too (at a tenth of the head's learning rate); ``steps``: at most
    this many optimizer steps an epoch (a CPU demonstration of the path)."""
    return {"model.freeze_backbone": False, "train.cache_features": False, "optim.backbone_lr_mult": 0.1,
            "optim.epochs": epochs, "optim.warmup_epochs": 0, **({"train.max_steps_per_epoch": steps} if steps else {})}


# ---------------------------------------------------------------- the studies of notebook 05, as data

STUDY_DIR = resources.files("cprfl_repro") / "study_files"  # the built-in studies: one YAML file each
PAPER_STUDIES = ("table2", "table3", "figure3", "embedding_scale")  # notebook 05 shows these beside the paper's


def builtin_studies() -> list[str]:
    """The names of the built-in studies (``cprfl_repro/study_files/<name>.yaml``)."""
    return sorted(p.name[:-5] for p in STUDY_DIR.iterdir() if p.name.endswith(".yaml"))


def is_study_file(entry: str) -> bool:
    """A ``studies`` entry that is a path to a study file (else a built-in study's name)."""
    return str(entry).endswith((".yaml", ".yml")) or "/" in str(entry) or os.sep in str(entry)


def load_study(entry: str | os.PathLike) -> tuple[str, Study, str]:
    """(name, study, where it was read) of a built-in study's name or a study file's path (relative to the current
    folder); recipe and seeds unset where the study names none."""
    entry = str(entry)
    if is_study_file(entry):
        path = Path(entry).expanduser()
        if not path.is_file():
            raise CprflError(f"study file {entry} does not exist" + ("" if path.is_absolute() else
                                                                       f" (relative to {Path.cwd()})"))
        name, study = read_study(path)
        if name in builtin_studies():
            raise CprflError(f"{path}: name {name!r} is a built-in study's; give the study another name")
        return name, study, str(path)
    if entry not in builtin_studies():
        raise CprflError(f"unknown study {entry!r}; choose from {builtin_studies()} or give a study file's path "
                         "(name.yaml)")
    path = STUDY_DIR / f"{entry}.yaml"
    return (*read_study(Path(str(path))), f"built-in study {entry}")


def _flat(variant: Mapping) -> dict:
    """A variant's overrides with nested sections written as dotted keys (one level: ``semantics.encoder``)."""
    out = {}
    for key, value in variant.items():
        if "." not in key and isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def with_encoder(variant: Mapping, encoder_options: Mapping | None = None) -> dict | Unavailable:
    """A variant that switches ``semantics.encoder``, completed by :func:`semantics_variant` (the encoder's weights
    and width, the notebook's options for it, the variant's own settings last), or why the encoder cannot run here;
    any other variant as it is."""
    flat = _flat(variant)
    encoder = flat.get("semantics.encoder")
    if not isinstance(encoder, str):
        return dict(variant)
    own = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("semantics.") and k != "semantics.encoder"}
    base = semantics_variant(encoder, {**dict((encoder_options or {}).get(encoder) or {}), **own})
    return base if isinstance(base, Unavailable) else {**base, **variant}


def bind_study(study: Study, where: str, ctx: RunContext, recipe: str, seeds,
               encoder_options: Mapping | None = None) -> Study:
    """A study ready to run in ``ctx``: the notebook's recipe and seeds where it names none, the context's
    overrides, encoders completed (:func:`with_encoder`); every variant that can run checked against the recipe
    (an unknown key or a bad value refused with ``where`` and the variant's label, before anything runs)."""
    own = study.recipe if study.recipe is not None else recipe
    try:
        bound = study.bind(own, seeds, ctx.run_overrides(own))
    except CprflError as exc:  # the study's own recipe: unknown, or not a recipe file
        raise CprflError(f"{where}: {exc}") from None
    variants = {label: v if isinstance(v, Unavailable) else with_encoder(v, encoder_options)
                for label, v in bound.variants.items()}
    bound = replace(bound, variants=variants)
    for label, v in variants.items():
        try:
            if not isinstance(v, Unavailable):
                bound.config(label, bound.seeds[0])
            elif not isinstance(study.variants[label], Unavailable):  # it cannot run here: its keys must still exist
                _check_keys(bound, study.variants[label])
        except CprflError as exc:
            raise CprflError(f"{where}: variant {label!r}: {exc}") from None
    return bound


def _check_keys(study: Study, variant: Mapping) -> None:
    """Refuse a key the recipe does not know in a variant that cannot run here (its values are checked where it
    runs: another encoder's settings need that encoder's weights)."""
    try:
        run_config(study.recipe, {**study.overrides, **variant}, study.seeds[0])
    except CprflError as exc:
        if str(exc).startswith("unknown configuration key") or " is a section" in str(exc):
            raise


# ---------------------------------------------------------------- the studies of notebooks 04-06


def _encoder_options(ctx: RunContext, recipe: str, extra: Mapping | None) -> dict:
    """Per-encoder options: the recipe's own CLIP weights (an OVERRIDES file) for its encoder, then ``extra``."""
    config = ctx.recipe(recipe)
    own = config["semantics"]["encoder"]
    base = {own: {"weights": config["semantics"]["weights"]}} if own.startswith("clip") else {}
    return {**base, **{k: dict(v) for k, v in (extra or {}).items()}}


def training_studies(ctx: RunContext, recipes: Mapping[str, str], seeds, glove_path: str | None = None,
                     finetune_epochs: int = 0, finetune_steps: int | None = None) -> dict[str, Study]:
    """Notebook 04: Table 1 on each benchmark family, and the short end-to-end run on the first."""
    glove = {"path": glove_path} if glove_path else None
    plan = {family: Study(name, table1(ctx.recipe(name)["semantics"]["encoder"], glove), tuple(seeds),
                          ctx.run_overrides(name)) for family, name in recipes.items()}
    if finetune_epochs:
        first = next(iter(recipes.values()))
        plan["finetune"] = Study(first, {"CPRFL end-to-end": finetune(finetune_epochs, finetune_steps)}, tuple(seeds[:1]),
                                 ctx.run_overrides(first))
    return plan


def ablation_studies(ctx: RunContext, recipe: str, seeds, studies, encoder_options: Mapping | None = None
                     ) -> dict[str, Study]:
    """Notebook 05: the chosen studies on one recipe, in the order given. ``studies``: built-in studies' names
    (:func:`builtin_studies`) and study files' paths (relative to the current folder; :func:`read_study`)."""
    options = _encoder_options(ctx, recipe, encoder_options)
    out: dict[str, Study] = {}
    for entry in studies:
        name, study, where = load_study(entry)
        if name in out:
            raise CprflError(f"{where}: a study named {name!r} is already in the list {list(studies)}")
        out[name] = bind_study(study, where, ctx, recipe, seeds, options)
    return out


def visualization_studies(ctx: RunContext, recipe: str, seed: int = 0) -> dict[str, Study]:
    """Notebook 06: notebook 04's ERM and CPRFL runs of one seed (reused when 04 has trained them)."""
    encoder = ctx.recipe(recipe)["semantics"]["encoder"]
    variants = {k: v for k, v in table1(encoder).items() if k in ("ERM", cprfl_label(encoder))}
    return {"table1": Study(recipe, variants, (seed,), ctx.run_overrides(recipe))}


def initial_prompt_cosines(study: Study) -> dict[str, float]:
    """Per CPRFL variant of ``study``: the mean cosine between its initial prompts (the first seed's run)."""
    from cprfl_lib.data.benchmarks import benchmark_class_names
    from cprfl_lib.model_analysis import initial_prompts
    from cprfl_lib.semantics import mean_cosine

    out = {}
    for name, variant in study.variants.items():
        if isinstance(variant, Unavailable):
            continue
        config = study.config(name, study.seeds[0])
        if config["model"]["head"] == "cprfl":
            names = benchmark_class_names(config["data"]["dataset"], config["data"]["list_dir"],
                                          data_root=config["data"]["data_root"])
            out[name] = round(mean_cosine(initial_prompts(config, names)), 4)
    return out


NOTEBOOK_STUDIES = {"04_training": training_studies, "05_ablations": ablation_studies,
                    "06_visualization": visualization_studies}


def notebook_studies(notebook: str, ctx: RunContext, parameters: Mapping[str, Any]) -> dict[str, Study]:
    """The studies a notebook runs with these parameters (its defaults for the rest): what the plan counts."""
    build = NOTEBOOK_STUDIES[notebook]
    accepted = set(inspect.signature(build).parameters) - {"ctx"}
    return build(ctx, **{k: v for k, v in parameters.items() if k in accepted})
