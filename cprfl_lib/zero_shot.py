"""Zero-shot CLIP classification (open_clip): the image tower against "a photo of a {}." for every class.

The third column of the paper's Fig. 4. No training: a class's score is the cosine between the
image embedding and the embedding of its templated name, times CLIP's logit scale. CLIP was
trained with a softmax over texts, so ``softmax`` (a distribution over the classes, the CLIP
protocol) is the natural score; ``sigmoid`` gives independent per-class scores for a
multi-label view, on logits centred per image (same ranking, not calibrated probabilities).

Only meaningful with real CLIP weights: :func:`status` says whether they can be had here
(:func:`cprfl_lib.semantics.encoder_status`), and :func:`load_zero_shot` raises CprflError with
that reason when they cannot. Random weights (``weights=None``) are for tests only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn

from cprfl_lib.errors import CprflError
from cprfl_lib.semantics import encoder_status
from cprfl_lib.semantics.clip import CLIP_MODELS, DEFAULT_TEMPLATE, load_clip, tokenize_prompts

ACTIVATIONS = ("softmax", "sigmoid", "none")


def status(encoder: str = "clip-rn50", weights: str | os.PathLike | None = "openai") -> tuple[bool, str]:
    """Whether zero-shot CLIP can run here with these weights, and why (not); never downloads."""
    if encoder not in CLIP_MODELS:
        return False, f"{encoder!r} is not a CLIP encoder (choose one of {sorted(CLIP_MODELS)})"
    return encoder_status(encoder, weights=weights)


class ZeroShotCLIP(nn.Module):
    """CLIP with its class-name text features computed once: ``forward(images) -> logits (B, C)``.

    ``images`` are CLIP-preprocessed (B, 3, S, S) tensors; :meth:`preprocess` makes one from a
    PIL image and :meth:`predict` goes from PIL images to scores.
    """

    def __init__(self, clip: nn.Module, encoder: str, class_names: Sequence[str], template: str = DEFAULT_TEMPLATE):
        super().__init__()
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.clip, self.encoder, self.class_names = clip.eval(), encoder, list(class_names)
        with torch.no_grad():
            device = next(clip.parameters()).device  # the token ids go where the model is (a CUDA model too)
            text = clip.encode_text(tokenize_prompts(encoder, self.class_names, template).to(device), normalize=True)
        self.register_buffer("text_features", text.float())  # (C, m), unit rows
        cfg = {k: v for k, v in open_clip.get_model_preprocess_cfg(clip).items()
               if k in PreprocessCfg.__dataclass_fields__}
        self.preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)  # PIL -> (3, S, S)
        self.image_size = cfg.get("size", 224)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise CprflError(f"expected CLIP-preprocessed images (B, 3, H, W), got shape {tuple(images.shape)}")
        feats = self.clip.encode_image(images.to(self.text_features.device), normalize=True).float()
        return self.clip.logit_scale.exp().float() * feats @ self.text_features.T  # (B, C)

    @staticmethod
    def activate(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
        """Scores from logits: softmax over classes, sigmoid of per-image centred logits, or the logits."""
        if activation == "softmax":
            return logits.softmax(dim=-1)
        if activation == "sigmoid":
            return torch.sigmoid(logits - logits.mean(dim=-1, keepdim=True))
        if activation == "none":
            return logits
        raise CprflError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")

    def predict(self, images: Sequence[Image.Image], activation: str = "softmax") -> torch.Tensor:
        """PIL images -> scores (N, C) on the CPU."""
        if not images:
            raise CprflError("no images given to zero-shot CLIP")
        batch = torch.stack([self.preprocess(img) for img in images])
        return self.activate(self(batch), activation).cpu()


def load_zero_shot(class_names: Sequence[str], encoder: str = "clip-rn50",
                   weights: str | os.PathLike | None = "openai", *, template: str = DEFAULT_TEMPLATE,
                   quick_gelu: bool | None = None, device: str | torch.device = "cpu", seed: int = 0) -> ZeroShotCLIP:
    """Zero-shot CLIP over ``class_names``; CprflError with the reason when the weights are not available."""
    if not class_names:
        raise CprflError("zero-shot CLIP needs at least one class name")
    ok, reason = status(encoder, weights)
    if not ok:
        raise CprflError(f"zero-shot CLIP ({encoder}, weights={weights!r}) is not available: {reason}")
    clip = load_clip(encoder, weights, quick_gelu=quick_gelu, seed=seed, device=device)
    return ZeroShotCLIP(clip, encoder, class_names, template).to(device)
