"""Images and multi-hot targets for one split, as a torch Dataset.

The split lists hold image paths relative to a data root, so the VOC layout
(``VOCdevkit/VOC2012/JPEGImages/...``, ``VOCdevkit/VOC2007/JPEGImages/...``) and the COCO
layout (``train2017/...``, ``val2017/...``) need no special code: the path is joined to the
root. Missing images are reported all at once before training starts (:func:`check_images`),
and an unreadable image is reported by path, never as a bare PIL traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cprfl_lib.errors import CprflError
from cprfl_lib.data.lists import SplitList

_LAYOUT_HINT = "VOCdevkit/ for VOC-LT, train2017/ and val2017/ for COCO-LT"


def _root(image_root: str | Path | None) -> Path:
    if image_root is None:
        raise CprflError(f"no image folder given; pass --data-root DIR holding {_LAYOUT_HINT}")
    root = Path(image_root).expanduser()
    if not root.is_dir():
        raise CprflError(f"data root {root} does not exist; pass --data-root DIR holding {_LAYOUT_HINT}")
    return root


def check_images(image_root: str | Path | None, paths: Sequence[str], show: int = 5) -> None:
    """Raise one CprflError listing how many of ``paths`` are missing under ``image_root``."""
    root = _root(image_root)
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        first = ", ".join(missing[:show]) + (", ..." if len(missing) > show else "")
        raise CprflError(
            f"{len(missing):,} of {len(paths):,} images are missing under {root} (first: {first}); "
            f"put the images there or pass --data-root DIR holding {_LAYOUT_HINT}"
        )


def load_image(path: Path) -> Image.Image:
    """Open an image fully (PIL loads lazily, so force it here) and convert it to RGB."""
    try:
        with Image.open(path) as img:
            img.load()  # truncation and decode errors surface here, not later in a transform
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError and "image file is truncated" are OSErrors.
        raise CprflError(f"{path}: cannot read image ({exc}); replace the file or remove it from the list") from exc


class MultiLabelImageDataset(Dataset):
    """``(image, target)`` pairs: the transformed image and a float32 (C,) multi-hot vector."""

    def __init__(
        self,
        image_root: str | Path | None,
        split: SplitList,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        check: bool = True,
    ) -> None:
        self.root = _root(image_root)
        self.split = split
        self.transform = transform
        if check:
            check_images(self.root, split.paths)

    def __len__(self) -> int:
        return len(self.split)

    @property
    def targets(self) -> np.ndarray:
        return self.split.targets

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.root / self.split.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        target = torch.from_numpy(self.split.targets[index].astype(np.float32))
        return image, target
