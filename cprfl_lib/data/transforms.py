"""Image transforms by preset name: the official recipe, ImageNet-normalised, or backbone-specific.

Presets (all squash the image to ``image_size × image_size`` without keeping its aspect
ratio, as the official code does with ``Resize((448, 448))``):

- ``official``: the official code's pipeline (method.md §3). Train: Resize → CutoutPIL(0.5)
  → RandAugment → ToTensor; test: Resize → ToTensor. **No normalisation**: pixels stay in
  [0, 1] (the official code feeds them so to an ImageNet ResNet). ``mean``/``std`` are ignored.
- ``imagenet``: Resize, (train) RandomHorizontalFlip, ToTensor, Normalize with the ImageNet
  mean/std. ``mean``/``std`` are ignored.
- ``backbone``: like ``imagenet`` with the backbone's own ``mean``/``std`` (required), e.g.
  0.5/0.5 for EfficientNet-Lite0.

RandAugment: we use torchvision's ``RandAugment()``, which differs from the PyPI
``randaugment==1.0.2`` (jizongFox) that the official code imports. That one draws ONE random
(op, magnitude 1..9) pair per image from 15 ops {Invert, Cutout, Sharpness, AutoContrast,
Posterize, ShearX/Y, TranslateX/Y, Rotate, Equalize, Contrast, Color, Solarize, Brightness},
each applied with probability 0.5 and grey fill (128, 128, 128); it also needs numpy < 1.24.
torchvision's applies ``num_ops=2`` ops per image at a fixed magnitude 9 of 31 bins, has no
Invert or Cutout, includes Identity, and fills with black. The augmentation strength
therefore differs; the paper's numbers were produced with the PyPI version.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from cprfl_lib.errors import CprflError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("official", "imagenet", "backbone")


class CutoutPIL:
    """Paint one rectangle of ``factor·H × factor·W`` at a uniform random centre, random RGB fill.

    As the official ``CutoutPIL(cutout_factor=0.5)``: the rectangle is clipped at the image
    borders, so it is smaller when the centre lies near an edge. Unlike it, the rectangle is
    half-open (exactly ``round(factor·H)`` rows when not clipped; PIL's ``rectangle`` there
    paints one extra row and column). Randomness comes from torch, so ``torch.manual_seed``
    and DataLoader worker seeding make it reproducible.
    """

    def __init__(self, cutout_factor: float = 0.5) -> None:
        self.cutout_factor = cutout_factor

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        ch, cw = int(self.cutout_factor * h + 0.5), int(self.cutout_factor * w + 0.5)
        yc, xc = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y1, x1 = max(yc - ch // 2, 0), max(xc - cw // 2, 0)
        y2, x2 = min(yc - ch // 2 + ch, h), min(xc - cw // 2 + cw, w)
        fill = tuple(torch.randint(0, 256, (len(img.getbands()),)).tolist())
        out = img.copy()
        if x2 > x1 and y2 > y1:
            out.paste(fill if len(fill) > 1 else fill[0], (x1, y1, x2, y2))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cutout_factor={self.cutout_factor})"


def build_transform(
    preset: str,
    image_size: int,
    train: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Callable[[Image.Image], torch.Tensor]:
    """A PIL → (3, image_size, image_size) float32 transform for ``preset`` (see the module doc)."""
    if preset not in PRESETS:
        raise CprflError(f"unknown transform preset {preset!r}; known: {', '.join(PRESETS)}")
    if not isinstance(image_size, int) or image_size <= 0:
        raise CprflError(f"image size must be a positive integer, got {image_size!r}")
    resize = T.Resize((image_size, image_size))
    if preset == "official":
        steps = [resize, CutoutPIL(0.5), T.RandAugment()] if train else [resize]
        return T.Compose([*steps, T.ToTensor()])
    if preset == "backbone":
        if mean is None or std is None:
            raise CprflError("transform preset 'backbone' needs the backbone's mean and std")
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    steps = [resize, T.RandomHorizontalFlip()] if train else [resize]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])
