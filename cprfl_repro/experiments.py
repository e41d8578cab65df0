"""The paper's experiments as studies: for each table or figure, its variants as recipe overrides.

A variant's name is the row label of the paper's table. A variant that needs something this
machine lacks (CLIP weights offline, a GloVe file) is an :class:`~cprfl_repro.studies.Unavailable`
with the reason. The studies of notebooks 04-06 are built here, by :func:`training_studies`,
:func:`ablation_studies` and :func:`visualization_studies`, so that the notebooks and the plan
``make reproduce`` prints before it starts (:mod:`cprfl_repro.plan`) count the same runs.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from cprfl_lib.errors import CprflError
from cprfl_lib.semantics import encoder_status
from cprfl_repro.context import RunContext
from cprfl_repro.studies import Study, Unavailable

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


def table2() -> dict:
    """Table 2: CPRFL trained with six losses."""
    return {"BCE": loss("bce"), "MLS": loss("mls"), "CB Focal": loss("cb_focal"), "DB No-Focal": loss("db_nofocal"),
            "DB Focal": loss("db_focal"), "ASL": dict(KEEP_WEIGHTS)}


def table3() -> dict:
    """Table 3, cumulative: baseline (focal) → +VSI (random prompts) → +PI (semantic prompts) → +RW (ASL)."""
    focal = loss("focal")
    return {
        "Baseline": {**LINEAR, **focal},
        "+VSI": {**focal, **semantics_variant("randn")},
        "+VSI+PI": {**focal},
        "CPRFL (+VSI+PI+RW)": dict(KEEP_WEIGHTS),
    }


def figure3(options: dict | None = None, own: str | None = None) -> dict:
    """Fig. 3: the prompt initialization's semantics; the paper's five plus MiniLM (this machine's).

    ``own``: the recipe's encoder, whose row is Table 1's CPRFL run (the same configuration, trained once).
    """
    options = options or {}
    encoders = ("randn", "word2vec", "glove", "clip-rn50", "clip-vit-b-16", "minilm")
    out = {ENCODER_LABELS[enc]: semantics_variant(enc, options.get(enc)) for enc in encoders}
    if own in encoders and not isinstance(out[ENCODER_LABELS[own]], Unavailable):
        out[ENCODER_LABELS[own]] = {**out[ENCODER_LABELS[own]], **KEEP_WEIGHTS}
    return out


EMBEDDING_SCALES = {"raw": {"semantics.centre": False, "semantics.norm": None},
                    "centred": {"semantics.centre": True, "semantics.norm": None},
                    "centred, norm √m": {"semantics.centre": True, "semantics.norm": "sqrt_m"}}
SCALE_SEP = " · "


def embedding_scale(options: dict | None = None, own: dict | None = None) -> dict:
    """The embedding scale as a declared study: every encoder that runs here, raw, centred (the mean class embedding
    removed) and centred then rescaled to norm √m. ``own``: the recipe's semantics (its row is Table 1's run)."""
    options = options or {}
    out = {}
    for enc in ("randn", "word2vec", "glove", "clip-rn50", "clip-vit-b-16", "minilm"):
        base = semantics_variant(enc, options.get(enc))
        for label, scale in EMBEDDING_SCALES.items():
            name = f"{ENCODER_LABELS[enc]}{SCALE_SEP}{label}"
            if isinstance(base, Unavailable):
                out[name] = base
                continue
            out[name] = {**base, **scale}
            if own and own["encoder"] == enc and own["centre"] == scale["semantics.centre"] \
                    and own["norm"] == scale["semantics.norm"]:
                out[name].update(KEEP_WEIGHTS)
    return out


def scale_reference(variant: str) -> str:
    """The raw row of the same encoder: what each embedding-scale row is compared with."""
    return variant.split(SCALE_SEP)[0] + SCALE_SEP + "raw"


def extra_studies() -> dict[str, dict]:
    """Ablations the paper does not report."""
    return {
        "dual_path": {"both paths (P1 + P2)": dict(KEEP_WEIGHTS), "P1 only (cut P2)": {"model.cut_p2": True},
                      "P2 only (cut P1)": {"model.cut_p1": True},
                      "official no_feature_grad": {"model.no_feature_grad": True}},
        "tau": {f"tau={t}": {"model.tau": t, **(KEEP_WEIGHTS if t == 0.5 else {})} for t in (0.25, 0.5, 1.0, 2.0)},
        "depth": {f"depth={d}": {"model.depth": d, **(KEEP_WEIGHTS if d == 1 else {})} for d in (1, 2)},
        "residual": {"no residual (paper, code)": dict(KEEP_WEIGHTS), "residual": {"model.residual": True}},
    }


def finetune(epochs: int, steps: int | None = None) -> dict:
    """The short end-to-end run: the backbone trains too (at a tenth of the head's learning rate); ``steps``: at most
    this many optimizer steps an epoch (a CPU demonstration of the path)."""
    return {"model.freeze_backbone": False, "train.cache_features": False, "optim.backbone_lr_mult": 0.1,
            "optim.epochs": epochs, "optim.warmup_epochs": 0, **({"train.max_steps_per_epoch": steps} if steps else {})}


# What each study's rows are compared with (the interval columns): a variant, or variant -> variant.
REFERENCES = {"table2": "ASL", "table3": "Baseline", "figure3": "Randn", "embedding_scale": scale_reference,
              "dual_path": "both paths (P1 + P2)", "tau": "tau=0.5", "depth": "depth=1",
              "residual": "no residual (paper, code)"}


def ablations(names, encoder_options: dict | None = None, own: dict | None = None) -> dict[str, dict]:
    """Notebook 05's studies by name (Tables 2-3, Fig. 3, the embedding scale and :func:`extra_studies`), in the
    order given. ``own``: the recipe's semantics section."""
    encoder = own["encoder"] if own else None
    known = {"table2": table2, "table3": table3, "figure3": lambda: figure3(encoder_options, encoder),
             "embedding_scale": lambda: embedding_scale(encoder_options, own),
             **{k: (lambda v=v: v) for k, v in extra_studies().items()}}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CprflError(f"unknown stud{'y' if len(unknown) == 1 else 'ies'} {unknown}; choose from {list(known)}")
    return {n: known[n]() for n in names}


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
    """Notebook 05: the chosen ablation studies on one recipe."""
    plan = ablations(studies, _encoder_options(ctx, recipe, encoder_options), ctx.recipe(recipe)["semantics"])
    return {name: Study(recipe, variants, tuple(seeds), ctx.run_overrides(recipe)) for name, variants in plan.items()}


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
    from cprfl_repro.studies import run_config

    out = {}
    for name, variant in study.variants.items():
        if isinstance(variant, Unavailable):
            continue
        config = run_config(study.recipe, {**study.overrides, **variant}, study.seeds[0])
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
