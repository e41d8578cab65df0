"""The benchmarks ready to use: class names, splits, training counts, groups, where the images are.

``voc-lt`` and ``coco-lt`` are the published lists (:mod:`cprfl_lib.data.lists`) over the
user's images; ``synth-voc-lt`` and ``synth-coco-lt`` are generated look-alikes
(:mod:`cprfl_lib.data.synthetic`) written in exactly the same file format, always into the
cache (a folder the user names is only read). A generated benchmark also has a validation
split, drawn like its training split; the real ones have none (the paper has none).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cprfl_lib.data.lists import ROLES, SplitList, fetch_split_lists, get_spec, read_labels, read_split
from cprfl_lib.data.names import SYNTHETIC
from cprfl_lib.errors import CprflError


@dataclass
class Benchmark:
    """A benchmark ready to use: names, its splits, where its images and lists live."""

    name: str
    class_names: list[str]
    train: SplitList
    test: SplitList | None  # None only where a design study asked for the validation split alone
    image_root: Path | None
    list_files: dict[str, Path]  # by role: the files the splits were read from
    val: SplitList | None = None  # generated benchmarks only
    evaluated: tuple[str, ...] | None = None  # the splits a run evaluates; None: every one there is
    thresholds: tuple[int, int] | None = None  # (head min, medium min) training images; None: the paper's 100 / 20
    _fingerprints: dict = field(default_factory=dict, repr=False)  # split -> split_fingerprint(split)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_counts(self) -> np.ndarray:
        """Training images per class, (C,) int64: what decides head / medium / tail."""
        return self.train.targets.sum(axis=0, dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        """(C,) array of "head" / "medium" / "tail" (defined once, in metrics.class_groups)."""
        from cprfl_lib.metrics import class_groups

        return class_groups(self.train_counts, self.thresholds)

    @property
    def is_synthetic(self) -> bool:
        return self.name in SYNTHETIC

    @property
    def is_own(self) -> bool:
        """A user's own dataset (``own:<folder>``), neither a published benchmark nor generated data."""
        return self.name.startswith("own:")

    @property
    def eval_splits(self) -> dict[str, SplitList]:
        """The splits a run evaluates: those asked for, else the validation split where there is one and the test
        split."""
        names = self.evaluated or ("val", "test")
        return {k: getattr(self, k) for k in ("val", "test") if k in names and getattr(self, k) is not None}

    def split_fingerprint(self, split: str) -> dict:
        """What a split's content is: the images (by content) and their labels, for cache keys."""
        if split not in self._fingerprints:
            from cprfl_lib.data.datasets import check_images
            from cprfl_lib.digest import files_digest

            s = getattr(self, split)
            check_images(self.image_root, s.paths)
            labels = hashlib.sha256(np.ascontiguousarray(s.targets).tobytes()).hexdigest()
            self._fingerprints[split] = {"images": files_digest(self.image_root, s.paths), "labels": labels,
                                         "n": len(s)}
        return self._fingerprints[split]


def select_subset(targets: np.ndarray, n: int) -> list[int]:
    """``n`` image indices, the same every time: greedily the image that shows the most classes not yet shown
    (the lowest index on ties), then the lowest remaining indices; returned in list order."""
    y = np.asarray(targets, dtype=bool)
    if n >= len(y):
        return list(range(len(y)))
    chosen: list[int] = []
    covered = np.zeros(y.shape[1], dtype=bool)
    available = np.ones(len(y), dtype=bool)
    while len(chosen) < n:
        gain = np.where(available, (y & ~covered).sum(1), -1)
        best = int(np.argmax(gain))
        if gain[best] <= 0:
            break
        chosen.append(best)
        available[best] = False
        covered |= y[best]
    rest = np.flatnonzero(available)[: n - len(chosen)]
    return sorted([*chosen, *rest.tolist()])


def _generated_class_count(folder: Path) -> int | None:
    """How many classes the generator wrote into ``folder`` (its GENERATOR.json), where it says."""
    try:
        return len(json.loads((folder / "GENERATOR.json").read_text())["counts"]["train"]["class_counts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_benchmark(
    name: str,
    list_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    download: bool = True,
    synthetic_options: dict[str, Any] | None = None,
    test_subset: int | None = None,
    eval_splits=None,
    group_thresholds=None,
) -> Benchmark:
    """Load a benchmark by name: ``voc-lt``, ``coco-lt``, ``synth-voc-lt``, ``synth-coco-lt``.

    For the real ones, ``data_root`` is the image root (``VOCdevkit/`` or ``train2017/`` and
    ``val2017/`` inside it) and may be None while only the lists are needed. For the generated
    ones, the data live in the cache (``synthetic_options``: seed, image_size, limit); a
    ``data_root`` must already hold that generated set, which is then read, never written.
    ``test_subset`` keeps a fixed subset of that many test images (:func:`select_subset`). ``eval_splits``
    (a list of "val" and "test"; None: both where they exist) are the splits a run evaluates; each must exist,
    and a generated benchmark asked for ["val"] is drawn without its test split. ``own`` is a user's dataset
    (:mod:`cprfl_lib.data.own`): ``data_root`` its folder, ``list_dir`` where its lists are when elsewhere.
    ``group_thresholds``: (head min, medium min) training images per class; None: the paper's 100 / 20.
    """
    from cprfl_lib.metrics import group_thresholds as _thresholds

    evaluated = tuple(eval_splits) if eval_splits else None
    thresholds = _thresholds(group_thresholds) if group_thresholds is not None else None
    if name == "own":
        return _load_own(data_root, list_dir, synthetic_options, test_subset, evaluated, thresholds)
    if name in SYNTHETIC:
        from cprfl_lib.data import synthetic

        if list_dir is not None:
            raise CprflError(f"{name} is generated with its own lists; drop --list-dir")
        options = dict(synthetic_options or {})
        options.setdefault("splits", ("train", *(evaluated or ("val", "test"))))
        folder = synthetic.generated_folder(name, data_root, **options)
        files = {role: folder / f"{role}.txt" for role in ROLES if (folder / f"{role}.txt").is_file()}
        image_root: Path | None = folder
        expected = _generated_class_count(folder)  # an edited labels.txt is named, not a later list line
        val_file = folder / "val.txt"
    else:
        spec = get_spec(name)
        if synthetic_options:
            raise CprflError(f"{name} is a published benchmark; options {sorted(synthetic_options)} apply only "
                             "to synth-*")
        files = fetch_split_lists(name, list_dir=list_dir, download=download)
        image_root = Path(data_root).expanduser() if data_root is not None else None
        expected, val_file = spec.num_classes, None
    class_names = read_labels(files["labels"])
    if expected is not None and len(class_names) != expected:
        raise CprflError(f"{files['labels']}: {len(class_names)} classes, but {name} has {expected}")
    test = read_split(files["test"], len(class_names)) if "test" in files else None
    if test is not None and test_subset is not None:
        test = test.take(select_subset(test.targets, test_subset), f"{test_subset} images chosen by select_subset")
    val = read_split(val_file, len(class_names)) if val_file is not None and val_file.is_file() else None
    if val is not None:
        files["val"] = val_file
    for split, there in (("val", val), ("test", test)):
        if there is None and split in (evaluated or ("test",)):
            raise CprflError(f"{name} has no {'validation' if split == 'val' else 'test'} split to evaluate"
                             + ("; the published benchmarks have none (the paper has none): drop it from "
                                "data.eval_splits" if split == "val" else ""))
    return Benchmark(name=name, class_names=class_names, train=read_split(files["train"], len(class_names)),
                     test=test, image_root=image_root, list_files=files, val=val, evaluated=evaluated,
                     thresholds=thresholds)


def _load_own(data_root, list_dir, synthetic_options, test_subset, evaluated, thresholds) -> Benchmark:
    from cprfl_lib.data.own import load_own

    if synthetic_options:
        raise CprflError(f"own is a user's dataset; options {sorted(synthetic_options)} apply only to synth-*")
    name, own, root = load_own(data_root, list_dir)
    test, val = own.splits["test"], own.splits.get("val")
    if test_subset is not None:
        test = test.take(select_subset(test.targets, test_subset), f"{test_subset} images chosen by select_subset")
    if val is None and "val" in (evaluated or ()):
        raise CprflError(f"{name} has no validation split to evaluate (no val.txt / val.json in "
                         f"{own.files['train'].parent}): drop it from data.eval_splits")
    return Benchmark(name=name, class_names=own.class_names, train=own.splits["train"], test=test, image_root=root,
                     list_files=dict(own.files), val=val, evaluated=evaluated, thresholds=thresholds)


def benchmark_class_names(name: str, list_dir=None, download: bool = True, data_root=None) -> list[str]:
    """A benchmark's class names; a generated one's without drawing its images; a user's from its folder."""
    if name in SYNTHETIC:
        from cprfl_lib.data.synthetic import class_names

        return class_names(name)
    if name == "own":
        from cprfl_lib.data.own import read_own

        if list_dir is None and data_root is None:
            raise CprflError("own: give the dataset folder (--data-root or --list-dir) to read its class names")
        return read_own(list_dir if list_dir is not None else data_root).class_names
    return load_benchmark(name, list_dir=list_dir, download=download).class_names
