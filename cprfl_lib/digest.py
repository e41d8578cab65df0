"""Content keys: the one scheme by which every cache and every finished run is keyed.

A cache entry (backbone features, decoded images, class embeddings, generated data, a
finished run) is valid only for the exact inputs that made it. :func:`content_key` hashes a
description of *everything* that changes the content, and an input file enters that
description by the sha256 of its bytes (:func:`file_digest`, :func:`files_digest`), never by
its path, size or modification time: images replaced under the same names, or a weights file
copied over with its old time, give another key.

Hashing is memoised within a process by (path, size, mtime, ctime, inode); the ctime changes
on every write and cannot be set back by a user, so a file rewritten while the process runs
is hashed again.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cprfl_lib.errors import CprflError

KEY_CHARS = 20  # hex characters of a cache key: 80 bits
_BLOCK = 1 << 20
_memo: dict[tuple, str] = {}


def _stat_key(path: Path) -> tuple:
    st = os.stat(path)
    return str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def file_digest(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a file's bytes."""
    path = Path(path)
    try:
        ident = _stat_key(path)
        if ident in _memo:
            return _memo[ident]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                h.update(block)
    except FileNotFoundError:
        raise CprflError(f"{path}: file not found") from None
    except OSError as exc:
        raise CprflError(f"{path}: cannot read ({exc.strerror or exc})") from None
    _memo[ident] = h.hexdigest()
    return _memo[ident]


def files_digest(root: str | os.PathLike, rel_paths: Iterable[str], workers: int = 8) -> str:
    """One sha256 over the relative paths and the contents of many files, in the given order."""
    root = Path(root)
    rel_paths = list(rel_paths)
    with ThreadPoolExecutor(max(1, min(workers, len(rel_paths)))) as pool:  # hashlib releases the GIL
        digests = list(pool.map(lambda p: file_digest(root / p), rel_paths))
    h = hashlib.sha256()
    for rel, d in zip(rel_paths, digests):
        h.update(f"{rel}\0{d}\n".encode())
    return h.hexdigest()


_imports_memo: dict[tuple, tuple[str, ...]] = {}


def _imports(path: Path, module: str, is_package: bool) -> tuple[str, ...]:
    """Every module name an import statement of ``path`` names, wherever it stands (a function's lazy import
    included): ``import a.b``, ``from a import b`` (``a`` and ``a.b``: ``b`` may be a submodule), relative forms
    resolved against ``module``. Memoised by the file's stat key (a rewritten file is read again)."""
    ident = _stat_key(path)
    if ident in _imports_memo:
        return _imports_memo[ident]
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise CprflError(f"{path}:{exc.lineno}: not valid Python ({exc.msg})") from None
    names: list[str] = []
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            names += [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]
    _imports_memo[ident] = tuple(names)
    return _imports_memo[ident]


def import_closure(root: str | os.PathLike, entries: Iterable[str]) -> list[str]:
    """The source files (relative to ``root``, sorted) of the modules ``entries`` import, transitively, within the
    packages under ``root``: each package's ``__init__.py`` on the way included, modules outside ``root`` (torch,
    the standard library) left out. Read statically (``ast``), so a module imported only inside a function, which a
    run executes on some configurations only, counts as well."""
    root = Path(root)

    def source(name: str) -> tuple[Path, bool] | None:
        parts = name.split(".")
        package = root.joinpath(*parts, "__init__.py")
        if package.is_file():
            return package, True
        module = root.joinpath(*parts[:-1], parts[-1] + ".py")
        return (module, False) if module.is_file() else None

    seen: dict[str, Path] = {}
    todo = list(entries)
    while todo:
        name = todo.pop()
        if not name or name in seen:
            continue
        found = source(name)
        if found is None:
            continue
        seen[name] = found[0]
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages executed on the way
        todo += _imports(found[0], name, found[1])
    return sorted(str(p.relative_to(root)) for p in seen.values())


def weights_fingerprint(weights: object) -> object:
    """A weights argument as it enters a key: a file by its content, anything else (a tag, None) as it is."""
    if weights is None:
        return None
    path = Path(str(weights)).expanduser()
    if path.is_file():
        return {"file_sha256": file_digest(path)}
    return str(weights)


def state_digest(module) -> str:
    """A sha256 over a module's state (names, dtypes, shapes and bytes of its tensors, in order): its actual weights."""
    import torch

    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def content_key(kind: str, parts: Mapping, version: int = 1) -> str:
    """The key of a cache entry of ``kind``: a hash of ``parts`` (JSON-able) and the scheme's ``version``."""
    text = json.dumps({"kind": kind, "version": version, "parts": parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]
