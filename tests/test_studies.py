"""Studies: planning runs across tables, reusing finished ones, and training them in parallel."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMOKE, fake_training, one_line_error
from test_study_files import smoke  # the smoke profile's context

from cprfl_lib.errors import CprflError
from cprfl_repro import experiments, reports, studies
from cprfl_repro.reported import COLUMNS

LINEAR = {"model.head": "linear"}
TINY = {**SMOKE, "train.max_steps_per_epoch": 2, "optim.epochs": 1}


@pytest.fixture
def fake_train(monkeypatch):
    """Training replaced by a stub that writes a metrics.json (every figure: the seed, + 10 for a linear head)."""
    return fake_training(monkeypatch, lambda c: float(c["train"]["seed"]) + 10.0 * (c["model"]["head"] == "linear"))


def test_a_configuration_shared_by_two_studies_trains_once(tmp_path, fake_train):
    plan = {"a": studies.Study("tiny", {"cprfl": {}, "linear": LINEAR}, (0, 1)),
            "b": studies.Study("tiny", {"same cprfl": {}}, (1,))}
    out = studies.run_studies(plan, tmp_path)
    assert len(fake_train) == 4  # 2 variants x 2 seeds; b's run is a's (cprfl, seed 1)
    assert list(out["a"]["variant"]) == ["cprfl", "cprfl", "linear", "linear"]
    assert list(out["a"]["mAP"]) == [0.0, 1.0, 10.0, 11.0]
    assert out["b"]["run_dir"].iloc[0] == out["a"]["run_dir"].iloc[1]


def test_an_unavailable_variant_is_a_row_with_its_reason(tmp_path, fake_train):
    plan = {"fig": studies.Study("tiny", {"CLIP": studies.Unavailable("no weights offline"), "randn": {}}, (0,))}
    rows = studies.run_studies(plan, tmp_path)["fig"]
    assert list(rows["status"]) == ["not available: no weights offline", "ok"]
    assert len(fake_train) == 1
    rows = studies.run_study("f", "tiny", {"CLIP": studies.Unavailable("offline")}, [0], tmp_path)
    assert list(reports.summarize(rows)["note"]) == ["not available: offline"] and reports.means(rows).empty  # none ran


def test_the_most_expensive_runs_come_first():
    def cost(overrides, classes=20, cached=True):
        config = studies.run_config("tiny", overrides)
        sizes = {"classes": classes, "train_images": 1000, "tokens": 16, "cached_features": cached}
        return studies.expected_cost(config, sizes)

    linear, cprfl = cost(LINEAR), cost({})
    assert linear < cprfl < cost({}, classes=80) < cost({"model.depth": 2}, classes=80) < cost({}, cached=False)
    assert cost({"optim.epochs": 4}) == 2 * cost({"optim.epochs": 2})


def test_runs_sharing_data_share_one_cache_key():
    a, b = studies.run_config("tiny", {}), studies.run_config("tiny", {"loss.name": "bce", "model.tau": 2.0}, seed=3)
    assert studies.cache_key(a) == studies.cache_key(b)
    assert studies.cache_key(a) != studies.cache_key(studies.run_config("tiny", {"data.image_size": 64}))
    # a linear run reads no class embeddings: it cannot fill the CPRFL runs' embeddings cache
    linear = studies.run_config("tiny", LINEAR)
    assert studies.cache_key(linear) != studies.cache_key(a)
    assert studies.cache_key(linear) == studies.cache_key(studies.run_config("tiny", {**LINEAR, "semantics.dim": 8}))


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

    import cprfl_lib.data.synthetic_draw  # noqa: F401 - the generator keeps the real pool (it binds it on import)

    InlineExecutor.submitted, InlineExecutor.cancelled = [], []
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InlineExecutor)
    classes = {"synth-coco-lt": 80, "synth-voc-lt": 20}
    monkeypatch.setattr(studies, "prepare", lambda config, progress=True: {
        "classes": classes[config["data"]["dataset"]], "train_images": 100, "tokens": 16, "cached_features": True})
    monkeypatch.setattr(studies, "_run_job", lambda job: studies.run_once(job[0], Path(job[1])))
    monkeypatch.setattr(studies, "_reported", lambda pids, n, wait: [])  # the stand-in starts no process to stop
    return InlineExecutor


def test_runs_are_handed_to_the_workers_longest_first(tmp_path, inline_pool):
    coco = studies.run_config("tiny", {"data.dataset": "synth-coco-lt"})
    coco["recipe"] = "tiny-coco"
    plan = {"voc": studies.Study("tiny", {"linear": LINEAR, "cprfl": {}, "deep": {"model.depth": 2}}, (0,)),
            "coco": studies.Study(coco, {"cprfl": {}}, (0,))}
    out = studies.run_studies(plan, tmp_path, workers=2, progress=False)
    # 80 classes + 16 tokens, then 2 layers x (20 + 16), then 20 + 16, then a linear head
    assert inline_pool.submitted == ["tiny-coco/cprfl1", "tiny/cprfl2", "tiny/cprfl1", "tiny/linear1"]
    assert list(out["voc"]["variant"]) == ["linear", "cprfl", "deep"] and out["voc"]["status"].eq("ok").all()


def test_a_failed_run_is_named_and_the_queued_runs_are_dropped(tmp_path, inline_pool, monkeypatch):
    def fail(config, run_dir, resume=False, progress=True):
        raise CprflError("the loss became nan at step 3")

    monkeypatch.setattr(studies, "train", fail)
    plan = {"t": studies.Study("tiny", {"a": {}, "b": LINEAR}, (0,))}
    with pytest.raises(CprflError, match=r"run .*seed0-[0-9a-f]+: the loss became nan at step 3"):
        studies.run_studies(plan, tmp_path, workers=2, progress=False)
    assert inline_pool.cancelled == [True]


def test_unknown_study_names_are_an_error():
    assert experiments.builtin_studies() == sorted(["table2", "table3", "figure3", "embedding_scale", "dual_path", "tau",
                                                    "depth", "residual"])
    one_line_error(lambda: experiments.load_study("tabel2"), "unknown study 'tabel2'; choose from [", "'table2'",
                   "study file")


@pytest.mark.usefixtures("private_cache")
def test_two_workers_give_the_same_metrics_as_one(tmp_path):
    """Two workers first, on empty caches (filled by ``prepare``), then one process on the warm caches."""
    plan = {"t": studies.Study("tiny", {"cprfl": {}, "linear": LINEAR, "bce": {"loss.name": "bce"}}, (0,), TINY)}
    two = studies.run_studies(plan, tmp_path / "two", progress=False, workers=2)["t"]
    one = studies.run_studies(plan, tmp_path / "one", progress=False)["t"]
    assert list(one["variant"]) == list(two["variant"]) and one["mAP"].notna().all()
    for c in COLUMNS:
        assert list(one[c]) == pytest.approx(list(two[c]), abs=1e-9, nan_ok=True)
    assert all((Path(d) / "weights.pt").is_file() and not (Path(d) / "checkpoint.pt").exists() for d in two["run_dir"])


@pytest.fixture
def library_copy(tmp_path, monkeypatch):
    """A copy of cprfl_lib that the run store keys runs by (the real files are never edited)."""
    import shutil

    lib = tmp_path / "lib" / "cprfl_lib"
    shutil.copytree(studies.LIBRARY, lib, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(studies, "LIBRARY", lib)
    return lib


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_the_run_digest_covers_the_modules_a_run_imports(library_copy):
    """Finished runs are stale when a module a run executes changes, one imported lazily or newly included."""
    modules = studies.run_modules()
    for name in ("train/engine.py", "model.py", "losses.py", "backbones.py", "semantics/clip.py", "data/synthetic.py",
                 "data/synthetic_draw.py", "train/features.py", "__init__.py", "train/__init__.py"):
        assert f"cprfl_lib/{name}" in modules, name
    for name in ("cli.py", "__main__.py", "inference.py", "model_analysis.py", "zero_shot.py"):
        assert f"cprfl_lib/{name}" not in modules, name
    assert not [m for m in modules if not m.endswith(".py")]  # recipes: their values are in the configuration
    before = studies.source_digest()
    (library_copy / "data" / "extra_augmentation.py").write_text("STRENGTH = 2\n")  # a module nobody imports ...
    assert studies.source_digest() == before
    append(library_copy / "data" / "transforms.py", "\nfrom cprfl_lib.data.extra_augmentation import STRENGTH\n")
    after = studies.source_digest()
    assert after != before and "cprfl_lib/data/extra_augmentation.py" in studies.run_modules()  # ... until imported
    append(library_copy / "data" / "extra_augmentation.py", "STRENGTH = 3\n")
    assert studies.source_digest() != after
    relative = library_copy / "data" / "relative_import.py"  # relative imports are followed too
    relative.write_text("from . import extra_augmentation\n")
    assert "cprfl_lib/data/relative_import.py" not in studies.run_modules()
    append(library_copy / "model.py", "\n\ndef _lazy():\n    from .data import relative_import  # noqa\n")
    assert "cprfl_lib/data/relative_import.py" in studies.run_modules()


def test_editing_the_cli_a_recipe_or_a_description_keeps_every_finished_run_and_editing_the_model_retrains(
        tmp_path, fake_train, library_copy):
    plan = {"a": studies.Study("tiny", {"cprfl": {}, "linear": LINEAR}, (0, 1))}
    studies.run_studies(plan, tmp_path / "runs")
    assert len(fake_train) == 4
    append(library_copy / "cli.py", "\n# a help text changed\n")
    append(library_copy / "train" / "recipes" / "paper-coco.yaml", "\n# touched\n")
    append(library_copy / "train" / "recipes" / "tiny.yaml", "\n# the recipe these runs read: its values decide\n")
    studies.run_studies(plan, tmp_path / "runs")
    described = {**studies.run_config("tiny"), "description": "another text"}  # not part of a run's stamp
    studies.run_studies({"a": studies.Study(described, {"cprfl": {}, "linear": LINEAR}, (0, 1))}, tmp_path / "runs")
    assert len(fake_train) == 4  # nothing retrained
    append(library_copy / "model.py", "\n# the model changed\n")
    studies.run_studies(plan, tmp_path / "runs")
    assert len(fake_train) == 8  # every run retrained


# --- the differences with their intervals (reports.intervals) ----------------------------------------

INTERVAL = re.compile(r"^([+-]\d+\.\d\d) \[([+-]\d+\.\d\d), ([+-]\d+\.\d\d)\]$")
TRAIN_COUNTS = [500, 300, 60, 40, 12, 6]  # head 2, medium 2, tail 2


def _parse(text: str) -> tuple[float, float, float]:
    match = INTERVAL.match(text)
    assert match, text
    return tuple(float(v) for v in match.groups())


@pytest.fixture(name="runs")
def hand_made_runs(tmp_path):
    """Run folders with predictions.npz: "good" scores the positives higher than "ref", whose scores are noise;
    "noise" is noise of its own; "off" could not run. Two seeds each."""
    from cprfl_lib.metrics import map_report

    rng = np.random.default_rng(0)
    n, c = 240, len(TRAIN_COUNTS)
    targets = (rng.random((n, c)) < 0.25).astype(np.uint8)
    targets[0] = 1  # every class has a positive
    strength = {"good": 3.0, "ref": 0.0, "noise": 0.0}
    rows = []
    for name in ("ref", "good", "noise", "off"):
        for seed in (0, 1):
            if name == "off":
                rows.append({"variant": name, "seed": seed, "status": "not available: offline"})
                continue
            folder = tmp_path / f"{name}-{seed}"
            folder.mkdir()
            logits = strength[name] * targets + rng.normal(size=(n, c))
            np.savez(folder / "predictions.npz", model=logits, targets=targets, train_counts=np.array(TRAIN_COUNTS))
            r = map_report(logits, targets, TRAIN_COUNTS).as_dict()
            rows.append({"variant": name, "seed": seed, "status": "ok", "dataset": "synth", "run_dir": str(folder),
                         **{k: r[k] for k in COLUMNS}, **{f"val_{k}": r[k] - 1.0 for k in COLUMNS},
                         **{f"best_{k}": r[k] for k in COLUMNS}, "best_epoch": 1, "wall_s": 0.0})
    return pd.DataFrame(rows, columns=studies.ROW_COLUMNS)


def test_a_strictly_better_variant_has_an_interval_above_zero(runs):
    got = reports.intervals(runs, "ref")
    assert list(got) == ["ref", "good", "noise", "off"]
    assert got["ref"] == {"mAP": "", "tail": ""} and got["off"] == {"mAP": "", "tail": ""}  # nothing to compare
    for column in reports.CI_COLUMNS:
        diff, low, high = _parse(got["good"][column])
        ours = runs[runs.variant == "good"][column].mean() - runs[runs.variant == "ref"][column].mean()
        assert diff == pytest.approx(ours, abs=0.006)  # the point: the difference of the seed means
        assert 0 < low <= diff <= high and diff > 10, column
    diff, low, high = _parse(got["noise"]["mAP"])
    assert low < high and abs(diff) < 10


def test_reverse_flips_the_sign(runs):
    forward, backward = reports.intervals(runs, "ref"), reports.intervals(runs, "ref", reverse=True)
    for name in ("good", "noise"):
        for column in reports.CI_COLUMNS:
            d, lo, hi = _parse(forward[name][column])
            rd, rlo, rhi = _parse(backward[name][column])
            assert rd == pytest.approx(-d, abs=0.011)
            assert (rlo, rhi) == pytest.approx((-hi, -lo), abs=0.011)
    assert _parse(backward["good"]["mAP"])[2] < 0  # the reference is strictly worse
    assert backward["ref"]["mAP"] == ""


def test_a_reference_per_variant_and_the_seeds_both_have(runs):
    ref = {"good": "noise", "noise": "ref", "ref": "ref", "off": "ref"}
    got = reports.intervals(runs, ref.get)
    assert got["good"]["mAP"] and _parse(got["good"]["mAP"])[1] > 0  # good against noise
    assert got["noise"]["mAP"] == reports.intervals(runs, "ref")["noise"]["mAP"]
    one_seed = runs[~((runs.variant == "ref") & (runs.seed == 1))]  # the reference ran on seed 0 only
    d, _, _ = _parse(reports.intervals(one_seed, "ref")["good"]["mAP"])
    want = runs[(runs.variant == "good") & (runs.seed == 0)]["mAP"].iloc[0] - \
        runs[(runs.variant == "ref") & (runs.seed == 0)]["mAP"].iloc[0]
    assert d == pytest.approx(want, abs=0.006)
    assert reports.intervals(runs, "absent")["good"] == {"mAP": "", "tail": ""}


def test_interval_columns_are_named_after_the_comparison_in_both_tables(runs):
    key = "row − ref: Δ mAP [95 % CI]"
    columns = reports.interval_columns(runs, "ref")
    assert list(columns) == [key, "row − ref: Δ tail [95 % CI]"]
    assert columns[key] == [reports.intervals(runs, "ref")[v]["mAP"] for v in ("ref", "good", "noise", "off")]
    assert list(reports.interval_columns(runs, lambda v: "ref"))[0] == "row − reference: Δ mAP [95 % CI]"
    table = reports.compare_with_paper(runs, {}, "voc", reference="ref")
    assert list(table["method"]) == ["ref", "good", "noise", "off"]
    assert {k: list(table[k]) for k in columns} == columns
    assert "ours val mAP" in table  # the runs have validation figures
    assert not any(c.startswith("row −") for c in reports.compare_with_paper(runs, {}, "voc"))  # no reference
    flipped = reports.compare_with_paper(runs, {}, "voc", reference="ref", reverse=True)
    assert "ref − row: Δ mAP [95 % CI]" in flipped

    study = reports.study_table(runs, "ref", extra={"initial prompt cosine": {"good": 0.5, "ref": 0.9}})
    assert list(study["variant"]) == ["ref", "good", "noise", "off"]
    assert list(study.columns[:4]) == ["variant", "seeds", "val mAP", "val tail"]
    assert study["initial prompt cosine"].tolist()[:2] == [0.9, 0.5] and study["initial prompt cosine"].isna().sum() == 2
    assert list(study[key]) == columns[key]
    plain = reports.study_table(runs)
    assert not any(str(c).startswith("row −") for c in plain.columns)
    no_val = runs.assign(**{f"val_{c}": np.nan for c in COLUMNS})
    assert "val mAP" not in reports.study_table(no_val).columns


# --- the built-in studies, as data ----------------------------------------------------------------------


@pytest.fixture
def every_encoder_but_glove(monkeypatch):
    monkeypatch.setattr(experiments, "encoder_status",
                        lambda encoder, **kw: (False, "no GloVe file") if encoder == "glove" else (True, ""))


def test_the_embedding_scale_and_figure3_studies(tmp_path, every_encoder_but_glove):
    # train.save_weights=false everywhere: only the recipe's own run keeps its weights (notebook 06 reads them)
    plan = experiments.ablation_studies(smoke(tmp_path, **{"train.save_weights": False}), "cpu-voc", [0, 1],
                                        ["embedding_scale", "figure3"])
    scale, fig3 = plan["embedding_scale"], plan["figure3"]
    labels = ("Randn", "Word2Vec", "GloVe", "CLIP-RN50", "CLIP-ViT-B/16", "MiniLM")
    scales = ("raw", "centred", "centred, norm √m")
    assert list(scale.variants) == [f"{e} · {s}" for e in labels for s in scales]
    assert list(fig3.variants) == list(labels) and scale.seeds == fig3.seeds == (0, 1)
    glove = {scale.variants[f"GloVe · {s}"] for s in scales} | {fig3.variants["GloVe"]}
    assert glove == {studies.Unavailable("no GloVe file")}
    config = {name: c["semantics"] for name, seed, c in scale.runs() if seed == 0}
    assert config["Randn · raw"]["centre"] is False and config["Randn · raw"]["norm"] is None
    assert config["MiniLM · centred"]["centre"] is True and config["MiniLM · centred"]["norm"] is None
    assert config["CLIP-RN50 · centred, norm √m"]["norm"] == "sqrt_m"
    assert config["CLIP-RN50 · centred, norm √m"]["encoder"] == "clip-rn50"
    assert config["CLIP-RN50 · raw"]["weights"] == "openai" and config["MiniLM · raw"]["weights"] is None
    # cpu-voc's own semantics (MiniLM, centred, norm √m): the run of Table 1's CPRFL row, kept, trained once
    keep = [name for name, seed, c in scale.runs() if seed == 0 and c["train"]["save_weights"]]
    assert keep == ["MiniLM · centred, norm √m"]
    assert [name for name, seed, c in fig3.runs() if seed == 0 and c["train"]["save_weights"]] == ["MiniLM"]
    assert studies.run_dir_for(scale.config("MiniLM · centred, norm √m", 1), tmp_path) == \
        studies.run_dir_for(fig3.config("MiniLM", 1), tmp_path)
    # each row compared with its encoder's raw row; the raw rows with nothing but themselves
    assert scale.reference_of("MiniLM · centred, norm √m") == "MiniLM · raw"
    assert scale.reference_of("CLIP-ViT-B/16 · raw") == "CLIP-ViT-B/16 · raw"
    assert scale.compared_with("Randn · centred") == "Randn · raw" and fig3.compared_with == "Randn"


def test_every_built_in_study_is_a_study_file_with_its_reference(tmp_path, every_encoder_but_glove):
    plan = experiments.ablation_studies(smoke(tmp_path), "tiny", [0], experiments.builtin_studies())
    assert set(experiments.PAPER_STUDIES) < set(plan)
    for name, study in plan.items():
        assert study.recipe == "tiny" and study.seeds == (0,) and study.reference is not None
        for variant in study.variants:
            assert study.reference_of(variant) in study.variants, (name, variant)
        assert list(study.runs())  # every study has a row that runs here
    table2 = plan["table2"]
    assert table2.config("BCE", 0)["loss"] == {**table2.config("ASL", 0)["loss"], "name": "bce", "params": {}}
    assert plan["table3"].config("+VSI", 0)["semantics"]["encoder"] == "randn"
    assert plan["table3"].config("Baseline", 0)["model"]["head"] == "linear"


def test_initial_prompt_cosines_of_a_study():
    from cprfl_lib.data.benchmarks import benchmark_class_names
    from cprfl_lib.model_analysis import initial_prompts
    from cprfl_lib.semantics import mean_cosine

    variants = {"raw": {}, "centred √m": {"semantics.centre": True, "semantics.norm": "sqrt_m"}, "linear": LINEAR,
                "off": studies.Unavailable("offline")}
    study = studies.Study("tiny", variants, (3, 4))
    got = experiments.initial_prompt_cosines(study)
    assert list(got) == ["raw", "centred √m"]  # the CPRFL variants that can run
    names = benchmark_class_names("synth-voc-lt")
    for name in got:
        config = studies.run_config("tiny", variants[name], 3)  # the first seed's run
        assert got[name] == round(mean_cosine(initial_prompts(config, names)), 4)
        assert -1 <= got[name] <= 1
    assert got["raw"] != got["centred √m"]


def test_a_design_run_without_test_is_a_row_with_its_validation_figures(tmp_path, monkeypatch, capsys):
    fake_training(monkeypatch, lambda config: 30.0 + config["train"]["seed"], split="val")
    monkeypatch.delenv(studies.PROGRESS_ENV, raising=False)
    plan = {"d": studies.Study("tiny", {"raw": {}}, (0, 1), {"data.eval_splits": ["val"]})}
    rows = studies.run_studies(plan, tmp_path, progress=True)["d"]
    assert list(rows["val_mAP"]) == [30.0, 31.0] and rows["mAP"].isna().all() and rows["best_mAP"].isna().all()
    assert rows["best_epoch"].isna().all() and list(rows["status"]) == ["ok", "ok"]
    out = capsys.readouterr().out
    assert "raw, seed 0: val mAP 30.00" in out and "raw, seed 1: val mAP 31.00" in out
    assert reports.summarize(rows, prefix="val_")["mAP"].tolist() == ["30.50 ± 0.71"]
