"""Studies: planning runs across tables, reusing finished ones, and training them in parallel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cprfl_lib.errors import CprflError
from cprfl_repro import experiments, reports, studies
from cprfl_repro.reported import COLUMNS

LINEAR = {"model.head": "linear"}
TINY = {"data.synthetic_limit": 64, "train.device": "cpu", "train.max_steps_per_epoch": 2, "optim.epochs": 1,
        "train.num_threads": 1}


@pytest.fixture
def fake_train(monkeypatch):
    """Replace training by a stub that writes a metrics.json and records which folders it trained."""
    trained = []

    def train(config, run_dir, resume=False, progress=True):
        trained.append(Path(run_dir))
        value = float(config["train"]["seed"]) + (10.0 if config["model"]["head"] == "linear" else 0.0)
        row = {c: value for c in COLUMNS}
        metrics = {"dataset": config["data"]["dataset"], "wall_s": 0.0, "last_epoch": {"model": row},
                   "best_on_test": {**row, "epoch": 1}}
        (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(studies, "train", train)
    return trained


def test_a_configuration_shared_by_two_studies_trains_once(tmp_path, fake_train):
    plan = {"a": studies.Study("smoke", {"cprfl": {}, "linear": LINEAR}, (0, 1)),
            "b": studies.Study("smoke", {"same cprfl": {}}, (1,))}
    out = studies.run_studies(plan, tmp_path)
    assert len(fake_train) == 4  # 2 variants x 2 seeds; b's run is a's (cprfl, seed 1)
    assert list(out["a"]["variant"]) == ["cprfl", "cprfl", "linear", "linear"]
    assert list(out["a"]["mAP"]) == [0.0, 1.0, 10.0, 11.0]
    assert out["b"]["run_dir"].iloc[0] == out["a"]["run_dir"].iloc[1]


def test_finished_runs_are_reused_and_a_code_change_retrains(tmp_path, fake_train, monkeypatch):
    plan = {"a": studies.Study("smoke", {"cprfl": {}}, (0,))}
    studies.run_studies(plan, tmp_path)
    studies.run_studies(plan, tmp_path)
    assert len(fake_train) == 1
    monkeypatch.setattr(studies, "source_digest", lambda: "another version of the code")
    studies.run_studies(plan, tmp_path)
    assert len(fake_train) == 2


def test_an_unavailable_variant_is_a_row_with_its_reason(tmp_path, fake_train):
    plan = {"fig": studies.Study("smoke", {"CLIP": studies.Unavailable("no weights offline"), "randn": {}}, (0,))}
    rows = studies.run_studies(plan, tmp_path)["fig"]
    assert list(rows["status"]) == ["not available: no weights offline", "ok"]
    assert len(fake_train) == 1


def test_run_study_is_one_entry_of_run_studies(tmp_path, fake_train):
    rows = studies.run_study("t", "smoke", {"cprfl": {}, "linear": LINEAR}, [0], tmp_path)
    assert list(rows["variant"]) == ["cprfl", "linear"] and len(fake_train) == 2


def test_the_most_expensive_runs_come_first():
    def cost(overrides, classes=20, cached=True):
        config = studies.run_config("smoke", overrides)
        sizes = {"classes": classes, "train_images": 1000, "tokens": 16, "cached_features": cached}
        return studies.expected_cost(config, sizes)

    linear, cprfl = cost(LINEAR), cost({})
    assert linear < cprfl < cost({}, classes=80) < cost({"model.depth": 2}, classes=80) < cost({}, cached=False)
    assert cost({"optim.epochs": 4}) == 2 * cost({"optim.epochs": 2})


def test_runs_sharing_data_share_one_cache_key():
    a, b = studies.run_config("smoke", {}), studies.run_config("smoke", {"loss.name": "bce", "model.tau": 2.0}, seed=3)
    assert studies.cache_key(a) == studies.cache_key(b)
    assert studies.cache_key(a) != studies.cache_key(studies.run_config("smoke", {"data.image_size": 64}))
    # a linear run reads no class embeddings: it cannot fill the CPRFL runs' embeddings cache
    linear = studies.run_config("smoke", LINEAR)
    assert studies.cache_key(linear) != studies.cache_key(a)
    assert studies.cache_key(linear) == studies.cache_key(studies.run_config("smoke", {**LINEAR, "semantics.dim": 8}))


class InlineExecutor:
    """A stand-in for the process pool: runs each job at submission and records the order."""

    submitted: list = []
    cancelled: list = []

    def __init__(self, *args, **kwargs):
        pass

    def submit(self, fn, job):
        from concurrent.futures import Future

        model = job[0]["model"]
        InlineExecutor.submitted.append(f"{Path(job[1]).parent.name}/{model['head']}{model['depth']}")
        future = Future()
        try:
            future.set_result(fn(job))
        except Exception as exc:  # noqa: BLE001 - handed to the caller like a worker's exception
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        InlineExecutor.cancelled.append(cancel_futures)


@pytest.fixture
def inline_pool(monkeypatch, fake_train):
    import concurrent.futures

    InlineExecutor.submitted, InlineExecutor.cancelled = [], []
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InlineExecutor)
    classes = {"synth-coco-lt": 80, "synth-voc-lt": 20}
    monkeypatch.setattr(studies, "prepare", lambda config, progress=True: {
        "classes": classes[config["data"]["dataset"]], "train_images": 100, "tokens": 16, "cached_features": True})
    monkeypatch.setattr(studies, "_run_job", lambda job: studies.run_once(job[0], Path(job[1])))
    return InlineExecutor


def test_runs_are_handed_to_the_workers_longest_first(tmp_path, inline_pool):
    coco = studies.run_config("smoke", {"data.dataset": "synth-coco-lt"})
    coco["recipe"] = "smoke-coco"
    plan = {"voc": studies.Study("smoke", {"linear": LINEAR, "cprfl": {}, "deep": {"model.depth": 2}}, (0,)),
            "coco": studies.Study(coco, {"cprfl": {}}, (0,))}
    out = studies.run_studies(plan, tmp_path, workers=2, progress=False)
    # 80 classes + 16 tokens, then 2 layers x (20 + 16), then 20 + 16, then a linear head
    assert inline_pool.submitted == ["smoke-coco/cprfl1", "smoke/cprfl2", "smoke/cprfl1", "smoke/linear1"]
    assert list(out["voc"]["variant"]) == ["linear", "cprfl", "deep"] and out["voc"]["status"].eq("ok").all()


def test_a_failed_run_is_named_and_the_queued_runs_are_dropped(tmp_path, inline_pool, monkeypatch):
    def fail(config, run_dir, resume=False, progress=True):
        raise CprflError("the loss became nan at step 3")

    monkeypatch.setattr(studies, "train", fail)
    plan = {"t": studies.Study("smoke", {"a": {}, "b": LINEAR}, (0,))}
    with pytest.raises(CprflError, match=r"run .*seed0-[0-9a-f]+: the loss became nan at step 3"):
        studies.run_studies(plan, tmp_path, workers=2, progress=False)
    assert inline_pool.cancelled == [True]


def test_a_study_where_nothing_can_run_still_summarizes(tmp_path, fake_train):
    rows = studies.run_studies({"f": studies.Study("smoke", {"CLIP": studies.Unavailable("offline")})}, tmp_path)["f"]
    assert list(reports.summarize(rows)["note"]) == ["not available: offline"] and reports.means(rows).empty


def test_unknown_ablation_names_are_an_error():
    assert list(experiments.ablations(["tau", "table2"])) == ["tau", "table2"]
    with pytest.raises(CprflError, match=r"unknown study \['tabel2'\].*table2"):
        experiments.ablations(["tabel2"])


@pytest.mark.usefixtures("private_cache")
def test_two_worker_processes_give_the_same_metrics_as_one(tmp_path):
    """Two workers first, on empty caches (filled by ``prepare``), then one process on the warm caches."""
    plan = {"t": studies.Study("smoke", {"cprfl": {}, "linear": LINEAR, "bce": {"loss.name": "bce"}}, (0,), TINY)}
    two = studies.run_studies(plan, tmp_path / "two", progress=False, workers=2)["t"]
    one = studies.run_studies(plan, tmp_path / "one", progress=False)["t"]
    assert list(one["variant"]) == list(two["variant"]) and one["mAP"].notna().all()
    for c in COLUMNS:
        assert list(one[c]) == pytest.approx(list(two[c]), abs=1e-9, nan_ok=True)
    assert all((Path(d) / "weights.pt").is_file() and not (Path(d) / "checkpoint.pt").exists() for d in two["run_dir"])


def test_the_run_digest_covers_every_module_of_the_library(tmp_path):
    """Finished runs are stale when any file of cprfl_lib changes, a module nobody listed included."""
    import shutil

    from cprfl_lib import digest

    lib = tmp_path / "cprfl_lib"
    shutil.copytree(studies.LIBRARY, lib, ignore=shutil.ignore_patterns("__pycache__"))
    before = digest.source_digest(lib)
    assert studies.source_digest() == before[:16] and studies.LIBRARY.name == "cprfl_lib"
    (lib / "data" / "extra_augmentation.py").write_text("STRENGTH = 2\n")  # a new module ...
    transforms = lib / "data" / "transforms.py"
    transforms.write_text(transforms.read_text() + "\nfrom cprfl_lib.data.extra_augmentation import STRENGTH\n")
    after = digest.source_digest(lib)
    assert after != before  # ... imported by the transforms: the runs retrain
    (lib / "train" / "recipes" / "quick-voc.yaml").write_text("description: edited\n")
    assert digest.source_digest(lib) != after  # a recipe too
