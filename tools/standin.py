"""Stand-ins in the real formats, for checks where the real inputs cannot be had (tests, the GPU check).

- :func:`image_tree`: a JPEG at every path the split lists name (the VOC and COCO layouts:
  ``VOCdevkit/VOC2012/JPEGImages/...``, ``train2017/...``), small or at VOC's typical size;
- :func:`resnet_weights`: a torchvision ResNet state dict with random values (what
  ``model.backbone_weights=/path/resnet101.pth`` reads);
- :func:`clip_weights`: an open_clip CLIP state dict with random values, named like OpenAI's file
  (``RN50-openai.bin``: ``semantics.weights=`` reads it with the QuickGELU OpenAI weights need).

Nothing here is a result: the images are smooth random colours and the weights are random.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cprfl_lib.cpus import usable_cpus

VOC_SIZE = (500, 375)  # the most common VOC image size (width, height)


def _jpeg(args: tuple[str, tuple[int, int], int]) -> None:
    path, (w, h), seed = args
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(grid, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))  # texture, as photographs have
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=85)


def list_paths(list_files: list[Path]) -> list[str]:
    """The image paths (first token of every line) of split lists."""
    out = []
    for f in list_files:
        out += [line.split()[0] for line in Path(f).read_text().splitlines() if line.strip()]
    return out


def image_tree(root: Path, paths: list[str], size: tuple[int, int] = (32, 24), workers: int | None = None) -> Path:
    """A JPEG of ``size`` (width, height) at ``root / path`` for every path (missing ones only)."""
    root = Path(root)
    jobs = [(str(root / p), size, zlib.crc32(p.encode())) for p in paths if not (root / p).is_file()]
    workers = workers or usable_cpus(at_most=16)
    if workers > 1 and len(jobs) > 256:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_jpeg, jobs, chunksize=64))
    else:
        for job in jobs:
            _jpeg(job)
    return root


def resnet_weights(path: Path, arch: str = "resnet101", seed: int = 0) -> Path:
    """A torchvision ``arch`` state dict with random values, as ``torch.save`` writes the real ones."""
    import torch
    import torchvision

    if not Path(path).is_file():
        torch.manual_seed(seed)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)
    return Path(path)


def clip_weights(path: Path, model: str = "RN50", seed: int = 0) -> Path:
    """An open_clip ``model`` state dict with random values (the format of open_clip's ``*.bin`` files)."""
    import open_clip
    import torch

    if not Path(path).is_file():
        torch.manual_seed(seed)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(open_clip.create_model(model, pretrained=None).state_dict(), path)
    return Path(path)
