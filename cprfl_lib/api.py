"""The factories of the public API (``cprfl_lib.create_model`` and the rest: see ``cprfl_lib/__init__.py``).

They build through :mod:`cprfl_lib.train.factory` and check through :func:`cprfl_lib.train.recipes.validate`, as a
run does; ``train_recipe`` and ``evaluate`` are what ``cprfl train`` and ``cprfl evaluate`` do.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

from cprfl_lib.train import factory
from cprfl_lib.train.recipes import apply_overrides, defaults, load_recipe, parse_overrides


def _config(recipe: str | Mapping, overrides: Iterable[str] | Mapping[str, object] | None = None,
            model: Mapping[str, object] | None = None) -> dict:
    """A recipe (a name, a YAML file or a configuration) with ``model`` keys and then ``overrides`` applied."""
    config = copy.deepcopy(dict(recipe)) if isinstance(recipe, Mapping) else load_recipe(str(recipe))
    return apply_overrides(config, {**{f"model.{k}": v for k, v in (model or {}).items()},
                                    **parse_overrides(overrides)})


def create_model(recipe: str | Mapping, class_names: Iterable[str] | None = None,
                 overrides: Iterable[str] | Mapping[str, object] | None = None, **model: object):
    """The model of a recipe and its preprocessing: ``(MultiLabelClassifier, Preprocessing)``.

    ``recipe``: a recipe's name (:func:`available_recipes`), a YAML file, or a configuration from
    :func:`load_recipe`. ``**model``: keys of its ``model`` section (``backbone="resnet50"``,
    ``head="linear"``, ``dim=256``, ...); ``overrides``: any other key, dotted (``{"semantics.encoder": "randn"}``)
    or as ``section.key=value`` strings. ``class_names``: the classes to score (the CPRFL head's prompts are
    made from them); default: the recipe's benchmark's. Validated as a run's configuration is: an unknown key or a
    bad value is one :class:`CprflError`.

    The model takes uint8 (or [0, 1] float) images (B, 3, S, S) and normalises them itself; it returns
    logits (B, C). ``preprocess.resize(pil_image)`` makes such an image of the recipe's size,
    ``preprocess.augmentation(train=True)`` is the training augmentation on it. The weights start from the
    global random state (``torch.manual_seed`` first for a repeatable model).
    """
    config = _config(recipe, overrides, model)
    if class_names is None:
        from cprfl_lib.data.benchmarks import benchmark_class_names

        data = config["data"]
        class_names = benchmark_class_names(data["dataset"], list_dir=data["list_dir"], data_root=data["data_root"])
    backbone = factory.backbone_from(config)
    return factory.model_from(config, list(class_names), backbone), factory.preprocessing_from(config, backbone)


def create_loss(name: str, train_counts: Iterable[int] | None = None, num_train: int | None = None,
                family: str = "coco", **params: object):
    """The loss ``name`` (:data:`LOSSES`: ``asl``, ``bce``, ``mls``, ``focal``, ``rw``, ``cb_focal``, ``db_nofocal``,
    ``db_focal``) with ``params``, each checked against :data:`LOSS_PARAMS` as a recipe's ``loss.params`` are.

    ``rw`` and the DB family are built from the training set: ``train_counts`` (images per class) and ``num_train``
    (images); ``family`` ('voc' or 'coco') picks the official per-dataset DB settings. The loss maps logits and
    multi-hot targets, both (B, C), to a scalar.
    """
    from cprfl_lib.losses import build_loss

    apply_overrides(defaults(), {"loss.name": name, "loss.params": dict(params)})  # the one validation
    counts = None if train_counts is None else [int(c) for c in train_counts]
    return build_loss(name, train_counts=counts, num_train=num_train, family=family, **params)


def train_recipe(recipe: str | Mapping, output_dir, overrides: Iterable[str] | Mapping[str, object] | None = None,
          resume: bool = False, progress: bool = True) -> dict:
    """Train and evaluate a recipe (a name, a YAML file or a configuration) with ``overrides`` into ``output_dir``
    (one run per folder: its configuration, metrics, log and weights); returns its metrics (``metrics.json``).
    ``resume`` continues a killed run of the same configuration. What ``cprfl train`` does. (Not ``train``: that
    name is the subpackage ``cprfl_lib.train``.)"""
    from cprfl_lib.train.engine import train

    return train(_config(recipe, overrides), output_dir, resume=resume, progress=progress)


def evaluate(run, data_root=None, list_dir=None, device: str = "auto", use_ema: bool = False) -> dict:
    """A finished run's test-split figures (mAP, head / medium / tail, OP/OR/...) on its benchmark, from its folder
    or weights file; ``data_root`` / ``list_dir``: where its images and lists are here. What ``cprfl evaluate``
    does."""
    from cprfl_lib.inference import evaluate_checkpoint

    return evaluate_checkpoint(run, data_root=data_root, list_dir=list_dir, device=device, use_ema=use_ema)
