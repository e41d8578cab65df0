"""The GPU check on what a bare GPU image holds, and the one folder to carry there (tools/gpu_bundle.sh).

A stock PyTorch image has no notebook stack (papermill, nbformat, nbclient, ipykernel, jupyter) and
no open_clip, ftfy or wcwidth: ``tests/bare_image`` (a sitecustomize put on PYTHONPATH) makes those
modules unfindable, as where they are not installed, and the bundle's wheels importable from the
bundle only. The wheels of the bundle test are this environment's installed distributions repacked
(no network); the bundle command's default, the package index, is what a user runs. CPU mode, tiny sizes.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BARE = ROOT / "tests" / "bare_image"
CHECK_NEEDLES = ("epoch 1", "s per epoch", "steady rate:", "training img/s", "waiting for data", "fixed per run:",
                 "evaluation:", "TFLOP/s", "projection (not a measurement", "the paper profile (", "runs): about",
                 "gpu_check: OK")


def readme_command(prefix: str) -> str:
    """The one command line of the README's code blocks that starts with ``prefix``."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, f"the README should give `{prefix} ...` once, found {lines}"
    return lines[0]


def bare_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(BARE), "PYTHON": sys.executable, "CPRFL_CACHE": str(tmp_path / "cache"),
            "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"),
            "CPRFL_BARE_LOG": str(tmp_path / "refused.log"), **extra}


def test_the_bare_image_lacks_the_notebook_stack_and_the_bundles_wheels(tmp_path):
    code = ("import importlib.util as u, torch, torchvision, timm, yaml\n"
            "print([m for m in ('papermill', 'nbformat', 'nbclient', 'ipykernel', 'jupyter_client', 'open_clip', "
            "'ftfy', 'wcwidth') if u.find_spec(m) is not None])\n"
            "try:\n    import papermill\nexcept ModuleNotFoundError:\n    print('papermill: not installed')\n")
    env = bare_env(tmp_path, CPRFL_BARE_ONLY_FROM=str(tmp_path / "empty"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["[]", "papermill: not installed"]
    import papermill  # noqa: F401 - here, in the project's environment, it is installed: the blocker is what hides it


def repack(distribution: str, folder: Path) -> Path:
    """An installed pure-Python distribution as a py3-none-any wheel (its files, without compiled accelerators
    or scripts outside the package), for building the bundle without a network."""
    dist = importlib.metadata.distribution(distribution)
    name, version = dist.metadata["Name"].replace("-", "_"), dist.version
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for f in dist.files:
            path = str(f)
            if path.startswith("..") or "__pycache__" in path or path.endswith((".so", ".pyd")):
                continue
            zf.write(dist.locate_file(f), path)
    return wheel


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_gpu_check_completes_on_a_bare_image_from_the_bundle(shared_data, tmp_path):
    """tools/gpu_bundle.sh DIR, then DIR/run.sh (tools/gpu_check.sh --cpu --tiny with the bundle's lists) where the
    notebook stack is missing and open_clip, ftfy and wcwidth come from the bundle alone: exit 0, the projection."""
    wheels = tmp_path / "local-wheels"
    wheels.mkdir()
    for d in ("open_clip_torch", "ftfy", "wcwidth"):
        repack(d, wheels)
    bundle = tmp_path / "gpu-bundle"
    env = bare_env(tmp_path, CPRFL_BUNDLE_WHEELS=str(wheels))
    env["PYTHONPATH"] = ""  # building happens where the package's environment is
    # the README's command as written, its placeholders (the list folder, the bundle folder) replaced
    command = readme_command("tools/gpu_bundle.sh").replace("/lists", str(shared_data))
    done = subprocess.run(["bash", "-c", command.replace("gpu-bundle", str(bundle))], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "run there" in done.stdout or "there:" in done.stdout, done.stdout
    assert sorted(p.name for p in bundle.iterdir()) == ["README.txt", "lists", "run.sh", "site", "wheels"]
    assert sorted(p.name for p in (bundle / "wheels").iterdir()) == [
        f"{n}-{importlib.metadata.version(n)}-py3-none-any.whl" for n in ("ftfy", "open_clip_torch", "wcwidth")]
    assert sorted(p.name for p in (bundle / "lists").iterdir()) == ["coco_lt", "voc_lt"]
    assert len(list((bundle / "lists").rglob("*.txt"))) == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".gpu-bundle")] == []  # no staging left

    # on the "GPU machine": the checkout, the bundle, this Python with torch but without the carried modules
    assert readme_command("gpu-bundle/run.sh") == "gpu-bundle/run.sh"  # on a GPU; here in CPU mode, tiny
    run = subprocess.run([str(bundle / "run.sh"), "--cpu", "--tiny", "--work", str(tmp_path / "work")],
                         env=bare_env(tmp_path, CPRFL_CHECKOUT=str(ROOT), CPRFL_BARE_ONLY_FROM=str(bundle / "site")),
                         capture_output=True, text=True, timeout=900)
    print(run.stdout[-2500:])
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert f"open_clip {importlib.metadata.version('open_clip_torch')} from {bundle / 'site' / 'open_clip'}" \
        in run.stdout
    for needle in CHECK_NEEDLES:
        assert needle in run.stdout, needle
    refused = (tmp_path / "refused.log").read_text() if (tmp_path / "refused.log").exists() else ""
    assert not [m for m in ("papermill", "nbformat", "nbclient", "ipykernel") if m in refused], refused  # not even
    # looked for on the check's path


def test_a_bundle_without_its_wheels_is_one_line_and_writes_nothing(tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = bare_env(tmp_path)
    env["PYTHONPATH"] = ""
    done = subprocess.run([str(ROOT / "tools" / "gpu_bundle.sh"), str(tmp_path / "gpu-bundle"), "--wheels-from",
                           str(empty)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if line.startswith("gpu_bundle: error:")]
    assert len(errors) == 1 and "could not download the wheels" in errors[0] and str(empty) in errors[0], done.stdout
    assert done.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-wheels"]  # no bundle, no staging folder
