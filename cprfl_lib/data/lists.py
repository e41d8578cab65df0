"""The published split lists of VOC-LT and COCO-LT: where they are, their pinned checksums, their format.

VOC-LT and COCO-LT are defined by three small published text files each (train list, test
list, class names), frozen since Wu et al. (ECCV 2020) and redistributed by the official
CPRFL code. They are never shipped with the package: :func:`fetch_split_lists` downloads
them into the cache, or reads a folder the user names (``--list-dir``), and checks the pinned
sha256 every time they are loaded. :func:`install_split_lists` copies a verified user copy
into the cache, so that later runs find it without ``--list-dir``.

A list folder may be one benchmark's folder (the short names ``train.txt``, ``test.txt``,
``labels.txt`` or the official ``voc_lt_train.txt``, ..., ``voc_labels.txt``) or a parent
folder holding ``voc_lt/`` and ``coco_lt/`` (or ``voc/`` and ``coco/``): :func:`list_folder`
finds the benchmark's files in either. A file the user gave is only ever read, never
replaced or deleted.

File formats (method.md §5.2):
- split list: ``RELATIVE/PATH.jpg i j k`` a line, 0-based class indices; a line with no
  index is an image with no positive label (48 of them in the COCO-LT test list);
- labels: ``class name INDEX`` a line; the name may contain spaces (``traffic light 9``).
"""

from __future__ import annotations

import http.client
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cprfl_lib.data.names import BENCHMARKS, PUBLISHED_BENCHMARKS
from cprfl_lib.digest import file_digest
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
    alias: str  # the short name (train.txt, test.txt, labels.txt)


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    num_classes: int
    files: dict[str, ListFile]  # keyed by role: "labels", "train", "test"
    folders: tuple[str, ...]  # sub-folder names of a parent list folder that hold this benchmark


def _spec(name: str, stem: str, num_classes: int, sums: dict[str, str]) -> BenchmarkSpec:
    names = {"train": f"{stem}_lt_train.txt", "test": f"{stem}_lt_test.txt", "labels": f"{stem}_labels.txt"}
    files = {role: ListFile(f"{_BASE_URL}/{stem}/{fname}", sums[role], fname, f"{role}.txt")
             for role, fname in names.items()}
    return BenchmarkSpec(name, num_classes, files, (f"{stem}_lt", name, stem))


# Pinned data, not configuration: the published files never change (method.md §5.2, §11.1).
_VOC, _COCO = PUBLISHED_BENCHMARKS
SPECS: dict[str, BenchmarkSpec] = {
    _VOC: _spec(_VOC, "voc", 20, {
        "train": "2111a5e58ae8b67a112a2b2c8aa98fe8fa926ac3e1d73e2e4e0e4844c90cc047",
        "test": "43b2929a86e9fe685cdf3b6b72fb90b6838ff9f9f427807e8b9502111e73750a",
        "labels": "59e82ce7a1fa096b8a80c22cc72e6c86e54c598b2e1cfe08a211f1c82a0dcb2c",
    }),
    _COCO: _spec(_COCO, "coco", 80, {
        "train": "8e0c354ae2214d7ced46f4a5ae24236149296be4dcd2df74f00eba2abe6be0ce",
        "test": "4dda722463b0ed3aada172ce1c75f46f1391e4d2bee7643760549f916a8022e5",
        "labels": "a16d52dc65d8bc2b7abe5875199d802e951b7af142b327f8c85b496116a87f45",
    }),
}
# Every published file by its checksum: a wrong file is named for what it is.
PUBLISHED = {f.sha256: (spec.name, role) for spec in SPECS.values() for role, f in spec.files.items()}


def get_spec(name: str) -> BenchmarkSpec:
    if name not in SPECS:
        raise CprflError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return SPECS[name]


def sha256_file(path: Path) -> str:
    return file_digest(path)


# ---------------------------------------------------------------- finding and verifying


def _files_in(folder: Path, spec: BenchmarkSpec) -> dict[str, Path]:
    """The benchmark's files present in ``folder`` (official or short names), by role.

    The short names are the same for both benchmarks: a folder holding only short names whose
    labels.txt is the other benchmark's published file is that benchmark's folder, not this one's.
    """
    found = {}
    for role, entry in spec.files.items():
        path = next((p for p in (folder / entry.filename, folder / entry.alias) if p.is_file()), None)
        if path is not None:
            found[role] = path
    labels = folder / spec.files["labels"].alias
    if found and all(p.name == spec.files[r].alias for r, p in found.items()) and labels.is_file():
        owner = PUBLISHED.get(sha256_file(labels), (None,))[0]
        if owner is not None and owner != spec.name:
            return {}
    return found


def find_list_folder(name: str, list_dir: str | Path) -> Path | None:
    """The folder that holds ``name``'s lists: ``list_dir`` itself, or its ``voc_lt/`` (``coco_lt/``, ...)
    sub-folder; None when neither holds any of them."""
    spec = get_spec(name)
    folder = Path(list_dir).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CprflError(f"--list-dir {folder} {what}; give the folder with the split lists or a parent folder "
                         f"holding {spec.folders[0]}/")
    return next((f for f in (folder, *(folder / s for s in spec.folders)) if _files_in(f, spec)), None)


def list_folder(name: str, list_dir: str | Path) -> Path:
    """:func:`find_list_folder`, or a one-line error saying what the folder holds instead."""
    found = find_list_folder(name, list_dir)
    if found is not None:
        return found
    spec, folder = get_spec(name), Path(list_dir).expanduser()
    others = [other for other in SPECS.values() if other.name != name and _files_in(folder, other)]
    if others:
        raise CprflError(f"--list-dir {folder} holds the {others[0].name} lists, not {name}'s; give the {name} folder "
                         f"({', '.join(f.filename for f in spec.files.values())}) or a parent folder holding "
                         f"{spec.folders[0]}/")
    raise CprflError(f"--list-dir {folder} holds no {name} lists (looked for "
                     f"{', '.join(f'{f.filename} or {f.alias}' for f in spec.files.values())}, there and in "
                     f"{', '.join(s + '/' for s in spec.folders)})")


def _verify(path: Path, name: str, role: str, user_file: bool) -> None:
    """The file's sha256 must be the published one; a wrong file is named for what it is, never deleted."""
    entry = get_spec(name).files[role]
    got = sha256_file(path)
    if got == entry.sha256:
        return
    if got in PUBLISHED:
        other, other_role = PUBLISHED[got]
        raise CprflError(f"{path} is the published {other} {other_role} list, not {name}'s {role} list "
                         f"({entry.filename}); point --list-dir at the {name} lists")
    if user_file:
        raise CprflError(f"{path}: sha256 {got} is not that of the published {entry.filename} ({entry.sha256}): "
                         f"an edited or other version; replace it with the published file from {entry.url}")
    raise CprflError(f"{path}: the cached copy of {entry.filename} is damaged (sha256 {got}); "
                     f"`cprfl data fetch --dataset {name}` downloads it again")


def _download(entry: ListFile, target: Path, timeout: float) -> None:
    """Fetch one list into ``target`` atomically; a wrong checksum never reaches ``target``."""
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response:
            data = response.read()
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", exc)
        raise CprflError(f"could not download {entry.url} ({reason}); download it where there is a network and "
                         f"pass --list-dir DIR holding it (or put it at {target})") from exc
    import hashlib

    got = hashlib.sha256(data).hexdigest()
    if got != entry.sha256:
        raise CprflError(f"{entry.url} gave sha256 {got}, expected {entry.sha256}; download it by hand and pass "
                         "--list-dir DIR holding it")
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def fetch_split_lists(name: str, list_dir: str | Path | None = None, download: bool = True,
                      timeout: float = 10.0) -> dict[str, Path]:
    """The verified ``train``, ``test`` and ``labels`` files of a real benchmark, by role.

    ``list_dir``: a folder the user names (see :func:`list_folder`); its files are only read.
    None: the copies in ``cache_dir("lists", name)``, downloaded there when missing (or damaged)
    and ``download`` is true. Every file's sha256 is checked on every call.
    """
    spec = get_spec(name)
    if list_dir is not None:
        folder = list_folder(name, list_dir)
        found = _files_in(folder, spec)
        missing = [spec.files[r].filename for r in ROLES if r not in found]
        if missing:
            raise CprflError(f"{folder} lacks the {name} list(s) {', '.join(missing)} (or their short names "
                             f"{', '.join(spec.files[r].alias for r in ROLES if r not in found)})")
        for role in ROLES:
            _verify(found[role], name, role, user_file=True)
        return {role: found[role] for role in ROLES}
    folder = cache_dir("lists", name)
    found = {}
    for role in ROLES:
        entry, path = spec.files[role], folder / spec.files[role].filename
        if path.is_file() and sha256_file(path) != entry.sha256 and download:
            _download(entry, path, timeout)  # a damaged cached copy: fetch it again
        if not path.is_file():
            if not download:
                raise CprflError(f"the {name} {role} list is not in the cache ({path}); run "
                                 f"`cprfl data fetch --dataset {name}` or pass --list-dir DIR holding the lists")
            _download(entry, path, timeout)
        _verify(path, name, role, user_file=False)
        found[role] = path
    return found


def install_split_lists(name: str, list_dir: str | Path) -> dict[str, Path]:
    """Verify a user's copy of the lists and copy it into the cache, where later runs find it."""
    source = fetch_split_lists(name, list_dir=list_dir, download=False)
    folder = cache_dir("lists", name)
    for role, path in source.items():
        target = folder / get_spec(name).files[role].filename
        if not (target.is_file() and sha256_file(target) == get_spec(name).files[role].sha256):
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
    return fetch_split_lists(name, download=False)


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


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


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
            raise CprflError(f"{path}:{lineno}: class index {index!r} should be {len(names)} "
                             "(indices run 0, 1, 2, ... in line order)")
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
    source: Path  # the list file it was read from
    subset: str | None = None  # how it was cut from that file (None: all of it)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return int(self.targets.shape[1])

    def take(self, indices, how: str) -> "SplitList":
        """The images at ``indices``, in that order; ``how`` says how they were chosen (for the record)."""
        idx = np.asarray(indices, dtype=np.int64)
        return SplitList([self.paths[i] for i in idx], self.targets[idx], self.source, how)


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
