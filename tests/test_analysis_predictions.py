"""cprfl_repro/analysis/predictions.py, for notebook 06: the images chosen, the top-k colours, a study's seeds and its
per-group table, the figures of trained runs, the zero-shot column."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import one_line_error
from matplotlib.figure import Figure
from PIL import Image

from cprfl_repro import studies
from cprfl_repro.analysis import predictions
from cprfl_repro.plots import predictions as pp

NAMES = ["cat", "dog", "bus", "car", "sofa"]
GROUPS = np.array(["head", "head", "medium", "tail", "tail"])

pytestmark = pytest.mark.usefixtures("private_cache", "close_figures")


@pytest.fixture
def labelled():
    """6 test images over 5 classes; classes 3 and 4 are tail."""
    targets = np.array([[1, 0, 0, 0, 0],   # 0: one label
                        [1, 1, 0, 0, 0],   # 1: two labels, no tail
                        [1, 0, 0, 1, 0],   # 2: tail 3
                        [0, 1, 0, 1, 0],   # 3: tail 3 again
                        [0, 0, 1, 0, 1],   # 4: tail 4
                        [0, 0, 0, 0, 1]], dtype=np.uint8)
    return targets, GROUPS


def test_choose_images(labelled) -> None:
    targets, groups = labelled
    assert predictions.choose_images(targets, groups, 2) == [2, 4]  # each adds a new tail class
    assert predictions.choose_images(targets, groups, 4) == [2, 4, 3, 1]  # then tail, then >= 2 labels
    assert predictions.choose_images(targets, groups, 6) == [2, 4, 3, 1, 0, 5]
    assert predictions.choose_images(targets, groups, 2, image_ids=[5, 0]) == [5, 0]
    one_line_error(lambda: predictions.choose_images(targets, groups, 2, image_ids=[1, 6]),
                   "test indices in 0..5, got [1, 6]")
    one_line_error(lambda: predictions.choose_images(targets, groups, 0), "n_images must be at least 1")


def test_top_k_colours(labelled) -> None:
    targets, groups = labelled
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2])
    assert predictions.top_k(scores, targets[2], groups, NAMES) == [("cat", 0.9, "head"), ("bus", 0.8, "incorrect"),
                                                           ("car", 0.7, "tail")]


def _fake_run(folder, logits, targets, metrics):
    folder.mkdir(parents=True)
    np.savez(folder / "predictions.npz", model=logits, targets=targets, class_names=np.array(NAMES),
             train_counts=np.array([200, 150, 50, 5, 2]))
    (folder / "metrics.json").write_text(json.dumps({"last_epoch": {"model": metrics}}))


def test_predictions_seeds_and_group_table(tmp_path, labelled) -> None:
    targets, _ = labelled
    rng = np.random.default_rng(0)
    m0 = {"mAP": 50.0, "head": 60.0, "medium": 40.0, "tail": 30.0}
    m1 = {"mAP": 54.0, "head": 62.0, "medium": 44.0, "tail": 38.0}
    variant = {"model.head": "linear", "loss.name": "bce"}
    configs = {seed: studies.run_config("tiny", variant, seed) for seed in range(4)}
    folders = {seed: studies.run_dir_for(c, tmp_path) for seed, c in configs.items()}
    folders[2] = studies.run_dir_for(studies.run_config("tiny", {**variant, "optim.lr": 0.5}, 2), tmp_path)
    for seed, m in ((0, m0), (1, m1), (2, m1), (3, m1)):
        _fake_run(folders[seed], rng.normal(size=targets.shape).astype(np.float32), targets, m)
    for seed in (0, 1, 2):  # seed 2: another configuration; seed 3: no stamp at all
        (folders[seed] / "run.json").write_text(json.dumps(studies.stamp(configs[seed])))
    study = studies.Study("tiny", {"ERM": variant})
    assert studies.finished_seeds(tmp_path, study, "ERM") == [folders[0], folders[1]]
    runs = pd.DataFrame([{"variant": "ERM", "status": "ok", "run_dir": str(folders[3])}])
    found = studies.seeds_of(runs, tmp_path, study)
    assert found == {"ERM": [folders[0], folders[1], folders[3]]}

    paper = {"ERM": ("ERM", {"mAP": 70.0, "head": 69.0, "medium": 80.0, "tail": 65.0})}
    table = predictions.group_map_table({"ERM": found["ERM"][:2]}, paper, "synth", "VOC-LT")
    assert table["source"].tolist() == ["ours, synth", "paper (ERM), VOC-LT"]
    assert table.loc[0, "tail"] == pytest.approx(34.0) and table.loc[0, "tail std"] == pytest.approx(np.sqrt(32))
    assert predictions.group_map_metrics(table)["ERM"] == {"ours": {"mAP": 52.0, "head": 61.0, "medium": 42.0, "tail": 34.0,
                                                           "seeds": 2},
                                                  "paper": {"mAP": 70.0, "head": 69.0, "medium": 80.0, "tail": 65.0}}
    assert isinstance(pp.group_map_vs_paper(table, title="x"), Figure)

    run = predictions.load_predictions(folders[0], "ERM")
    assert run.probabilities.shape == targets.shape and ((run.probabilities > 0) & (run.probabilities < 1)).all()
    assert list(run.groups) == ["head", "head", "medium", "tail", "tail"]
    bench = SimpleNamespace(name="b", class_names=NAMES, test=SimpleNamespace(targets=targets[::-1]))
    one_line_error(lambda: predictions.load_predictions(folders[0], "ERM", bench), "other classes or test images than b")
    one_line_error(lambda: predictions.load_predictions(tmp_path, "ERM"), "run the study first")
    one_line_error(lambda: predictions.study_runs(pd.DataFrame([{"variant": "X", "status": "not available: no weights",
                                                                 "run_dir": None}])), "runs not available")
    fig = pp.per_class_ap_vs_count([run, predictions.load_predictions(folders[1], "CPRFL")], title="t")
    assert isinstance(fig, Figure)


def test_figure4_and_attention_figures(labelled) -> None:
    targets, groups = labelled
    images = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(2)]
    scores = np.random.default_rng(0).random((2, 5))
    fig = pp.figure4_predictions(images, [2, 4], targets[[2, 4]], NAMES, groups,
                                 {"ERM": scores, "zero-shot CLIP": "no weights here", "CPRFL": scores})
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("zero-shot CLIP: not available (no weights here)" in t.replace("\n", " ") for t in texts)
    assert sum(t.startswith("1. ") for t in texts) == 4  # two methods x two images
    attn = torch.rand(2, 5, 4, 4)
    assert isinstance(pp.attention_maps(images, [2, 4], attn, targets[[2, 4]], scores, NAMES, groups), Figure)


def test_zero_shot_column(monkeypatch, tmp_path) -> None:
    images = [Image.new("RGB", (40, 30), (0, 90, 0))]
    missing = predictions.zero_shot_column(NAMES, images, tmp_path / "none.bin")
    assert not missing.available and missing.scores is None and "not found" in missing.column
    tiny = predictions.zero_shot_column(NAMES, images, None, encoder="clip-tiny")
    assert tiny.available and tiny.column.shape == (1, 5)
    np.testing.assert_allclose(tiny.scores.sum(1), 1.0, rtol=1e-5)
