"""tools/design.py: the design study decides on the validation split alone and writes down what it chose."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

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
    assert choices["provenance"]["stages_run"] == ["embedding"] and choices["provenance"]["limit"] == 40
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
    score = pd.Series({("lr=0.001", "epochs=20"): 30.0, ("lr=0.001", "epochs=10"): 29.7,
                       ("lr=0.002", "epochs=5"): 29.0})
    pick = design._cheapest(score, lambda i: int(i[1].split("=")[1]))
    assert pick == ("lr=0.001", "epochs=10")  # 5 epochs is 1.0 below the best, beyond TIE_MAP
    assert design._cheapest(pd.Series({"d=32": 20.0, "d=64": 20.6, "d=128": 21.0}),
                            lambda i: int(i.split("=")[1])) == "d=64"


def test_scene_candidates_scale_the_spec(monkeypatch) -> None:
    assert design.scene_overrides("voc", 1.0) == {}
    o = design.scene_overrides("coco", 0.8)["data.synthetic_scene"]
    from cprfl_lib.data.synthetic import get_spec

    base = get_spec("synth-coco-lt").scene
    assert o["object_median"] == pytest.approx(base.object_median * 0.8, abs=1e-4)
    assert o["object_range"] == [pytest.approx(base.object_range[0] * 0.8, abs=1e-4),
                                 pytest.approx(base.object_range[1] * 0.8, abs=1e-4)]
