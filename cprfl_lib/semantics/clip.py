"""The CLIP text tower (through open_clip): class names -> (C, m) text features.

Two uses, one loader:

* frozen: :func:`encode_clip` runs ``model.encode_text`` once over the templated class
  names (the EOT feature after the text projection, unnormalised as in the official code);
  :mod:`cprfl_lib.semantics` caches the result on disk;
* trainable: :class:`CLIPTextEncoder` keeps open_clip's text tower (the visual tower is
  dropped) and the tokenized prompts, and recomputes the features with gradients in every
  forward pass, as the official code does (method.md §8, D1).

Weights are a pretrained tag (``"openai"``, the paper's), a local checkpoint file, or
None (also spelled ``"random"``): seeded random initialisation, for tests and smoke runs
only. Random weights are only ever used when asked for; a tag or file that cannot be
loaded is an error, never a fallback. A tag is fetched by
open_clip from the Hugging Face hub; without a network we fail within seconds and say how
to supply a file instead of letting huggingface_hub retry for ~46 s.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_write_json
from cprfl_lib.paths import cache_dir

DEFAULT_TEMPLATE = "a photo of a {}."
RANDOM_WEIGHTS = "random"

# Our encoder names -> open_clip model names. "clip-tiny" is a 4.6 M-parameter stand-in for
# RN50 (same tokenizer and text-tower layout, width 64, 2 layers) for tests and smoke runs.
CLIP_MODELS = {"clip-rn50": "RN50", "clip-vit-b-16": "ViT-B-16", "clip-tiny": "cprfl-tiny-RN"}
TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Where a tag's file sits on the hub; used to tell the user what to download.
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def model_name(encoder: str) -> str:
    """The open_clip model name for one of our ``clip-*`` encoder names (registering clip-tiny)."""
    if encoder not in CLIP_MODELS:
        raise CprflError(f"unknown CLIP encoder {encoder!r}; choose one of {sorted(CLIP_MODELS)}")
    name = CLIP_MODELS[encoder]
    if encoder == "clip-tiny":
        register_tiny_config()
    return name


def register_tiny_config() -> None:
    """Make the tiny config known to open_clip (``open_clip.add_model_config`` takes a file)."""
    import open_clip

    name = CLIP_MODELS["clip-tiny"]
    if open_clip.get_model_config(name) is not None:
        return
    path = cache_dir("open_clip_configs") / f"{name}.json"
    atomic_write_json(path, TINY_CONFIG)
    open_clip.add_model_config(path)


def clip_embedding_dim(encoder: str) -> int:
    """m of a CLIP encoder, read from its open_clip config (no model is built)."""
    import open_clip

    return int(open_clip.get_model_config(model_name(encoder))["embed_dim"])


def is_weights_file(weights: object) -> bool:
    """Whether ``weights`` names a local checkpoint (a path) rather than a tag."""
    if isinstance(weights, Path):
        return True
    text = str(weights)
    return os.sep in text or text.lower().endswith(CHECKPOINT_SUFFIXES)


def is_random(weights: object) -> bool:
    """None and "random" both mean random initialisation."""
    return weights is None or weights == RANDOM_WEIGHTS


def default_quick_gelu(encoder: str, weights: str | os.PathLike | None) -> bool:
    """QuickGELU is needed for OpenAI's weights: a tag that says so, or a file named ``*openai*``."""
    if is_random(weights):
        return False
    if is_weights_file(weights):
        return "openai" in str(weights).lower()
    import open_clip

    return bool(open_clip.get_pretrained_cfg(model_name(encoder), str(weights)).get("quick_gelu", False))


def weights_fingerprint(weights: str | os.PathLike | None) -> dict:
    """What identifies the weights for the embedding cache: the tag, or a file's content."""
    if is_random(weights):
        return {"tag": RANDOM_WEIGHTS}
    if not is_weights_file(weights):
        return {"tag": str(weights)}
    from cprfl_lib.digest import file_digest

    return {"file_sha256": file_digest(Path(weights).expanduser())}


def _hub_offline() -> bool:
    import huggingface_hub

    return huggingface_hub.is_offline_mode()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub, so an offline machine fails in seconds, not after retries."""
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_tag_file(name: str, tag: str) -> str | None:
    """The tag's weight file if it already sits in the local Hugging Face cache."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    hub = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "")
    repo_id, filename = os.path.split(hub)
    for fname in ([filename] if filename else _HF_WEIGHT_FILES):
        found = try_to_load_from_cache(repo_id, fname)
        if isinstance(found, str):
            return found
    return None


def _no_weights_message(encoder: str, tag: str, why: str) -> str:
    import open_clip

    name = model_name(encoder)
    hub = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "").rstrip("/")
    return (
        f"CLIP weights {tag!r} for {name} could not be downloaded ({why}). Save them once where there is a "
        f"network (e.g. `hf download {hub} open_clip_pytorch_model.bin --local-dir <dir>`, then rename the file "
        f"to {name}-{tag}.bin) and pass weights=/path/to/{name}-{tag}.bin (add quick_gelu=True if the file name "
        f"lacks 'openai')"
    )


def weights_status(encoder: str, weights: str | os.PathLike | None) -> tuple[bool, str]:
    """Whether the CLIP weights can be had on this machine, and why not."""
    if is_random(weights):
        return True, "random weights (tests and smoke runs only)"
    if is_weights_file(weights):
        path = Path(weights).expanduser()
        return (True, f"local file {path}") if path.is_file() else (False, f"CLIP weights file not found: {path}")
    import open_clip

    name = model_name(encoder)
    if str(weights) not in open_clip.list_pretrained_tags_by_model(name):
        tags = open_clip.list_pretrained_tags_by_model(name)
        return False, f"unknown pretrained tag {weights!r} for {name}; known tags: {tags} (or pass a local file)"
    if _cached_tag_file(name, str(weights)):
        return True, f"tag {weights!r} found in the Hugging Face cache"
    if _hub_offline():
        return False, "no CLIP weights: offline (HF_HUB_OFFLINE) and no local file given"
    if not _hub_reachable():
        return False, "no CLIP weights: huggingface.co unreachable and no local file given"
    return True, f"tag {weights!r} will be downloaded by open_clip"


def load_clip(
    encoder: str,
    weights: str | os.PathLike | None = None,
    *,
    quick_gelu: bool | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """An open_clip CLIP model for ``encoder`` in eval mode; ``weights`` None = random (seeded)."""
    import open_clip

    name = model_name(encoder)
    if quick_gelu is None:
        quick_gelu = default_quick_gelu(encoder, weights)
    pretrained: str | None = None
    if is_random(weights):
        pass
    elif is_weights_file(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CprflError(f"CLIP weights file not found: {path} (weights= for {encoder})")
        pretrained = str(path)
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if str(weights) not in tags:
            raise CprflError(f"unknown pretrained tag {weights!r} for {name}; known: {tags}, 'random', or a file path")
        pretrained = str(weights)
        # huggingface_hub retries ~46 s when offline unless HF_HUB_OFFLINE is set: use the
        # already-downloaded file if there is one, else probe the hub first.
        cached = _cached_tag_file(name, pretrained)
        if cached:
            pretrained = cached
        elif not _hub_offline() and not _hub_reachable():
            raise CprflError(_no_weights_message(encoder, pretrained, "huggingface.co unreachable; offline?"))
    # Random initialisation draws from the global generator: fork it so results follow `seed`.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu)
        except RuntimeError as err:
            if pretrained is not None and not is_weights_file(pretrained):  # a tag, not downloaded
                raise CprflError(_no_weights_message(encoder, str(weights), "offline?")) from err
            raise CprflError(f"cannot load CLIP weights {pretrained} into {name}: {str(err).splitlines()[0]}") from err
    return model.to(device).eval()


@functools.lru_cache(maxsize=None)
def _tokenizer(name: str):
    import open_clip

    return open_clip.get_tokenizer(name)  # builds the BPE tables (~0.3 s): once per model


def tokenize_prompts(encoder: str, class_names: list[str], template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
    """``template.format(name)`` with ``_`` -> space, tokenized by open_clip: (C, 77) int64."""
    prompts = [template.format(name.replace("_", " ")) for name in class_names]
    return _tokenizer(model_name(encoder))(prompts)


def drop_visual(model: nn.Module) -> nn.Module:
    """Keep only the text tower: the image tower and the contrastive logit scale are not used."""
    for attr in ("visual", "logit_scale", "logit_bias"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


class CLIPTextEncoder(nn.Module):
    """open_clip's text tower over fixed class prompts: ``forward() -> (C, m)``.

    Holds the CLIP model without its visual tower (token_embedding, positional_embedding,
    transformer, ln_final, text_projection, attn_mask) and the tokenized prompts as a
    buffer, so ``.to(device)`` moves both. ``frozen=True`` turns off gradients and runs the
    tower under ``torch.no_grad``. The state dict carries the class names and the QuickGELU
    choice (no parameter records it), and loading one with other values is a CprflError:
    rebuild with the same ``quick_gelu`` (e.g. ``weights=None, quick_gelu=True`` for a
    checkpoint fine-tuned from OpenAI weights).
    """

    def __init__(
        self,
        encoder: str,
        class_names: list[str],
        *,
        weights: str | os.PathLike | None = None,
        template: str = DEFAULT_TEMPLATE,
        quick_gelu: bool | None = None,
        normalize: bool = False,
        frozen: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not class_names:
            raise CprflError("CLIPTextEncoder needs at least one class name")
        self.encoder = encoder
        self.class_names = list(class_names)
        self.normalize = normalize
        self.quick_gelu = default_quick_gelu(encoder, weights) if quick_gelu is None else bool(quick_gelu)
        self.clip = drop_visual(load_clip(encoder, weights, quick_gelu=self.quick_gelu, seed=seed))
        self.register_buffer("tokens", tokenize_prompts(encoder, class_names, template), persistent=False)
        self.embed_dim = int(self.clip.text_projection.shape[1])
        self.frozen = frozen
        self.clip.requires_grad_(not frozen)

    def get_extra_state(self) -> dict:
        return {"encoder": self.encoder, "class_names": self.class_names, "quick_gelu": self.quick_gelu}

    def set_extra_state(self, state: dict) -> None:
        ours = self.get_extra_state()
        if state != ours:
            raise CprflError(f"text-encoder weights were saved for {state} but this CLIPTextEncoder is {ours}; "
                             f"rebuild it with the saved encoder, class names and quick_gelu")

    def forward(self) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.clip.encode_text(self.tokens, normalize=self.normalize)  # (C, m)


def encode_clip(
    encoder: str,
    class_names: list[str],
    *,
    weights: str | os.PathLike | None = None,
    template: str = DEFAULT_TEMPLATE,
    quick_gelu: bool | None = None,
    normalize: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The frozen CLIP text features of the templated class names: (C, m) float32 on the CPU."""
    module = CLIPTextEncoder(
        encoder, class_names, weights=weights, template=template, quick_gelu=quick_gelu,
        normalize=normalize, frozen=True, seed=seed,
    ).to(device)
    with torch.no_grad():
        return module().float().cpu()
