"""Recipes: the one place where training configurations live, and their one validation.

A recipe is a YAML file in ``cprfl_lib/train/recipes/`` (or any path) that overrides some keys
of ``defaults.yaml``. Overrides come from the CLI as ``section.key=value`` strings (the value is
parsed as YAML) or from notebooks as a dict ``{"optim.lr": 1e-3}`` / nested dicts. Every key
must exist in ``defaults.yaml``: a mistyped key is rejected by name, never silently ignored.

:func:`validate` checks a resolved configuration (types, ranges, names, combinations) before
anything is built or written; :func:`load_recipe` and :func:`apply_overrides` return only
validated configurations, so the CLI, the notebooks and ``make reproduce`` share it.
"""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from cprfl_lib.errors import CprflError

RECIPE_DIR = resources.files("cprfl_lib.train") / "recipes"
SWITCHES = ("auto", True, False)  # train.amp, train.cache_features, data.decoded_cache, optim.fused
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # train.compile: true is inductor


def available_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in RECIPE_DIR.iterdir() if p.name.endswith(".yaml") and p.name != "defaults.yaml")


def _read_yaml(path, what: str) -> dict:
    try:
        data = yaml.safe_load(Path(str(path)).read_text()) or {}
    except yaml.YAMLError as exc:
        raise CprflError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise CprflError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise CprflError(f"{path}: a {what} must be a mapping of sections")
    return data


def defaults() -> dict:
    return _read_yaml(RECIPE_DIR / "defaults.yaml", "defaults file")


OPAQUE = ("params", "synthetic_scene")  # mappings replaced whole by an override, checked by their owner


def _merge(base: dict, update: Mapping, where: str) -> None:
    for key, value in update.items():
        if key not in base:
            known = ", ".join(sorted(base))
            raise CprflError(f"unknown configuration key {where + key!r} (known here: {known})")
        if isinstance(base[key], dict) and key not in OPAQUE:
            if not isinstance(value, Mapping):
                raise CprflError(f"configuration key {where}{key!r} is a section; got {value!r}")
            _merge(base[key], value, f"{where}{key}.")
        else:
            _check_type(base[key], value, where + key)
            base[key] = copy.deepcopy(value)


def _check_type(default: Any, value: Any, key: str) -> None:
    """A value must have the type of its default (an int where a float is expected is fine)."""
    if default is None or value is None or isinstance(default, (str, dict, list)) and isinstance(value, type(default)):
        return
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}.get(type(default))
    if ok is not None and ok(value) or ok is None and isinstance(value, type(default)):
        return
    if isinstance(default, str) and isinstance(value, (bool, int, float)) and key.endswith(
            ("amp", "cache_features", "decoded_cache", "num_workers", "fused")):
        return  # 'auto' | a value switches
    if isinstance(default, bool) and isinstance(value, str) and key.endswith("compile"):
        return  # false | true | a backend name
    raise CprflError(f"configuration key {key!r} expects a {type(default).__name__} (like {default!r}), got {value!r}")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise CprflError(f"override {item!r} is not of the form section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads 3e-4 (and nan, inf) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def parse_overrides(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``section.key=value`` strings (or a mapping) as {dotted key: value}."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    return {".".join(keys): value for keys, value in map(_parse_override, items)}


def _nest(keys: list[str], value: Any) -> dict:
    out: Any = value
    for k in reversed(keys):
        out = {k: out}
    return out


def load_recipe(name_or_path: str, overrides: Iterable[str] | Mapping[str, Any] | None = None) -> dict:
    """The resolved and validated configuration: defaults, then the recipe, then the overrides."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(str(RECIPE_DIR / f"{name_or_path}.yaml"))
        if not path.is_file():
            raise CprflError(f"unknown recipe {name_or_path!r}; available: {', '.join(available_recipes())}")
    elif not path.is_file():
        raise CprflError(f"recipe file {path} does not exist")
    config = defaults()
    recipe = _read_yaml(path, "recipe")
    name = recipe.pop("recipe", path.stem)  # a run's config.yaml names the recipe it was resolved from
    _merge(config, recipe, "")
    config["recipe"] = str(name)
    return apply_overrides(config, overrides)


def apply_overrides(config: dict, overrides: Iterable[str] | Mapping[str, Any] | None) -> dict:
    """Apply ``section.key=value`` strings or a mapping of dotted keys / nested sections, in place; validate."""
    items = overrides.items() if isinstance(overrides, Mapping) else (_parse_override(o) for o in overrides or ())
    body = {k: v for k, v in config.items() if k != "recipe"}
    for key, value in items:
        keys = key.split(".") if isinstance(key, str) else key
        keys, value = _into_opaque(body, list(keys), value)
        _merge(body, _nest(keys, value), "")
    config.update(body)
    return validate(config)


def _into_opaque(body: dict, keys: list[str], value: Any) -> tuple[list[str], Any]:
    """A dotted key that goes inside an opaque mapping (``loss.params.gamma_neg``) changes that entry of the current
    mapping and keeps its siblings: returned as the whole new mapping at the opaque key."""
    node = body
    for i, k in enumerate(keys[:-1]):
        if not isinstance(node, dict) or k not in node:
            break
        if k in OPAQUE and isinstance(node[k], dict):
            inner = copy.deepcopy(node[k])
            target = inner
            for part in keys[i + 1:-1]:
                if not isinstance(target.get(part), dict):
                    target[part] = {}
                target = target[part]
            target[keys[-1]] = value
            return keys[:i + 1], inner
        node = node[k]
    return keys, value


def dump(config: Mapping) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False)


# ---------------------------------------------------------------- validation


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo: int, optional: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            return f"a whole number >= {lo}" + (" or null" if optional else "")
        return None
    return check


def _real(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
          optional: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if v is None and optional:
            return None
        bad = (not _finite(v) or lo is not None and (v < lo or lo_open and v == lo)
               or hi is not None and (v > hi or hi_open and v == hi))
        if not bad:
            return None
        left = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        right = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        where = f"in {left}, {right}" if lo is not None and hi is not None else (
            f"> {lo:g}" if lo_open else f">= {lo:g}") if lo is not None else "a finite number"
        return f"a finite number {where}" + (" or null" if optional else "")
    return check


def _one_of(choices: Iterable[Any]) -> Callable[[Any], str | None]:
    choices = list(choices)  # compared with their types: 1 is not True, 0 is not False
    return lambda v: None if any(v == c and type(v) is type(c) for c in choices) else f"one of {choices}"


def _workers(v) -> str | None:
    return None if v == "auto" or isinstance(v, int) and not isinstance(v, bool) and v >= 0 else \
        "'auto' or a whole number >= 0"


def _template(v) -> str | None:
    return None if isinstance(v, str) and "{}" in v else "a text holding {} (where the class name goes)"


def _eval_splits(v) -> str | None:
    ok = v is None or (isinstance(v, list) and v and set(v) <= {"val", "test"} and len(set(v)) == len(v))
    return None if ok else "null (every split the benchmark has) or a list of 'val' and/or 'test'"


def _group_thresholds(v) -> str | None:
    from cprfl_lib.metrics import group_thresholds

    try:
        group_thresholds(v)
    except CprflError:
        return "[head minimum, medium minimum]: two whole numbers, head > medium >= 1 (the paper's [100, 20])"
    return None


def _norm(v) -> str | None:
    ok = v is None or v == "sqrt_m" or _finite(v) and v > 0
    return None if ok else "a positive number, 'sqrt_m' (√m) or null"


def _mapping(v) -> str | None:
    return None if isinstance(v, Mapping) else "a mapping (field: value)"


def _text(v) -> str | None:
    return None if isinstance(v, str) else "a text"


def _path_or_tag(v) -> str | None:
    return None if v is None or isinstance(v, str) and v.strip() else "a path (or a tag) as text, or null"


def _rules() -> dict[str, Callable[[Any], str | None]]:
    from cprfl_lib.backbones import KNOWN_BACKBONES
    from cprfl_lib.data.names import BENCHMARKS
    from cprfl_lib.data.transforms import PRESETS
    from cprfl_lib.losses import LOSSES
    from cprfl_lib.semantics import ENCODERS
    from cprfl_lib.train.optim import OPTIMIZERS, SCHEDULES

    return {
        "description": _text, "data.data_root": _path_or_tag, "data.list_dir": _path_or_tag,
        "semantics.weights": _path_or_tag, "semantics.path": _path_or_tag, "model.backbone_weights": _path_or_tag,
        "loss.params": _mapping,  # and each parameter by the loss's own rules (_check_loss_params)
        "data.dataset": _one_of(BENCHMARKS), "data.image_size": _int(16),
        "data.transform": _one_of(PRESETS), "data.num_workers": _workers,
        "data.decoded_cache": _one_of(SWITCHES), "data.synthetic_seed": _int(0),
        "data.synthetic_limit": _int(1, optional=True), "data.test_subset": _int(1, optional=True),
        "data.eval_splits": _eval_splits, "data.synthetic_scene": _mapping,
        "data.group_thresholds": _group_thresholds,
        "semantics.encoder": _one_of(ENCODERS), "semantics.template": _template,
        "semantics.normalize": _one_of((True, False)), "semantics.dim": _int(1, optional=True),
        "semantics.seed": _int(0), "semantics.trainable": _one_of((True, False)),
        "semantics.quick_gelu": _one_of((None, True, False)),
        "semantics.centre": _one_of((True, False)), "semantics.norm": _norm,
        "model.head": _one_of(("cprfl", "linear")), "model.backbone": _one_of(KNOWN_BACKBONES),
        "model.freeze_backbone": _one_of((True, False)), "model.dim": _int(1), "model.tau": _real(0, lo_open=True),
        "model.depth": _int(1), "model.heads": _int(1), "model.dim_head": _int(1), "model.mlp_dim": _int(1),
        "model.dropout": _real(0, 1, hi_open=True), "model.residual": _one_of((True, False)),
        "model.cut_p1": _one_of((True, False)), "model.cut_p2": _one_of((True, False)),
        "model.no_feature_grad": _one_of((True, False)),
        "loss.name": _one_of(sorted(LOSSES)), "loss.family": _one_of((None, "voc", "coco")),
        "optim.optimizer": _one_of(sorted(OPTIMIZERS)), "optim.lr": _real(0, lo_open=True),
        "optim.weight_decay": _real(0), "optim.backbone_lr_mult": _real(0),
        "optim.schedule": _one_of(SCHEDULES), "optim.schedule_epochs": _int(1, optional=True),
        "optim.pct_start": _real(0, 1, lo_open=True, hi_open=True), "optim.warmup_epochs": _int(0),
        "optim.epochs": _int(1), "optim.batch_size": _int(1), "optim.grad_accum": _int(1),
        "optim.clip_grad": _real(0, lo_open=True, optional=True),
        "train.seed": _int(0), "train.deterministic": _one_of((True, False)),
        "train.device": _one_of(("auto", "cpu", "cuda")), "train.amp": _one_of(SWITCHES),
        "train.amp_dtype": _one_of(("bfloat16", "float16")), "train.channels_last": _one_of((True, False)),
        "train.ema": _real(0, 1, lo_open=True, hi_open=True, optional=True),
        "train.eval_every": _int(1, optional=True), "train.eval_start": _int(1),
        "train.cache_features": _one_of(SWITCHES), "train.eval_batch_size": _int(1),
        "train.threshold": _real(0, 1, lo_open=True, hi_open=True),
        "train.max_steps_per_epoch": _int(1, optional=True), "train.num_threads": _int(1, optional=True),
        "train.save_checkpoint": _one_of((True, False)), "train.save_weights": _one_of((True, False)),
        "train.checkpoint_every": _int(1), "train.checkpoint_minutes": _real(0),
        "train.compile": _one_of((False, True, *COMPILE_BACKENDS)), "optim.fused": _one_of(SWITCHES),
    }


def _get(config: Mapping, dotted: str) -> Any:
    if "." not in dotted:
        return config[dotted]
    section, key = dotted.split(".", 1)
    return config[section][key]


def validate(config: dict) -> dict:
    """Check a resolved configuration before anything is built; one line naming the key and the value."""
    for dotted, rule in _rules().items():
        value = _get(config, dotted)
        problem = rule(value)
        if problem:
            raise CprflError(f"configuration key {dotted!r} must be {problem}, got {value!r}")
    data, sem, model, optim, train = (config[k] for k in ("data", "semantics", "model", "optim", "train"))
    synthetic = data["dataset"].startswith("synth-")

    def refuse(message: str) -> None:
        raise CprflError(message)

    if train["cache_features"] is True and not model["freeze_backbone"]:
        refuse("train.cache_features=true needs model.freeze_backbone=true (features of a trained backbone change)")
    if train["compile"] is not False and (train["cache_features"] is True or train["cache_features"] == "auto"
                                          and model["freeze_backbone"]):
        refuse(f"train.compile={train['compile']!r} compiles the backbone where it trains, but this run trains on "
               "cached backbone features; set train.compile=false (or model.freeze_backbone=false)")
    if sem["trainable"] and not sem["encoder"].startswith("clip"):
        refuse(f"semantics.trainable=true needs a CLIP encoder, got semantics.encoder={sem['encoder']!r}")
    if sem["weights"] is not None and not sem["encoder"].startswith("clip"):
        refuse(f"semantics.weights={sem['weights']!r} applies only to the CLIP encoders, not "
               f"semantics.encoder={sem['encoder']!r}; set semantics.weights=null")
    if sem["path"] is not None and sem["encoder"] not in ("glove", "word2vec"):
        refuse(f"semantics.path={sem['path']!r} applies only to glove/word2vec, not {sem['encoder']!r}")
    if sem["trainable"] and (sem["centre"] or sem["norm"] is not None):
        refuse("semantics.centre and semantics.norm apply to frozen class embeddings, not to a trained text "
               "encoder (semantics.trainable=true)")
    if sem["normalize"] and sem["norm"] is not None:
        refuse(f"semantics.normalize=true and semantics.norm={sem['norm']!r} both set the norm; keep one")
    if data["synthetic_scene"]:
        if not synthetic:
            refuse(f"data.synthetic_scene applies only to the generated datasets, not {data['dataset']!r}")
        from cprfl_lib.data.synthetic import scene_params

        scene_params(data["dataset"], dict(data["synthetic_scene"]))  # unknown fields named now
    if not synthetic and data["synthetic_limit"] is not None:
        refuse(f"data.synthetic_limit applies only to the generated datasets, not {data['dataset']!r}; "
               "to evaluate on fewer test images use data.test_subset")
    if synthetic and data["list_dir"] is not None:
        refuse(f"{data['dataset']} is generated with its own lists; drop data.list_dir (--list-dir)")
    if optim["schedule_epochs"] is not None and optim["schedule_epochs"] < optim["epochs"]:
        refuse(f"optim.schedule_epochs ({optim['schedule_epochs']}) must be at least optim.epochs ({optim['epochs']})")
    params = config["loss"]["params"]
    if not isinstance(params, Mapping):
        refuse(f"loss.params must be a mapping of the loss's parameters, got {params!r}")
    _check_loss_params(config["loss"]["name"], params)
    return config


def _check_loss_params(name: str, params: Mapping) -> None:
    """Each of ``loss.params`` by its dotted key: a parameter of loss ``name`` (losses.LOSS_PARAMS), in its range."""
    from cprfl_lib.losses import LOSS_CLASSES, LOSS_PARAMS

    accepted = LOSS_PARAMS[name]
    unknown = sorted(set(params) - set(accepted), key=str)
    if unknown:
        raise CprflError(f"loss.params {unknown} are not parameters of loss {name!r} ({LOSS_CLASSES[name].__name__} "
                         f"takes {', '.join(sorted(accepted))})")
    for key, value in params.items():
        p = accepted[key]
        problem = _one_of(p.choices)(value) if p.choices is not None else \
            _real(p.lo, p.hi, p.lo_open, p.hi_open)(value)
        if problem:
            raise CprflError(f"configuration key 'loss.params.{key}' must be {problem} for loss {name!r}, "
                             f"got {value!r}")
