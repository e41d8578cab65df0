"""The README's command-line section, line by line as written, in a fresh folder with the test session's cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cprfl_lib.paths import cache_dir

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def cli_block() -> list[str]:
    """The command lines of the first bash block under "## The command line" (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The command line"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_every_line_of_the_command_line_section_runs(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    lines = cli_block()
    assert any(line.startswith("cprfl predict") for line in lines) and len(lines) >= 6
    out = {}
    for line in lines:
        if line.startswith("cprfl predict"):  # the two images it names, copied from the run's generated data
            config = json.loads((tmp_path / "runs" / "a" / "metrics.json").read_text())
            assert config["dataset"] == "synth-voc-lt"
            images = sorted(cache_dir("synthetic").glob("synth-voc-lt-s0-224px/images/test/*.jpg"))
            for name, image in zip(("img1.jpg", "img2.jpg"), images):
                shutil.copy(image, tmp_path / name)
        if line.startswith("cprfl evaluate"):
            stored = sorted(cache_dir("features").iterdir())
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        print(f"{line}: {time.perf_counter() - start:.0f} s")
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        out[line] = done.stdout
    train = next(v for k, v in out.items() if k.endswith("--output-dir runs/a"))
    assert "validation split" in train and "test split" in train, train
    metrics = json.loads((tmp_path / "runs" / "a" / "metrics.json").read_text())
    assert {"last_epoch", "val_last_epoch", "best_on_val"} <= set(metrics)
    assert (tmp_path / "runs" / "a" / "weights.pt").is_file() and not (tmp_path / "runs" / "a" / "checkpoint.pt").exists()
    other = json.loads((tmp_path / "runs" / "b" / "metrics.json").read_text())
    assert other["seed"] == 1 and other["last_epoch"]["model"]["mAP"] != metrics["last_epoch"]["model"]["mAP"]
    assert yaml.safe_load((tmp_path / "runs" / "b" / "config.yaml").read_text())["optim"]["lr"] == 1e-3
    evaluated = next(v for k, v in out.items() if k.startswith("cprfl evaluate"))
    # the run's own test figures, bit for bit: its frozen backbone's features of the test images, read from the
    # cache under the key its training filled (nothing extracted again)
    assert sorted(cache_dir("features").iterdir()) == stored
    figures = json.loads(evaluated)
    assert {k: figures[k] for k in ("mAP", "head", "medium", "tail", "OF1@0.5", "CF1@top3")} == {
        k: metrics["last_epoch"]["model"][k] for k in ("mAP", "head", "medium", "tail", "OF1@0.5", "CF1@top3")}
    predicted = next(v for k, v in out.items() if k.startswith("cprfl predict"))
    assert predicted.count("img1.jpg") == 1 and predicted.count("img2.jpg") == 1, predicted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img1.jpg", "img2.jpg", "runs"]  # nothing else written here
