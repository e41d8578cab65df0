"""A user's own long-tailed multi-label dataset (``data.dataset: own``), in the formats people have.

One folder, named as the image root (``--data-root``, ``data.data_root``, ``DATA_ROOT``), holds the
images; the lists are in that folder or in the one ``--list-dir`` names. Two formats, told apart by
the files present (both at once is refused):

- **lists**, the published lists' format (:mod:`cprfl_lib.data.lists`): ``labels.txt`` (``class name
  INDEX`` a line, indices 0, 1, 2, ...), ``train.txt``, ``test.txt`` and optionally ``val.txt``
  (``relative/path id id ...`` a line; a line with no id is an image with no label).
- **COCO-style** annotation files ``train.json``, ``test.json`` and optionally ``val.json``: ``images``
  (``id``, ``file_name`` relative to the image root), ``annotations`` (``image_id``, ``category_id``)
  and ``categories`` (``id``, ``name``); an image's labels are the categories of its annotations, the
  classes are the categories in ascending ``id`` order. The files are read with the standard ``json``
  module: those three keys are all that is needed, and pycocotools would add a dependency with a C build
  for nothing more.

Nothing is derived from a benchmark's name: the class count and names, the training counts and the
head / medium / tail groups (``data.group_thresholds``, the paper's 100 / 20 by default) all come
from the files. The dataset's display name is ``own:<folder name>``. The checks before any work
(:func:`check_own`) each give one line: a class with no training image, an image in two splits
(leakage), an empty split, a COCO file naming an unknown category or image, as well as the list
format's own checks (a label id out of range, a class name repeated). Test images with no label are
allowed and counted. Nothing in the user's folders is ever written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cprfl_lib.data.lists import SplitList, read_labels, read_split
from cprfl_lib.errors import CprflError

OWN = "own"
SPLITS = ("train", "val", "test")
LIST_FILES = {"labels": "labels.txt", **{s: f"{s}.txt" for s in SPLITS}}
COCO_FILES = {s: f"{s}.json" for s in SPLITS}
SHOW = 5  # names shown in a one-line error before "..."


def is_own(name: str) -> bool:
    return name == OWN


def display_name(data_root: str | Path) -> str:
    """``own:<folder name>``: what tables, figures and the CLI call the dataset."""
    return f"{OWN}:{Path(data_root).expanduser().resolve().name}"


def _shown(items, show: int = SHOW) -> str:
    items = list(items)
    return ", ".join(map(str, items[:show])) + (f", ... ({len(items)} in all)" if len(items) > show else "")


@dataclass
class OwnData:
    """A user's dataset as read from its files, before checks: names, splits, the files they came from."""

    format: str  # "lists" | "coco"
    class_names: list[str]
    splits: dict[str, SplitList]  # "train", "test", and "val" when given
    files: dict[str, Path]  # by role: labels (lists format), train, test, val


def find_format(folder: Path) -> tuple[str, dict[str, Path]]:
    """("lists" | "coco", the files by role) in ``folder``; one line naming what is missing or ambiguous."""
    lists = {r: folder / f for r, f in LIST_FILES.items() if (folder / f).is_file()}
    coco = {r: folder / f for r, f in COCO_FILES.items() if (folder / f).is_file()}
    if lists and coco:
        raise CprflError(f"{folder} holds both list files ({', '.join(p.name for p in lists.values())}) and COCO "
                         f"files ({', '.join(p.name for p in coco.values())}); keep one format")
    if coco:
        missing = [COCO_FILES[r] for r in ("train", "test") if r not in coco]
        if missing:
            raise CprflError(f"{folder} lacks {', '.join(missing)} (a COCO-style dataset needs train.json and "
                             "test.json, val.json is optional)")
        return "coco", coco
    missing = [LIST_FILES[r] for r in ("labels", "train", "test") if r not in lists]
    if missing:
        raise CprflError(f"{folder} holds no dataset: it lacks {', '.join(missing)} (give labels.txt, train.txt, "
                         "test.txt and optionally val.txt, or train.json and test.json and optionally val.json)")
    return "lists", lists


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CprflError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise CprflError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise CprflError(f"{path}: a COCO annotation file is a JSON object with images, annotations, categories")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise CprflError(f"{path}: no {' / '.join(missing)} list (a COCO annotation file has images, annotations "
                         "and categories)")
    return data


def _field(path: Path, what: str, i: int, entry, key: str, kind: type):
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CprflError(f"{path}: {what}[{i}] has no {kind.__name__} {key!r} (got {entry!r:.120})")
    return value


def coco_categories(path: Path, data: dict) -> tuple[list[int], list[str]]:
    """(category ids ascending, their names); a repeated id or name is named."""
    cats = [(_field(path, "categories", i, c, "id", int), _field(path, "categories", i, c, "name", str).strip())
            for i, c in enumerate(data["categories"])]
    if not cats:
        raise CprflError(f"{path}: no categories")
    ids, names = [c[0] for c in cats], [c[1] for c in cats]
    for values, what in ((ids, "category id"), (names, "class name")):
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise CprflError(f"{path}: {what} {_shown(map(repr, repeated))} appears twice")
    order = sorted(range(len(cats)), key=lambda i: ids[i])
    return [ids[i] for i in order], [names[i] for i in order]


def read_coco_split(path: Path, category_ids: list[int] | None = None) -> tuple[list[str], SplitList]:
    """(class names, the split) of one COCO-style file; images in the file's order, labels by category.

    ``category_ids``: the categories of the training file, which every split must share.
    """
    data = _read_json(path)
    ids, names = coco_categories(path, data)
    if category_ids is not None and ids != category_ids:
        raise CprflError(f"{path}: its categories (ids {_shown(ids)}) are not those of train.json "
                         f"(ids {_shown(category_ids)}); every split lists the same categories")
    images: dict[int, int] = {}
    paths: list[str] = []
    for i, img in enumerate(data["images"]):
        image_id, name = _field(path, "images", i, img, "id", int), _field(path, "images", i, img, "file_name", str)
        if image_id in images:
            raise CprflError(f"{path}: image id {image_id} appears twice in images")
        images[image_id] = len(paths)
        paths.append(name)
    if not paths:
        raise CprflError(f"{path}: the split is empty (no images)")
    column = {cid: c for c, cid in enumerate(ids)}
    targets = np.zeros((len(paths), len(ids)), dtype=np.uint8)
    bad_cat, bad_img = [], []
    for i, ann in enumerate(data["annotations"]):
        image_id = _field(path, "annotations", i, ann, "image_id", int)
        cat = _field(path, "annotations", i, ann, "category_id", int)
        if cat not in column:
            bad_cat.append((i, cat))
        elif image_id not in images:
            bad_img.append((i, image_id))
        else:
            targets[images[image_id], column[cat]] = 1
    if bad_cat:
        raise CprflError(f"{path}: {len(bad_cat)} annotation(s) name unknown categories (annotation index: "
                         f"category_id {_shown(f'{i}: {c}' for i, c in bad_cat)}); known ids: {_shown(ids, 20)}")
    if bad_img:
        raise CprflError(f"{path}: {len(bad_img)} annotation(s) name unknown images (annotation index: "
                         f"image_id {_shown(f'{i}: {m}' for i, m in bad_img)})")
    return names, SplitList(paths=paths, targets=targets, source=path)


def read_own(folder: str | Path) -> OwnData:
    """A user's dataset from ``folder`` (lists or COCO format), parsed; :func:`check_own` checks it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CprflError(f"dataset folder {folder} {what}; give the folder that holds your dataset's lists "
                         "(labels.txt, train.txt, test.txt) or COCO files (train.json, test.json)")
    fmt, files = find_format(folder)
    splits: dict[str, SplitList] = {}
    if fmt == "lists":
        names = read_labels(files["labels"])
        for split in SPLITS:
            if split in files:
                splits[split] = read_split(files[split], len(names))
    else:
        names, splits["train"] = read_coco_split(files["train"])
        ids = coco_categories(files["train"], _read_json(files["train"]))[0]
        for split in ("val", "test"):
            if split in files:
                splits[split] = read_coco_split(files[split], ids)[1]
    return OwnData(fmt, names, splits, files)


def check_own(own: OwnData) -> None:
    """The checks before any work, each one line: no training image of a class, an image in two splits."""
    train = own.splits["train"]
    counts = train.targets.sum(axis=0, dtype=np.int64)
    absent = [own.class_names[c] for c in np.flatnonzero(counts == 0)]
    if absent:
        raise CprflError(f"{train.source}: {len(absent)} class(es) have no training image: {_shown(absent)}; "
                         "remove them from the classes or add training images")
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        if a in own.splits and b in own.splits:
            both = sorted(set(own.splits[a].paths) & set(own.splits[b].paths))
            if both:
                raise CprflError(f"{len(both)} image(s) are in both the {a} and the {b} split (leakage: "
                                 f"{own.splits[a].source.name} and {own.splits[b].source.name}): {_shown(both)}")
    for name, split in own.splits.items():
        repeated = len(split.paths) - len(set(split.paths))
        if repeated:
            seen: set[str] = set()
            twice = [p for p in split.paths if p in seen or seen.add(p)]
            raise CprflError(f"{split.source}: {repeated} image(s) listed twice in the {name} split: "
                             f"{_shown(sorted(set(twice)))}")


def unlabelled(split: SplitList) -> int:
    """Images of ``split`` with no label (allowed in an evaluated split, and counted)."""
    return int((split.targets.sum(axis=1) == 0).sum())


def load_own(data_root, list_dir=None) -> tuple[str, OwnData, Path]:
    """(display name, the checked dataset, image root): the lists in ``list_dir`` (default: the image root)."""
    if data_root is None:
        raise CprflError("data.dataset own needs the dataset folder: pass --data-root DIR (make reproduce: "
                         "DATA_ROOT=DIR) holding your images and labels.txt/train.txt/test.txt or train.json/test.json")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise CprflError(f"dataset folder {root} does not exist; pass --data-root DIR holding your images")
    own = read_own(list_dir if list_dir is not None else root)
    check_own(own)
    return display_name(root), own, root
