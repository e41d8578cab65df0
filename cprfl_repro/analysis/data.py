"""What the data looks like (notebook 01): which data is used, and its long-tail statistics.

:func:`choose_data` decides, per benchmark, between the published split lists (a folder the
user names, or lists fetched earlier into the cache) and the generated look-alike, and says
why, so a notebook never shows generated data without saying so. The rest are plain
statistics of the multi-hot targets: labels per image, label co-occurrence, and the
head / medium / tail tables (groups defined once, in :func:`cprfl_lib.metrics.class_groups`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cprfl_lib.data.benchmarks import Benchmark, load_benchmark
from cprfl_lib.data.datasets import check_images
from cprfl_lib.data.lists import SplitList, fetch_split_lists, find_list_folder, list_folder
from cprfl_lib.errors import CprflError
from cprfl_lib.metrics import GROUPS
from cprfl_lib.paths import cache_dir

_FAMILIES = ("voc", "coco")

ListDir = str | Path | Mapping[str, str | Path] | None


@dataclass
class DataChoice:
    """One benchmark as shown: the loaded data, where it came from, and whether images can be shown."""

    key: str  # the name the user asked for ("voc", "coco", ...): used in figure names
    benchmark: Benchmark
    source: str  # "real" | "generated"
    reason: str  # one sentence: why this data
    has_images: bool
    images_reason: str  # why images can (not) be shown

    @property
    def name(self) -> str:
        return self.benchmark.name


def benchmark_names(key: str) -> tuple[str | None, str]:
    """(real benchmark or None, generated look-alike) for ``voc``/``voc-lt``/``synth-voc-lt`` and COCO alike."""
    k = key.strip().lower()
    for family in _FAMILIES:
        if k in (family, f"{family}-lt", f"{family}_lt"):
            return f"{family}-lt", f"synth-{family}-lt"
        if k == f"synth-{family}-lt":
            return None, k
    raise CprflError(f"unknown benchmark {key!r}; use voc or coco (real lists when present, else generated), "
                     "or synth-voc-lt / synth-coco-lt (always generated)")


def find_real_lists(real: str, list_dir: ListDir) -> tuple[Path | None, str]:
    """The folder with ``real``'s verified lists, or None and why not.

    ``list_dir``: None (lists fetched earlier into the cache), a dict ``{"voc": folder, ...}``,
    a folder holding the lists, or a parent folder holding ``voc_lt/`` and ``coco_lt/``
    (:func:`cprfl_lib.data.lists.find_list_folder`). Wrong files are an error; a benchmark
    without lists falls back to generated data.
    """
    family = real.split("-")[0]
    if list_dir is None:
        try:
            files = fetch_split_lists(real, download=False)
        except CprflError:
            return None, (f"the {real.upper()} lists are not in the cache ({cache_dir('lists', real)}); "
                          f"fetch them with `cprfl data fetch --dataset {real}` or pass list_dir")
        return files["labels"].parent, f"the published {real.upper()} lists fetched into the cache"
    if isinstance(list_dir, Mapping):
        named = next((list_dir[k] for k in (family, real, f"{family}_lt") if k in list_dir), None)
        if named is None:
            return None, f"list_dir names no folder for {family!r} (keys: {sorted(list_dir)})"
        folder = list_folder(real, named)
    else:
        folder = find_list_folder(real, list_dir)
        if folder is None:
            return None, f"{Path(list_dir).expanduser()} holds no {real.upper()} lists"
    files = fetch_split_lists(real, list_dir=folder, download=False)  # wrong or missing files: CprflError
    return files["labels"].parent, f"the published {real.upper()} lists in {folder}"


def _images(bench: Benchmark, source: str, data_root: str | Path | None) -> tuple[bool, str]:
    if source == "generated":
        return True, f"generated images in {bench.image_root}"
    if data_root is None:
        return False, "no images: the real images need data_root (VOCdevkit/ or train2017/ + val2017/ inside it)"
    try:
        check_images(data_root, bench.train.paths)
    except CprflError as err:
        return False, f"no images: {err}"
    return True, f"images under {data_root}"


def choose_data(
    benchmark: str,
    list_dir: ListDir = None,
    data_root: str | Path | None = None,
    *,
    seed: int = 0,
    image_size: int = 32,
    limit: int | None = None,
    group_thresholds=None,
) -> DataChoice:
    """The real benchmark if its lists are present, else the generated one, with the reason.

    ``seed``, ``image_size`` and ``limit`` (first images of each split) shape generated data only.
    ``data_root`` holds the real images (needed only to show sample images). Nothing is downloaded.
    ``own``: a user's dataset, its folder ``data_root`` (:mod:`cprfl_lib.data.own`), grouped by ``group_thresholds``.
    """
    if benchmark.strip().lower() == "own":
        return choose_own(list_dir, data_root, group_thresholds)
    real, synth = benchmark_names(benchmark)
    folder, why = find_real_lists(real, list_dir) if real else (None, "generated data asked for")
    if folder is not None:
        bench = load_benchmark(real, list_dir=folder, data_root=data_root, download=False)
        source, reason = "real", f"{why} (checksums verified)"
    else:
        options = {"seed": seed, "image_size": image_size, "limit": limit}
        bench = load_benchmark(synth, synthetic_options=options)
        part = (f", first {limit} images of each split: counts and groups are this subset's, not the full set's"
                if limit is not None else "")
        source, reason = "generated", f"{why}; using the generated {synth} (seed {seed}, {image_size} px{part})"
    has_images, images_reason = _images(bench, source, data_root)
    return DataChoice(key=benchmark, benchmark=bench, source=source, reason=reason,
                      has_images=has_images, images_reason=images_reason)


def choose_own(list_dir: ListDir, data_root: str | Path | None, group_thresholds=None) -> DataChoice:
    """A user's dataset (``own``): its folder is ``data_root``, its lists there or in ``list_dir``."""
    if isinstance(list_dir, Mapping):
        list_dir = list_dir.get("own")
    bench = load_benchmark("own", list_dir=list_dir, data_root=data_root, group_thresholds=group_thresholds)
    fmt = "COCO-style JSON" if bench.list_files["train"].suffix == ".json" else "lists"
    reason = (f"your dataset in {bench.image_root} ({fmt}: {', '.join(p.name for p in bench.list_files.values())})"
              + ("" if bench.val is not None else "; no validation split: choices made on the test split are "
                 "optimistic"))
    has_images, images_reason = _images(bench, "own", data_root)
    return DataChoice(key="own", benchmark=bench, source="own", reason=reason, has_images=has_images,
                      images_reason=images_reason)


def groups_notes(choices: Mapping[str, DataChoice]) -> list[str]:
    """How each benchmark's groups were cut (one sentence when they all share the thresholds)."""
    from cprfl_lib.metrics import groups_note

    notes = list(dict.fromkeys(groups_note(c.benchmark.thresholds) for c in choices.values()))
    return notes


def choose_all(benchmarks: Iterable[str], list_dir: ListDir = None, data_root: str | Path | None = None,
               **options: object) -> dict[str, DataChoice]:
    """:func:`choose_data` for each benchmark, keyed by the name asked for."""
    return {b: choose_data(b, list_dir, data_root, **options) for b in benchmarks}


# ---------------------------------------------------------------- statistics of the targets


def _targets(targets: np.ndarray) -> np.ndarray:
    y = np.asarray(targets)
    if y.ndim != 2:
        raise CprflError(f"targets must be a 2-D (images, classes) array, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise CprflError("targets must be multi-hot 0/1 values")
    return y.astype(np.int64)


def labels_per_image(targets: np.ndarray) -> np.ndarray:
    """(N,) number of positive labels of each image."""
    return _targets(targets).sum(axis=1)


def cooccurrence(targets: np.ndarray) -> np.ndarray:
    """(C, C) number of images holding both classes; the diagonal is each class's count."""
    y = _targets(targets)
    return y.T @ y


def conditional_cooccurrence(targets: np.ndarray) -> np.ndarray:
    """(C, C) P(column class present | row class present); rows of absent classes are 0."""
    co = cooccurrence(targets).astype(np.float64)
    counts = np.diag(co).copy()
    return np.divide(co, counts[:, None], out=np.zeros_like(co), where=counts[:, None] > 0)


def sample_indices(split: SplitList, n: int) -> list[int]:
    """Up to ``n`` image indices that show as many classes as possible, rarest classes first."""
    y = split.targets.astype(bool)
    picked: list[int] = []
    for c in np.argsort(y.sum(axis=0), kind="stable"):  # rarest first
        if len(picked) >= n:
            break
        holders = [i for i in np.flatnonzero(y[:, c]) if i not in picked]
        if holders and not y[picked, c].any():
            picked.append(int(holders[0]))
    rest = [i for i in range(len(split)) if i not in picked]
    return picked + rest[: max(n - len(picked), 0)]


# ---------------------------------------------------------------- tables and metrics


def class_count_table(choices: Mapping[str, DataChoice]) -> pd.DataFrame:
    """Per class: benchmark, dataset, class index and name, train and test counts, group (by train count)."""
    rows = []
    for key, choice in choices.items():
        b = choice.benchmark
        test = b.test.targets.sum(axis=0, dtype=np.int64)
        for c in np.argsort(-b.train_counts, kind="stable"):
            rows.append({"benchmark": key, "dataset": b.name, "index": int(c), "class": b.class_names[c],
                         "train": int(b.train_counts[c]), "test": int(test[c]), "group": str(b.groups[c])})
    return pd.DataFrame(rows)


def group_table(choices: Mapping[str, DataChoice]) -> pd.DataFrame:
    """Per benchmark and group: classes, their train-count range, labels and images in train and test."""
    rows = []
    for key, choice in choices.items():
        b = choice.benchmark
        total = int(b.train_counts.sum())
        for group in GROUPS:
            cols = b.groups == group
            counts = b.train_counts[cols]
            rows.append({
                "benchmark": key, "dataset": b.name, "group": group, "classes": int(cols.sum()),
                "train count range": f"{counts.min()}–{counts.max()}" if cols.any() else "–",
                "train labels": int(counts.sum()),
                "train labels %": 100.0 * counts.sum() / total if total else 0.0,
                "train images": int(b.train.targets[:, cols].any(axis=1).sum()),
                "test labels": int(b.test.targets[:, cols].sum()),
            })
    return pd.DataFrame(rows)


# COCO's annotated instances by area (small < 32², medium < 96² pixels): all of COCO, not COCO-LT's subset.
COCO_INSTANCE_SIZES = {"small": 0.41, "medium": 0.34, "large": 0.24}


def generator_table(choices: Mapping[str, DataChoice]) -> pd.DataFrame:
    """The generated benchmarks' statistics beside the published lists': per split, images, labels per image,
    object instances per image and their size classes (GENERATOR.json); the published rows from the lists' per-class
    counts (which the generator holds exactly) and, for COCO, its instances' published size classes."""
    from cprfl_lib.data import synthetic

    rows = []
    for key, choice in choices.items():
        b = choice.benchmark
        if not b.is_synthetic:
            continue
        meta = json.loads((b.image_root / "GENERATOR.json").read_text())
        for split, c in meta["counts"].items():
            o = c["objects"]
            rows.append({"benchmark": key, "data": f"{b.name} (generated)", "split": split, "images": c["images"],
                         "labels per image": c["labels_per_image"],
                         "instances per image": o.get("instances_per_image"),
                         **{f"instances {g} %": 100 * o[g] if g in o else np.nan for g in COCO_INSTANCE_SIZES}})
        spec = synthetic.get_spec(b.name)
        published = {"train": (spec.num_train, sum(spec.train_counts)),
                     "test": (spec.real_num_test, sum(spec.real_test_counts))}
        for split, (n, labels) in published.items():
            coco = spec.mimics == "COCO-LT"
            rows.append({"benchmark": key, "data": f"{spec.mimics} (published lists)", "split": split, "images": n,
                         "labels per image": round(labels / n, 4), "instances per image": np.nan,
                         **{f"instances {g} %": 100 * v if coco else np.nan for g, v in COCO_INSTANCE_SIZES.items()}})
    return pd.DataFrame(rows)


def data_metrics(choices: Mapping[str, DataChoice]) -> dict:
    """The numbers notebook 01 records, per benchmark."""
    out = {}
    for key, choice in choices.items():
        b = choice.benchmark
        splits = [s for s in ("train", "val", "test") if getattr(b, s) is not None]
        out[key] = {
            "dataset": b.name, "source": choice.source, "n_train": len(b.train), "n_test": len(b.test),
            **({"n_val": len(b.val)} if b.val is not None else {}),
            "num_classes": b.num_classes,
            "groups": {g: int((b.groups == g).sum()) for g in GROUPS},
            "labels_per_image": {s: round(float(labels_per_image(getattr(b, s).targets).mean()), 4) for s in splits},
        }
        if b.is_own:  # images with no label are allowed (COCO-LT's test split has 48) and counted
            from cprfl_lib.data.own import unlabelled

            out[key]["unlabelled"] = {s: unlabelled(getattr(b, s)) for s in splits}
        if b.is_synthetic:
            meta = json.loads((b.image_root / "GENERATOR.json").read_text())
            out[key]["objects"] = {s: c["objects"] for s, c in meta["counts"].items()}
    return out
