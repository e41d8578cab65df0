"""Atomic writes: a reader never sees a half-written file or folder, and a killed writer leaves no litter.

Everything the package writes that someone else reads later (checkpoints, caches, tables,
manifests) goes through these helpers: write to a temporary file in the same folder, flush
and fsync, then ``os.replace`` onto the final name. Files get the permissions the umask
gives (``tempfile`` alone would make them 0600, unreadable to collaborators). A temporary
name carries its writer's process id, so :func:`clean_stale_temp` can remove what a killed
writer left (SIGKILL gives it no chance to clean up) without touching a live writer's file.
Folders are swapped in whole by :func:`replace_dir`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it
# A temporary name holds its writer: .<name>.<host>-<pid>.<random>.tmp (files), .<name>.<host>-<pid>.tmp-dir
# and .old-dir (folders); <host> is a short hash of the host name, so that a folder shared between machines
# never has a live writer of another host taken for a dead one of this host.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.(?:[^.]+\.tmp|tmp-dir|old-dir)$")


def file_mode() -> int:
    """The mode a new file gets under this process's umask (0o644 under the usual 022)."""
    return 0o666 & ~_UMASK


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temp(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary files and folders that writers of this host left when they died (only those of
    ``name``, if given); returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        m = _TEMP.match(path.name)
        if not m or m["host"] != _HOST or (name is not None and m["name"] != name) or _pid_alive(int(m["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def write_error(path: Path, exc: OSError):
    """The one line for a write that failed: a full disk says that nothing was replaced."""
    from cprfl_lib.errors import CprflError

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return CprflError(f"the disk is full while writing {path}; the previous {path.name}, if any, is intact")
    return CprflError(f"cannot write {path} ({exc.strerror or exc})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success.

    A write that fails (a full disk, a read-only folder) is one CprflError; the temporary file goes.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temp(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = Path(tmp)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
        except OSError as exc:
            raise write_error(path, exc) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def temp_dir_for(final: str | os.PathLike) -> Path:
    """A fresh, empty staging folder beside ``final`` (for :func:`replace_dir`); stale ones are cleaned first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(final.parent, final.name)
    staging = final.parent / f".{final.name}.{_HOST}-{os.getpid()}.tmp-dir"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def replace_dir(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the folder ``staging`` in the place of ``final`` with two renames (a reader sees one or the other)."""
    staging, final = Path(staging), Path(final)
    old = final.parent / f".{final.name}.{_HOST}-{os.getpid()}.old-dir"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
