"""A small long-tailed multi-label dataset of one's own, written in the lists format or as COCO-style JSON.

New class names (birds, not VOC's or COCO's), a long-tailed training count profile, real JPEGs of random content
(a class tints its image, so a model has something to learn), two test images with no label, a validation split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["grey heron", "kingfisher", "white stork", "sandpiper", "cormorant", "osprey"]
PRIMARY = {"train": [24, 12, 7, 5, 3, 2], "val": [3, 2, 1, 1, 1, 1], "test": [5, 3, 2, 2, 2, 2]}
THRESHOLDS = [12, 4]  # groups for a dataset this small: head >= 12, medium 4-11, tail < 4
UNLABELLED_TEST = 2
CATEGORY_IDS = [7, 3, 11, 20, 5, 42]  # the COCO category ids used (not 0..C-1, not contiguous)


def split_rows(seed: int = 0) -> dict[str, list[tuple[str, list[int]]]]:
    """{split: [(relative path, class indices)]}: each image has its primary class, some a second (the head one)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, counts in PRIMARY.items():
        rows = []
        for c, n in enumerate(counts):
            for _ in range(n):
                labels = [c] + ([0] if c and rng.random() < 0.3 else [])
                rows.append((f"images/{split}/{len(rows):03d}.jpg", sorted(labels)))
        if split == "test":
            rows += [(f"images/{split}/{len(rows) + i:03d}.jpg", []) for i in range(UNLABELLED_TEST)]
        out[split] = rows
    return out


def _write_images(root: Path, rows, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tints = rng.integers(0, 256, (len(CLASSES), 3))
    for path, labels in rows:
        pixels = rng.integers(0, 256, (24, 24, 3))
        if labels:
            pixels = (pixels + tints[labels].mean(0)) / 2
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(root / path, quality=90)


def write_own_dataset(root: Path, fmt: str = "lists", seed: int = 0, images: bool = True) -> Path:
    """Write the dataset into ``root`` ("lists": labels.txt, train/val/test.txt; "coco": train/val/test.json)."""
    root.mkdir(parents=True, exist_ok=True)
    splits = split_rows(seed)
    if images:
        _write_images(root, [r for rows in splits.values() for r in rows], seed)
    if fmt == "lists":
        (root / "labels.txt").write_text("".join(f"{name} {i}\n" for i, name in enumerate(CLASSES)))
        for split, rows in splits.items():
            (root / f"{split}.txt").write_text("".join(" ".join([p, *map(str, ls)]) + "\n" for p, ls in rows))
    elif fmt == "coco":
        # class k gets the k-th smallest id (classes follow ascending id); categories written in reverse order
        class_of = dict(enumerate(sorted(CATEGORY_IDS)))
        cats = [{"id": class_of[c], "name": CLASSES[c], "supercategory": "bird"} for c in reversed(range(len(CLASSES)))]
        for split, rows in splits.items():
            images_, anns = [], []
            for i, (path, labels) in enumerate(rows):
                images_.append({"id": 1000 + i, "file_name": path, "width": 24, "height": 24})
                for c in labels:  # two boxes of the same class on some images: still one label
                    for _ in range(1 + (i % 3 == 0)):
                        anns.append({"id": len(anns) + 1, "image_id": 1000 + i, "category_id": class_of[c],
                                     "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0})
            (root / f"{split}.json").write_text(json.dumps({"images": images_, "annotations": anns,
                                                            "categories": cats}))
    else:
        raise ValueError(fmt)
    return root
