"""Build the pieces of a run from a resolved configuration (see recipes.py).

One entry per piece: the benchmark, the preprocessing, the class-name semantics, the model and
the loss, and what a run's inputs are (:func:`inputs_fingerprint`, for the keys of finished runs).
The training engine, the CLI and the notebooks all build through here, so a recipe means the
same thing everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from cprfl_lib.backbones import build_backbone, freeze
from cprfl_lib.data.benchmarks import Benchmark, load_benchmark
from cprfl_lib.data.transforms import Preprocessing, preprocessing
from cprfl_lib.errors import CprflError
from cprfl_lib.losses import build_loss
from cprfl_lib.model import CPRFLHead, LinearHead, MultiLabelClassifier

HEADS = ("cprfl", "linear")
HEAD_KEYS = ("dim", "tau", "depth", "heads", "dim_head", "mlp_dim", "dropout", "residual", "cut_p1", "cut_p2",
             "no_feature_grad")


def benchmark_from(config: dict, download: bool = True) -> Benchmark:
    data = config["data"]
    kw = {}
    if data["dataset"].startswith("synth-"):
        # a run that evaluates no test split does not draw one (design studies decide on validation only)
        splits = ("train", *(data["eval_splits"] or ("val", "test")))
        kw = dict(synthetic_options={"seed": data["synthetic_seed"], "image_size": data["image_size"],
                                     "limit": data["synthetic_limit"], "scene": data["synthetic_scene"] or None,
                                     "splits": splits})
    return load_benchmark(data["dataset"], list_dir=data["list_dir"], data_root=data["data_root"],
                          download=download, test_subset=data["test_subset"], eval_splits=data["eval_splits"],
                          group_thresholds=data["group_thresholds"], **kw)


def preprocessing_from(config: dict, backbone: nn.Module) -> Preprocessing:
    data = config["data"]
    return preprocessing(data["transform"], data["image_size"], backbone.input_mean, backbone.input_std)


def inputs_fingerprint(config: dict, benchmark: Benchmark) -> dict:
    """What a run reads besides its configuration and code, by content: lists, images, weight files."""
    from cprfl_lib.digest import file_digest, weights_fingerprint

    s = config["semantics"]
    out = {"lists": {role: file_digest(path) for role, path in sorted(benchmark.list_files.items())},
           "splits": {split: benchmark.split_fingerprint(split) for split in ("train", *benchmark.eval_splits)},
           "backbone_weights": weights_fingerprint(config["model"]["backbone_weights"])}
    if config["model"]["head"] == "cprfl":
        if s["encoder"].startswith("clip"):
            out["semantics_weights"] = weights_fingerprint(s["weights"])
        elif s["encoder"] in ("glove", "word2vec"):
            from cprfl_lib.semantics.words import vectors_path

            out["word_vectors"] = file_digest(vectors_path(s["encoder"], s["path"]))
    return out


def dataset_family(config: dict) -> str:
    """'voc' or 'coco': which of the official per-dataset DB-loss settings apply (a user's dataset: 'coco', the
    many-class setting, unless loss.family says; the DB statistics themselves are its own training counts)."""
    family = config["loss"]["family"] or ("voc" if "voc" in config["data"]["dataset"] else "coco")
    if family not in ("voc", "coco"):
        raise CprflError(f"loss.family must be 'voc' or 'coco', got {family!r}")
    return family


def semantics_from(config: dict, class_names: list[str]) -> tuple[torch.Tensor | None, nn.Module | None, int]:
    """(frozen class embeddings, trainable text encoder, m): exactly one of the first two is set."""
    from cprfl_lib import semantics

    # Computing embeddings may build a model that draws from the global RNG, loading them from the
    # cache does not: keep the RNG out of it, so a run's initialisation does not depend on the cache.
    with torch.random.fork_rng(devices=[]):
        return _semantics(config, class_names, semantics)


def _semantics(config: dict, class_names: list[str], semantics) -> tuple[torch.Tensor | None, nn.Module | None, int]:
    s = config["semantics"]
    if s["trainable"]:
        if not s["encoder"].startswith("clip"):
            raise CprflError(f"semantics.trainable needs a CLIP encoder, got {s['encoder']!r}")
        text = semantics.build_text_encoder(s["encoder"], class_names, frozen=False, weights=s["weights"],
                                            template=s["template"], normalize=s["normalize"],
                                            quick_gelu=s["quick_gelu"])
        return None, text, semantics.embedding_dim(s["encoder"])
    emb = semantics.encode_classes(s["encoder"], class_names, template=s["template"], weights=s["weights"],
                                   normalize=s["normalize"], dim=s["dim"], seed=s["seed"], path=s["path"],
                                   quick_gelu=s["quick_gelu"])
    return semantics.rescale(emb, centre=s["centre"], norm=s["norm"]), None, emb.shape[1]


def backbone_from(config: dict) -> nn.Module:
    m = config["model"]
    backbone = build_backbone(m["backbone"], weights=m["backbone_weights"])
    return freeze(backbone) if m["freeze_backbone"] else backbone


def head_from(config: dict, feat_dim: int, class_names: list[str],
              class_embeddings: torch.Tensor | None = None) -> nn.Module:
    """The head of the recipe; ``class_embeddings`` skips the text encoder (e.g. when loading a checkpoint)."""
    m = config["model"]
    if m["head"] == "linear":
        return LinearHead(feat_dim, len(class_names))
    if m["head"] != "cprfl":
        raise CprflError(f"unknown head {m['head']!r}; choose one of {HEADS}")
    if class_embeddings is not None:
        emb, text, embed_dim = class_embeddings, None, class_embeddings.shape[1]
    else:
        emb, text, embed_dim = semantics_from(config, class_names)
    return CPRFLHead(feat_dim, len(class_names), class_embeddings=emb, text_encoder=text, embed_dim=embed_dim,
                     **{k: m[k] for k in HEAD_KEYS})


def model_from(config: dict, class_names: list[str], backbone: nn.Module | None = None) -> MultiLabelClassifier:
    backbone = backbone if backbone is not None else backbone_from(config)
    prep = preprocessing_from(config, backbone)
    return MultiLabelClassifier(backbone, head_from(config, backbone.out_channels, class_names), prep.mean, prep.std)


def loss_from(config: dict, benchmark: Benchmark) -> nn.Module:
    lc = config["loss"]
    return build_loss(lc["name"], train_counts=benchmark.train_counts.tolist(), num_train=len(benchmark.train),
                      family=dataset_family(config), **(lc["params"] or {}))


def model_from_checkpoint(ckpt: dict) -> MultiLabelClassifier:
    """Rebuild a checkpoint's model without any download: structure first, then its weights.

    Frozen class embeddings and backbone weights live in the state dict, and the input
    normalisation in ``ckpt["input_norm"]``, so the text encoder and the pretrained backbone are
    not needed to evaluate or predict.
    """
    import copy

    config, state = copy.deepcopy(ckpt["config"]), ckpt["model"]
    config["model"]["backbone_weights"] = None
    class_names = list(ckpt["class_names"])
    backbone = backbone_from(config)
    emb = None
    if config["model"]["head"] == "cprfl" and not config["semantics"]["trainable"]:
        emb = torch.zeros_like(state["head.class_embeddings"])  # filled by load_state_dict below
    if config["semantics"]["trainable"] and config["semantics"]["quick_gelu"] is None:
        # the activation is not in the weights: rebuild with the one the run resolved
        from cprfl_lib.semantics.clip import default_quick_gelu

        weights = config["semantics"]["weights"]
        config["semantics"]["quick_gelu"] = default_quick_gelu(config["semantics"]["encoder"], weights)
    config["semantics"]["weights"] = None
    head = head_from(config, backbone.out_channels, class_names, class_embeddings=emb)
    norm = ckpt["input_norm"]  # the run's normalisation (the pretrained weights' mean/std are not rebuilt here)
    model = MultiLabelClassifier(backbone, head, norm["mean"], norm["std"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # the first line only says "Error(s) in loading state_dict": name the first error
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = (lines[1] if len(lines) > 1 else lines[0])[:300] if lines else type(exc).__name__
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise CprflError(f"checkpoint weights do not fit the model of its recipe: {first}{more}") from None
    return model.eval()
