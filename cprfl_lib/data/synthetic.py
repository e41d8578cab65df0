"""The embedded default data: generated multi-label scenes shaped like VOC-LT and COCO-LT.

Nothing real can be downloaded everywhere the package runs, so ``make reproduce`` falls
back on two generated datasets, written in exactly the on-disk format of the real split
lists (``labels.txt``, ``train.txt``, ``test.txt``, JPEGs) so that they go through the same
loader (:mod:`cprfl_lib.data.lists`) as VOC-LT and COCO-LT, plus a validation split (``val.txt``):

- ``synth-voc-lt``: VOC-LT's 20 class names, order and per-class training counts (exactly),
  1,142 training images, 2.05 labels per image, head/medium/tail 6/6/8.
- ``synth-coco-lt``: COCO-LT's 80 class names, order and counts (exactly), 1,909 training
  images, 4.36 labels per image, groups 22/33/25.
- Validation sets (VOC 1,200 images, COCO 1,600), drawn like the training split (its per-class
  counts scaled to that size) from another random stream, floored at MIN_VAL_POSITIVES
  positives so that every class has a usable AP; every choice of the embedded recipes is made on them.
- Test sets of the same sizes, shaped like the real test lists (their per-class counts scaled,
  floored at MIN_TEST_POSITIVES).

What it is: drawn shapes. Each class is an object with its own appearance; classes of one
super-category share a body shape and palette and differ by a part, a texture and a hue
(:mod:`cprfl_lib.data.synthetic_draw`), so semantic neighbours look alike. Label sets come
from a scene-type mixture (street, dining, farm, ...), so labels co-occur plausibly, and
are then repaired to hit the per-class counts exactly. Scenes are composed as in the real
benchmarks' regime (:class:`~cprfl_lib.data.synthetic_draw.SceneParams`): log-normal object
sizes with many small instances (more in COCO than in VOC), clutter, decoys and occlusion;
GENERATOR.json records the instances' size classes beside the counts.

What it is not: photographs, VOC or COCO. Numbers measured on it show the pipeline
working; they are never VOC-LT or COCO-LT numbers and must not be reported as such.

Same seed gives byte-identical files whatever the number of workers: every image draws
from its own ``numpy`` Generator seeded by (seed, dataset, split, index), so a split's images
do not depend on which other splits are drawn (a tuning run draws no test split at all).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from cprfl_lib.data.synthetic_draw import SceneParams, area_summary, render_split
from cprfl_lib.errors import CprflError
from cprfl_lib.io import replace_dir, temp_dir_for
from cprfl_lib.paths import cache_dir

GENERATOR_NAME = "cprfl_lib.data.synthetic"
GENERATOR_VERSION = "2"
MIN_TEST_POSITIVES = 30
MIN_VAL_POSITIVES = 20
SPLITS = ("train", "val", "test")
SPLIT_STREAMS = {"train": 0, "test": 1, "val": 2}  # the random stream of each split's labels and images


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that defines one generated dataset (except the seed and image size)."""

    name: str
    mimics: str
    class_names: tuple[str, ...]
    super_categories: tuple[str, ...]
    templates: dict[str, str]  # super-category -> body template in synthetic_draw
    train_counts: tuple[int, ...]  # the real benchmark's, class-index order
    num_train: int
    real_test_counts: tuple[int, ...]  # shape of the real test list, scaled to num_test
    real_num_test: int
    num_test: int
    num_val: int  # drawn like the training split, counts scaled to this size
    scenes: dict[str, tuple[str, ...]]  # co-occurrence model: scene -> classes seen there
    scene: SceneParams  # how the images are composed (object sizes, clutter, occlusion)


_VOC_NAMES = ("aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
              "motorbike person pottedplant sheep sofa train tvmonitor").split()
_VOC_SUPER = dict(aeroplane="vehicle", bicycle="vehicle", bird="animal", boat="vehicle",
                  bottle="indoor", bus="vehicle", car="vehicle", cat="animal", chair="indoor",
                  cow="animal", diningtable="indoor", dog="animal", horse="animal",
                  motorbike="vehicle", person="person", pottedplant="indoor", sheep="animal",
                  sofa="indoor", train="vehicle", tvmonitor="indoor")
_COCO_NAMES = (
    "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,"
    "stop sign,parking meter,bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,"
    "backpack,umbrella,handbag,tie,suitcase,frisbee,skis,snowboard,sports ball,kite,"
    "baseball bat,baseball glove,skateboard,surfboard,tennis racket,bottle,wine glass,cup,fork,"
    "knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,carrot,hot dog,pizza,donut,cake,"
    "chair,couch,potted plant,bed,dining table,toilet,tv,laptop,mouse,remote,keyboard,"
    "cell phone,microwave,oven,toaster,sink,refrigerator,book,clock,vase,scissors,teddy bear,"
    "hair drier,toothbrush").split(",")
# COCO's official super-categories are contiguous runs of the class index.
_COCO_SUPER_RUNS = (("person", 1), ("vehicle", 8), ("outdoor", 5), ("animal", 10),
                    ("accessory", 5), ("sports", 10), ("kitchen", 7), ("food", 10),
                    ("furniture", 6), ("electronic", 6), ("appliance", 5), ("indoor", 7))


# The scene models. Object sizes: chosen on the validation split by tools/design.py (results/design/: 0.6 x the sizes
# it started from, the candidate nearest COCO's size classes that keeps every class group learnable). VOC's objects
# are fewer and larger than COCO's; COCO has more, smaller instances per label.
VOC_SCENE = SceneParams(object_median=0.156, object_sigma=0.4, object_range=(0.06, 0.36), extra_instances=0.3,
                        extra_scale=0.6, clutter=(6, 14), decoys=1.0, occluders=0.6)
COCO_SCENE = SceneParams(object_median=0.114, object_sigma=0.45, object_range=(0.042, 0.3), extra_instances=0.5,
                         extra_scale=0.6, clutter=(6, 14), decoys=1.5, occluders=0.6)


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _build_specs() -> dict[str, SyntheticSpec]:
    voc = SyntheticSpec(
        name="synth-voc-lt", mimics="VOC-LT", class_names=tuple(_VOC_NAMES),
        super_categories=tuple(_VOC_SUPER[n] for n in _VOC_NAMES),
        templates={"person": "person", "animal": "animal", "vehicle": "vehicle",
                   "indoor": "furniture"},
        train_counts=(6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5,
                      82, 7, 64),
        num_train=1142,
        real_test_counts=(205, 250, 289, 176, 240, 183, 775, 332, 545, 127, 247, 433, 279,
                          233, 2097, 254, 98, 355, 259, 255),
        real_num_test=4952, num_test=1200, num_val=1200,
        scene=VOC_SCENE,
        scenes={
            "street": _words("person, bicycle, motorbike, car, bus, dog, bottle"),
            "countryside": _words("person, horse, cow, sheep, dog, bird, car"),
            "living room": _words("person, sofa, tvmonitor, chair, pottedplant, cat, dog, bottle"),
            "dining": _words("person, diningtable, chair, bottle, pottedplant, tvmonitor, cat"),
            "waterside": _words("person, boat, bird, car, dog"),
            "transport": _words("person, aeroplane, train, bus, car, boat"),
        })
    coco_super = tuple(s for s, n in _COCO_SUPER_RUNS for _ in range(n))
    coco = SyntheticSpec(
        name="synth-coco-lt", mimics="COCO-LT", class_names=tuple(_COCO_NAMES),
        super_categories=coco_super, templates={s: s for s, _ in _COCO_SUPER_RUNS},
        train_counts=(1128, 37, 276, 32, 9, 41, 18, 87, 20, 50, 11, 13, 8, 97, 19, 49, 70, 17,
                      7, 10, 8, 6, 7, 7, 100, 39, 189, 31, 24, 11, 12, 8, 35, 10, 25, 21, 17,
                      10, 20, 460, 84, 498, 126, 207, 173, 366, 39, 35, 44, 36, 29, 25, 14,
                      45, 16, 73, 585, 153, 164, 44, 624, 25, 200, 137, 70, 89, 73, 127, 91,
                      175, 9, 237, 119, 292, 87, 113, 15, 21, 6, 11),
        num_train=1909,
        real_test_counts=(2693, 149, 535, 159, 97, 189, 157, 250, 121, 191, 86, 69, 37, 235,
                          125, 184, 177, 128, 65, 87, 89, 49, 85, 101, 228, 174, 292, 145, 105,
                          84, 120, 49, 169, 91, 97, 100, 127, 149, 167, 379, 110, 390, 155,
                          181, 153, 314, 103, 76, 98, 85, 71, 81, 51, 153, 62, 124, 580, 195,
                          172, 149, 501, 149, 207, 183, 88, 145, 106, 214, 54, 115, 8, 187,
                          101, 230, 204, 137, 28, 94, 9, 34),
        real_num_test=5000, num_test=1600, num_val=1600,
        scene=COCO_SCENE,
        scenes={
            "street": _words("person, bicycle, car, motorcycle, bus, truck, traffic light, "
                             "fire hydrant, stop sign, parking meter, bench, handbag, backpack, "
                             "umbrella, dog"),
            "transit": _words("person, airplane, train, bus, truck, car, suitcase, backpack, "
                              "handbag, bench, clock"),
            "beach": _words("person, boat, surfboard, kite, umbrella, bird, dog, frisbee, "
                            "backpack, bottle"),
            "snow": _words("person, skis, snowboard, backpack"),
            "sports field": _words("person, sports ball, baseball bat, baseball glove, "
                                   "tennis racket, frisbee, bench, bottle, skateboard"),
            "wildlife": _words("elephant, bear, zebra, giraffe, bird, person, truck"),
            "farm": _words("cow, sheep, horse, dog, person, bird, truck"),
            "kitchen": _words("person, bottle, wine glass, cup, bowl, knife, spoon, fork, oven, "
                              "microwave, toaster, sink, refrigerator, potted plant, vase, "
                              "clock, banana, apple, orange, broccoli, carrot, chair"),
            "dining": _words("person, dining table, chair, cup, fork, knife, spoon, bowl, bottle, "
                             "wine glass, pizza, sandwich, cake, donut, hot dog, banana, apple, "
                             "orange, broccoli, carrot, vase, potted plant, cell phone"),
            "living room": _words("person, couch, chair, tv, remote, laptop, book, clock, vase, "
                                  "potted plant, teddy bear, cat, dog, cell phone, cup, bottle"),
            "office": _words("person, laptop, keyboard, mouse, cell phone, book, chair, tv, cup, "
                             "bottle, backpack, tie, scissors, clock"),
            "bathroom": _words("toilet, sink, toothbrush, hair drier, bottle, cup, scissors, "
                               "person, vase"),
            "bedroom": _words("bed, book, teddy bear, clock, cell phone, person, laptop, tv, "
                              "remote, cat, dog"),
            "formal": _words("person, tie, handbag, cell phone, wine glass, cup, chair, "
                             "dining table, umbrella, suitcase, cake"),
        })
    return {voc.name: voc, coco.name: coco}


SYNTHETIC_DATASETS: dict[str, SyntheticSpec] = _build_specs()


def get_spec(name: str) -> SyntheticSpec:
    """The spec of a generated dataset; unknown names raise :class:`CprflError`."""
    if name not in SYNTHETIC_DATASETS:
        raise CprflError(f"unknown generated dataset {name!r}; "
                         f"choose one of: {', '.join(SYNTHETIC_DATASETS)}")
    return SYNTHETIC_DATASETS[name]


def class_names(name: str) -> list[str]:
    return list(get_spec(name).class_names)


def target_train_counts(name: str) -> list[int]:
    return list(get_spec(name).train_counts)


def target_test_counts(name: str) -> list[int]:
    """Real test shape scaled to ``num_test`` images, floored at MIN_TEST_POSITIVES."""
    spec = get_spec(name)
    scale = spec.num_test / spec.real_num_test
    return [max(MIN_TEST_POSITIVES, round(n * scale)) for n in spec.real_test_counts]


def target_val_counts(name: str) -> list[int]:
    """The training split's counts scaled to ``num_val`` images, floored at MIN_VAL_POSITIVES."""
    spec = get_spec(name)
    scale = spec.num_val / spec.num_train
    return [max(MIN_VAL_POSITIVES, round(n * scale)) for n in spec.train_counts]


def scene_params(name: str, overrides: dict | None = None) -> SceneParams:
    """A benchmark's scene model, with ``overrides`` (field -> value) for design studies; unknown fields refused."""
    base = get_spec(name).scene
    if not overrides:
        return base
    known = set(base.__dict__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise CprflError(f"data.synthetic_scene: unknown field(s) {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(getattr(base, k), tuple) else v for k, v in overrides.items()}
    return SceneParams(**{**base.__dict__, **values})


def super_categories(name: str) -> list[str]:
    return list(get_spec(name).super_categories)


def _rng(seed: int, name: str, *stream: int) -> np.random.Generator:
    # crc32 of the name (not hash()) so the stream is the same in every process.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), *stream])


def _scene_matrix(spec: SyntheticSpec) -> np.ndarray:
    index = {n: i for i, n in enumerate(spec.class_names)}
    member = np.zeros((len(spec.scenes), len(spec.class_names)))
    for s, classes in enumerate(spec.scenes.values()):
        member[s, [index[c] for c in classes]] = 1.0
    return member


def _draw_sets(member: np.ndarray, w: np.ndarray, n: int, mean_labels: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scene ~ mass of its classes; k ~ 1 + Poisson; k classes without replacement ∝ w."""
    mass = member @ w
    scene = rng.choice(len(member), size=n, p=mass / mass.sum())
    k = 1 + rng.poisson(max(mean_labels - 1.0, 0.0), size=n)
    k = np.minimum(k, member[scene].sum(1).astype(int))
    # Gumbel top-k: the same law as drawing one by one without replacement.
    with np.errstate(divide="ignore"):
        keys = np.log(member[scene] * w) + rng.gumbel(size=(n, len(w)))
    order = np.argsort(-keys, axis=1)
    y = np.zeros((n, len(w)), dtype=bool)
    rows = np.repeat(np.arange(n), k)
    cols = order[np.arange(len(w)) < k[:, None]]  # row-major: each row's first k
    y[rows, cols] = True
    return y, scene


def _repair(y: np.ndarray, scene: np.ndarray, member: np.ndarray, target: np.ndarray,
            rng: np.random.Generator) -> None:
    """Edit labels in place until every class count equals ``target`` (no image left empty)."""
    for c in np.flatnonzero(y.sum(0) > target):  # too many: drop from multi-label images
        extra = int(y[:, c].sum() - target[c])
        cand = np.flatnonzero(y[:, c] & (y.sum(1) > 1))
        drop = rng.choice(cand, size=min(extra, len(cand)), replace=False)
        y[drop, c] = False
    deficit = target - y.sum(0)
    for c in np.flatnonzero(y.sum(0) > target):  # only single-label images left: swap
        for i in rng.permutation(np.flatnonzero(y[:, c]))[: int(y[:, c].sum() - target[c])]:
            d = int(np.argmax(deficit + 1e-3 * member[scene[i]]))
            if deficit[d] <= 0:
                raise RuntimeError(f"label repair stuck on class {c}")  # a bug in the spec
            y[i, c], y[i, d] = False, True
            deficit[d] -= 1
    for c in np.flatnonzero(deficit > 0):  # too few: add, preferring images of fitting scenes
        free = np.flatnonzero(~y[:, c])
        pref = 1.0 + 50.0 * member[scene[free], c]
        add = rng.choice(free, size=int(deficit[c]), replace=False, p=pref / pref.sum())
        y[add, c] = True


def _sample_split(spec: SyntheticSpec, target: np.ndarray, n: int, seed: int,
                  split: int) -> list[list[int]]:
    member = _scene_matrix(spec)
    mean_labels = target.sum() / n
    w = target.astype(float).copy()
    for _ in range(15):  # fit class weights so the draw hits the counts on average
        y, _ = _draw_sets(member, w, n, mean_labels, _rng(seed, spec.name, split, 1))
        w *= (target / np.maximum(y.sum(0), 0.5)) ** 0.8
    rng = _rng(seed, spec.name, split, 2)
    y, scene = _draw_sets(member, w, n, mean_labels, rng)
    _repair(y, scene, member, target, rng)
    return [np.flatnonzero(row).tolist() for row in y]


def sample_label_sets(name: str, seed: int = 0, splits=SPLITS) -> dict[str, list[list[int]]]:
    """The label sets (sorted 0-based class indices) of each split, with exact per-class counts."""
    spec = get_spec(name)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CprflError(f"seed={seed!r} for {name}: use a non-negative integer")
    shape = {"train": (spec.train_counts, spec.num_train), "val": (target_val_counts(name), spec.num_val),
             "test": (target_test_counts(name), spec.num_test)}
    return {split: _sample_split(spec, np.array(shape[split][0]), shape[split][1], seed, SPLIT_STREAMS[split])
            for split in splits}


def generator_digest() -> str:
    """A hash of the generator's code: data made by other code are regenerated, not reused."""
    here = Path(__file__).resolve().parent
    code = b"".join((here / f).read_bytes() for f in ("synthetic.py", "synthetic_draw.py"))
    return hashlib.sha256(code).hexdigest()[:16]


def _manifest(spec: SyntheticSpec, seed: int, image_size: int, limit: int | None, scene: SceneParams,
              splits: dict[str, list[list[int]]], areas: dict[str, list[list[float]]]) -> dict:
    counts = {}
    for split, sets in splits.items():
        y = np.zeros((len(sets), len(spec.class_names)), dtype=int)
        for i, s in enumerate(sets):
            y[i, s] = 1
        counts[split] = {"images": len(sets), "labels_per_image": round(float(y.sum(1).mean()), 4),
                         "class_counts": y.sum(0).tolist(), "objects": area_summary(areas[split])}
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "source": generator_digest(),
            "dataset": spec.name, "seed": seed, "image_size": image_size, "limit": limit, "scene": scene.as_dict(),
            "splits": list(splits), "counts": counts,
            "libraries": {"numpy": np.__version__, "pillow": PIL.__version__},
            "note": f"GENERATED data (drawn shapes), not {spec.mimics.split('-')[0]} images; "
                    f"numbers measured on it are never {spec.mimics} numbers."}


def _check_splits(splits) -> tuple[str, ...]:
    splits = tuple(splits)
    if "train" not in splits or set(splits) - set(SPLITS) or len(set(splits)) != len(splits):
        raise CprflError(f"splits={list(splits)}: give 'train' and any of 'val', 'test', once each")
    return tuple(s for s in SPLITS if s in splits)


def generate_dataset(name: str, out_dir: str | os.PathLike, seed: int = 0, image_size: int = 224,
                     workers: int | None = None, limit: int | None = None, scene: dict | None = None,
                     splits=SPLITS) -> Path:
    """Write the dataset to ``out_dir`` (replacing an earlier generated one) and return it.

    ``limit`` keeps only the first ``limit`` images of each split (for fast tests; the per-class counts then no
    longer match). ``scene`` overrides fields of the benchmark's scene model; ``splits`` leaves splits out (a
    design study draws no test split). Everything is written into a staging folder that is swapped in at the
    end, so an interrupted run leaves nothing half-written.
    """
    spec = get_spec(name)
    out_dir = Path(out_dir)
    params = scene_params(name, scene)
    splits = _check_splits(splits)
    if image_size < 16:
        raise CprflError(f"image_size={image_size} is too small for {name}; use 16 or more")
    if limit is not None and limit < 1:
        raise CprflError(f"limit={limit} for {name}: use a positive number of images, or None")
    if out_dir.exists() and not out_dir.is_dir():
        raise CprflError(f"{out_dir} is a file; give a folder for the generated dataset")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "GENERATOR.json").is_file():
        raise CprflError(f"{out_dir} exists and is not a generated dataset (no GENERATOR.json); "
                         "choose an empty or new folder")
    label_sets = {k: v[:limit] for k, v in sample_label_sets(name, seed, splits).items()}
    tmp = temp_dir_for(out_dir)
    areas = {}
    try:
        (tmp / "labels.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(spec.class_names)))
        for split, sets in label_sets.items():
            (tmp / "images" / split).mkdir(parents=True)
            rel = [f"images/{split}/{i + 1:06d}.jpg" for i in range(len(sets))]
            (tmp / f"{split}.txt").write_text(
                "".join(" ".join([p, *map(str, s)]) + "\n" for p, s in zip(rel, sets)))
            seeds = [[seed, zlib.crc32(spec.name.encode()), SPLIT_STREAMS[split], 3, i] for i in range(len(sets))]
            areas[split] = render_split(tmp, rel, sets, seeds, spec.super_categories, spec.templates, image_size,
                                        params, workers)
        (tmp / "GENERATOR.json").write_text(json.dumps(
            _manifest(spec, seed, image_size, limit, params, label_sets, areas), indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def folder_name(name: str, seed: int = 0, image_size: int = 224, limit: int | None = None,
                scene: dict | None = None, splits=SPLITS) -> str:
    """``<name>-s<seed>-<size>px``, then what sets it apart from the default: a limit, a changed scene model
    (a hash of its fields), splits left out."""
    out = f"{name}-s{seed}-{image_size}px" + (f"-limit{limit}" if limit is not None else "")
    if scene:
        fields = json.dumps(scene_params(name, scene).as_dict(), sort_keys=True)
        out += f"-scene{hashlib.sha256(fields.encode()).hexdigest()[:8]}"
    missing = [s for s in SPLITS if s not in _check_splits(splits)]
    return out + "".join(f"-no{s}" for s in missing)


def _is_current(folder: Path, want: dict, more_splits: bool = False) -> bool:
    """Whether ``folder`` holds the generated set ``want`` describes (``more_splits``: or one with more splits)."""
    try:
        meta = json.loads((folder / "GENERATOR.json").read_text())
    except (OSError, ValueError):
        return False
    if more_splits and set(want["splits"]) <= set(meta.get("splits") or ()):
        meta = {**meta, "splits": want["splits"]}
    return all(meta.get(k) == v for k, v in want.items())


def generated_folder(name: str, data_root: str | os.PathLike | None = None, seed: int = 0,
                     image_size: int = 224, limit: int | None = None, scene: dict | None = None,
                     splits=SPLITS) -> Path:
    """The folder of a generated dataset: made in the cache when missing or out of date.

    ``data_root`` (a folder the user names) is only read: it must already hold this generated set
    (itself, or its :func:`folder_name` sub-folder); the package never writes there.
    """
    get_spec(name)
    splits = _check_splits(splits)
    want = {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "source": generator_digest(), "dataset": name,
            "seed": seed, "image_size": image_size, "limit": limit, "scene": scene_params(name, scene).as_dict(),
            "splits": list(splits)}
    sub = folder_name(name, seed, image_size, limit, scene, splits)
    if data_root is not None:
        root = Path(data_root).expanduser()
        subs = (sub, folder_name(name, seed, image_size, limit, scene))  # this set, or the one with every split
        found = next((f for f in (root, *(root / s for s in subs)) if _is_current(f, want, more_splits=True)), None)
        if found is None:
            raise CprflError(f"--data-root {root} holds no generated {name} ({sub}, made by this version of the "
                             f"generator); generated data are made in the cache, never in a folder you give: "
                             f"drop --data-root")
        return found
    out = cache_dir("synthetic") / sub
    if not _is_current(out, want):
        from cprfl_lib.caches import filling

        with filling(out):  # one generator at a time (the second finds the set made); the run's RNG untouched
            if not _is_current(out, want):
                generate_dataset(name, out, seed=seed, image_size=image_size, limit=limit, scene=scene, splits=splits)
    return out
