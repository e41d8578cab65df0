"""The generated default datasets: label statistics, file format, determinism, caching."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cprfl_lib.data import synthetic
from cprfl_lib.data.lists import read_labels, read_split
from cprfl_lib.data.synthetic_draw import class_looks
from cprfl_lib.errors import CprflError

VOC, COCO = "synth-voc-lt", "synth-coco-lt"
# name -> (train images, labels per image, head/medium/tail sizes)
REAL_SHAPE = {VOC: (1142, 2.05, (6, 6, 8)), COCO: (1909, 4.36, (22, 33, 25))}
LINE = re.compile(r"^images/(train|test)/\d{6}\.jpg( \d+)+$")


@pytest.fixture(scope="module")
def label_sets() -> dict[str, tuple[list[list[int]], list[list[int]]]]:
    return {name: synthetic.sample_label_sets(name, seed=0) for name in (VOC, COCO)}


def _multi_hot(sets: list[list[int]], num_classes: int) -> np.ndarray:
    y = np.zeros((len(sets), num_classes), dtype=int)
    for i, labels in enumerate(sets):
        y[i, labels] = 1
    return y


def _groups(counts: np.ndarray) -> tuple[int, int, int]:
    return int((counts >= 100).sum()), int(((counts >= 20) & (counts < 100)).sum()), int((counts < 20).sum())


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_class_names_and_super_categories() -> None:
    voc = synthetic.class_names(VOC)
    assert voc[:3] == ["aeroplane", "bicycle", "bird"] and voc[14] == "person" and voc[19] == "tvmonitor"
    assert len(voc) == 20 and "diningtable" in voc and "pottedplant" in voc
    coco = synthetic.class_names(COCO)
    assert len(coco) == 80 and coco[9] == "traffic light" and coco[79] == "toothbrush"
    assert synthetic.super_categories(VOC)[voc.index("horse")] == "animal"
    assert synthetic.super_categories(VOC)[voc.index("sofa")] == "indoor"
    sup = synthetic.super_categories(COCO)
    assert len(set(sup)) == 12 and sup[coco.index("bird")] == "animal"
    assert sup[coco.index("fork")] == "kitchen" and sup[coco.index("toaster")] == "appliance"
    assert sup[coco.index("couch")] == "furniture" and sup[coco.index("teddy bear")] == "indoor"
    assert sum(s == "sports" for s in sup) == 10 and sum(s == "vehicle" for s in sup) == 8


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    for call in (lambda: synthetic.class_names("voc"),
                 lambda: synthetic.generate_dataset("voc", tmp_path / "x"),
                 lambda: synthetic.generated_folder("voc")):
        with pytest.raises(CprflError, match=r"'voc'.*synth-voc-lt, synth-coco-lt"):
            call()
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", [VOC, COCO])
def test_default_label_sets_match_the_benchmark_shape(name: str, label_sets) -> None:
    train, test = label_sets[name]
    num_images, per_image, groups = REAL_SHAPE[name]
    num_classes = len(synthetic.class_names(name))
    y = _multi_hot(train, num_classes)
    target = np.array(synthetic.target_train_counts(name))
    assert len(train) == num_images
    assert np.all(np.abs(y.sum(0) - target) <= 0.03 * target)
    assert np.array_equal(y.sum(0), target)  # the generator hits them exactly
    assert _groups(y.sum(0)) == groups
    assert abs(y.sum(1).mean() - per_image) < 0.03 * per_image
    yt = _multi_hot(test, num_classes)
    assert yt.sum(0).min() >= synthetic.MIN_TEST_POSITIVES >= 30
    assert np.array_equal(yt.sum(0), synthetic.target_test_counts(name))
    assert len(test) == synthetic.SYNTHETIC_DATASETS[name].num_test
    for sets in (train, test):  # non-empty, sorted, no repeats
        assert all(labels and labels == sorted(set(labels)) for labels in sets)


def test_groups_agree_with_metrics_class_groups() -> None:
    metrics = pytest.importorskip("cprfl_lib.metrics")
    for name in (VOC, COCO):
        groups = metrics.class_groups(synthetic.target_train_counts(name))
        assert tuple(int((groups == g).sum()) for g in ("head", "medium", "tail")) == REAL_SHAPE[name][2]


def test_labels_co_occur_plausibly(label_sets) -> None:
    def p(name: str, a: str, given: str) -> float:
        names = synthetic.class_names(name)
        y = _multi_hot(label_sets[name][0], len(names))
        i, j = names.index(a), names.index(given)
        return (y[:, i] & y[:, j]).sum() / y[:, j].sum()

    assert p(VOC, "person", "bicycle") > 0.6 and p(VOC, "chair", "diningtable") > 0.4
    assert p(VOC, "cow", "tvmonitor") == 0 and p(VOC, "sofa", "aeroplane") == 0
    assert p(COCO, "dining table", "fork") > 0.3 and p(COCO, "person", "skis") > 0.6
    assert p(COCO, "giraffe", "toaster") == 0


def test_label_sampling_depends_on_the_seed(label_sets) -> None:
    again = synthetic.sample_label_sets(VOC, seed=0)
    assert again == label_sets[VOC]
    other = synthetic.sample_label_sets(VOC, seed=1)
    assert other[0] != label_sets[VOC][0] and other[1] != label_sets[VOC][1]


def test_super_categories_share_a_body_and_differ_by_parts() -> None:
    sup = synthetic.super_categories(COCO)
    looks = class_looks(sup, synthetic.SYNTHETIC_DATASETS[COCO].templates)
    for s in set(sup):
        members = [looks[c] for c in range(len(sup)) if sup[c] == s]
        assert len({id(look.template) for look in members}) == 1
        parts = {(look.glyph, look.pattern, look.angle, look.anchor) for look in members}
        assert len(parts) == len(members) and len({look.glyph for look in members}) == len(members)
    assert len({id(look.template) for look in looks}) == 12


def test_generated_files_are_in_the_list_format_and_deterministic(tmp_path: Path) -> None:
    kw = dict(seed=0, image_size=32, limit=70)
    a = synthetic.generate_dataset(VOC, tmp_path / "a", workers=1, **kw)
    b = synthetic.generate_dataset(VOC, tmp_path / "b", workers=2, **kw)
    c = synthetic.generate_dataset(VOC, tmp_path / "c", workers=1, **{**kw, "seed": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary leftovers
    assert _tree_hash(a) == _tree_hash(b) != _tree_hash(c)

    labels = (a / "labels.txt").read_text().splitlines()
    assert labels[0] == "aeroplane 0" and labels[19] == "tvmonitor 19" and len(labels) == 20
    assert read_labels(a / "labels.txt") == synthetic.class_names(VOC)
    for split in ("train", "test"):
        lines = (a / f"{split}.txt").read_text().splitlines()
        assert len(lines) == 70 and all(LINE.match(line) for line in lines), lines[:3]
        parsed = read_split(a / f"{split}.txt", 20)
        assert parsed.targets.sum(1).min() >= 1
        image = Image.open(a / parsed.paths[0])
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (32, 32)
        assert np.asarray(image).std() > 5  # something is drawn
        assert all((a / p).is_file() for p in parsed.paths)

    meta = json.loads((a / "GENERATOR.json").read_text())
    assert meta["dataset"] == VOC and meta["seed"] == 0 and meta["image_size"] == 32
    assert meta["version"] == synthetic.GENERATOR_VERSION and meta["limit"] == 70
    assert "not VOC" in meta["note"] and meta["counts"]["train"]["images"] == 70


def test_coco_images_render(tmp_path: Path) -> None:
    out = synthetic.generate_dataset(COCO, tmp_path / "coco", image_size=48, limit=5, workers=1)
    parsed = read_split(out / "train.txt", 80)
    assert len(parsed) == 5 and Image.open(out / parsed.paths[4]).size == (48, 48)


def test_generated_folder_caches_and_regenerates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    out = synthetic.generated_folder(VOC, seed=3, image_size=32, limit=4)
    assert out == tmp_path / "cache" / "synthetic" / f"{VOC}-s3-32px-limit4"
    assert (out / "GENERATOR.json").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an up-to-date dataset")

    with monkeypatch.context() as m:
        m.setattr(synthetic, "generate_dataset", fail)
        assert synthetic.generated_folder(VOC, seed=3, image_size=32, limit=4) == out

    meta = json.loads((out / "GENERATOR.json").read_text())
    (out / "GENERATOR.json").write_text(json.dumps({**meta, "version": "0"}))
    (out / "stale.txt").write_text("from an older generator")
    synthetic.generated_folder(VOC, seed=3, image_size=32, limit=4)
    assert json.loads((out / "GENERATOR.json").read_text())["version"] == synthetic.GENERATOR_VERSION
    assert not (out / "stale.txt").exists()


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CprflError, match="not a generated dataset"):
        synthetic.generate_dataset(VOC, tmp_path / "mine", image_size=32, limit=2)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(CprflError, match="image_size=8"):
        synthetic.generate_dataset(VOC, tmp_path / "small", image_size=8, limit=2)
    with pytest.raises(CprflError, match="limit=0"):
        synthetic.generate_dataset(VOC, tmp_path / "none", limit=0)
    with pytest.raises(CprflError, match="seed=-1"):
        synthetic.sample_label_sets(COCO, seed=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.shared_data
@pytest.mark.parametrize("name,folder", [(VOC, "voc_lt"), (COCO, "coco_lt")])
def test_embedded_numbers_match_the_real_lists(name: str, folder: str, shared_data: Path) -> None:
    names = read_labels(shared_data / folder / "labels.txt")
    assert names == synthetic.class_names(name)
    train = read_split(shared_data / folder / "train.txt", len(names))
    test = read_split(shared_data / folder / "test.txt", len(names))
    spec = synthetic.SYNTHETIC_DATASETS[name]
    assert train.targets.sum(0).tolist() == synthetic.target_train_counts(name)
    assert len(train) == spec.num_train
    assert test.targets.sum(0).tolist() == list(spec.real_test_counts) and len(test) == spec.real_num_test


def test_a_data_root_is_read_never_written(tmp_path: Path, monkeypatch) -> None:
    """A folder the user names must already hold the generated set: nothing is generated into it."""
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    user = tmp_path / "user-folder"
    (user / "VOCdevkit").mkdir(parents=True)
    with pytest.raises(CprflError, match=r"holds no generated synth-voc-lt.*never in a folder you give"):
        synthetic.generated_folder(VOC, user, seed=3, image_size=32, limit=4)
    assert [p.name for p in user.iterdir()] == ["VOCdevkit"] and not (tmp_path / "cache").exists()
    made = synthetic.generated_folder(VOC, seed=3, image_size=32, limit=4)  # in the cache
    shutil.copytree(made, user / made.name)
    assert synthetic.generated_folder(VOC, user, seed=3, image_size=32, limit=4) == user / made.name
    assert synthetic.generated_folder(VOC, user / made.name, seed=3, image_size=32, limit=4) == user / made.name
