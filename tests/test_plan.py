"""The plan: runs counted as the notebooks build them, their work and disk, the cluster commands, the workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cprfl_repro import plan as plans
from cprfl_repro import studies
from cprfl_repro.context import resolve
from cprfl_repro.reproduce import notebooks

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("private_cache")


def test_the_plan_counts_each_distinct_run_once_and_its_cluster_commands_are_what_the_notebooks_reuse(tmp_path):
    ctx = resolve("smoke", tmp_path / "out", tmp_path / "runs", overrides={"data.synthetic_limit": 40})
    plan = plans.make_plan(ctx, {}, notebooks(ROOT))
    by_nb = {nb: [r for r in plan.runs if r.notebook == nb] for nb in ("04_training", "05_ablations", "06_visualization")}
    # notebook 04: Table 1 without GloVe (no file) and the end-to-end run; 06 reuses 04's two runs
    assert len(by_nb["04_training"]) == 7 and by_nb["06_visualization"] == []
    assert len({str(r.run_dir) for r in plan.runs}) == len(plan.runs)
    assert all(r.flops > 0 and not r.done for r in plan.runs)
    e2e = next(r for r in plan.runs if "end-to-end" in r.name)
    head = next(r for r in plan.runs if "ERM" in r.name)
    assert e2e.flops > head.flops  # the backbone trains there
    assert plan.decoded_disk > 0 and plan.features_disk > 0  # images for the end-to-end run, features for the rest
    plan.rate = 1e9
    assert plan.hours(2) < plan.hours(1)
    assert any("04_training: 7 distinct runs, 7 to train" in line for line in plan.lines())

    path = plans.write_commands(plan, tmp_path / "runs.sh")
    lines = [line for line in path.read_text().splitlines() if line.startswith("cprfl train")]
    assert len(lines) == len(plan.todo)
    line = next(line for line in lines if str(head.run_dir) in line)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", line.split("  #")[0]], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert studies.finished(head.config, head.run_dir) is not None  # the notebooks read it instead of training


def test_workers_auto_is_one_per_gpu():
    n, gpus = studies.pool_size("auto")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert n == max(1, count) and len(gpus) == count
    assert studies.pool_size(3)[0] == 3
    with pytest.raises(Exception, match="workers"):
        studies.pool_size(0)


def test_make_and_the_command_share_one_cache_root(tmp_path):
    """make's CPRFL_CACHE is where cprfl_lib.paths puts the cache by itself; make sets no hub cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("CPRFL_CACHE", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path)
    done = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "show-cache: ; @echo $(CPRFL_CACHE)",
                           "show-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    code = "from cprfl_lib.paths import cache_root; print(cache_root())"
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == ours.stdout.strip() == str(tmp_path / ".cache" / "cprfl")
    make = (ROOT / "Makefile").read_text()
    exported = [line for line in make.splitlines() if line.startswith("export ")]
    assert not [line for line in exported if "TORCH_HOME" in line or "HF_HOME" in line]


@pytest.mark.parametrize("overrides", [{}, {"model.freeze_backbone": False}, {"model.head": "linear"},
                                       {"model.freeze_backbone": False, "model.no_feature_grad": True},
                                       {"model.freeze_backbone": False, "model.cut_p1": True, "model.cut_p2": True}])
def test_the_work_counted_in_parts_is_the_whole_models(overrides):
    """architecture_cost counts a pass as the backbone's and the head's (the backbone's count shared between
    heads): the same FLOPs as the whole model's pass counted at once."""
    from torch.utils.flop_counter import FlopCounterMode

    from cprfl_lib.train import factory
    from cprfl_lib.train.recipes import load_recipe

    config = load_recipe("tiny", {"data.image_size": 64, **overrides})
    cost = plans.architecture_cost(config, 20)
    with torch.device("meta"):
        model = factory.model_from(plans._counting_config(config, 20), [f"class {i}" for i in range(20)])

    def whole(batch: int, train: bool) -> float:
        x = torch.zeros(batch, 3, 64, 64, dtype=torch.uint8, device="meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.set_grad_enabled(train):
            out = model.train(train)(x).float().sum()
            if train:
                out.backward()
        return float(counter.get_total_flops())

    backbone = cost["backbone_image"]
    assert (backbone > 0) == config["model"]["freeze_backbone"]
    assert cost["train_image"] == whole(2, True) - whole(1, True) - backbone
    assert cost["train_step"] == 2 * whole(1, True) - whole(2, True)
    assert cost["eval_image"] == whole(2, False) - whole(1, False) - backbone
    assert cost["eval_step"] == 2 * whole(1, False) - whole(2, False)
