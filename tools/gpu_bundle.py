"""The one folder to carry to a bare GPU machine, beside the checkout: ``tools/gpu_bundle.sh DIR``.

    tools/gpu_bundle.sh gpu-bundle                   # where there is a network (PyPI) and the lists are cached
    tools/gpu_bundle.sh gpu-bundle --list-dir /lists # the lists from your copy (verified by their sha256)

A stock PyTorch GPU image (Python 3.12, torch, torchvision, timm, numpy, scikit-learn, pyyaml, pillow,
tqdm, huggingface_hub, ...) lacks open_clip_torch, ftfy and wcwidth, and the split lists are not in
the repository. DIR receives:

  wheels/   the three pure-Python wheels (py3-none-any, for Python 3.12), at the versions installed here
            when they are (``pip download --no-deps --only-binary=:all: --python-version 3.12 --platform any``)
  site/     the same wheels unpacked: on PYTHONPATH they import without pip or a network
  lists/    voc_lt/ and coco_lt/: both benchmarks' split lists, verified against their pinned sha256
  run.sh    the one command to run there: the GPU check (tools/gpu_check.sh) with site/ and lists/

Put DIR inside the checkout (``gpu-bundle/`` is ignored by git) and copy the checkout; there,
``gpu-bundle/run.sh`` (or ``CPRFL_CHECKOUT=/path/to/checkout DIR/run.sh`` when DIR is elsewhere).
DIR is written whole or not at all (a staging folder, then a rename). Exit 0, or 2 with one line.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEELS = ("open_clip_torch", "ftfy", "wcwidth")  # what a stock PyTorch image lacks (the list)
PYTHON_VERSION = "3.12"
BENCHMARKS = ("voc-lt", "coco-lt")
WHEELS_ENV = "CPRFL_BUNDLE_WHEELS"  # a local wheel folder instead of the package index (offline builds, tests)

RUN_SH = """#!/usr/bin/env bash
# The GPU check from this bundle: its wheels (unpacked in site/) on PYTHONPATH, its split lists, no install.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
checkout="${CPRFL_CHECKOUT:-$(dirname "$here")}"
if [ ! -x "$checkout/tools/gpu_check.sh" ]; then
  echo "run.sh: no checkout of cprfl at $checkout (tools/gpu_check.sh missing); put this folder inside the" \
    "checkout or set CPRFL_CHECKOUT" >&2
  exit 2
fi
export PYTHONPATH="$here/site${PYTHONPATH:+:$PYTHONPATH}"
exec "$checkout/tools/gpu_check.sh" --list-dir "$here/lists" "$@"
"""


class BundleError(Exception):
    """One line for the user."""


def pinned(package: str) -> str:
    """``package==version`` at the version installed here (the one the tests ran with), else the package alone."""
    try:
        return f"{package}=={importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


def download_wheels(target: Path, wheels_from: str | None) -> list[Path]:
    """The pure-Python wheels of :data:`WHEELS` for Python 3.12 in ``target`` (pip download: nothing installed)."""
    source = ["--no-index", "--find-links", wheels_from] if wheels_from else ["--timeout", "20", "--retries", "1"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               PYTHON_VERSION, "--platform", "any", "--dest", str(target), "--disable-pip-version-check",
               "--progress-bar", "off", *source, *(pinned(p) for p in WHEELS)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"pip download of {', '.join(WHEELS)} did not run ({type(exc).__name__}: {exc})") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        why = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else "no output")
        where = f"from {wheels_from}" if wheels_from else "from the package index (is there a network?)"
        raise BundleError(f"could not download the wheels {', '.join(pinned(p) for p in WHEELS)} {where}: {why}")
    found = sorted(target.glob("*.whl"))
    impure = [w.name for w in found if not w.name.endswith("-py3-none-any.whl")]
    if impure or len(found) != len(WHEELS):
        raise BundleError(f"expected {len(WHEELS)} pure-Python wheels (py3-none-any), got {[w.name for w in found]}")
    return found


def copy_lists(target: Path, list_dir: str | None) -> list[Path]:
    """Both benchmarks' split lists, verified by their pinned sha256, under ``target/voc_lt`` and ``target/coco_lt``."""
    from cprfl_lib.data.lists import fetch_split_lists, get_spec

    out = []
    for name in BENCHMARKS:
        spec = get_spec(name)
        files = fetch_split_lists(name, list_dir=list_dir, download=list_dir is None)
        folder = target / spec.folders[0]
        folder.mkdir(parents=True, exist_ok=True)
        for role, path in files.items():
            out.append(Path(shutil.copyfile(path, folder / spec.files[role].filename)))
    return out


def build(final: Path, list_dir: str | None, wheels_from: str | None, say) -> Path:
    from cprfl_lib.io import replace_dir, temp_dir_for

    if final.exists() and not (final / "run.sh").is_file():
        raise BundleError(f"{final} exists and is not a bundle (no run.sh); name a new folder")
    staging = temp_dir_for(final)
    try:
        wheels = download_wheels(staging / "wheels", wheels_from)
        for wheel in wheels:  # pure Python: unpacked, they import from site/ without pip
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(staging / "site")
        say(f"  wheels: {', '.join(w.name for w in wheels)}")
        lists = copy_lists(staging / "lists", list_dir)
        say(f"  split lists (sha256 verified): {len(lists)} files of {', '.join(BENCHMARKS)}")
        run = staging / "run.sh"
        run.write_text(RUN_SH)
        run.chmod(0o755)
        (staging / "README.txt").write_text(
            "The GPU check's bundle (tools/gpu_bundle.sh). On the GPU machine, with this folder inside the "
            "checkout:\n\n    gpu-bundle/run.sh\n\n(folder elsewhere: CPRFL_CHECKOUT=/path/to/checkout "
            f"{final.name}/run.sh). Wheels: {', '.join(w.name for w in wheels)}; lists: lists/voc_lt, lists/coco_lt.\n")
        replace_dir(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(prog="tools/gpu_bundle.sh", description=__doc__.splitlines()[0])
    p.add_argument("dir", help="the folder to write (e.g. gpu-bundle, inside the checkout)")
    p.add_argument("--list-dir", help="your copy of the split lists (default: the cache, downloaded if missing)")
    p.add_argument("--wheels-from", default=os.environ.get(WHEELS_ENV),
                   help=f"a local folder of wheels instead of the package index (or ${WHEELS_ENV})")
    args = p.parse_args(argv)
    say = lambda line: print(line, flush=True)  # noqa: E731
    from cprfl_lib.errors import CprflError

    final = Path(args.dir).resolve()
    say(f"gpu_bundle: writing {final}")
    try:
        build(final, args.list_dir, args.wheels_from, say)
    except (BundleError, CprflError) as exc:
        say(f"gpu_bundle: error: {exc}")
        return 2
    except KeyboardInterrupt:
        say("gpu_bundle: interrupted; nothing was written")
        return 130
    checkout = Path(__file__).resolve().parents[1]
    if final.parent == checkout:
        say(f"gpu_bundle: OK. Copy the checkout (with {final.name}/ inside) to the GPU machine; there, in the "
            f"checkout: {final.name}/run.sh")
    else:
        say(f"gpu_bundle: OK. Copy the checkout and {final} to the GPU machine; there: "
            f"CPRFL_CHECKOUT=/path/to/the/checkout /path/to/{final.name}/run.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
