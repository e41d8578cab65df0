"""The generated default datasets: label statistics, file format, determinism, caching."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

from cprfl_lib.data import synthetic
from cprfl_lib.data.lists import read_labels, read_split
from cprfl_lib.data.synthetic_draw import (
    MEDIUM_AREA,
    SMALL_AREA,
    SceneParams,
    area_summary,
    class_looks,
    render_scene,
)
from cprfl_lib.metrics import class_groups

VOC, COCO = "synth-voc-lt", "synth-coco-lt"
# name -> (train images, labels per image, head/medium/tail sizes)
REAL_SHAPE = {VOC: (1142, 2.05, (6, 6, 8)), COCO: (1909, 4.36, (22, 33, 25))}


@pytest.fixture(scope="module")
def label_sets() -> dict[str, dict[str, list[list[int]]]]:
    return {name: synthetic.sample_label_sets(name, seed=0) for name in (VOC, COCO)}


def _multi_hot(sets: list[list[int]], num_classes: int) -> np.ndarray:
    y = np.zeros((len(sets), num_classes), dtype=int)
    for i, labels in enumerate(sets):
        y[i, labels] = 1
    return y


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


@pytest.mark.parametrize("name", [VOC, COCO])
def test_default_label_sets_match_the_benchmark_shape_in_every_split(name: str, label_sets) -> None:
    train, test = label_sets[name]["train"], label_sets[name]["test"]
    num_images, per_image, groups = REAL_SHAPE[name]
    num_classes = len(synthetic.class_names(name))
    y = _multi_hot(train, num_classes)
    target = np.array(synthetic.target_train_counts(name))
    assert len(train) == num_images
    assert np.array_equal(y.sum(0), target)  # the generator hits them exactly
    assert abs(y.sum(1).mean() - per_image) < 0.03 * per_image
    yt = _multi_hot(test, num_classes)
    assert yt.sum(0).min() >= synthetic.MIN_TEST_POSITIVES >= 30
    assert np.array_equal(yt.sum(0), synthetic.target_test_counts(name))
    assert len(test) == synthetic.SYNTHETIC_DATASETS[name].num_test
    for sets in label_sets[name].values():  # non-empty, sorted, no repeats
        assert all(labels and labels == sorted(set(labels)) for labels in sets)
    metric_groups = class_groups(target)  # the paper's groups (class_groups against the official: test_parity.py)
    assert tuple(int((metric_groups == g).sum()) for g in ("head", "medium", "tail")) == groups
    # validation: the training counts scaled and floored (the tail classes), hit exactly
    spec = synthetic.SYNTHETIC_DATASETS[name]
    want = [max(synthetic.MIN_VAL_POSITIVES, round(n * spec.num_val / spec.num_train)) for n in spec.train_counts]
    assert synthetic.target_val_counts(name) == want
    assert synthetic.MIN_VAL_POSITIVES == 20 and min(want) == 20
    assert len(label_sets[name]["val"]) == spec.num_val == {VOC: 1200, COCO: 1600}[name]
    yv = _multi_hot(label_sets[name]["val"], num_classes)
    assert np.array_equal(yv.sum(0), want)
    # the same shape as the training split, not the test split's: the head classes keep their ranks
    assert set(np.argsort(yv.sum(0), kind="stable")[-3:]) == set(np.argsort(target, kind="stable")[-3:])


def test_labels_co_occur_plausibly(label_sets) -> None:
    def p(name: str, a: str, given: str) -> float:
        names = synthetic.class_names(name)
        y = _multi_hot(label_sets[name]["train"], len(names))
        i, j = names.index(a), names.index(given)
        return (y[:, i] & y[:, j]).sum() / y[:, j].sum()

    assert p(VOC, "person", "bicycle") > 0.6 and p(VOC, "chair", "diningtable") > 0.4
    assert p(VOC, "cow", "tvmonitor") == 0 and p(VOC, "sofa", "aeroplane") == 0
    assert p(COCO, "dining table", "fork") > 0.3 and p(COCO, "person", "skis") > 0.6
    assert p(COCO, "giraffe", "toaster") == 0


def test_super_categories_share_a_body_and_differ_by_parts() -> None:
    sup = synthetic.super_categories(COCO)
    looks = class_looks(sup, synthetic.SYNTHETIC_DATASETS[COCO].templates)
    for s in set(sup):
        members = [looks[c] for c in range(len(sup)) if sup[c] == s]
        assert len({id(look.template) for look in members}) == 1
        parts = {(look.glyph, look.pattern, look.angle, look.anchor) for look in members}
        assert len(parts) == len(members) and len({look.glyph for look in members}) == len(members)
    assert len({id(look.template) for look in looks}) == 12


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """Every split of synth-voc-lt, 70 images each at 32 px, drawn in one process."""
    return synthetic.generate_dataset(VOC, tmp_path_factory.mktemp("gen") / "a", seed=0, image_size=32, limit=70,
                                      workers=1)


def test_generated_files_are_in_the_list_format(generated: Path) -> None:
    a = generated
    labels = (a / "labels.txt").read_text().splitlines()
    assert labels[0] == "aeroplane 0" and labels[19] == "tvmonitor 19" and len(labels) == 20
    assert read_labels(a / "labels.txt") == synthetic.class_names(VOC)
    meta = json.loads((a / "GENERATOR.json").read_text())
    assert meta["dataset"] == VOC and meta["seed"] == 0 and meta["image_size"] == 32
    assert meta["version"] == synthetic.GENERATOR_VERSION and meta["limit"] == 70
    assert "not VOC" in meta["note"] and meta["counts"]["train"]["images"] == 70
    assert meta["splits"] == ["train", "val", "test"] and set(meta["counts"]) == {"train", "val", "test"}
    assert meta["scene"] == synthetic.VOC_SCENE.as_dict() == synthetic.scene_params(VOC).as_dict()
    assert meta["scene"]["object_range"] == list(synthetic.VOC_SCENE.object_range)  # JSON: a list
    for split in ("train", "val", "test"):
        lines = (a / f"{split}.txt").read_text().splitlines()
        assert len(lines) == 70, len(lines)
        assert all(re.fullmatch(rf"images/{split}/\d{{6}}\.jpg( \d+)+", line) for line in lines), lines[:3]
        parsed = read_split(a / f"{split}.txt", 20)
        assert parsed.targets.sum(1).min() >= 1
        image = Image.open(a / parsed.paths[0])
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (32, 32)
        assert np.asarray(image).std() > 5  # something is drawn
        assert all((a / p).is_file() for p in parsed.paths)
        assert len(list((a / "images" / split).iterdir())) == 70
        counts = meta["counts"][split]
        assert counts["class_counts"] == parsed.targets.sum(0).tolist()
        objects = counts["objects"]
        # every label is drawn at least once (more with the extra instances)
        assert objects["instances"] >= sum(counts["class_counts"])
        assert objects["instances_per_image"] == round(objects["instances"] / 70, 3)
        assert objects["small"] + objects["medium"] + objects["large"] == pytest.approx(1, abs=2e-4)
        assert 0 < objects["median_area"] < 1


def test_generated_files_are_deterministic_whatever_the_workers(generated: Path, tmp_path: Path) -> None:
    """The module docstring: the same seed gives byte-identical files whatever the number of workers."""
    kw = dict(seed=0, image_size=32, limit=70)
    b = synthetic.generate_dataset(VOC, tmp_path / "b", workers=2, **kw)  # 70 images: drawn by a process pool
    c = synthetic.generate_dataset(VOC, tmp_path / "c", workers=1, **{**kw, "seed": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]  # no temporary leftovers
    assert _tree_hash(generated) == _tree_hash(b) != _tree_hash(c)


def test_a_scene_does_not_depend_on_a_pickled_copy_of_the_looks() -> None:
    """Worker processes receive the class looks pickled: the scenes they draw must be the same as in-process."""
    import pickle

    spec = synthetic.SYNTHETIC_DATASETS[COCO]
    looks = class_looks(spec.super_categories, spec.templates)
    sup = spec.super_categories
    labels = sorted({sup.index(s) for s in sup})  # one class of every super-category: every template

    def draw(looks_) -> bytes:
        image, areas = render_scene(labels, looks_, 48, np.random.default_rng(5), spec.scene)
        return np.asarray(image).tobytes() + np.asarray(areas).tobytes()

    want = draw(looks)
    for _ in range(6):  # fresh copies, each freed before the next (so object ids are reused)
        copy = pickle.loads(pickle.dumps(looks))
        assert draw(copy) == want
        del copy


def test_coco_images_render(tmp_path: Path) -> None:
    out = synthetic.generate_dataset(COCO, tmp_path / "coco", image_size=48, limit=5, workers=1)
    parsed = read_split(out / "train.txt", 80)
    assert len(parsed) == 5 and Image.open(out / parsed.paths[4]).size == (48, 48)


def test_generated_folder_caches_and_regenerates(tmp_path: Path, monkeypatch, private_cache) -> None:
    out = synthetic.generated_folder(VOC, seed=3, image_size=32, limit=4)
    assert out == tmp_path / "cache" / "synthetic" / f"{VOC}-s3-32px-limit4" and (out / "GENERATOR.json").is_file()
    with monkeypatch.context() as m:
        m.setattr(synthetic, "generate_dataset", lambda *a, **k: pytest.fail("regenerated an up-to-date dataset"))
        assert synthetic.generated_folder(VOC, seed=3, image_size=32, limit=4) == out

    meta = json.loads((out / "GENERATOR.json").read_text())
    (out / "GENERATOR.json").write_text(json.dumps({**meta, "version": "0"}))
    (out / "stale.txt").write_text("from an older generator")
    synthetic.generated_folder(VOC, seed=3, image_size=32, limit=4)
    assert json.loads((out / "GENERATOR.json").read_text())["version"] == synthetic.GENERATOR_VERSION
    assert not (out / "stale.txt").exists()


def test_refuses_unknown_names_bad_arguments_and_a_foreign_folder(tmp_path: Path) -> None:
    for call in (lambda: synthetic.class_names("voc"),
                 lambda: synthetic.generate_dataset("voc", tmp_path / "x"),
                 lambda: synthetic.generated_folder("voc")):
        one_line_error(call, "'voc'", "synth-voc-lt, synth-coco-lt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    one_line_error(lambda: synthetic.generate_dataset(VOC, tmp_path / "mine", image_size=32, limit=2),
                   "not a generated dataset")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    one_line_error(lambda: synthetic.generate_dataset(VOC, tmp_path / "small", image_size=8, limit=2), "image_size=8")
    one_line_error(lambda: synthetic.generate_dataset(VOC, tmp_path / "none", limit=0), "limit=0")
    one_line_error(lambda: synthetic.sample_label_sets(COCO, seed=-1), "seed=-1")
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


def test_a_data_root_is_read_never_written(tmp_path: Path, private_cache) -> None:
    """A folder the user names must already hold the generated set: nothing is generated into it. One with every
    split serves a run without test too; one without test serves only such a run."""
    kw, notest = dict(seed=3, image_size=32, limit=4), ("train", "val")
    user = tmp_path / "user-folder"
    (user / "VOCdevkit").mkdir(parents=True)
    one_line_error(lambda: synthetic.generated_folder(VOC, user, **kw),
                   "holds no generated synth-voc-lt", "never in a folder you give")
    assert [p.name for p in user.iterdir()] == ["VOCdevkit"] and not (tmp_path / "cache").exists()
    made = synthetic.generated_folder(VOC, **kw)  # in the cache
    shutil.copytree(made, user / made.name)
    assert synthetic.generated_folder(VOC, user, **kw) == user / made.name
    assert synthetic.generated_folder(VOC, user / made.name, **kw) == user / made.name
    assert synthetic.generated_folder(VOC, user, **kw, splits=notest) == user / made.name
    partial = synthetic.generated_folder(VOC, **kw, splits=notest)
    assert partial.name == made.name + "-notest"
    only_partial = tmp_path / "user2"
    shutil.copytree(partial, only_partial / partial.name)
    assert synthetic.generated_folder(VOC, only_partial, **kw, splits=notest) == only_partial / partial.name
    one_line_error(lambda: synthetic.generated_folder(VOC, only_partial, **kw), "holds no generated")


# --- the splits ----------------------------------------------------------------------------------------

def test_label_sampling_depends_on_the_seed_and_each_split_is_its_own_stream(label_sets) -> None:
    full = label_sets[VOC]
    assert synthetic.sample_label_sets(VOC, seed=0) == full
    other = synthetic.sample_label_sets(VOC, seed=1)
    assert set(other) == set(full) == {"train", "val", "test"}
    for split in ("train", "val", "test"):
        assert other[split] != full[split], split
    only = synthetic.sample_label_sets(VOC, seed=0, splits=("val",))
    assert list(only) == ["val"] and only["val"] == full["val"]  # no matter which other splits are drawn
    assert synthetic.sample_label_sets(VOC, 0, ("train", "val")) == {"train": full["train"], "val": full["val"]}
    assert synthetic.sample_label_sets(VOC, 0, ("test",))["test"] == full["test"]
    n = min(len(full["train"]), len(full["val"]))
    assert full["val"][:n] != full["train"][:n]  # another random stream than the training split's
    same = sum(a == b for a, b in zip(full["val"], full["train"]))
    assert same < 0.5 * n
    assert synthetic.SPLIT_STREAMS == {"train": 0, "test": 1, "val": 2}  # train/test keep the version-1 streams


@pytest.mark.parametrize("bad", [("val", "test"), ("train", "train"), ("train", "dev"), ()])
def test_splits_are_checked(tmp_path: Path, bad) -> None:
    one_line_error(lambda: synthetic.generate_dataset(VOC, tmp_path / "x", image_size=32, limit=2, splits=bad),
                   "give 'train'")
    one_line_error(lambda: synthetic.folder_name(VOC, splits=bad), "give 'train'")
    assert not any(tmp_path.iterdir())


# --- folder names, defaults ------------------------------------------------------------------------

def test_folder_names_say_what_differs_from_the_default() -> None:
    import inspect

    assert synthetic.folder_name(VOC) == f"{VOC}-s0-224px"  # the default image size is 224
    for fn in (synthetic.generate_dataset, synthetic.generated_folder, synthetic.folder_name):
        assert inspect.signature(fn).parameters["image_size"].default == 224, fn.__name__
    assert synthetic.folder_name(VOC, 3, 32, 4, splits=("train", "val")) == f"{VOC}-s3-32px-limit4-notest"
    assert synthetic.folder_name(VOC, splits=("train", "test")) == f"{VOC}-s0-224px-noval"
    assert synthetic.folder_name(VOC, splits=("train",)) == f"{VOC}-s0-224px-noval-notest"
    assert synthetic.folder_name(VOC, splits=("test", "val", "train")) == f"{VOC}-s0-224px"  # order is free
    scened = synthetic.folder_name(VOC, scene={"decoys": 0.0})
    assert re.fullmatch(rf"{VOC}-s0-224px-scene[0-9a-f]{{8}}", scened)
    fields = json.dumps(synthetic.scene_params(VOC, {"decoys": 0.0}).as_dict(), sort_keys=True)
    assert scened.endswith(hashlib.sha256(fields.encode()).hexdigest()[:8])
    assert synthetic.folder_name(VOC, scene={"decoys": 0.0}) == scened  # stable
    assert synthetic.folder_name(VOC, scene={"decoys": 0.5}) != scened
    assert synthetic.folder_name(VOC, scene={}) == synthetic.folder_name(VOC)  # nothing changed
    both = synthetic.folder_name(VOC, scene={"decoys": 0.0}, splits=("train", "val"))
    assert both == scened + "-notest"


# --- the scene model -------------------------------------------------------------------------------

def test_scene_params_overrides_and_refusals() -> None:
    assert synthetic.scene_params(VOC) == synthetic.VOC_SCENE == synthetic.SYNTHETIC_DATASETS[VOC].scene
    assert synthetic.scene_params(COCO) == synthetic.COCO_SCENE and synthetic.scene_params(COCO, {}) == synthetic.COCO_SCENE
    # COCO's objects are smaller and more numerous than VOC's
    assert synthetic.COCO_SCENE.object_median < synthetic.VOC_SCENE.object_median
    assert synthetic.COCO_SCENE.extra_instances > synthetic.VOC_SCENE.extra_instances
    changed = synthetic.scene_params(VOC, {"decoys": 0.0, "object_range": [0.2, 0.3], "clutter": [1, 2]})
    assert changed.decoys == 0.0 and changed.object_range == (0.2, 0.3) and changed.clutter == (1, 2)  # lists: tuples
    others = {k: v for k, v in changed.__dict__.items() if k not in ("decoys", "object_range", "clutter")}
    assert others == {k: v for k, v in synthetic.VOC_SCENE.__dict__.items() if k in others}
    assert synthetic.VOC_SCENE.decoys == 1.0  # the base is left alone
    assert changed.as_dict()["object_range"] == [0.2, 0.3]
    one_line_error(lambda: synthetic.scene_params(VOC, {"decoy": 0, "colour": 1, "clutter": [1, 2]}),
                   "unknown field(s) ['colour', 'decoy']", "known: ", "decoys")


def test_area_summary_uses_cocos_size_classes() -> None:
    assert SMALL_AREA == 32**2 / (640 * 480) and MEDIUM_AREA == 96**2 / (640 * 480)
    s, m = SMALL_AREA, MEDIUM_AREA
    areas = [[s / 2, s, (s + m) / 2], [m, 0.5], []]  # a threshold itself belongs to the class above it
    got = area_summary(areas)
    assert got == {"instances": 5, "instances_per_image": round(5 / 3, 3), "small": 0.2, "medium": 0.4,
                   "large": 0.4, "median_area": round((s + m) / 2, 5)}
    assert got["small"] + got["medium"] + got["large"] == 1
    assert area_summary([[s * 0.99] * 3, [m * 1.01]]) == {"instances": 4, "instances_per_image": 2.0, "small": 0.75,
                                                          "medium": 0.0, "large": 0.25,
                                                          "median_area": round(s * 0.99, 5)}
    assert area_summary([]) == {"instances": 0} and area_summary([[], []]) == {"instances": 0}


def test_render_scene_returns_one_area_per_instance_drawn() -> None:
    spec = synthetic.SYNTHETIC_DATASETS[COCO]
    looks = class_looks(spec.super_categories, spec.templates)
    labels = [0, 2, 17, 40]

    def areas(**fields) -> list[float]:
        params = SceneParams(**{**spec.scene.__dict__, **fields})
        out = []
        for seed in range(8):
            image, a = render_scene(labels, looks, 64, np.random.default_rng(seed), params)
            assert image.size == (64, 64) and image.mode == "RGB"
            out.append(a)
        return out

    single = areas(extra_instances=0.0, decoys=3.0)  # one instance per label; decoys are not counted
    assert all(len(a) == len(labels) for a in single)
    assert all(0 < x <= 1 for a in single for x in a)
    many = areas(extra_instances=3.0)
    assert sum(map(len, many)) > 2 * sum(map(len, single))
    fixed = {f: areas(object_median=f, object_sigma=0.0, object_range=(f, f), extra_instances=0.0) for f in (0.1, 0.3)}
    small, large = (np.median([x for a in fixed[f] for x in a]) for f in (0.1, 0.3))
    assert 4 < large / small < 16  # areas grow as the size squared (9x)
    assert 0.5 * 0.3**2 < large < 3 * 0.3**2
    first, again = (render_scene(labels, looks, 64, np.random.default_rng(0), spec.scene) for _ in range(2))
    assert np.array_equal(np.asarray(again[0]), np.asarray(first[0])) and again[1] == first[1]


# --- splits left out, a changed scene, the cache ---------------------------------------------------

def test_a_notest_folder_holds_no_test_split(tmp_path: Path, private_cache) -> None:
    # 20 images a split: drawn in this process (see the workers test for the process pool)
    generated = synthetic.generate_dataset(VOC, tmp_path / "full", seed=0, image_size=32, limit=20, workers=1)
    out = synthetic.generated_folder(VOC, seed=0, image_size=32, limit=20, splits=("train", "val"))
    assert out == tmp_path / "cache" / "synthetic" / f"{VOC}-s0-32px-limit20-notest"
    assert sorted(p.name for p in out.iterdir()) == ["GENERATOR.json", "images", "labels.txt", "train.txt", "val.txt"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["train", "val"]
    meta = json.loads((out / "GENERATOR.json").read_text())
    assert meta["splits"] == ["train", "val"] and set(meta["counts"]) == {"train", "val"}
    # a split's images do not depend on which other splits are drawn: the same bytes as the full set's
    for split in ("train", "val"):
        assert (out / f"{split}.txt").read_bytes() == (generated / f"{split}.txt").read_bytes()
        for p in ("000001.jpg", "000020.jpg"):
            assert (out / "images" / split / p).read_bytes() == (generated / "images" / split / p).read_bytes()
        assert meta["counts"][split] == json.loads((generated / "GENERATOR.json").read_text())["counts"][split]


def test_a_changed_scene_is_its_own_dataset(tmp_path: Path, private_cache) -> None:
    kw = dict(seed=0, image_size=32, limit=3, splits=("train",))
    base = synthetic.generated_folder(VOC, **kw)
    plain = synthetic.generated_folder(VOC, **kw, scene={"decoys": 0.0, "extra_instances": 0.0})
    assert plain.parent == base.parent and plain.name.startswith(f"{VOC}-s0-32px-limit3-scene")
    assert plain.name.endswith("-noval-notest")
    meta = json.loads((plain / "GENERATOR.json").read_text())
    assert meta["scene"] == {**synthetic.VOC_SCENE.as_dict(), "decoys": 0.0, "extra_instances": 0.0}
    counts = meta["counts"]["train"]
    assert counts["objects"]["instances"] == sum(counts["class_counts"])  # one instance per label, exactly
    assert (plain / "train.txt").read_bytes() == (base / "train.txt").read_bytes()  # the same labels ...
    img = "images/train/000001.jpg"
    assert (plain / img).read_bytes() != (base / img).read_bytes()  # ... drawn otherwise
    one_line_error(lambda: synthetic.generated_folder(VOC, **kw, scene={"decoy": 0}), "unknown field")
    one_line_error(lambda: synthetic.generate_dataset(VOC, tmp_path / "x", image_size=32, limit=2, scene={"decoy": 0}),
                   "unknown field")
    assert not (tmp_path / "x").exists()
