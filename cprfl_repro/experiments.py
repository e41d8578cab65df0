"""The paper's experiments as studies: for each table or figure, its variants as recipe overrides.

Notebooks 04-06 run these through :func:`cprfl_lib.studies.run_studies`; a variant's name is the
row label of the paper's table. A variant that needs something this machine lacks (CLIP
weights offline, a GloVe file) is an :class:`~cprfl_lib.studies.Unavailable` with the reason.
"""

from __future__ import annotations

from cprfl_lib.errors import CprflError
from cprfl_lib.semantics import encoder_status
from cprfl_repro.studies import Unavailable

ENCODER_LABELS = {"clip-rn50": "CLIP-RN50", "clip-vit-b-16": "CLIP-ViT-B/16", "minilm": "MiniLM", "glove": "GloVe",
                  "word2vec": "Word2Vec", "randn": "Randn", "onehot": "One-hot", "clip-tiny": "CLIP-tiny"}
LINEAR = {"model.head": "linear"}


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
        cprfl_label(encoder): {},
    }


def table2() -> dict:
    """Table 2: CPRFL trained with six losses."""
    return {"BCE": loss("bce"), "MLS": loss("mls"), "CB Focal": loss("cb_focal"), "DB No-Focal": loss("db_nofocal"),
            "DB Focal": loss("db_focal"), "ASL": {"loss.name": "asl"}}


def table3() -> dict:
    """Table 3, cumulative: baseline (focal) → +VSI (random prompts) → +PI (semantic prompts) → +RW (ASL)."""
    focal = loss("focal")
    return {
        "Baseline": {**LINEAR, **focal},
        "+VSI": {**focal, **semantics_variant("randn")},
        "+VSI+PI": {**focal},
        "CPRFL (+VSI+PI+RW)": {},
    }


def figure3(options: dict | None = None) -> dict:
    """Fig. 3: the prompt initialization's semantics; the paper's five plus MiniLM (this machine's)."""
    options = options or {}
    encoders = ("randn", "word2vec", "glove", "clip-rn50", "clip-vit-b-16", "minilm")
    out = {}
    for enc in encoders:
        out[ENCODER_LABELS[enc]] = semantics_variant(enc, options.get(enc))
    return out


def extra_studies() -> dict[str, dict]:
    """Ablations the paper does not report."""
    return {
        "dual_path": {"both paths (P1 + P2)": {}, "P1 only (cut P2)": {"model.cut_p2": True},
                      "P2 only (cut P1)": {"model.cut_p1": True},
                      "official no_feature_grad": {"model.no_feature_grad": True}},
        "tau": {f"tau={t}": {"model.tau": t} for t in (0.25, 0.5, 1.0, 2.0)},
        "depth": {f"depth={d}": {"model.depth": d} for d in (1, 2)},
        "residual": {"no residual (paper, code)": {}, "residual": {"model.residual": True}},
    }


def finetune(epochs: int) -> dict:
    """The short end-to-end run: the backbone trains too (at a tenth of the head's learning rate)."""
    return {"model.freeze_backbone": False, "train.cache_features": False, "optim.backbone_lr_mult": 0.1,
            "optim.epochs": epochs, "optim.warmup_epochs": 0}


def ablations(names, encoder_options: dict | None = None) -> dict[str, dict]:
    """Notebook 05's studies by name (Tables 2-3, Fig. 3 and :func:`extra_studies`), in the order given."""
    known = {"table2": table2, "table3": table3, "figure3": lambda: figure3(encoder_options),
             **{k: (lambda v=v: v) for k, v in extra_studies().items()}}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CprflError(f"unknown stud{'y' if len(unknown) == 1 else 'ies'} {unknown}; choose from {list(known)}")
    return {n: known[n]() for n in names}
