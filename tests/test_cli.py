"""The ``cprfl`` console script, run as a user runs it: the recipes, exit codes, one-line errors without a
traceback, what train and predict print. (What a run writes: test_engine.py, on the session's smoke run, which
`cprfl train` trains; the faults of every command: test_faults.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import cli_error, cprfl, run_cli

RECIPES = ("paper-voc", "paper-coco", "code-voc", "code-coco", "cpu-voc", "cpu-coco", "tiny")


# --- recipes (no torch import: fast) -----------------------------------------------------------

def test_recipes_lists_every_recipe(cli_env, cli_cwd):
    from cprfl_lib.train.recipes import available_recipes

    done = cprfl(cli_env, cli_cwd, "recipes")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    assert set(RECIPES) <= set(listed), f"missing: {sorted(set(RECIPES) - set(listed))}"
    assert listed == available_recipes()


def test_recipes_prints_the_resolved_recipe_with_overrides(cli_env, cli_cwd):
    done = cprfl(cli_env, cli_cwd, "recipes", "tiny", "optim.lr=0.5")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config["optim"]["lr"] == 0.5
    assert config["recipe"] == "tiny" and config["model"]["dim"] == 32  # the tiny recipe, not the defaults


@pytest.mark.parametrize("args, needles", [(["recipes", "tiny", "optim.lrr=1"], ["lrr"]),
                                           (["recipes", "tiny", "optim.lr=abc"], ["optim.lr", "abc"]),
                                           (["train", "--recipe", "nope"], ["nope", *RECIPES])])
def test_a_bad_recipe_key_value_or_name_is_one_line(cli_env, cli_cwd, args, needles):
    cli_error(cprfl(cli_env, cli_cwd, *args), *needles, only=True)


@pytest.mark.slow
def test_train_real_benchmark_offline_is_a_one_line_error(cli_env, cli_cwd, tmp_path):
    """Offline the VOC-LT split lists cannot be fetched; online the images are missing. Either way: one line."""
    done = cprfl(cli_env, cli_cwd, "train", "--recipe", "paper-voc", "--data-root", "/nonexistent",
                 "--output-dir", tmp_path / "run")
    line = cli_error(done, only=True)
    assert "--list-dir" in line or "/nonexistent" in line, line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_predict_prints_class_names_with_scores(smoke_run, cli_env, capsys):
    run, _ = smoke_run
    with np.load(run / "predictions.npz") as pred:
        class_names = set(pred["class_names"].tolist())
    image = sorted(Path(cli_env["CPRFL_CACHE"]).rglob("*.jpg"))[0]
    code, out, err = run_cli(capsys, "predict", run / "weights.pt", image, "--top-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(image) and len(lines) == 4, out
    scores = [(float(line.split()[0]), line.split()[1]) for line in lines[1:]]
    assert all(0.0 <= p <= 1.0 for p, _ in scores)
    assert [p for p, _ in scores] == sorted((p for p, _ in scores), reverse=True)
    assert {name for _, name in scores} <= class_names and len({name for _, name in scores}) == 3


def test_overrides_on_both_sides_of_an_option_are_one_command(monkeypatch):
    from cprfl_lib import cli

    seen = []
    monkeypatch.setattr(cli, "_cmd_train", seen.append)
    assert cli.main(["train", "optim.lr=0.5", "--recipe", "tiny", "train.seed=3", "--resume"]) == 0
    assert seen[0].recipe == "tiny" and seen[0].overrides == ["optim.lr=0.5", "train.seed=3"] and seen[0].resume


@pytest.mark.parametrize("args, needle", [(["predict", "x.pt", "a.jpg", "--top-k", "-1"], "--top-k"),
                                          (["predict", "x.pt", "a.jpg", "--top-k", "two"], "two"),
                                          (["train", "--recipe", "tiny", "--bogus"], "--bogus"),
                                          (["data", "check", "--workers", "-2"], "--workers")])
def test_bad_arguments_are_one_line(capsys, args, needle):
    from cprfl_lib.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("cprfl") and needle in err[0], err


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
    assert cli.main(["train", "--recipe", "tiny", "--output-dir", str(tmp_path / "run"), *overrides]) == 0
    lines = capsys.readouterr().out.splitlines()
    split_lines = [line for line in lines if " split, last epoch: " in line]
    assert [line.split("), ")[1].split(" split")[0] for line in split_lines] == splits
    for line in split_lines:
        assert line.startswith("synth-voc-lt (generated data), ")
        assert ("mAP 41.00" if "validation" in line else "mAP 51.23  head 60.00  medium 50.00  tail 40.00") in line
    assert lines[-2:] == ["12 s", f"outputs in {tmp_path / 'run'}"]
