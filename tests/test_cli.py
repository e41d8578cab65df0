"""The ``cprfl`` console script, run as a user runs it: exit codes, one-line errors without a
traceback, and a full smoke run (train, evaluate, predict, resume) on generated data."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

SCRIPT = Path(sys.executable).parent / "cprfl"
RECIPES = ("paper-voc", "paper-coco", "code-voc", "code-coco", "quick-voc", "quick-coco", "smoke")


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """Offline, with a fresh cache shared by the whole session (the smoke data is generated once)."""
    cache = tmp_path_factory.mktemp("cprfl-cache")
    env = dict(os.environ, HF_HUB_OFFLINE="1", CPRFL_CACHE=str(cache))
    env.setdefault("TORCH_HOME", str(cache / "torch"))
    env.setdefault("MPLCONFIGDIR", str(cache / "matplotlib"))
    return env


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """The working directory of every call: nothing may land in the repository or in the caller's cwd."""
    return tmp_path_factory.mktemp("cwd")


def cprfl(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    assert SCRIPT.is_file(), f"console script {SCRIPT} missing: run `make env`"
    return subprocess.run([str(SCRIPT), *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, no traceback, exactly one line on stderr that names every needle."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, f"exit code {done.returncode}; stderr: {done.stderr[-2000:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{done.stderr[-2000:]}"
    assert lines[0].startswith("cprfl: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


# --- recipes (no torch import: fast) -----------------------------------------------------------

def test_recipes_lists_every_recipe(cli_env, workdir):
    from cprfl_lib.train.recipes import available_recipes

    done = cprfl(cli_env, workdir, "recipes")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    assert set(RECIPES) <= set(listed), f"missing: {sorted(set(RECIPES) - set(listed))}"
    assert listed == available_recipes()


def test_recipes_prints_the_resolved_recipe_with_overrides(cli_env, workdir):
    done = cprfl(cli_env, workdir, "recipes", "smoke", "optim.lr=0.5")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config["optim"]["lr"] == 0.5
    assert config["recipe"] == "smoke" and config["model"]["dim"] == 32  # the smoke recipe, not the defaults


def test_recipes_rejects_an_unknown_key_by_name(cli_env, workdir):
    assert_one_line_error(cprfl(cli_env, workdir, "recipes", "smoke", "optim.lrr=1"), "lrr")


def test_recipes_rejects_a_value_of_the_wrong_type(cli_env, workdir):
    assert_one_line_error(cprfl(cli_env, workdir, "recipes", "smoke", "optim.lr=abc"), "optim.lr", "abc")


def test_train_unknown_recipe_names_it_and_lists_the_recipes(cli_env, workdir):
    line = assert_one_line_error(cprfl(cli_env, workdir, "train", "--recipe", "nope"), "nope")
    assert all(name in line for name in RECIPES), line


# --- missing data ----------------------------------------------------------------------------

@pytest.mark.slow
def test_train_real_benchmark_offline_is_a_one_line_error(cli_env, workdir, tmp_path):
    """Offline the VOC-LT split lists cannot be fetched; online the images are missing. Either way: one line."""
    done = cprfl(cli_env, workdir, "train", "--recipe", "paper-voc", "--data-root", "/nonexistent",
                 "--output-dir", tmp_path / "run")
    line = assert_one_line_error(done)
    assert "--list-dir" in line or "/nonexistent" in line, line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.shared_data
def test_data_check_names_a_missing_data_root(cli_env, workdir, shared_data):
    done = cprfl(cli_env, workdir, "data", "check", "--dataset", "voc-lt", "--list-dir", shared_data / "voc_lt",
                 "--data-root", "/nonexistent")
    assert_one_line_error(done, "/nonexistent")


# --- a smoke run and what uses its checkpoint ------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(cli_env, workdir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("smoke") / "run"
    return run, cprfl(cli_env, workdir, "train", "--recipe", "smoke", "--output-dir", run)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_train_smoke_writes_every_output(smoke_run):
    run, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "generated data" in done.stdout
    for name in ("config.yaml", "summary.csv", "weights.pt", "metrics.json", "predictions.npz"):
        assert (run / name).is_file(), f"{name} missing from {run}"
    assert not (run / "checkpoint.pt").exists()  # no optimizer state once the run has finished
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["recipe"] == "smoke" and config["data"]["dataset"] == "synth-voc-lt"
    rows = (run / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 1 + config["optim"]["epochs"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["synthetic"] is True and 0.0 <= metrics["last_epoch"]["model"]["mAP"] <= 100.0
    with np.load(run / "predictions.npz") as pred:
        assert pred["model"].shape == pred["targets"].shape and pred["targets"].shape[1] == 20


@pytest.mark.slow
def test_evaluate_reproduces_the_run_map(cli_env, workdir, smoke_run):
    run, _ = smoke_run
    done = cprfl(cli_env, workdir, "evaluate", run)  # the run folder: its weights.pt
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    trained = json.loads((run / "metrics.json").read_text())["last_epoch"]["model"]
    assert result["dataset"] == "synth-voc-lt" and result["synthetic"] is True
    # The same weights on the same test images' features, cached in training and read from that cache here.
    assert result["mAP"] == trained["mAP"]


@pytest.mark.slow
def test_predict_prints_class_names_with_scores(cli_env, workdir, smoke_run):
    run, _ = smoke_run
    images = sorted(Path(cli_env["CPRFL_CACHE"]).rglob("*.jpg"))
    assert images, "the smoke run generated no images in the cache"
    with np.load(run / "predictions.npz") as pred:
        class_names = set(pred["class_names"].tolist())
    done = cprfl(cli_env, workdir, "predict", run / "weights.pt", images[0], "--top-k", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == str(images[0]) and len(lines) == 4, done.stdout
    scores = [(float(line.split()[0]), line.split()[1]) for line in lines[1:]]
    assert all(0.0 <= p <= 1.0 for p, _ in scores)
    assert [p for p, _ in scores] == sorted((p for p, _ in scores), reverse=True)
    assert {name for _, name in scores} <= class_names and len({name for _, name in scores}) == 3


@pytest.mark.slow
@pytest.mark.parametrize("kind, command", [("text", "evaluate"), ("truncated", "predict")])
def test_a_file_that_is_not_a_checkpoint_is_a_one_line_error(cli_env, workdir, smoke_run, tmp_path, kind, command):
    run, _ = smoke_run
    bad = tmp_path / "checkpoint.pt"
    if kind == "text":
        bad.write_text("this is not a checkpoint\n")
    else:
        bad.write_bytes((run / "weights.pt").read_bytes()[:4096])
    extra = [sorted(Path(cli_env["CPRFL_CACHE"]).rglob("*.jpg"))[0]] if command == "predict" else []
    assert_one_line_error(cprfl(cli_env, workdir, command, bad, *extra), str(bad))


@pytest.mark.slow
def test_resume_with_another_model_is_refused_and_leaves_the_run_alone(cli_env, workdir, smoke_run):
    run, _ = smoke_run
    before = _digest(run / "weights.pt"), (run / "config.yaml").read_text()
    done = cprfl(cli_env, workdir, "train", "--recipe", "smoke", "--resume", "--output-dir", run, "model.dim=64")
    assert_one_line_error(done, "model.dim", "32", "64", str(run / "weights.pt"))
    assert (_digest(run / "weights.pt"), (run / "config.yaml").read_text()) == before


def test_overrides_on_both_sides_of_an_option_are_one_command(monkeypatch):
    from cprfl_lib import cli

    seen = []
    monkeypatch.setattr(cli, "_cmd_train", seen.append)
    assert cli.main(["train", "optim.lr=0.5", "--recipe", "smoke", "train.seed=3", "--resume"]) == 0
    assert seen[0].recipe == "smoke" and seen[0].overrides == ["optim.lr=0.5", "train.seed=3"] and seen[0].resume


@pytest.mark.parametrize("args, needle", [(["predict", "x.pt", "a.jpg", "--top-k", "-1"], "--top-k"),
                                          (["predict", "x.pt", "a.jpg", "--top-k", "two"], "two"),
                                          (["train", "--recipe", "smoke", "--bogus"], "--bogus"),
                                          (["data", "check", "--workers", "-2"], "--workers")])
def test_bad_arguments_are_one_line(capsys, args, needle):
    from cprfl_lib.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("cprfl") and needle in err[0], err


def test_the_cli_offers_every_known_benchmark():
    from cprfl_lib import cli
    from cprfl_lib.data import benchmarks as splits

    assert cli.BENCHMARKS == splits.known_benchmarks()


def test_embed_names_a_generated_benchmark_without_drawing_it(monkeypatch):
    from cprfl_lib.data import benchmarks as splits
    from cprfl_lib.data import synthetic

    monkeypatch.setattr(synthetic, "generated_folder", lambda *a, **k: pytest.fail("images drawn for class names"))
    assert splits.benchmark_class_names("synth-coco-lt") == synthetic.class_names("synth-coco-lt")


@pytest.mark.parametrize("overrides, splits", [([], ["validation", "test"]), (["data.eval_splits=[val]"], ["validation"]),
                                               (["data.eval_splits=[test]"], ["test"])])
def test_train_prints_one_line_per_evaluated_split(monkeypatch, capsys, tmp_path, overrides, splits):
    from cprfl_lib import cli
    from cprfl_lib.train import engine

    def fake_train(config, out, resume=False, progress=True):
        evaluated = config["data"]["eval_splits"] or ["val", "test"]
        row = {"mAP": 51.234, "head": 60.0, "medium": 50.0, "tail": 40.0}
        return {"dataset": config["data"]["dataset"], "synthetic": True, "wall_s": 12.3,
                **({"val_last_epoch": {"model": {**row, "mAP": 41.0}}} if "val" in evaluated else {}),
                **({"last_epoch": {"model": row}} if "test" in evaluated else {})}

    monkeypatch.setattr(engine, "train", fake_train)
    assert cli.main(["train", "--recipe", "smoke", "--output-dir", str(tmp_path / "run"), *overrides]) == 0
    lines = capsys.readouterr().out.splitlines()
    split_lines = [line for line in lines if " split, last epoch: " in line]
    assert [line.split("), ")[1].split(" split")[0] for line in split_lines] == splits
    for line in split_lines:
        assert line.startswith("synth-voc-lt (generated data), ")
        assert ("mAP 41.00" if "validation" in line else "mAP 51.23  head 60.00  medium 50.00  tail 40.00") in line
    assert lines[-2:] == ["12 s", f"outputs in {tmp_path / 'run'}"]
