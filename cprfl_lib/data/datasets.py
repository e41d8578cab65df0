"""Images and multi-hot targets for one split, as a torch Dataset.

The split lists hold image paths relative to a data root, so the VOC layout
(``VOCdevkit/VOC2012/JPEGImages/...``, ``VOCdevkit/VOC2007/JPEGImages/...``) and the COCO
layout (``train2017/...``, ``val2017/...``) need no special code: the path is joined to the
root. Missing images are reported all at once before training starts (:func:`check_images`),
:func:`find_unreadable` decodes every image to list all the bad ones before a long run, and an
unreadable image met during a run is reported by path, never as a bare PIL traceback.

A dataset item is the uint8 (3, S, S) image after the decode stage of its
:class:`~cprfl_lib.data.transforms.Preprocessing` (from the JPEG, or from the decoded-image
cache) and, when training, its augmentation; normalisation happens later, on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cprfl_lib.data.lists import SplitList
from cprfl_lib.data.transforms import Preprocessing
from cprfl_lib.errors import CprflError

LAYOUT_HINT = "VOCdevkit/ for VOC-LT, train2017/ and val2017/ for COCO-LT, your dataset's folder for own"
_REPLACE = "replace the file with the readable original"


def image_root(root: str | Path | None) -> Path:
    if root is None:
        raise CprflError(f"no image folder given; pass --data-root DIR holding {LAYOUT_HINT}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CprflError(f"data root {root} does not exist; pass --data-root DIR holding {LAYOUT_HINT}")
    return root


def check_images(root: str | Path | None, paths: Sequence[str], show: int = 5) -> None:
    """Raise one CprflError listing how many of ``paths`` are missing under ``root``."""
    root = image_root(root)
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        first = ", ".join(missing[:show]) + (", ..." if len(missing) > show else "")
        raise CprflError(
            f"{len(missing):,} of {len(paths):,} images are missing under {root} (first: {first}); "
            f"put the images there or pass --data-root DIR holding {LAYOUT_HINT}"
        )


def _read(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()  # truncation and decode errors surface here, not later in a transform
        return img.convert("RGB")


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # truncated/unidentified: OSError


def load_image(path: Path) -> Image.Image:
    """Open an image fully (PIL loads lazily, so force it here) and convert it to RGB."""
    try:
        return _read(path)
    except _DECODE_ERRORS as exc:
        raise CprflError(f"{path}: cannot read image ({exc}); {_REPLACE} "
                         "(`cprfl data check --deep` lists every unreadable image)") from exc


class _Probe(Dataset):
    """Decodes one image per item; the item is the reason it cannot be read ('' if it can)."""

    def __init__(self, root: Path, paths: Sequence[str]) -> None:
        self.root, self.paths = root, list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        try:
            _read(self.root / self.paths[i])
        except _DECODE_ERRORS as exc:
            return str(exc) or type(exc).__name__
        return ""


def find_unreadable(root: str | Path, paths: Sequence[str], workers: int = 0,
                    progress: bool = False) -> list[tuple[str, str]]:
    """(path, reason) of every image under ``root`` that does not decode, decoding all of them."""
    from tqdm.auto import tqdm

    root = image_root(root)
    check_images(root, paths)
    loader = DataLoader(_Probe(root, paths), batch_size=64, num_workers=workers, collate_fn=list)
    bad, start = [], 0
    for batch in tqdm(loader, desc="decode", disable=not progress, leave=False):
        bad += [(paths[start + j], why) for j, why in enumerate(batch) if why]
        start += len(batch)
    return bad


class MultiLabelImageDataset(Dataset):
    """``(image, target)``: the uint8 (3, S, S) image of ``prep`` (augmented if ``train``) and a float32 (C,) target.

    ``decoded``: a decoded-image cache file (:func:`cprfl_lib.data.decoded.decoded_images`) holding
    this split's images after ``prep``'s decode stage; read memory-mapped instead of decoding JPEGs.

    Indexed by ``(epoch, index)`` (:class:`~cprfl_lib.train.distributed.GlobalBatchSampler` with
    ``tag_epoch``), an augmented item draws its random numbers from (``seed``, epoch, index) alone:
    the same augmentation whatever the number of worker processes, and after a resume.
    """

    def __init__(self, image_root_: str | Path | None, split: SplitList, prep: Preprocessing, train: bool = False,
                 decoded: Path | None = None, check: bool = True, seed: int = 0) -> None:
        self.root = image_root(image_root_)
        self.split, self.prep, self.train, self.decoded, self.seed = split, prep, train, decoded, seed
        self.augment = prep.augmentation(train)
        self._pixels = None  # the memory map, opened in the process that reads it (each DataLoader worker)
        if check:
            check_images(self.root, split.paths)

    def __len__(self) -> int:
        return len(self.split)

    @property
    def targets(self) -> np.ndarray:
        return self.split.targets

    def image(self, index: int) -> torch.Tensor:
        """The decoded, resized uint8 (3, S, S) image, before augmentation."""
        if self.decoded is not None:
            if self._pixels is None:
                self._pixels = np.load(self.decoded, mmap_mode="r")
            return torch.from_numpy(np.array(self._pixels[index]))
        return self.prep.resize(load_image(self.root / self.split.paths[index]))

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = index if isinstance(index, tuple) else (None, index)
        image = self.image(index)
        if self.augment is not None:
            if epoch is None:  # the caller's random numbers
                image = self.augment(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
                    image = self.augment(image)
        return image, torch.from_numpy(self.split.targets[index].astype(np.float32))

    def __getstate__(self) -> dict:  # a memory map does not travel to a spawned worker: reopen it there
        return {**self.__dict__, "_pixels": None}
