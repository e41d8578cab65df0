"""The decoded-image cache: a split's images decoded and resized once, kept as uint8 on disk.

Decoding a JPEG and resizing it to 448 px costs 6-8 ms of a CPU core, 10-40 times the GPU's
time for that image. The decoded, resized pixels of a split (uint8, (N, 3, S, S), a ``.npy``
file read memory-mapped) are therefore written once, with DataLoader workers, and every
later epoch and every later run reading that split at that size reads them instead of the
JPEGs. The file is keyed by the images' content and the decode stage
(:func:`cprfl_lib.digest.content_key`): other images under the same names, or another size,
give another file. It is written atomically (never seen half-written) after checking that
the disk can hold it, by one process at a time, without drawing from the run's random
streams (:func:`cprfl_lib.caches.filling`): a cold cache gives the run a warm one gives.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cprfl_lib.caches import filling
from cprfl_lib.data.datasets import image_root, load_image
from cprfl_lib.data.lists import SplitList
from cprfl_lib.data.transforms import Preprocessing
from cprfl_lib.digest import content_key, files_digest
from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_path
from cprfl_lib.paths import cache_dir

FORMAT = 1


def decoded_bytes(n: int, image_size: int) -> int:
    return n * 3 * image_size * image_size


class _Decode(Dataset):
    def __init__(self, root: Path, paths: list[str], prep: Preprocessing) -> None:
        self.root, self.paths, self.prep = root, paths, prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.prep.resize(load_image(self.root / self.paths[i]))


def decoded_key(root: str | Path, split: SplitList, prep: Preprocessing) -> str:
    return content_key("decoded-images", {"images": files_digest(root, split.paths), "decode": prep.decode_key()},
                       FORMAT)


def decoded_images(root: str | Path | None, split: SplitList, prep: Preprocessing, workers: int = 0,
                   progress: bool = True, folder: Path | None = None) -> Path:
    """The ``.npy`` file of ``split``'s decoded images at ``prep``'s size, written first if missing."""
    root = image_root(root)
    folder = Path(folder) if folder is not None else cache_dir("decoded")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{decoded_key(root, split, prep)}.npy"
    if path.is_file():
        return path
    with filling(path, say=progress):  # one filler at a time; the run's random streams untouched
        if not path.is_file():  # another process may have made it while this one waited
            _write(path, root, split, prep, workers, progress)
    return path


def _write(path: Path, root: Path, split: SplitList, prep: Preprocessing, workers: int, progress: bool) -> None:
    need = decoded_bytes(len(split), prep.image_size)
    free = shutil.disk_usage(path.parent).free
    if free < need * 1.05 + 2**28:
        raise CprflError(f"the decoded-image cache {path.parent} has {free / 2**30:.1f} GiB free; "
                         f"{len(split):,} images at {prep.image_size} px need {need / 2**30:.1f} GiB "
                         "(free some space, or set data.decoded_cache=false to decode the JPEGs every epoch)")
    # a private generator: iterating a DataLoader draws its base seed from the global RNG otherwise
    loader = DataLoader(_Decode(root, split.paths, prep), batch_size=32, num_workers=workers,
                        generator=torch.Generator())
    with atomic_path(path) as tmp:
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                           shape=(len(split), 3, prep.image_size, prep.image_size))
        start = 0
        for batch in tqdm(loader, desc=f"decode {len(split)} images", disable=not progress, leave=False):
            pixels[start:start + len(batch)] = batch.numpy()
            start += len(batch)
        pixels.flush()
        del pixels
