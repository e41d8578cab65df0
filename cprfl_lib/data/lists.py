"""The long-tailed multi-label benchmarks: split lists, class names and targets.

VOC-LT and COCO-LT are defined by three small published text files each (train list, test
list, class names), frozen since Wu et al. (ECCV 2020) and redistributed by the official
CPRFL code. They are never shipped with the package: :func:`fetch_split_lists` downloads
them into the cache (or reads a folder the user names) and checks the pinned sha256 every
time they are loaded. The generated look-alikes ``synth-voc-lt`` / ``synth-coco-lt`` come
from :mod:`cprfl_lib.synthetic` in exactly the same file format.

File formats (method.md §5.2):
- split list: ``RELATIVE/PATH.jpg i j k`` a line, 0-based class indices; a line with no
  index is an image with no positive label (48 of them in the COCO-LT test list);
- labels: ``class name INDEX`` a line; the name may contain spaces (``traffic light 9``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cprfl_lib.errors import CprflError
from cprfl_lib.io import atomic_path
from cprfl_lib.paths import cache_dir

_BASE_URL = "https://raw.githubusercontent.com/jiexuanyan/CPRFL/main/data"
ROLES = ("labels", "train", "test")


@dataclass(frozen=True)
class ListFile:
    """One published list: where it comes from, its pinned checksum, its accepted names."""

    url: str
    sha256: str
    filename: str  # the official name, also the name it is cached under
    alias: str  # the short name of a user-supplied folder (train.txt, test.txt, labels.txt)


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    num_classes: int
    files: dict[str, ListFile]  # keyed by role: "labels", "train", "test"


def _spec(name: str, folder: str, stem: str, num_classes: int, sums: dict[str, str]) -> BenchmarkSpec:
    names = {"train": f"{stem}_lt_train.txt", "test": f"{stem}_lt_test.txt", "labels": f"{stem}_labels.txt"}
    files = {
        role: ListFile(f"{_BASE_URL}/{folder}/{fname}", sums[role], fname, f"{role}.txt")
        for role, fname in names.items()
    }
    return BenchmarkSpec(name, num_classes, files)


# Pinned data, not configuration: the published files never change (method.md §5.2, §11.1).
SPECS: dict[str, BenchmarkSpec] = {
    "voc-lt": _spec("voc-lt", "voc", "voc", 20, {
        "train": "2111a5e58ae8b67a112a2b2c8aa98fe8fa926ac3e1d73e2e4e0e4844c90cc047",
        "test": "43b2929a86e9fe685cdf3b6b72fb90b6838ff9f9f427807e8b9502111e73750a",
        "labels": "59e82ce7a1fa096b8a80c22cc72e6c86e54c598b2e1cfe08a211f1c82a0dcb2c",
    }),
    "coco-lt": _spec("coco-lt", "coco", "coco", 80, {
        "train": "8e0c354ae2214d7ced46f4a5ae24236149296be4dcd2df74f00eba2abe6be0ce",
        "test": "4dda722463b0ed3aada172ce1c75f46f1391e4d2bee7643760549f916a8022e5",
        "labels": "a16d52dc65d8bc2b7abe5875199d802e951b7af142b327f8c85b496116a87f45",
    }),
}
SYNTHETIC = ("synth-voc-lt", "synth-coco-lt")


def known_benchmarks() -> tuple[str, ...]:
    return (*SPECS, *SYNTHETIC)


def benchmark_class_names(name: str, list_dir=None, download: bool = True) -> list[str]:
    """A benchmark's class names; a generated one's without drawing its images."""
    if name in SYNTHETIC:
        from cprfl_lib.data.synthetic import class_names

        return class_names(name)
    return load_benchmark(name, list_dir=list_dir, download=download).class_names


def _get_spec(name: str) -> BenchmarkSpec:
    if name not in SPECS:
        raise CprflError(f"unknown benchmark {name!r}; known: {', '.join(known_benchmarks())}")
    return SPECS[name]


# ---------------------------------------------------------------- fetching and checksums


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hint(entry: ListFile, target: Path) -> str:
    return (
        f"download {entry.url} and put it at {target}, "
        "or pass --list-dir DIR holding train.txt, test.txt, labels.txt"
    )


def _download(entry: ListFile, target: Path, timeout: float) -> None:
    """Fetch one list into ``target`` atomically; a wrong checksum never reaches ``target``."""
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response:
            data = response.read()
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", exc)
        raise CprflError(f"could not download {entry.url} ({reason}); {_hint(entry, target)}") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != entry.sha256:
        raise CprflError(
            f"{entry.url} gave sha256 {got}, expected {entry.sha256}; {_hint(entry, target)}"
        )
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def fetch_split_lists(
    name: str, list_dir: str | Path | None = None, download: bool = True, timeout: float = 10.0
) -> dict[str, Path]:
    """The verified ``train``, ``test`` and ``labels`` files of a real benchmark.

    ``list_dir`` defaults to ``cache_dir("lists", name)``. In a folder the user names, either
    the short names (``train.txt``, ``test.txt``, ``labels.txt``) or the official ones
    (``voc_lt_train.txt``, ..., ``voc_labels.txt``) are accepted; missing files are downloaded
    there (official name) when ``download`` is true. Every file's sha256 is checked on every call.
    """
    spec = _get_spec(name)
    folder = Path(list_dir).expanduser() if list_dir is not None else cache_dir("lists", name)
    if list_dir is not None and folder.exists() and not folder.is_dir():
        raise CprflError(f"--list-dir {folder} is not a folder")
    found: dict[str, Path] = {}
    for role in ROLES:
        entry = spec.files[role]
        candidates = [folder / entry.filename, folder / entry.alias]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            target = candidates[0]
            if not download:
                raise CprflError(
                    f"{name} {role} list not found in {folder} (looked for {entry.filename}, {entry.alias}); "
                    f"{_hint(entry, target)}, or allow downloads"
                )
            _download(entry, target, timeout)
            path = target
        got = sha256_file(path)
        if got != entry.sha256:
            raise CprflError(
                f"{path}: sha256 {got} does not match the published {entry.filename} ({entry.sha256}); "
                f"delete it and re-run, or {_hint(entry, path)}"
            )
        found[role] = path
    return found


# ---------------------------------------------------------------- parsing


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines; copes with CRLF and no final newline."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CprflError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CprflError(f"{path}: cannot read ({exc})") from exc
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_labels(path: str | Path) -> list[str]:
    """Class names from a ``class name INDEX`` file; the indices must run 0, 1, 2, ... in order."""
    path = Path(path)
    names: list[str] = []
    for lineno, line in _lines(path):
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise CprflError(f"{path}:{lineno}: expected 'class name INDEX', got {line!r}")
        name, index = parts
        if not _is_int(index) or int(index) != len(names):
            raise CprflError(
                f"{path}:{lineno}: class index {index!r} should be {len(names)} "
                "(indices run 0, 1, 2, ... in line order)"
            )
        if name in names:
            raise CprflError(f"{path}:{lineno}: class name {name!r} appears twice")
        names.append(name)
    if not names:
        raise CprflError(f"{path}: no class names")
    return names


@dataclass
class SplitList:
    """One split: image paths relative to the data root and their (N, C) multi-hot targets."""

    paths: list[str]
    targets: np.ndarray  # (N, C) uint8
    source: Path

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return int(self.targets.shape[1])


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def read_split(path: str | Path, num_classes: int) -> SplitList:
    """Parse ``RELATIVE/PATH.jpg i j k`` lines. Checksums are not checked here (see fetch_split_lists)."""
    path = Path(path)
    paths: list[str] = []
    rows: list[list[int]] = []
    for lineno, line in _lines(path):
        image, *labels = line.split()
        if _is_int(image):
            raise CprflError(f"{path}:{lineno}: no image path (the line starts with {image!r})")
        row = []
        for token in labels:
            if not _is_int(token):
                raise CprflError(f"{path}:{lineno}: label {token!r} is not an integer class index")
            if not 0 <= int(token) < num_classes:
                raise CprflError(f"{path}:{lineno}: label {token} is out of range 0..{num_classes - 1}")
            row.append(int(token))
        paths.append(image)
        rows.append(row)
    if not paths:
        raise CprflError(f"{path}: the list is empty")
    targets = np.zeros((len(paths), num_classes), dtype=np.uint8)
    for i, row in enumerate(rows):
        targets[i, row] = 1
    return SplitList(paths=paths, targets=targets, source=path)


# ---------------------------------------------------------------- benchmarks


@dataclass
class Benchmark:
    """A benchmark ready to use: names, both splits, where its images and lists live."""

    name: str
    class_names: list[str]
    train: SplitList
    test: SplitList
    image_root: Path | None
    list_dir: Path

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

        return class_groups(self.train_counts)

    @property
    def is_synthetic(self) -> bool:
        return self.name in SYNTHETIC


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
) -> Benchmark:
    """Load a benchmark by name: ``voc-lt``, ``coco-lt``, ``synth-voc-lt``, ``synth-coco-lt``.

    For the real ones, ``data_root`` is the image root (``VOCdevkit/`` or ``train2017/`` and
    ``val2017/`` inside it) and may be None while only the lists are needed. For the generated
    ones, ``data_root`` is where the generated set is kept, and its folder holds both the
    lists and the images; ``synthetic_options`` (seed, image_size, limit) go to
    :func:`cprfl_lib.synthetic.ensure_synthetic`.
    """
    if name in SYNTHETIC:
        if list_dir is not None:
            raise CprflError(f"{name} is generated with its own lists; drop --list-dir")
        from cprfl_lib.data.synthetic import ensure_synthetic

        folder = Path(ensure_synthetic(name, root=data_root, **(synthetic_options or {})))
        files = {role: folder / f"{role}.txt" for role in ROLES}
        image_root: Path | None = folder
        expected = _generated_class_count(folder)  # an edited labels.txt is named, not a later list line
    else:
        spec = _get_spec(name)
        if synthetic_options:
            options = sorted(synthetic_options)
            raise CprflError(f"{name} is a published benchmark; options {options} apply only to synth-*")
        files = fetch_split_lists(name, list_dir=list_dir, download=download)
        folder = files["labels"].parent
        image_root = Path(data_root).expanduser() if data_root is not None else None
        expected = spec.num_classes
    class_names = read_labels(files["labels"])
    if expected is not None and len(class_names) != expected:
        raise CprflError(f"{files['labels']}: {len(class_names)} classes, but {name} has {expected}")
    return Benchmark(
        name=name,
        class_names=class_names,
        train=read_split(files["train"], len(class_names)),
        test=read_split(files["test"], len(class_names)),
        image_root=image_root,
        list_dir=folder,
    )
