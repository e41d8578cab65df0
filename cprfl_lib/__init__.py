"""cprfl_lib: the CPRFL model, losses, metrics, data and training engine.

CPRFL: Category-Prompt Refined Feature Learning for Long-Tailed Multi-Label Image
Classification (Yan et al., ACM MM 2024). See README.md and docs/ARCHITECTURE.md.

The public API, in the style of open_clip's and timm's factories (README "Use the library in your own code")::

    model, preprocess = cprfl_lib.create_model("tiny", class_names=["cat", "dog"])  # a recipe and its overrides
    loss = cprfl_lib.create_loss("asl", gamma_neg=2)                                 # a loss by name, checked
    cprfl_lib.mean_average_precision(scores, targets)                                # mAP in %
    metrics = cprfl_lib.train_recipe("cpu-voc", "runs/a", {"optim.lr": 1e-3})        # a run, into its folder
    cprfl_lib.evaluate("runs/a"), cprfl_lib.predict("runs/a", ["x.jpg"])             # use a finished run

Every name is imported on first use, so ``import cprfl_lib`` (and ``cprfl --help``) loads neither torch nor numpy.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    # the factories and a run (api.py)
    "create_model": "cprfl_lib.api", "create_loss": "cprfl_lib.api", "train_recipe": "cprfl_lib.api",
    "evaluate": "cprfl_lib.api",
    # recipes: a run's whole configuration, resolved and validated
    "load_recipe": "cprfl_lib.train.recipes", "available_recipes": "cprfl_lib.train.recipes",
    # the model and its pieces
    "MultiLabelClassifier": "cprfl_lib.model", "CPRFLHead": "cprfl_lib.model", "LinearHead": "cprfl_lib.model",
    "build_backbone": "cprfl_lib.backbones", "encode_classes": "cprfl_lib.semantics",
    # losses
    "LOSSES": "cprfl_lib.losses", "LOSS_PARAMS": "cprfl_lib.losses",
    # metrics
    "average_precision": "cprfl_lib.metrics", "mean_average_precision": "cprfl_lib.metrics",
    "map_report": "cprfl_lib.metrics", "GroupMAP": "cprfl_lib.metrics", "class_groups": "cprfl_lib.metrics",
    "threshold_metrics": "cprfl_lib.metrics", "topk_metrics": "cprfl_lib.metrics",
    # data
    "load_benchmark": "cprfl_lib.data.benchmarks", "Benchmark": "cprfl_lib.data.benchmarks",
    "benchmark_class_names": "cprfl_lib.data.benchmarks", "BENCHMARKS": "cprfl_lib.data.names",
    # a finished run
    "load_model": "cprfl_lib.inference", "predict": "cprfl_lib.inference",
    # errors
    "CprflError": "cprfl_lib.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once: later lookups do not come back here
        return value
    raise AttributeError(f"module 'cprfl_lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
