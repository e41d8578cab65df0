"""tools/design.py: the design study decides on the validation split alone and writes down what it chose."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import fake_training

from tools import design


def test_the_embedding_stage_runs_on_validation_only(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CPRFL_CACHE", str(cache))
    out = tmp_path / "design"
    design.main(["--stages", "embedding", "--seeds", "0", "--limit", "40", "--image-size", "32", "--workers", "1",
                 "--out", str(out)])
    choices = json.loads((out / "choices.json").read_text())
    assert choices["embedding"]["chosen"] in design.EMBEDDINGS
    assert choices["embedding"]["overrides"] == design.EMBEDDINGS[choices["embedding"]["chosen"]]
    assert list(choices["provenance"]) == ["embedding"] and choices["provenance"]["embedding"]["limit"] == 40
    table = pd.read_csv(out / "tables" / "embedding.csv", comment="#")
    assert set(table["family"]) == {"voc", "coco"} and set(table["variant"]) == set(design.EMBEDDINGS)
    # the rule: the best mean val mAP over both benchmarks
    score = {v: float(s) for v, s in choices["embedding"]["score"].items()}
    assert choices["embedding"]["chosen"] == max(score, key=score.get)
    cos = table.set_index(["family", "variant"])["initial prompt cosine"]
    # unit-norm MiniLM rows give prompts dominated by the PI network's shared output bias; only a larger norm
    # pulls them apart
    assert cos[("voc", "raw")] > 0.98 and cos[("voc", "centred, norm √m")] < 0.9
    # no test split was drawn, no run was scored on one
    folders = list((cache / "synthetic").iterdir())
    assert folders and all(f.name.endswith("-notest") and not (f / "test.txt").exists() for f in folders)
    metrics = list((cache / "runs" / "design-check").rglob("metrics.json"))
    assert len(metrics) == 6
    for m in metrics:
        m = json.loads(m.read_text())
        assert "last_epoch" not in m and "best_on_test" not in m and "val_last_epoch" in m


def test_the_cheapest_choice_within_the_tie_margin() -> None:
    score = pd.Series({(0.001, 20): 30.0, (0.001, 10): 29.7, (0.002, 5): 29.0})
    pick = design._cheapest(score, lambda i: i[1])
    assert pick == (0.001, 10)  # 5 epochs is 1.0 below the best, beyond TIE_MAP
    assert design._cheapest(pd.Series({32: 20.0, 64: 20.6, 128: 21.0}), lambda i: i) == 64


def test_the_schedule_stage_keeps_each_setting_as_a_value(tmp_path: Path, monkeypatch) -> None:
    """lr, epochs and d come from each run's configuration (the one expansion), never from its row label."""

    def score(config):  # val mAP: best at lr 1e-3, 10 epochs, d = 64
        o, d = config["optim"], config["model"]["dim"] if config["model"]["head"] == "cprfl" else 64
        return 30 - abs(o["lr"] - 1e-3) * 1000 - abs(o["epochs"] - 10) / 5 - abs(d - 64) / 16

    fake_training(monkeypatch, score, split="val")
    monkeypatch.setattr(design, "initial_prompt_cosines", lambda study: {})
    monkeypatch.setattr(design, "RECIPES", {"voc": "tiny"})
    args = argparse.Namespace(seeds=(0,), workers=1, base={}, out=tmp_path / "design")
    picks = design.stage_schedule(args, tmp_path / "runs", {})["schedule"]["voc"]
    assert (picks["best"]["lr"], picks["best"]["epochs"], picks["best"]["dim"]) == (1e-3, 10, 64)
    assert picks["within_budget"]["epochs"] <= design.BUDGET["epochs"]
    table = pd.read_csv(tmp_path / "design" / "tables" / "schedule.csv", comment="#")
    assert set(table["lr"]) == set(design.LRS) and set(table["epochs"]) == set(design.EPOCHS)
    linear = table[table["head"] == "linear ASL"]
    assert linear["d"].isna().all() and set(table[table["head"] == "CPRFL"]["d"]) == {32, 64, 128}


def test_scene_candidates_scale_the_base() -> None:
    o = design.scene_overrides("coco", 0.8)["data.synthetic_scene"]
    base = design.BASE_SCENES["coco"]
    assert o["object_median"] == pytest.approx(base["object_median"] * 0.8, abs=1e-4)
    assert o["object_range"] == pytest.approx([r * 0.8 for r in base["object_range"]], abs=1e-4)


def test_the_generator_and_the_cpu_recipes_hold_what_the_design_study_chose() -> None:
    from cprfl_lib.data.synthetic import scene_params
    from cprfl_lib.train.recipes import load_recipe

    choices = json.loads((Path(__file__).resolve().parents[1] / "results" / "design" / "choices.json").read_text())
    for family, chosen in choices["scene"]["overrides"].items():
        spec = scene_params(f"synth-{family}-lt")
        assert spec.object_median == pytest.approx(chosen["object_median"])
        assert list(spec.object_range) == pytest.approx(chosen["object_range"])
    for family in ("voc", "coco"):
        config = load_recipe(f"cpu-{family}")
        for key, value in choices["embedding"]["overrides"].items():
            section, name = key.split(".")
            assert config[section][name] == value, key
        pick = choices["schedule"][family]["within_budget"]
        assert (config["optim"]["lr"], config["optim"]["epochs"], config["model"]["dim"]) == \
            (pick["lr"], pick["epochs"], pick["dim"])
        assert pick["epochs"] <= design.BUDGET["epochs"] and pick["dim"] <= design.BUDGET["dim"]
