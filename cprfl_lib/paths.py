"""Where the package keeps downloads and caches.

Nothing is relative to the current directory or to a hard-coded home: the cache root is
``$CPRFL_CACHE`` if set, else ``$XDG_CACHE_HOME/cprfl``, else ``~/.cache/cprfl``.
The Makefile and the tests point ``CPRFL_CACHE`` inside the repository's ignored ``.cache``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The root folder for everything the package caches or downloads."""
    if os.environ.get("CPRFL_CACHE"):
        return Path(os.environ["CPRFL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cprfl"


def cache_dir(*parts: str) -> Path:
    """A sub-folder of :func:`cache_root`, created on demand."""
    path = cache_root().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from cprfl_lib.errors import CprflError

        raise CprflError(f"the cache folder {path} cannot be created ({exc.strerror or exc}); set CPRFL_CACHE "
                         "to a writable folder") from None
    return path
