"""What produced a result: commit, versions, device; and the checks made before a run writes anything."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from cprfl_lib.errors import CprflError

MIN_FREE_BYTES = 200 * 2**20  # a run writes checkpoints and predictions; refuse to start on an almost full disk


def check_writable(folder: str | Path, min_free: int = MIN_FREE_BYTES) -> Path:
    """Create ``folder`` and make sure a file can be written there, before any training starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise CprflError(f"output directory {folder} is not writable ({exc.strerror or exc})") from None
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise CprflError(f"output directory {folder} has only {free / 2**20:.0f} MiB free; "
                         f"a run needs at least {min_free / 2**20:.0f} MiB")
    return folder


def git_commit(repo: Path | None = None) -> str:
    """The commit of the package's checkout (with '+dirty' for uncommitted changes), or 'unknown'."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CPRFL_COMMIT", "unknown")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def package_versions(names=("cprfl-lib", "torch", "torchvision", "timm", "open_clip_torch", "numpy",
                            "scikit-learn", "sentence-transformers")) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(config: dict | None = None) -> dict:
    info = {"commit": git_commit(), "device": device_name(), "python": platform.python_version(),
            "versions": package_versions()}
    if config is not None:
        info.update(recipe=config.get("recipe"), dataset=config["data"]["dataset"],
                    encoder=config["semantics"]["encoder"], seed=config["train"]["seed"])
    return info
