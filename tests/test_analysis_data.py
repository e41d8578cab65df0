"""cprfl_repro/analysis/data.py, for notebook 01: choosing real vs generated data, counts, groups, co-occurrence,
the plots."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from matplotlib.figure import Figure

from cprfl_lib.data.benchmarks import Benchmark
from cprfl_lib.data.lists import SplitList
from cprfl_repro.analysis import data
from cprfl_repro.plots import data as plots

# Generated data kept tiny so every choice that falls back costs well under a second.
TINY = {"seed": 0, "image_size": 16, "limit": 12}


pytestmark = pytest.mark.usefixtures("private_cache")


def _bench(train_rows: list[list[int]], test_rows: list[list[int]], names: list[str]) -> Benchmark:
    def split(rows: list[list[int]], tag: str) -> SplitList:
        y = np.zeros((len(rows), len(names)), dtype=np.uint8)
        for i, r in enumerate(rows):
            y[i, r] = 1
        return SplitList(paths=[f"{tag}/{i}.jpg" for i in range(len(rows))], targets=y, source=Path(f"{tag}.txt"))

    return Benchmark(name="toy", class_names=names, train=split(train_rows, "train"),
                     test=split(test_rows, "test"), image_root=None, list_files={})


# ---------------------------------------------------------------- statistics


def test_labels_per_image_and_cooccurrence_known_values_and_bad_targets() -> None:
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=np.uint8)
    assert data.labels_per_image(y).tolist() == [2, 1, 3, 0]
    co = data.cooccurrence(y)
    assert co.tolist() == [[3, 2, 1], [2, 2, 1], [1, 1, 1]]  # diagonal = class counts
    cond = data.conditional_cooccurrence(y)  # P(column | row)
    np.testing.assert_allclose(cond[0], [1.0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(cond[1], [1.0, 1.0, 0.5])
    absent = data.conditional_cooccurrence(np.array([[1, 0], [1, 0]], dtype=np.uint8))  # class 1 never occurs
    assert np.isfinite(absent).all() and absent[1].tolist() == [0.0, 0.0]
    one_line_error(lambda: data.cooccurrence(np.zeros(5)), "2-D")
    one_line_error(lambda: data.labels_per_image(np.array([[2, 0]])), "0/1")


def test_sample_indices_cover_rare_classes_first() -> None:
    rows = [[0]] * 5 + [[0, 1]] + [[2]] + [[0]] * 3
    bench = _bench(rows, [[0]], ["a", "b", "c"])
    picked = data.sample_indices(bench.train, 2)
    assert sorted(picked) == [5, 6]  # the only images holding the rare classes b and c
    assert len(data.sample_indices(bench.train, 20)) == len(rows)  # never more than there are
    assert len(set(data.sample_indices(bench.train, 4))) == 4


# ---------------------------------------------------------------- tables and metrics


def _choice(bench: Benchmark, key: str = "toy") -> data.DataChoice:
    return data.DataChoice(key=key, benchmark=bench, source="generated", reason="test", has_images=False,
                         images_reason="none")


def test_group_and_class_tables_on_a_toy_benchmark() -> None:
    # class a: 120 train images (head), b: 30 (medium), c: 3 (tail)
    train = [[0, 1]] * 30 + [[0]] * 90 + [[2]] * 3
    bench = _bench(train, [[0], [1], [2], [1, 2]], ["a", "b", "c"])
    choices = {"toy": _choice(bench)}
    groups = data.group_table(choices).set_index("group")
    assert groups.loc[["head", "medium", "tail"], "classes"].tolist() == [1, 1, 1]
    assert groups.loc["head", "train labels"] == 120 and groups.loc["tail", "train labels"] == 3
    assert groups.loc["medium", "train images"] == 30 and groups.loc["medium", "test labels"] == 2
    assert groups["train labels %"].sum() == pytest.approx(100.0)
    classes = data.class_count_table(choices)
    assert classes["class"].tolist() == ["a", "b", "c"]  # sorted by training count
    assert classes["train"].tolist() == [120, 30, 3] and classes["test"].tolist() == [1, 2, 2]
    assert classes["group"].tolist() == ["head", "medium", "tail"]


def test_data_metrics_keys_and_values() -> None:
    bench = _bench([[0, 1], [0], [1]], [[0], []], ["a", "b"])
    m = data.data_metrics({"toy": _choice(bench)})["toy"]
    assert m["dataset"] == "toy" and m["source"] == "generated"
    assert (m["n_train"], m["n_test"]) == (3, 2)
    assert m["groups"] == {"head": 0, "medium": 0, "tail": 2}
    assert m["labels_per_image"]["train"] == pytest.approx(4 / 3, abs=1e-4)
    assert m["labels_per_image"]["test"] == pytest.approx(0.5)


# ---------------------------------------------------------------- choosing the data


def test_benchmark_keys() -> None:
    assert data.benchmark_names("voc") == ("voc-lt", "synth-voc-lt")
    assert data.benchmark_names("COCO-LT") == ("coco-lt", "synth-coco-lt")
    assert data.benchmark_names("synth-voc-lt") == (None, "synth-voc-lt")
    one_line_error(lambda: data.benchmark_names("imagenet"), "'imagenet'")


def test_no_lists_anywhere_falls_back_to_generated_and_says_why() -> None:
    choice = data.choose_data("voc", **TINY)
    assert choice.source == "generated" and choice.benchmark.name == "synth-voc-lt"
    assert "not in the cache" in choice.reason and "synth-voc-lt" in choice.reason
    assert "first 12 images" in choice.reason
    assert choice.has_images and len(choice.benchmark.train) == 12


def test_a_list_dir_that_is_not_a_folder_is_an_error_unless_generated_data_is_asked_for(tmp_path: Path) -> None:
    one_line_error(lambda: data.choose_data("voc", list_dir=tmp_path / "missing", **TINY), "missing")
    choice = data.choose_data("synth-voc-lt", list_dir=tmp_path / "missing", **TINY)  # never looks for lists
    assert choice.source == "generated" and "asked for" in choice.reason


@pytest.mark.shared_data
def test_a_parent_folder_gives_each_benchmark_its_sub_folder(shared_data: Path) -> None:
    choices = data.choose_all(["voc", "coco"], list_dir=shared_data, **TINY)
    assert [c.source for c in choices.values()] == ["real", "real"]
    voc = choices["voc"]
    assert voc.benchmark.name == "voc-lt" and len(voc.benchmark.train) == 1142  # limit is for generated only
    assert str(shared_data / "voc_lt") in voc.reason
    assert not voc.has_images and "data_root" in voc.images_reason


@pytest.mark.shared_data
def test_a_parent_folder_without_one_benchmark_falls_back_for_that_one(shared_data: Path, tmp_path: Path) -> None:
    parent = tmp_path / "lists"
    parent.mkdir()
    (parent / "voc_lt").symlink_to(shared_data / "voc_lt")
    choices = data.choose_all(["voc", "coco"], list_dir=parent, **TINY)
    assert choices["voc"].source == "real"
    assert choices["coco"].source == "generated" and "holds no COCO-LT lists" in choices["coco"].reason


@pytest.mark.shared_data
def test_a_dict_and_a_direct_folder(shared_data: Path) -> None:
    choice = data.choose_data("coco", list_dir={"coco": shared_data / "coco_lt"}, **TINY)
    assert choice.source == "real" and choice.benchmark.num_classes == 80
    choice = data.choose_data("voc-lt", list_dir=shared_data / "voc_lt", **TINY)
    assert choice.source == "real" and choice.benchmark.num_classes == 20
    choice = data.choose_data("voc", list_dir={"coco": shared_data / "coco_lt"}, **TINY)
    assert choice.source == "generated" and "no folder for 'voc'" in choice.reason


@pytest.mark.shared_data
def test_lists_fetched_into_the_cache_are_used(shared_data: Path) -> None:
    from cprfl_lib.paths import cache_dir

    target = cache_dir("lists", "voc-lt")
    for role, official in (("train", "voc_lt_train.txt"), ("test", "voc_lt_test.txt"), ("labels", "voc_labels.txt")):
        shutil.copyfile(shared_data / "voc_lt" / f"{role}.txt", target / official)
    choice = data.choose_data("voc", **TINY)
    assert choice.source == "real" and "cache" in choice.reason


@pytest.mark.shared_data
def test_a_user_folder_with_a_wrong_file_is_an_error(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "voc_lt"
    folder.mkdir()
    for role in ("train", "labels"):
        shutil.copyfile(shared_data / "voc_lt" / f"{role}.txt", folder / f"{role}.txt")
    (folder / "test.txt").write_text("VOCdevkit/x.jpg 1\n")
    one_line_error(lambda: data.choose_data("voc", list_dir=folder, **TINY), "test.txt")


@pytest.mark.shared_data
def test_images_of_real_data_are_checked_under_data_root(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    choice = data.choose_data("voc", list_dir=shared_data, data_root=root, **TINY)
    assert not choice.has_images and "1,142 of 1,142 images are missing" in choice.images_reason


@pytest.fixture
def tiny_choices() -> dict[str, data.DataChoice]:
    return data.choose_all(["voc"], seed=0, image_size=16, limit=10)


@pytest.mark.usefixtures("close_figures")
def test_data_plots_return_figures(tiny_choices) -> None:
    choice = tiny_choices["voc"]
    bench = choice.benchmark
    assert isinstance(plots.plot_longtail(bench), Figure)
    assert isinstance(plots.plot_labels_per_image(tiny_choices), Figure)
    assert isinstance(plots.plot_cooccurrence(bench), Figure)
    fig = plots.plot_samples(bench, data.sample_indices(bench.train, 6), ncols=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    assert "generated" in fig._suptitle.get_text()  # generated data is never shown unlabelled
