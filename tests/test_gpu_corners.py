"""What a first GPU run meets, tested on the CPU: checkpoints by time, a resume in another precision, fused Adam,
torch.compile, the pool's GPU ids and loader workers, zero-shot CLIP's device, the plan's fixed cost, the notebook
parameters without papermill, and the multi-process corners with two gloo processes (ranks agreeing on a
non-finite step, one output folder, the figures printed once)."""

from __future__ import annotations

import json
import os
import queue
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import one_line_error, smoke_config, spy, train_killed_after_one_epoch
from test_distributed import free_port, torchrun_env
from test_engine import read_summary

from cprfl_lib.train import engine
from cprfl_lib.train.checkpoint import load_checkpoint, save_checkpoint
from cprfl_lib.train.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("cprfl_cache")


def smoke(**overrides) -> dict:
    return smoke_config(**{"train.max_steps_per_epoch": 2, **overrides})


# --- checkpoints by time ---------------------------------------------------------------------------

def test_a_short_run_writes_no_mid_run_checkpoint(tmp_path, monkeypatch):
    assert load_recipe("paper-voc")["train"]["checkpoint_minutes"] == 10  # the default: minutes, not epochs
    saved = spy(monkeypatch, engine, "save_checkpoint", lambda path, **payload: payload["epoch"])
    config = smoke(**{"optim.epochs": 3, "train.checkpoint_minutes": 10})
    engine.train(config, tmp_path / "a", progress=False)
    assert saved == []
    train_killed_after_one_epoch(config, tmp_path / "b")  # nothing to resume, nothing half-written
    assert not (tmp_path / "b" / "checkpoint.pt").exists() and saved == []


def test_a_long_run_checkpoints_once_the_minutes_have_passed(tmp_path, monkeypatch):
    """Each epoch "takes" 6 minutes: with checkpoint_minutes 10 a checkpoint after epochs 2 and 4 (not after the
    last, which writes the final weights instead); with 0, one after every epoch but the last."""
    epochs = spy(monkeypatch, engine, "train_one_epoch")
    monkeypatch.setattr(engine, "time", SimpleNamespace(monotonic=lambda: 6 * 60.0 * len(epochs),
                                                        perf_counter=time.perf_counter, time=time.time))
    saved = spy(monkeypatch, engine, "save_checkpoint", lambda path, **payload: payload["epoch"])
    engine.train(smoke(**{"optim.epochs": 5, "train.checkpoint_minutes": 10}), tmp_path / "a", progress=False)
    assert saved == [2, 4]
    saved.clear()
    engine.train(smoke(**{"optim.epochs": 5, "train.checkpoint_minutes": 0}), tmp_path / "b", progress=False)
    assert saved == [1, 2, 3, 4]


@pytest.mark.parametrize("key, value, words", [
    ("train.checkpoint_minutes", -1, ["configuration key", "a finite number >= 0"]),
    ("optim.fused", "yes", ["configuration key", "one of ['auto', True, False]"]),
    ("train.compile", "tensorrt", ["configuration key", "one of [False, True, 'inductor', 'aot_eager', 'eager']"]),
    ("train.compile", True, ["train.compile=True compiles the backbone where it trains"]),  # smoke: cached features
])
def test_the_new_keys_are_validated(key, value, words):
    one_line_error(lambda: smoke(**{key: value}), key, *words)


# --- a resume in another precision ------------------------------------------------------------------

def test_a_resume_in_another_precision_says_so_in_one_line(tmp_path, capsys):
    """(Resumed in the precision it started in, the run says nothing of it: test_engine.py::
    test_a_resumed_run_equals_an_uninterrupted_one.)"""
    out = tmp_path / "run"
    config = smoke(**{"optim.epochs": 2})
    train_killed_after_one_epoch(config, out)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["precision"] == "float32 on cpu"
    ckpt["precision"] = "bfloat16 autocast on cuda"  # as if started there (a CPU-started run resumed on a GPU: the mirror)
    save_checkpoint(out / "checkpoint.pt", **{k: v for k, v in ckpt.items() if k != "format"})
    capsys.readouterr()
    engine.train(config, out, resume=True, progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "precision" in line]
    assert lines == [f"resuming {out}: epochs 1-1 trained in bfloat16 autocast on cuda, the rest trains in float32 on "
                     "cpu; the result is not that of a run in one precision"]


# --- speed levers: the same numbers, faster ---------------------------------------------------------

def test_fused_adam_takes_the_steps_of_plain_adam():
    from cprfl_lib.train.optim import build_optimizer, fused_for

    cfg = smoke()["optim"]
    assert fused_for(cfg, "cuda") and not fused_for(cfg, "cpu")  # auto: on CUDA only
    assert fused_for({**cfg, "fused": True}, "cpu") and not fused_for({**cfg, "fused": False}, "cuda")
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
        opt = build_optimizer(model, {**cfg, "fused": fused, "weight_decay": 0.01})
        assert opt.defaults.get("fused") is (True if fused else None)
        for step in range(5):
            x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_adam_trains_a_run_as_plain_adam(tmp_path):
    a = engine.train(smoke(**{"optim.fused": False, "train.deterministic": True}), tmp_path / "a", progress=False)
    b = engine.train(smoke(**{"optim.fused": True, "train.deterministic": True}), tmp_path / "b", progress=False)
    assert b["last_epoch"]["model"]["mAP"] == pytest.approx(a["last_epoch"]["model"]["mAP"], abs=1e-3)


def test_a_compiled_backbone_trains_as_the_eager_one(tmp_path):
    """torch.compile of the trainable backbone: the same figures and a state dict without compile's names.
    On this CPU with backend aot_eager (dynamo's graph capture and AOTAutograd, 10 s); inductor, what
    train.compile=true uses on a GPU, needs about 100 s here to generate and build its C++ kernels."""
    from cprfl_lib.train import factory

    over = {"model.freeze_backbone": False, "train.deterministic": True, "model.dropout": 0.0, "optim.epochs": 1}
    eager = engine.train(smoke(**over), tmp_path / "eager", progress=False)
    compiled = engine.train(smoke(**over, **{"train.compile": "aot_eager"}), tmp_path / "compiled", progress=False)
    for key in ("mAP", "head", "tail"):
        assert compiled["last_epoch"]["model"][key] == pytest.approx(eager["last_epoch"]["model"][key], abs=1e-4,
                                                                     nan_ok=True)
    weights = load_checkpoint(tmp_path / "compiled" / "weights.pt")
    assert not [k for k in weights["model"] if "_orig_mod" in k]
    model = factory.model_from(smoke(**over), [f"c{i}" for i in range(20)])
    model.load_state_dict(weights["model"])  # an uncompiled model reads it as it is


# --- the studies pool: GPU ids and loader workers ---------------------------------------------------

def test_each_pool_process_takes_its_own_gpu_from_the_queue(monkeypatch):
    from cprfl_lib import cpus
    from cprfl_repro import studies

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv(cpus.CONCURRENT_RUNS_ENV, "1")  # so that what _init_worker sets is undone after the test
    ids = queue.Queue()
    for gpu in (0, 1, 0, 1):  # 4 pool processes on 2 GPUs
        ids.put(gpu)
    for _ in range(4):
        studies._init_worker(ids, None, 4)
    assert chosen == [0, 1, 0, 1] and ids.empty()
    assert os.environ[cpus.CONCURRENT_RUNS_ENV] == "4"
    source = (ROOT / "cprfl_repro" / "studies.py").read_text()
    for private in ("identity", "processes", "pool"):  # no private attribute of multiprocessing or the executor
        assert f"._{private}" not in source, private


def test_loader_workers_are_shared_by_the_runs_side_by_side(monkeypatch):
    from cprfl_lib import cpus
    from cprfl_lib.train import loaders
    from cprfl_lib.train.distributed import Dist

    monkeypatch.setattr(cpus, "usable_cpus", lambda at_most=None: 16)
    cuda = torch.device("cuda")
    monkeypatch.delenv(cpus.CONCURRENT_RUNS_ENV, raising=False)
    assert loaders.worker_count("auto", cuda, Dist(), False) == 8  # one run: min(8, 16 - 1)
    monkeypatch.setenv(cpus.CONCURRENT_RUNS_ENV, "8")  # eight pool workers on eight GPUs
    assert loaders.worker_count("auto", cuda, Dist(), False) == 1  # 16 // 8 - 1 (at least 1)
    monkeypatch.setenv(cpus.CONCURRENT_RUNS_ENV, "2")
    assert loaders.worker_count("auto", cuda, Dist(), False) == 7
    assert loaders.worker_count(3, cuda, Dist(), False) == 3  # a number in the recipe stays as it is
    # (a count that is not a number: test_cpus.py::test_usable_cpus_are_capped_and_shared)


# --- zero-shot CLIP on the model's device -----------------------------------------------------------

def test_zero_shot_clip_encodes_its_token_ids_on_the_models_device(tmp_path, monkeypatch):
    from cprfl_lib import zero_shot as zs
    from cprfl_lib.semantics.clip import load_clip

    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    clip = load_clip("clip-tiny", None, seed=0, device="cpu").to("meta")  # a device the ids do not start on
    seen = spy(monkeypatch, clip, "encode_text", lambda tokens, **kwargs: tokens.device)
    model = zs.ZeroShotCLIP(clip, "clip-tiny", ["cat", "dog"])
    assert seen == [torch.device("meta")] and model.text_features.device.type == "meta"


# --- the plan: a fixed cost per run, the notebooks' parameters without papermill --------------------

def test_the_plan_adds_a_fixed_cost_per_run():
    from cprfl_repro.plan import Plan, PlannedRun

    runs = [PlannedRun("04", f"r{i}", {"optim": {"epochs": 1}}, Path(f"/r{i}"), False, 10, 10, 1, flops=3.6e15)
            for i in range(4)]
    plan = Plan(runs, 0, 0, rate=1e12)
    assert plan.hours(1) == pytest.approx(4.0)
    plan.fixed_s, plan.fixed_source = 90.0, "measured"
    assert plan.hours(1) == pytest.approx(4.0 + 4 * 90 / 3600)
    assert plan.hours(4) == pytest.approx(1.0 + 90 / 3600)
    assert any("plus 90 s fixed per run, measured" in line for line in plan.lines())


def test_notebook_parameters_are_read_as_papermill_reads_them(tmp_path):
    import ast

    import papermill

    from cprfl_repro.plan import notebook_defaults

    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        expected = {}
        for name, spec in papermill.inspect_notebook(str(nb)).items():
            try:
                expected[name] = ast.literal_eval(spec["default"])
            except (ValueError, SyntaxError):
                expected[name] = spec["default"]
        assert notebook_defaults(nb) == expected, nb.name
    bad = tmp_path / "bad.ipynb"
    bad.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]},
                                          "source": ["x = (\n"]}]}))
    one_line_error(lambda: notebook_defaults(bad), "bad.ipynb: its parameters cell is not valid Python")
    bad.write_text("{not json")
    one_line_error(lambda: notebook_defaults(bad), "bad.ipynb: not a readable notebook")


# --- two gloo processes -----------------------------------------------------------------------------

def _run_two(worker, *args, seconds: float = 240) -> None:
    """``worker(rank, 2, port, *args)`` in two spawned processes; a hang (what the corners used to cause) fails the test
    instead of blocking it."""
    context = torch.multiprocessing.spawn(worker, args=(2, free_port(), *args), nprocs=2, join=False)
    deadline = time.monotonic() + seconds
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the two processes did not finish in {seconds:.0f} s (a rank waits for the other)")


def _nonfinite_worker(rank: int, world: int, port: int, config: dict, out: str, results: str) -> None:
    """Rank 1's loss is infinite at its second batch only."""
    from cprfl_lib.train import engine as eng
    from cprfl_lib.train import factory

    real = factory.loss_from

    def loss_from(config, benchmark):
        inner, calls = real(config, benchmark), []

        class Poisoned(torch.nn.Module):
            def forward(self, logits, targets):
                calls.append(1)
                loss = inner(logits, targets)
                return loss * float("inf") if rank == 1 and len(calls) == 2 else loss

        return Poisoned()

    factory.loss_from = loss_from
    with torchrun_env(rank, world, port):
        metrics = eng.train(config, out, progress=False)
        Path(results, f"rank{rank}.json").write_text(json.dumps(metrics["last_epoch"]["model"]))


@pytest.mark.slow
def test_the_ranks_agree_to_skip_a_non_finite_step(tmp_path):
    """float16 with a gradient scaler: rank 1 alone sees an infinite loss; both ranks skip that step (before, rank 1
    skipped its backward and rank 0 waited for it in DDP's all-reduce until the 3-hour timeout)."""
    config = smoke(**{"train.amp": True, "train.amp_dtype": "float16", "train.max_steps_per_epoch": 4,
                      "optim.epochs": 1, "optim.batch_size": 16, "model.dropout": 0.0})
    results = tmp_path / "results"
    results.mkdir()
    _run_two(_nonfinite_worker, config, str(tmp_path / "ddp"), str(results))
    r0, r1 = (json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["mAP"] == pytest.approx(r1["mAP"], abs=1e-9)  # the same model on both ranks
    first = read_summary(tmp_path / "ddp" / "summary.csv")[0]
    assert int(first["steps"]) == 3  # 4 batches, the one non-finite somewhere skipped everywhere


def _cli_worker(rank: int, world: int, port: int, cwd: str, overrides: list[str]) -> None:
    """`cprfl train` without --output-dir, as torchrun starts it; rank 1's clock would name another folder."""
    import contextlib

    from cprfl_lib import cli

    os.chdir(cwd)
    if rank == 1:
        time.strftime = lambda fmt, *a: "19990101-000000"  # noqa: ARG005 - another second on another rank
    with torchrun_env(rank, world, port), open(f"stdout-{rank}.txt", "w") as fh, contextlib.redirect_stdout(fh):
        code = cli.main(["train", "--recipe", "tiny", *overrides])
    Path(f"exit-{rank}.txt").write_text(str(code))


@pytest.mark.slow
def test_all_ranks_write_one_folder_and_rank0_prints_the_figures(tmp_path):
    overrides = ["data.synthetic_limit=64", "train.device=cpu", "train.max_steps_per_epoch=2", "train.num_threads=1",
                 "optim.epochs=1", "optim.batch_size=16"]
    _run_two(_cli_worker, str(tmp_path), overrides)
    assert (tmp_path / "exit-0.txt").read_text() == (tmp_path / "exit-1.txt").read_text() == "0"
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("tiny-") and "19990101" not in folders[0].name
    assert (folders[0] / "metrics.json").is_file()
    rank0, rank1 = ((tmp_path / f"stdout-{r}.txt").read_text() for r in (0, 1))
    assert "test split, last epoch: mAP" in rank0 and f"outputs in {folders[0]}" in rank0
    assert rank1 == ""


def test_the_gpu_checks_speed_levers_run_on_any_device():
    """What tools/gpu_check.sh prints on a GPU, here on the CPU with the tiniest model (compile: aot_eager)."""
    from tools.gpu_check import speed_levers

    lines = []
    config = smoke(**{"model.freeze_backbone": False, "train.deterministic": True})
    times = speed_levers(config, 20, torch.device("cpu"), lines.append, backend="aot_eager")
    assert set(times) == {"neither", "fused Adam", "torch.compile"} and all(t > 0 for t in times.values())
    assert [line.split(":")[0] for line in lines] == ["  speed lever fused Adam", "  speed lever torch.compile"]
    assert "recipe option optim.fused" in lines[0] and "recipe option train.compile" in lines[1]
