"""The training engine on generated data: what a run writes, cached features, resume, gradient
accumulation, the paper/code recipes at smoke scale, and using a checkpoint afterwards."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error, smoke_config, spy, train_killed_after_one_epoch

from cprfl_lib.train import engine, factory, features
from cprfl_lib.train import state as state_module
from cprfl_lib.train.checkpoint import load_checkpoint
from cprfl_lib.train.recipes import load_recipe

GROUPS = ("mAP", "head", "medium", "tail")

pytestmark = pytest.mark.usefixtures("cprfl_cache")


@pytest.fixture
def fresh_features(tmp_path, monkeypatch):
    """An empty features cache for this test, and a count of the feature extractions."""
    root = tmp_path / "features-cache"
    monkeypatch.setattr(features, "cache_dir", lambda *parts: root.joinpath(*parts))
    return spy(monkeypatch, features, "extract_features")


def read_summary(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema-run")
    return out, engine.train(smoke_config(**{"train.ema": 0.9, "train.deterministic": True}), out, progress=False)


# --- what a run writes ---------------------------------------------------------------------------

def test_a_smoke_run_writes_its_five_files(smoke_run):
    out, done = smoke_run
    assert "generated data" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert {p.name for p in out.iterdir()} == {"config.yaml", "summary.csv", "weights.pt", "metrics.json",
                                                "predictions.npz"}  # the resumable checkpoint is gone
    assert load_recipe(str(out / "config.yaml")) == smoke_config()  # the resolved config, usable as a recipe

    rows = read_summary(out / "summary.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert set(GROUPS) | {"loss", "lr", "steps", "train_s", "wait_s"} <= set(r)
        assert math.isfinite(float(r["loss"])) and 0 <= float(r["mAP"]) <= 100
        assert "ema_mAP" not in r

    last = metrics["last_epoch"]["model"]
    assert set(GROUPS) <= set(last) and set(metrics["last_epoch"]) == {"model"}
    assert last["mAP"] == pytest.approx(float(rows[-1]["mAP"]), rel=1e-5)  # summary keeps 6 digits
    best = metrics["best_on_test"]
    assert best["epoch"] in (1, 2) and best["model"] == "model" and "test set" in best["note"]
    assert best["mAP"] == pytest.approx(max(float(r["mAP"]) for r in rows), rel=1e-5)
    assert metrics["epochs"] == 2 and metrics["synthetic"] is True and metrics["recipe"] == "tiny"

    torch.load(out / "weights.pt", weights_only=True)  # no pickled objects beyond tensors and containers
    ckpt = load_checkpoint(out / "weights.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2 and ckpt["ema"] is None
    assert ckpt["config"] == smoke_config() and len(ckpt["class_names"]) == 20
    assert "optimizer" not in ckpt and ckpt["format"] == "cprfl-weights/1"  # no optimizer state once finished

    with np.load(out / "predictions.npz") as npz:
        assert npz["model"].shape == npz["targets"].shape == (64, 20)
        assert list(npz["class_names"]) == ckpt["class_names"] and "ema" not in npz
        assert npz["val_model"].shape == npz["val_targets"].shape == (64, 20)
        assert set(npz.files) == {"model", "targets", "val_model", "val_targets", "class_names", "train_counts",
                                  "group_thresholds"}


def test_a_run_reports_the_validation_split_and_its_best_epoch(smoke_run):
    """The generated benchmarks have a validation split: its figures, and the epoch chosen on it (held out)."""
    out, _ = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    rows = read_summary(out / "summary.csv")
    assert metrics["val_images"] == metrics["test_images"] == 64 and metrics["test_subset"] is None
    val = metrics["val_last_epoch"]["model"]
    assert set(metrics["val_last_epoch"]) == {"model"} and set(GROUPS) <= set(val)
    assert val["mAP"] == pytest.approx(float(rows[-1]["val_mAP"]), rel=1e-5)
    assert val["mAP"] != metrics["last_epoch"]["model"]["mAP"]  # another split, other figures
    best = metrics["best_on_val"]
    assert set(best) == {"epoch", "model", "val", "test"} and best["model"] == "model"
    chosen = max(rows, key=lambda r: float(r["val_mAP"]))
    assert best["epoch"] == int(chosen["epoch"])
    for k in GROUPS:  # the validation figures of that epoch, and its test figures beside them
        assert best["val"][k] == pytest.approx(float(chosen[f"val_{k}"]), rel=1e-5, nan_ok=True), k
        assert best["test"][k] == pytest.approx(float(chosen[k]), rel=1e-5, nan_ok=True), k
    with np.load(out / "predictions.npz") as npz:
        bench = factory.benchmark_from(load_recipe(str(out / "config.yaml")))
        assert np.array_equal(npz["val_targets"], bench.val.targets)
        assert np.array_equal(npz["targets"], bench.test.targets)


def test_a_run_on_the_validation_split_alone_draws_and_reports_no_test(tmp_path, monkeypatch, fresh_features):
    """data.eval_splits=[val] (a design study): the test split is neither generated nor evaluated nor reported."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CPRFL_CACHE", str(cache))
    out = tmp_path / "run"
    metrics = engine.train(smoke_config(**{"data.eval_splits": ["val"]}), out, progress=False)
    assert len(fresh_features) == 2  # the train and validation splits' features
    for key in ("last_epoch", "test_images", "test_subset", "best_on_test"):
        assert key not in metrics, key
    assert metrics["val_images"] == 64 and set(metrics["val_last_epoch"]) == {"model"}
    assert set(metrics["best_on_val"]) == {"epoch", "model", "val"}  # no test figures of the chosen epoch
    rows = read_summary(out / "summary.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all("val_mAP" in r and "mAP" not in r and "tail" not in r for r in rows)
    assert metrics["val_last_epoch"]["model"]["mAP"] == pytest.approx(float(rows[-1]["val_mAP"]), rel=1e-5)
    with np.load(out / "predictions.npz") as npz:
        assert set(npz.files) == {"val_model", "val_targets", "class_names", "train_counts", "group_thresholds"}
        assert npz["val_model"].shape == (64, 20)
    # only the folder without test is drawn (what it holds: test_synthetic.py::test_a_notest_folder_holds_no_test_split)
    assert [p.name for p in (cache / "synthetic").iterdir()] == ["synth-voc-lt-s0-32px-limit64-notest"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))


def test_a_run_on_the_test_split_alone_reports_no_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    metrics = engine.train(smoke_config(**{"data.eval_splits": ["test"], "optim.epochs": 1}), tmp_path / "run",
                           progress=False)
    assert "last_epoch" in metrics and metrics["test_images"] == 64
    for key in ("val_last_epoch", "val_images", "best_on_val"):
        assert key not in metrics, key
    assert metrics["best_on_test"] is None  # one epoch evaluated: nothing to choose
    with np.load(tmp_path / "run" / "predictions.npz") as npz:
        assert "val_model" not in npz and "val_targets" not in npz and "targets" in npz
    assert [p.name for p in (tmp_path / "cache" / "synthetic").iterdir()] == ["synth-voc-lt-s0-32px-limit64-noval"]


def test_with_ema_the_summary_and_metrics_have_the_ema(ema_run):
    out, metrics = ema_run
    rows = read_summary(out / "summary.csv")
    assert all({f"ema_{k}" for k in GROUPS} <= set(r) for r in rows)
    assert set(metrics["last_epoch"]) == {"model", "ema"}
    assert metrics["last_epoch"]["ema"]["mAP"] == pytest.approx(float(rows[-1]["ema_mAP"]), rel=1e-5)
    assert metrics["best_on_test"]["model"] in ("model", "ema")
    assert load_checkpoint(out / "weights.pt")["ema"] is not None
    with np.load(out / "predictions.npz") as npz:
        assert npz["ema"].shape == npz["model"].shape and not np.allclose(npz["ema"], npz["model"])
    from cprfl_lib.inference import evaluate_checkpoint

    got = evaluate_checkpoint(out / "weights.pt", device="cpu", use_ema=True)
    assert got["weights"] == "ema"
    same_figures(got, metrics["last_epoch"]["ema"])


# --- cached features -----------------------------------------------------------------------------

def test_features_are_computed_once_and_neither_a_warm_cache_nor_evaluating_changes_the_model(tmp_path, fresh_features,
                                                                                                ema_run):
    """Neither the features extraction nor the evaluation (more often, or of an EMA) draws random numbers from the
    training stream: the model trains the same."""
    config = smoke_config(**{"train.deterministic": True})
    cold = engine.train(config, tmp_path / "a", progress=False)
    assert len(fresh_features) == 3  # the train, validation and test splits
    warm = engine.train(config, tmp_path / "b", progress=False)
    assert len(fresh_features) == 3  # reused from disk
    assert (tmp_path / "a" / "summary.csv").read_text().split("train_s")[0] == \
        (tmp_path / "b" / "summary.csv").read_text().split("train_s")[0]
    last_only = engine.train(smoke_config(**{"train.deterministic": True, "train.eval_start": 2}), tmp_path / "last-only",
                             progress=False)
    for name, other, tolerance in (("warm", warm, 0), ("last-only", last_only, 1e-9), ("with-ema", ema_run[1], 1e-9)):
        for key, value in cold["last_epoch"]["model"].items():
            assert other["last_epoch"]["model"][key] == pytest.approx(value, abs=tolerance, nan_ok=True), (name, key)

    engine.train(smoke_config(**{"data.image_size": 40, "optim.epochs": 1}), tmp_path / "c", progress=False)
    assert len(fresh_features) == 6  # another image size: other features


def test_features_are_the_backbone_maps_and_leave_the_backbone_in_its_format():
    """Extraction runs channels-last for speed; the maps equal the default format's to fp16 precision."""
    from cprfl_lib.model import MultiLabelClassifier

    torch.manual_seed(0)
    backbone = factory.backbone_from(smoke_config()).eval()
    images = torch.rand(6, 3, 32, 32)
    got = features.extract_features(MultiLabelClassifier(backbone, torch.nn.Identity()),
                                    torch.utils.data.TensorDataset(images, torch.zeros(6, 2)), batch_size=4,
                                    progress=False)
    with torch.no_grad():
        want = backbone(images)
    assert got.dtype == torch.float16 and got.shape == want.shape
    torch.testing.assert_close(got.float(), want, atol=2e-3, rtol=2e-3)
    assert all(p.is_contiguous() for p in backbone.parameters())


def test_channels_last_training_matches_the_default_format():
    """One training step in each memory format from the same weights: the same loss and gradients.

    (Whole runs are not compared: Adam turns float-noise gradients of exactly-zero ones into full
    lr-sized steps, so two formats drift apart by more than their arithmetic does.)"""
    import copy

    from cprfl_lib.losses import build_loss

    torch.manual_seed(0)
    a = factory.model_from(smoke_config(**{"model.freeze_backbone": False, "model.dropout": 0.0}),
                           [f"c{i}" for i in range(20)]).train()
    b = copy.deepcopy(a).to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = (torch.rand(8, 20) < 0.2).float()
    loss = build_loss("asl")
    la, lb = loss(a(x), y), loss(b(x.contiguous(memory_format=torch.channels_last)), y)
    la.backward()
    lb.backward()
    assert lb.item() == pytest.approx(la.item(), rel=1e-5)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-3, atol=1e-5 * pa.grad.abs().max().item() + 1e-8,
                                   msg=name)


def test_a_trainable_backbone_does_not_cache_and_trains_channels_last(tmp_path, fresh_features):
    config = smoke_config(**{"model.freeze_backbone": False, "optim.epochs": 1, "train.max_steps_per_epoch": 2,
                             "train.channels_last": True})
    metrics = engine.train(config, tmp_path / "run", progress=False)
    assert fresh_features == [] and math.isfinite(metrics["last_epoch"]["model"]["mAP"])
    one_line_error(lambda: engine.train(smoke_config(**{"model.freeze_backbone": False, "train.cache_features": True}),
                                        tmp_path / "x", progress=False), "freeze_backbone")


# --- resume --------------------------------------------------------------------------------------

def resumable(**overrides) -> dict:
    """Deterministic, with dropout, a moving schedule and an EMA: every piece of state matters."""
    return smoke_config(**{"train.deterministic": True, "optim.epochs": 3, "optim.schedule": "onecycle", "train.ema": 0.9,
                    "train.max_steps_per_epoch": 3, **overrides})


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    metrics_a = engine.train(resumable(), a, progress=False)
    train_killed_after_one_epoch(resumable(), b)
    assert load_checkpoint(b / "checkpoint.pt")["epoch"] == 1 and not (b / "metrics.json").exists()

    capsys.readouterr()
    metrics_b = engine.train(resumable(), b, resume=True, progress=False)
    assert "precision" not in capsys.readouterr().out  # resumed in the precision it started in: unmentioned
    assert comparable(read_summary(b / "summary.csv")) == comparable(read_summary(a / "summary.csv"))
    for tag in ("model", "ema"):
        for key, value in metrics_a["last_epoch"][tag].items():
            assert metrics_b["last_epoch"][tag][key] == pytest.approx(value, abs=1e-6, nan_ok=True), (tag, key)
    assert metrics_b["best_on_test"] == pytest.approx(metrics_a["best_on_test"], nan_ok=True)
    assert metrics_b["epochs"] == 3
    with np.load(a / "predictions.npz") as pa, np.load(b / "predictions.npz") as pb:
        np.testing.assert_allclose(pb["model"], pa["model"], atol=1e-6)
        np.testing.assert_allclose(pb["ema"], pa["ema"], atol=1e-6)


# --- gradient accumulation -----------------------------------------------------------------------

LIMITED = {"optim.grad_accum": 2, "train.max_steps_per_epoch": 3, "optim.batch_size": 8}


@pytest.mark.parametrize("overrides, steps", [
    ({"optim.grad_accum": 1}, 2 * 4), ({"optim.grad_accum": 2}, 2 * 2),  # 2 epochs of 64 / 16 batches
    # max_steps_per_epoch counts optimizer steps: the schedule must be sized for as many (OneCycle raises past its end)
    ({**LIMITED, "optim.schedule": "onecycle"}, 2 * 3), ({**LIMITED, "optim.schedule": "cosine"}, 2 * 3)])
def test_gradient_accumulation_divides_the_optimizer_steps(tmp_path, overrides, steps):
    config = smoke_config(**overrides)
    metrics = engine.train(config, tmp_path / "run", progress=False)
    rows = read_summary(tmp_path / "run" / "summary.csv")
    assert math.isfinite(metrics["last_epoch"]["model"]["mAP"]) and sum(int(r["steps"]) for r in rows) == steps
    if overrides.get("optim.schedule") == "cosine":  # the lr of the last step is not already the end of the cosine
        assert float(rows[0]["lr"]) > 0.3 * config["optim"]["lr"]


# --- the paper and code recipes at smoke scale -----------------------------------------------------

# Each recipe runs as written (optimizer, schedule, loss, EMA, transform, trainable parts) on 24 generated
# images of 32 px with random weights. The paper recipes keep their whole architecture (ResNet-101, the
# 2048-wide head, the CLIP RN50 text encoder). The trainable CLIP RN50 text tower of the code recipes runs
# in every forward pass and costs 40 s (VOC) to 150 s (COCO) on a 2-core CPU, so code-* use the 4.6 M-parameter
# CLIP text tower of the same layout (clip-tiny), and code-coco also a narrower head.
# CPRFL_TEST_FULL_RECIPES=1 runs all four unreduced.
HEAVY = {
    "paper-voc": {},
    "paper-coco": {},
    "code-voc": {"semantics.encoder": "clip-tiny"},
    "code-coco": {"semantics.encoder": "clip-tiny", "model.dim": 256, "model.mlp_dim": 256, "model.dim_head": 32},
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(HEAVY))
def test_paper_and_code_recipes_run_at_smoke_scale(recipe, tmp_path, monkeypatch):
    dataset = "synth-coco-lt" if "coco" in recipe else "synth-voc-lt"
    reduce = {} if os.environ.get("CPRFL_TEST_FULL_RECIPES") == "1" else HEAVY[recipe]
    config = load_recipe(recipe, {
        "model.backbone_weights": None, "semantics.weights": None, "data.dataset": dataset,
        "data.synthetic_limit": 24, "data.image_size": 32, "train.max_steps_per_epoch": 2, "optim.epochs": 1,
        "optim.batch_size": 4, "train.eval_batch_size": 24, "train.amp": False, "train.device": "cpu",
        "train.num_threads": 1, "train.save_checkpoint": False, "train.save_weights": False,
        **reduce})  # a checkpoint of these models is gigabytes
    built = {}

    def keep(module, name):
        build = getattr(module, name)

        def wrapper(*args, **kwargs):
            built[name] = build(*args, **kwargs)
            return built[name]
        monkeypatch.setattr(module, name, wrapper)

    for module, name in ((state_module, "build_optimizer"), (state_module, "build_scheduler"), (factory, "model_from")):
        keep(module, name)
    metrics = engine.train(config, tmp_path / recipe, progress=False)

    model, optimizer = built["model_from"], built["build_optimizer"]
    assert built["build_scheduler"].last_epoch == 2  # two optimizer steps
    assert type(optimizer).__name__.lower() == config["optim"]["optimizer"]
    assert model.backbone.name == "resnet101" and model.head.visual_proj.out_features == config["model"]["dim"]
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in model.backbone.parameters()} <= trained  # the backbone is fine-tuned
    text = getattr(model.head, "text_encoder", None)
    if config["semantics"]["trainable"]:  # the official code fine-tunes the CLIP text tower
        assert text is not None and {id(p) for p in text.parameters()} <= trained
    else:  # the paper keeps it frozen: only its embeddings, as a buffer
        assert text is None and "class_embeddings" in dict(model.head.named_buffers())
    expected = {"model", "ema"} if config["train"]["ema"] else {"model"}
    assert set(metrics["last_epoch"]) == expected
    for tag in expected:
        for key in ("mAP", "OF1@0.5", "CF1@top3"):
            assert math.isfinite(metrics["last_epoch"][tag][key]), (tag, key)
    assert not (tmp_path / recipe / "checkpoint.pt").exists() and not (tmp_path / recipe / "weights.pt").exists()


# --- using a checkpoint ----------------------------------------------------------------------------

def same_figures(got: dict, logged: dict) -> None:
    """Every figure of the run's last-epoch report, bit for bit (NaN where the run's is: a group without classes)."""
    shared = [k for k in logged if k in got]
    assert len(shared) >= 10 and set(GROUPS) <= set(shared), sorted(logged)
    np.testing.assert_equal({k: got[k] for k in shared}, {k: logged[k] for k in shared})


def test_evaluate_checkpoint_reproduces_the_last_epoch_from_a_warm_or_a_cold_features_cache(smoke_run, cli_env,
                                                                                              monkeypatch, tmp_path):
    from cprfl_lib.inference import evaluate_checkpoint, predict

    out, _ = smoke_run
    logged = json.loads((out / "metrics.json").read_text())["last_epoch"]["model"]
    monkeypatch.setenv("CPRFL_CACHE", cli_env["CPRFL_CACHE"])  # the cache the run filled
    extracted = spy(monkeypatch, features, "extract_features")
    got = evaluate_checkpoint(out / "weights.pt", device="cpu")
    assert got["epoch"] == 2 and got["weights"] == "model" and got["dataset"] == "synth-voc-lt" and got["synthetic"]
    # a frozen backbone: the test split's features are read from the cache the run filled, under its key
    assert extracted == []
    same_figures(got, logged)
    monkeypatch.setattr(features, "cache_dir", lambda *parts: tmp_path.joinpath("features-cache", *parts))  # cold
    same_figures(evaluate_checkpoint(out / "weights.pt", device="cpu"), logged)
    assert extracted == [1]  # the test split's features computed once, into the cache
    same_figures(evaluate_checkpoint(out, device="cpu"), logged)  # the run's folder; the features read back
    assert extracted == [1]
    one_line_error(lambda: evaluate_checkpoint(out / "weights.pt", device="cpu", use_ema=True), "EMA")  # none here
    one_line_error(lambda: predict(out / "weights.pt", [], device="cpu", use_ema=True), "EMA")


def test_predict_gives_each_image_its_top_k_classes(smoke_run):
    """One row per image (a row's class names and scores, and a top-k past the classes, through the command:
    test_cli.py::test_predict_prints_class_names_with_scores and
    test_faults.py::test_predict_top_k_beyond_the_classes_says_so)."""
    from cprfl_lib.inference import predict

    out, _ = smoke_run
    bench = factory.benchmark_from(load_checkpoint(out / "weights.pt")["config"])
    images = [Path(bench.image_root) / p for p in bench.test.paths[:3]]
    assert [len(row) for row in predict(out / "weights.pt", images, top_k=4, device="cpu")] == [4, 4, 4]
