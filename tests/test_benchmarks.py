"""Benchmarks (cprfl_lib/data/benchmarks.py): the facts of the published ones, their groups, the generated ones and
the splits a run evaluates."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import one_line_error

from cprfl_lib.data import lists
from cprfl_lib.data.benchmarks import Benchmark, benchmark_class_names, load_benchmark
from cprfl_lib.data.lists import BenchmarkSpec, SplitList, fetch_split_lists

VOC_COUNTS = [6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5, 82, 7, 64]
VOC_HEAD = {"bottle", "car", "chair", "diningtable", "person", "pottedplant"}
VOC_MEDIUM = {"bicycle", "cat", "dog", "motorbike", "sofa", "tvmonitor"}


@pytest.fixture
def voc(shared_data: Path) -> Benchmark:
    return load_benchmark("voc-lt", list_dir=shared_data / "voc_lt", download=False)


@pytest.fixture
def coco(shared_data: Path) -> Benchmark:
    return load_benchmark("coco-lt", list_dir=shared_data / "coco_lt", download=False)


def test_voc_lt_facts(voc: Benchmark) -> None:
    assert (len(voc.train), len(voc.test), voc.num_classes) == (1142, 4952, 20)
    assert voc.train.targets.shape == (1142, 20) and voc.train.targets.dtype == np.uint8
    assert voc.train_counts.dtype == np.int64
    assert voc.train_counts.tolist() == VOC_COUNTS
    assert voc.class_names[15] == "pottedplant" and voc.class_names[13] == "motorbike"
    assert voc.class_names[1] == "bicycle"  # trailing space on that line in the file
    assert voc.train.paths[0] == "VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg"
    assert voc.test.paths[0].startswith("VOCdevkit/VOC2007/JPEGImages/")
    assert voc.train.targets[0].nonzero()[0].tolist() == [4, 14, 19]
    assert round(voc.train.targets.sum() / 1142, 2) == 2.05
    assert voc.image_root is None and not voc.is_synthetic
    groups, names = voc.groups, np.array(voc.class_names)
    assert [int((groups == g).sum()) for g in ("head", "medium", "tail")] == [6, 6, 8]
    assert set(names[groups == "head"]) == VOC_HEAD and set(names[groups == "medium"]) == VOC_MEDIUM


def test_coco_lt_facts(coco: Benchmark) -> None:
    assert (len(coco.train), len(coco.test), coco.num_classes) == (1909, 5000, 80)
    assert coco.class_names[9] == "traffic light"
    assert coco.class_names[38] == "tennis racket"
    assert int((coco.test.targets.sum(axis=1) == 0).sum()) == 48
    assert (coco.train.targets.sum(axis=1) > 0).all()
    counts = coco.train_counts
    assert (counts.max(), counts.min()) == (1128, 6)
    assert counts[24] == 100 and counts[8] == 20 and counts[38] == 20 and counts[14] == 19
    groups = coco.groups
    assert [int((groups == g).sum()) for g in ("head", "medium", "tail")] == [22, 33, 25]
    named = {name: groups[coco.class_names.index(name)] for name in ("backpack", "boat", "tennis racket", "bird")}
    assert named == {"backpack": "head", "boat": "medium", "tennis racket": "medium", "bird": "tail"}


def test_labels_count_must_match_spec(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the COCO labels are VOC's: checksums pass, the class count does not.
    spec = lists.SPECS["voc-lt"]
    coco_sums = {r: lists.SPECS["coco-lt"].files[r].sha256 for r in ("train", "test", "labels")}
    fake = BenchmarkSpec("voc-lt", 20, {r: lists.ListFile(f.url, coco_sums[r], f.filename, f.alias)
                                        for r, f in spec.files.items()}, spec.folders)
    monkeypatch.setitem(lists.SPECS, "voc-lt", fake)
    for sha in coco_sums.values():
        monkeypatch.setitem(lists.PUBLISHED, sha, ("voc-lt", "?"))
    one_line_error(lambda: load_benchmark("voc-lt", list_dir=shared_data / "coco_lt", download=False),
                   "labels.txt: 80 classes, but voc-lt has 20")


def test_unknown_benchmark_lists_known_ones() -> None:
    one_line_error(lambda: load_benchmark("imagenet-lt"), "voc-lt, coco-lt, synth-voc-lt, synth-coco-lt")
    one_line_error(lambda: fetch_split_lists("nus"), "unknown benchmark 'nus'")


# ---------------------------------------------------------------- generated benchmarks


def _fake_generated(folder: Path, splits=("train", "val", "test")) -> Path:
    folder.mkdir()
    (folder / "labels.txt").write_text("a 0\nb 1\n")
    lines = {"train": "img/0.jpg 0\nimg/1.jpg 0 1\nimg/2.jpg 0\n", "val": "img/4.jpg 0\nimg/5.jpg 1\n",
             "test": "img/3.jpg 1\n"}
    for split in splits:
        (folder / f"{split}.txt").write_text(lines[split])
    return folder


@pytest.fixture
def generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """synthetic.generated_folder stubbed: it records (name, data_root, options) in ``seen`` and returns ``folder``
    where set, else the fake set with every split (``full``) or, asked for no test split, ``notest``."""
    from cprfl_lib.data import synthetic

    fake = SimpleNamespace(seen=[], folder=None, full=_fake_generated(tmp_path / "full"),
                           notest=_fake_generated(tmp_path / "notest", ("train", "val")),
                           noval=_fake_generated(tmp_path / "noval", ("train", "test")))

    def generated_folder(name: str, data_root=None, **options) -> Path:
        fake.seen.append((name, data_root, options))
        return fake.folder or (fake.full if "test" in options["splits"] else fake.notest)

    monkeypatch.setattr(synthetic, "generated_folder", generated_folder)
    return fake


def test_synthetic_uses_generated_folder(tmp_path: Path, generated) -> None:
    generated.folder = folder = generated.noval
    bench = load_benchmark("synth-voc-lt", data_root=tmp_path, synthetic_options={"seed": 3})
    assert generated.seen == [("synth-voc-lt", tmp_path, {"seed": 3, "splits": ("train", "val", "test")})]
    assert bench.is_synthetic and bench.image_root == folder and bench.list_files["labels"] == folder / "labels.txt"
    assert bench.train_counts.tolist() == [3, 1] and bench.val is None
    one_line_error(lambda: load_benchmark("synth-coco-lt", list_dir=tmp_path), "drop --list-dir")
    one_line_error(lambda: load_benchmark("voc-lt", synthetic_options={"seed": 1}), "apply only to synth")


def test_eval_splits_of_a_generated_benchmark(generated) -> None:
    full, notest = generated.full, generated.notest
    both = load_benchmark("synth-voc-lt")
    assert both.evaluated is None and list(both.eval_splits) == ["val", "test"]
    assert both.eval_splits["val"].targets.tolist() == [[1, 0], [0, 1]] and len(both.eval_splits["test"]) == 1
    assert both.list_files["val"] == full / "val.txt"

    val = load_benchmark("synth-voc-lt", eval_splits=["val"])  # drawn without its test split
    assert generated.seen[-1][2]["splits"] == ("train", "val")
    assert val.test is None and val.evaluated == ("val",) and list(val.eval_splits) == ["val"]
    assert "test" not in val.list_files and val.image_root == notest and val.train_counts.tolist() == [3, 1]

    test = load_benchmark("synth-voc-lt", eval_splits=["test"])  # drawn without its validation split
    assert generated.seen[-1][2]["splits"] == ("train", "test")
    assert list(test.eval_splits) == ["test"]  # the full folder has a val split: it is read, not evaluated
    assert test.val is not None and test.evaluated == ("test",)
    assert list(load_benchmark("synth-voc-lt", eval_splits=["test", "val"]).eval_splits) == ["val", "test"]

    # the caller's own choice of splits is kept
    load_benchmark("synth-voc-lt", eval_splits=["val"], synthetic_options={"splits": ("train", "val", "test")})
    assert generated.seen[-1][2]["splits"] == ("train", "val", "test")


def test_asking_for_a_split_that_does_not_exist_names_it(generated) -> None:
    generated.folder = generated.noval
    one_line_error(lambda: load_benchmark("synth-voc-lt", eval_splits=["val"]),
                   "synth-voc-lt has no validation split to evaluate")
    bench = load_benchmark("synth-voc-lt")  # by default, the splits that are there
    assert bench.val is None and list(bench.eval_splits) == ["test"]
    generated.folder = generated.notest
    one_line_error(lambda: load_benchmark("synth-voc-lt", eval_splits=["val", "test"]),
                   "synth-voc-lt has no test split to evaluate")
    one_line_error(lambda: load_benchmark("synth-voc-lt"), "no test split")  # by default the test split is required


def test_a_published_benchmark_has_no_validation_split(shared_data: Path) -> None:
    one_line_error(lambda: load_benchmark("voc-lt", list_dir=shared_data / "voc_lt", download=False,
                                          eval_splits=["val"]), "voc-lt has no validation split", "data.eval_splits")
    bench = load_benchmark("voc-lt", list_dir=shared_data / "voc_lt", download=False, eval_splits=["test"])
    assert list(bench.eval_splits) == ["test"] and bench.val is None and len(bench.test) == 4952


def test_benchmark_eval_splits_follow_evaluated(tmp_path: Path) -> None:
    one = SplitList(paths=["x.jpg"], targets=np.array([[1, 0]], dtype=np.uint8), source=tmp_path / "x.txt")
    kw = dict(name="x", class_names=["a", "b"], train=one, image_root=None, list_files={})
    assert list(Benchmark(test=one, val=one, **kw).eval_splits) == ["val", "test"]
    assert list(Benchmark(test=one, val=None, **kw).eval_splits) == ["test"]
    assert list(Benchmark(test=one, val=one, evaluated=("test",), **kw).eval_splits) == ["test"]
    assert list(Benchmark(test=None, val=one, evaluated=("val",), **kw).eval_splits) == ["val"]
    assert list(Benchmark(test=None, val=one, **kw).eval_splits) == ["val"]


def test_embed_names_a_generated_benchmark_without_drawing_it(monkeypatch):
    from cprfl_lib.data import synthetic

    monkeypatch.setattr(synthetic, "generated_folder", lambda *a, **k: pytest.fail("images drawn for class names"))
    assert benchmark_class_names("synth-coco-lt") == synthetic.class_names("synth-coco-lt")
