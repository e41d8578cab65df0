"""The paper protocol end to end, with the README's commands as written, on a stand-in of the real data.

The stand-in is the real layout: a small JPEG at every path of the published VOC-LT and COCO-LT
lists (read from ../shared/data; skipped where it is absent), the lists themselves as a user's
read-only copy (a parent folder holding voc_lt/ and coco_lt/), and weight files in the real
formats with random values (a torchvision ResNet-101 state dict, an open_clip RN50 state dict
named like OpenAI's). The README's commands run through the Makefile (and the `cprfl` command)
with only the placeholder folders /data, /lists and /weights replaced by these. The cache and
the results folder are the test's own (CPRFL_CACHE, CPRFL_RESULTS_ROOT). Times are printed,
never asserted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LABEL = "PIPELINE CHECK, NOT RESULTS"

pytestmark = [pytest.mark.slow, pytest.mark.shared_data, pytest.mark.protocol]


def readme_command(prefix: str) -> str:
    """The one command line of the README's code blocks that starts with ``prefix``."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, f"the README should give `{prefix} ...` once, found {lines}"
    return lines[0]


@pytest.fixture(scope="module")
def standin(shared_data, tmp_path_factory) -> dict:
    """The data root, list folder, weights folder and an environment of the test's own."""
    from tools.standin import clip_weights, image_tree, list_paths, resnet_weights

    base = tmp_path_factory.mktemp("paper-protocol")
    start = time.perf_counter()
    lists = [shared_data / b / f"{r}.txt" for b in ("voc_lt", "coco_lt") for r in ("train", "test")]
    image_tree(base / "data", list_paths(lists))
    resnet_weights(base / "weights" / "resnet101.pth")
    clip_weights(base / "weights" / "RN50-openai.bin")
    print(f"stand-in tree and weight files in {time.perf_counter() - start:.0f} s")
    env = {**os.environ, "CPRFL_CACHE": str(base / "cache"), "CPRFL_RESULTS_ROOT": str(base / "results"),
           "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(base / "torch"), "HF_HOME": str(base / "hf")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `cprfl` as the README uses it
    return {"data": base / "data", "lists": shared_data, "weights": base / "weights", "env": env, "base": base}


def run_readme(standin: dict, prefix: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, float]:
    """The README's command line starting with ``prefix``, its placeholder folders replaced, run with bash."""
    command = readme_command(prefix)
    for placeholder, key in (("/data", "data"), ("/lists", "lists"), ("/weights", "weights")):
        command = re.sub(rf"(?<![\w.]){placeholder}(?=[/ \"]|$)", str(standin[key]), command)
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=standin["env"], capture_output=True, text=True,
                          timeout=timeout)
    return done, time.perf_counter() - start


def test_the_readme_installs_the_lists_and_checks_every_image(standin):
    for benchmark in ("voc-lt", "coco-lt"):
        done, _ = run_readme(standin, f"cprfl data fetch --dataset {benchmark} --list-dir")
        assert done.returncode == 0, done.stderr[-2000:]
        cached = Path(standin["env"]["CPRFL_CACHE"]) / "lists" / benchmark
        assert sorted(p.name for p in cached.iterdir()) == sorted(p.split()[-1].split("/")[-1]
                                                                for p in done.stdout.splitlines())
        done, seconds = run_readme(standin, f"cprfl data check --dataset {benchmark} --data-root /data --deep")
        assert done.returncode == 0, done.stderr[-2000:]
        assert "decode" in done.stdout, done.stdout
        print(f"{benchmark}: every image decoded in {seconds:.0f} s")


def test_the_check_scale_runs_the_whole_paper_protocol(standin):
    done, seconds = run_readme(standin, "make reproduce PROFILE=paper-check")
    print(f"make reproduce PROFILE=paper-check: {seconds / 60:.1f} min")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    out = Path(standin["env"]["CPRFL_RESULTS_ROOT"]) / "paper-check"
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["notebooks"]) == [f"0{i}_{n}" for i, n in enumerate(
        ("data_splits", "category_embeddings", "model", "training", "ablations", "visualization"), start=1)]
    context = manifest["context"]
    assert context["pipeline_check"] and context["data_root"] == str(standin["data"])
    assert context["overrides"]["model.backbone_weights"] == str(standin["weights"] / "resnet101.pth")
    assert manifest["notebooks"]["01_data_splits"]["metrics"]["voc"]["source"] == "real"  # the lists, not synth
    assert manifest["notebooks"]["03_model"]["metrics"]["recipe"] == "paper-voc"
    tables = sorted((out / "tables").iterdir())
    assert len(tables) >= 45  # 15+ tables, each as csv, md and tex
    unlabelled = [t.name for t in tables if LABEL not in t.read_text().splitlines()[0] + t.read_text()[:2000]]
    assert not unlabelled, f"tables not labelled a pipeline check: {unlabelled}"
    for metrics in (out / "metrics").glob("*.json"):
        assert "pipeline check, not results" in json.loads(metrics.read_text())["pipeline_check"]
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) >= 20 and all(p.with_suffix(".pdf").is_file() for p in pngs)
    # every run the plan announced finished, each with its one line
    planned = {nb: int(n) for nb, n in re.findall(r"(0[456])_\w+: (\d+) distinct runs", done.stdout)}
    assert set(planned) >= {"04", "05"}, done.stdout[-3000:]
    for nb in ("04", "05"):
        finished = re.findall(rf"{nb}: .*, seed 0: test mAP [\d.]+ \(.*\[(\d+)/(\d+)\]", done.stdout + done.stderr)
        totals = {int(n) for _, n in finished}  # the pool's count: the notebook's runs not finished earlier
        assert len(totals) == 1 and 0 < min(totals) <= planned[nb], (nb, planned, finished)
        assert sorted(int(k) for k, _ in finished) == list(range(1, min(totals) + 1)), (nb, finished)


def test_the_paper_profile_prints_its_plan_and_refuses_on_a_cpu(standin):
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the paper profile starts; this checks the CPU refusal")
    done, seconds = run_readme(standin, "make reproduce PROFILE=paper ")
    print(f"make reproduce PROFILE=paper: plan and refusal in {seconds:.0f} s")
    print(done.stdout[-2500:])  # the plan, for the README's figures
    assert done.returncode != 0
    assert "reproduce [paper]: the plan" in done.stdout
    for needle in ("PFLOP", "h on this machine", "GiB"):
        assert needle in done.stdout, done.stdout
    runs = {nb: int(n) for nb, n in re.findall(r"(0[456])_\w+: (\d+) distinct runs", done.stdout)}
    assert runs["04"] >= 36 and runs["05"] >= 54, done.stdout  # every Table 1 row on both, every ablation
    errors = [line for line in done.stderr.splitlines() if line.startswith("reproduce: error:")]
    assert len(errors) == 1 and "FORCE=1" in errors[0] and "hours on this CPU" in errors[0], done.stderr
    assert not (Path(standin["env"]["CPRFL_RESULTS_ROOT"]) / "paper").exists()  # nothing written

