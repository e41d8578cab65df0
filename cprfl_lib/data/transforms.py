"""Image preprocessing by preset name, in three stages so that the costly one runs once.

A preset (all squash the image to ``image_size × image_size`` without keeping its aspect
ratio, as the official code does with ``Resize((448, 448))``) is applied as

1. **decode + resize** (PIL, deterministic): a JPEG becomes a uint8 (3, S, S) tensor. This is
   what the decoded-image cache (:mod:`cprfl_lib.data.decoded`) stores, so later epochs and
   later runs skip JPEG decoding;
2. **augment** (training only, random, on uint8 tensors, in the DataLoader workers);
3. **normalise** (float, batched, on the device: inside
   :class:`cprfl_lib.model.MultiLabelClassifier`, from the ``mean``/``std`` given here).

Presets:

- ``official``: the official code's pipeline (method.md §3). Train: Resize → Cutout(0.5) →
  RandAugment; test: Resize. **No normalisation**: pixels stay in [0, 1] (the official code
  feeds them so to an ImageNet ResNet). ``mean``/``std`` are ignored.
- ``imagenet``: Resize, (train) horizontal flip, the ImageNet mean/std.
- ``backbone``: like ``imagenet`` with the backbone's own ``mean``/``std`` (required), e.g.
  0.5/0.5 for EfficientNet-Lite0.

The augmentations are the ones the PIL pipeline used, applied to tensors: :class:`Cutout`
paints the very rectangle :class:`CutoutPIL` paints from the same random numbers, and
torchvision's ``RandAugment`` draws the same ops from the same random numbers on a tensor as on
a PIL image (their pixel kernels differ slightly; ``tests/test_datasets.py`` measures it).

RandAugment: torchvision's ``RandAugment()`` differs from the PyPI ``randaugment==1.0.2``
(jizongFox) that the official code imports. That one draws ONE random (op, magnitude 1..9)
pair per image from 15 ops {Invert, Cutout, Sharpness, AutoContrast, Posterize, ShearX/Y,
TranslateX/Y, Rotate, Equalize, Contrast, Color, Solarize, Brightness}, each applied with
probability 0.5 and grey fill (128, 128, 128); it also needs numpy < 1.24. torchvision's
applies ``num_ops=2`` ops per image at a fixed magnitude 9 of 31 bins, has no Invert or Cutout,
includes Identity, and fills with black. The augmentation strength therefore differs; the
paper's numbers were produced with the PyPI version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import PIL
import torch
from PIL import Image
from torchvision import transforms as T

from cprfl_lib.backbones import IMAGENET_MEAN, IMAGENET_STD  # the 'imagenet' preset: what ImageNet weights expect
from cprfl_lib.errors import CprflError

PRESETS = ("official", "imagenet", "backbone")


def _cutout_box(h: int, w: int, factor: float) -> tuple[int, int, int, int, tuple[int, ...]]:
    """(y1, x1, y2, x2, fill) of one cutout: a factor·H × factor·W box at a uniform random centre, clipped."""
    ch, cw = int(factor * h + 0.5), int(factor * w + 0.5)
    yc, xc = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y1, x1 = max(yc - ch // 2, 0), max(xc - cw // 2, 0)
    y2, x2 = min(yc - ch // 2 + ch, h), min(xc - cw // 2 + cw, w)
    return y1, x1, y2, x2, tuple(torch.randint(0, 256, (3,)).tolist())


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
        y1, x1, y2, x2, fill = _cutout_box(h, w, self.cutout_factor)
        out = img.copy()
        if x2 > x1 and y2 > y1:
            out.paste(fill[: len(img.getbands())] if len(img.getbands()) > 1 else fill[0], (x1, y1, x2, y2))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cutout_factor={self.cutout_factor})"


class Cutout(CutoutPIL):
    """:class:`CutoutPIL` on a uint8 (3, H, W) tensor: the same rectangle from the same random numbers."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        y1, x1, y2, x2, fill = _cutout_box(h, w, self.cutout_factor)
        out = img.clone()
        if x2 > x1 and y2 > y1:
            out[:, y1:y2, x1:x2] = torch.tensor(fill, dtype=img.dtype)[:, None, None]
        return out


class HorizontalFlip:
    """Mirror a (3, H, W) tensor with probability ``p`` (the random number drawn as torchvision's flip draws it)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.flip(-1) if torch.rand(1) < self.p else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class Compose:
    def __init__(self, steps: Sequence[Callable]) -> None:
        self.steps = list(steps)

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.steps))})"


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL RGB image as a uint8 (3, H, W) tensor."""
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Preprocessing:
    """What a preset does: :meth:`resize` (cacheable), :meth:`augmentation` (training), ``mean``/``std`` (device)."""

    preset: str
    image_size: int
    mean: tuple[float, float, float] | None  # None: no normalisation
    std: tuple[float, float, float] | None

    def resize(self, img: Image.Image) -> torch.Tensor:
        """Decode stage: the image squashed to S × S (PIL bilinear with antialiasing) as uint8 (3, S, S)."""
        return to_uint8_tensor(img.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR))

    def augmentation(self, train: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The random training augmentation on uint8 (3, S, S) tensors; None at test time."""
        if not train:
            return None
        if self.preset == "official":
            return Compose([Cutout(0.5), T.RandAugment()])
        return HorizontalFlip()

    def decode_key(self) -> dict:
        """What makes the decoded images: for the decoded-image cache's key."""
        return {"size": self.image_size, "resize": "PIL.Image.resize BILINEAR, RGB", "pillow": PIL.__version__}


def preprocessing(preset: str, image_size: int, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> Preprocessing:
    """The :class:`Preprocessing` of ``preset`` at ``image_size`` (``mean``/``std``: the backbone's, for 'backbone')."""
    if preset not in PRESETS:
        raise CprflError(f"unknown transform preset {preset!r}; known: {', '.join(PRESETS)}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
        raise CprflError(f"image size must be a positive integer, got {image_size!r}")
    if preset == "official":
        return Preprocessing(preset, image_size, None, None)
    if preset == "backbone":
        if mean is None or std is None:
            raise CprflError("transform preset 'backbone' needs the backbone's mean and std")
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return Preprocessing(preset, image_size, tuple(float(v) for v in mean), tuple(float(v) for v in std))


def normalize(images: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """uint8 (or [0, 1] float) images (..., 3, H, W) as normalised float32: (x / 255 - mean) / std."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x.div_(255)
    if mean is not None:
        x = x.sub_(mean.view(3, 1, 1)).div_(std.view(3, 1, 1))
    return x


def build_transform(preset: str, image_size: int, train: bool, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """A PIL → normalised float32 (3, S, S) transform: the three stages of ``preset`` in one call."""
    prep = preprocessing(preset, image_size, mean, std)
    aug = prep.augmentation(train)
    m = torch.tensor(prep.mean) if prep.mean else None
    s = torch.tensor(prep.std) if prep.std else None
    return Compose([prep.resize, *([aug] if aug else []), lambda x: normalize(x, m, s)])
