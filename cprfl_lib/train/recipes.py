"""Recipes: the one place where training configurations live.

A recipe is a YAML file in ``cprfl_lib/recipes/`` (or any path) that overrides some keys of
``defaults.yaml``. Overrides come from the CLI as ``section.key=value`` strings (the value is
parsed as YAML) or from notebooks as a dict ``{"optim.lr": 1e-3}`` / nested dicts. Every key
must exist in ``defaults.yaml``: a mistyped key is rejected by name, never silently ignored.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from cprfl_lib.errors import CprflError

RECIPE_DIR = resources.files("cprfl_lib.train") / "recipes"


def available_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in RECIPE_DIR.iterdir() if p.name.endswith(".yaml") and p.name != "defaults.yaml")


def _read_yaml(path, what: str) -> dict:
    try:
        data = yaml.safe_load(Path(str(path)).read_text()) or {}
    except yaml.YAMLError as exc:
        raise CprflError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CprflError(f"{path}: a {what} must be a mapping of sections")
    return data


def defaults() -> dict:
    return _read_yaml(RECIPE_DIR / "defaults.yaml", "defaults file")


def _merge(base: dict, update: Mapping, where: str) -> None:
    for key, value in update.items():
        if key not in base:
            known = ", ".join(sorted(base))
            raise CprflError(f"unknown configuration key {where + key!r} (known here: {known})")
        if isinstance(base[key], dict) and key != "params":
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
    if isinstance(default, str) and isinstance(value, (bool, int, float)) and key.endswith(("amp", "cache_features")):
        return  # 'auto' | true | false switches
    raise CprflError(f"configuration key {key!r} expects a {type(default).__name__} (like {default!r}), got {value!r}")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise CprflError(f"override {item!r} is not of the form section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def _nest(keys: list[str], value: Any) -> dict:
    out: Any = value
    for k in reversed(keys):
        out = {k: out}
    return out


def load_recipe(name_or_path: str, overrides: Iterable[str] | Mapping[str, Any] | None = None) -> dict:
    """The resolved configuration: defaults, then the recipe, then the overrides."""
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
    apply_overrides(config, overrides)
    return config


def apply_overrides(config: dict, overrides: Iterable[str] | Mapping[str, Any] | None) -> dict:
    """Apply ``section.key=value`` strings or a mapping of dotted keys / nested sections, in place."""
    if not overrides:
        return config
    items = overrides.items() if isinstance(overrides, Mapping) else (_parse_override(o) for o in overrides)
    body = {k: v for k, v in config.items() if k != "recipe"}
    for key, value in items:
        keys = key.split(".") if isinstance(key, str) else key
        _merge(body, _nest(keys, value), "")
    config.update(body)
    return config


def dump(config: Mapping) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False)
