"""A user's own dataset (``data.dataset: own``): both formats read alike, every check before work, and the README's
"Your own data" commands as written, through the CLI and ``make reproduce``, on a dataset built here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_error, one_line_error, run_cli
from own_dataset import CLASSES, THRESHOLDS, UNLABELLED_TEST, write_own_dataset

from cprfl_lib.data.benchmarks import load_benchmark
from cprfl_lib.data.own import read_own
from cprfl_lib.train.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
README_PATH = "/path/to/dataset"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time: what "nothing written" compares."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("own")
    return {fmt: write_own_dataset(base / fmt / "birds", fmt) for fmt in ("lists", "coco")}


# ---------------------------------------------------------------- both formats, everything derived


def test_both_formats_give_identical_lists_counts_and_groups(datasets):
    a, b = (load_benchmark("own", data_root=datasets[f], group_thresholds=THRESHOLDS) for f in ("lists", "coco"))
    assert a.name == b.name == "own:birds" and a.is_own and not a.is_synthetic
    assert a.class_names == b.class_names == CLASSES
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert x.paths == y.paths and np.array_equal(x.targets, y.targets), split
    assert a.train_counts.tolist() == b.train_counts.tolist()
    assert a.train_counts.tolist() == sorted(a.train_counts.tolist(), reverse=True)  # long-tailed
    assert a.groups.tolist() == b.groups.tolist() == ["head", "head", "medium", "medium", "tail", "tail"]
    assert int((a.test.targets.sum(1) == 0).sum()) == UNLABELLED_TEST  # allowed, and counted (data info)
    assert read_own(datasets["lists"]).format == "lists" and read_own(datasets["coco"]).format == "coco"
    # the paper's thresholds by default: in a dataset this small, no head class and one medium (33 images)
    assert load_benchmark("own", data_root=datasets["lists"]).groups.tolist() == ["medium"] + ["tail"] * 5


def test_the_recipes_losses_and_prompts_take_the_datasets_classes(datasets):
    from cprfl_lib.losses import ResampleLoss
    from cprfl_lib.train import factory

    config = load_recipe("cpu-own", {"data.data_root": str(datasets["coco"]), "data.group_thresholds": THRESHOLDS,
                                     "loss.name": "db_focal", "loss.params": {}})
    bench = factory.benchmark_from(config)
    loss = factory.loss_from(config, bench)
    assert isinstance(loss, ResampleLoss) and loss.init_bias.shape == (len(CLASSES),)
    # the DB statistics are this dataset's: 1/n_i and the bias -log(N/n_i - 1)·0.05/neg_scale (COCO's neg_scale 2)
    assert np.allclose(loss.freq_inv.numpy(), 1 / bench.train_counts)
    assert np.allclose(loss.init_bias.numpy(), -np.log(len(bench.train) / bench.train_counts - 1) * 0.05 / 2.0,
                       rtol=1e-5)
    assert factory.dataset_family(config) == "coco" and loss.neg_scale == 2.0
    assert load_recipe("paper-own")["data"]["dataset"] == "own"
    one_line_error(lambda: factory.benchmark_from(load_recipe("cpu-own")), "--data-root", "own")
    one_line_error(lambda: load_recipe("cpu-own", {"data.group_thresholds": [20, 100]}), "data.group_thresholds")


def test_data_info_and_check_name_the_dataset(datasets, capsys):
    code, out, _ = run_cli(capsys, "data", "info", "--dataset", "own", "--data-root", datasets["coco"],
                           "--group-thresholds", *THRESHOLDS)
    assert code == 0 and out.startswith("own:birds: 6 classes, 53 train / 18 test images")
    assert f"test {UNLABELLED_TEST}" in out and "validation split: 9 images" in out and "head 2, medium 2, tail 2" in out
    assert all(name in out for name in CLASSES)
    code, out, _ = run_cli(capsys, "data", "check", "--dataset", "own", "--data-root", datasets["lists"])
    assert code == 0 and "all 80 images of own:birds" in out
    code, _, err = run_cli(capsys, "data", "fetch", "--dataset", "own")
    assert code == 2 and "never fetched" in err


# ---------------------------------------------------------------- the checks before work, one line each


def _copy(tmp_path, datasets, fmt: str) -> Path:
    """A copy of the dataset in format ``fmt`` (without images) to damage."""
    return Path(shutil.copytree(datasets[fmt], tmp_path / f"{fmt}-copy", ignore=shutil.ignore_patterns("images")))


lists = pytest.fixture(lambda tmp_path, datasets: _copy(tmp_path, datasets, "lists"), name="lists")
coco = pytest.fixture(lambda tmp_path, datasets: _copy(tmp_path, datasets, "coco"), name="coco")


def _load(folder: Path):
    return lambda: load_benchmark("own", data_root=folder)


# (a class name twice in labels.txt, a bad list line, an empty list file: test_faults.py)
DAMAGE = {  # format, file, the file's text -> the damaged text, what the line names besides the file
    "class name twice": ("coco", "train.json", lambda text: text.replace('"name": "osprey"', '"name": "kingfisher"', 1),
                         ["class name 'kingfisher' appears twice"]),
    "class without training image": ("lists", "train.txt",  # osprey's only images are the lines labelled 5 alone
                                     lambda text: "".join(ln for ln in text.splitlines(True) if ln.split()[1:] != ["5"]),
                                     ["1 class(es) have no training image: osprey"]),
    "image twice in a split": ("lists", "val.txt", lambda text: text + text.splitlines(True)[0],
                               ["listed twice", "images/val/000.jpg"]),
    "empty split": ("coco", "val.json", lambda text: json.dumps({**json.loads(text), "images": [], "annotations": []}),
                    ["empty"]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_dataset_is_one_line_naming_file_and_fault(tmp_path, datasets, damage):
    fmt, name, edit, needles = DAMAGE[damage]
    folder = _copy(tmp_path, datasets, fmt)
    (folder / name).write_text(edit((folder / name).read_text()))
    one_line_error(_load(folder), name, *needles)


def test_image_in_train_and_test_is_leakage_counted_and_named(lists, tmp_path, capsys):
    train = (lists / "train.txt").read_text().splitlines()
    with open(lists / "test.txt", "a") as fh:
        fh.write("\n".join(train[:3]) + "\n")
    msg = one_line_error(_load(lists), "3 image(s) are in both the train and the test split", "leakage",
                         "images/train/000.jpg")
    assert "images/train/002.jpg" in msg
    before = snapshot(lists)
    cli_error(run_cli(capsys, "train", "--recipe", "cpu-own", "--data-root", lists, "--output-dir", tmp_path / "run"),
              "leakage", only=True)  # refused before anything is written
    assert not (tmp_path / "run").exists() and snapshot(lists) == before


def test_coco_annotation_of_unknown_category_or_image(coco):
    data = json.loads((coco / "train.json").read_text())
    data["annotations"][4]["category_id"] = 99
    (coco / "train.json").write_text(json.dumps(data))
    one_line_error(_load(coco), "train.json", "1 annotation(s) name unknown categories", "4: 99")
    data["annotations"][4]["category_id"] = 3
    data["annotations"][7]["image_id"] = 5
    data["annotations"][9]["image_id"] = 6
    (coco / "train.json").write_text(json.dumps(data))
    one_line_error(_load(coco), "train.json", "2 annotation(s) name unknown images", "7: 5", "9: 6")


def test_coco_splits_with_other_categories_and_both_formats_at_once(coco, datasets):
    data = json.loads((coco / "test.json").read_text())
    data["categories"] = data["categories"][1:]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 42]
    (coco / "test.json").write_text(json.dumps(data))
    one_line_error(_load(coco), "test.json", "are not those of train.json")
    shutil.copy(datasets["lists"] / "labels.txt", coco / "labels.txt")
    one_line_error(_load(coco), "holds both list files", "keep one format")
    one_line_error(lambda: load_benchmark("own", data_root=coco / "nowhere"), "does not exist")


def test_missing_and_unreadable_images_are_all_listed(tmp_path, datasets, capsys):
    folder = tmp_path / "mine"
    shutil.copytree(datasets["lists"], folder)
    for name in ("001", "002", "003", "004", "005", "006"):
        (folder / "images" / "train" / f"{name}.jpg").unlink()
    code, out, err = run_cli(capsys, "data", "check", "--dataset", "own", "--data-root", folder)
    assert code == 2 and err.count("\n") == 1 and "6 of 80 images of own:mine are missing" in err, err
    assert all(f"images/train/{n}.jpg: missing" in out for n in ("001", "006")), out
    shutil.copytree(datasets["lists"] / "images", folder / "images", dirs_exist_ok=True)
    for name in ("010", "011"):
        (folder / "images" / "train" / f"{name}.jpg").write_bytes(b"not a jpeg")
    before = snapshot(folder)
    code, out, err = run_cli(capsys, "data", "check", "--dataset", "own", "--data-root", folder, "--deep",
                             "--workers", "0")
    assert code == 2 and "2 of 80 images of own:mine" in err and "cannot be decoded" in err, err
    assert "images/train/010.jpg" in out and "images/train/011.jpg" in out
    assert snapshot(folder) == before  # nothing written in the user's folder


# ---------------------------------------------------------------- the README's commands, as written


def readme_block() -> list[str]:
    """The command lines of the bash block of "## Your own data"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own data"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_commands_run_as_written_on_a_dataset_of_ones_own(tmp_path, cprfl_cache):
    """The CLI lines in a fresh folder, then `make reproduce PROFILE=own` in the checkout, on the lists-format
    dataset (its path in place of /path/to/dataset); nothing written in the dataset's folder or the checkout.

    The dataset is built once in the test cache, at a fixed path: `make reproduce`'s runs (their configurations name
    the folder) are then found finished by the next session, as the other profiles' are."""
    data = cprfl_cache / "own-data" / "birds"
    if not (data / "test.txt").is_file():
        write_own_dataset(tmp_path / "birds", "lists")
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(tmp_path / "birds", data)
    before = snapshot(data)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "CPRFL_RESULTS_ROOT": str(tmp_path / "results")}
    lines = readme_block()
    assert [line.split()[:2] for line in lines] == [["cprfl", "data"], ["cprfl", "data"], ["cprfl", "train"],
                                                    ["cprfl", "evaluate"], ["cprfl", "predict"],
                                                    ["make", "reproduce"]]
    out = {}
    for line in lines:
        command = line.replace(README_PATH, str(data))
        cwd = ROOT if line.startswith("make") else work
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
        print(f"{line}: {time.perf_counter() - start:.0f} s")
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        out[line.split()[1]] = done.stdout
    assert "own:birds: 6 classes" in out["data"] or "decode" in out["data"]
    assert "own:birds (your data), validation split" in out["train"] and "test split" in out["train"]
    metrics = json.loads((work / "runs" / "own" / "metrics.json").read_text())
    assert metrics["dataset"] == "own:birds" and not metrics["synthetic"]
    # the run's own test figures, bit for bit (its frozen backbone's features of the test images, from the cache)
    figures = json.loads(out["evaluate"])
    assert {k: figures[k] for k in ("mAP", "OF1@0.5", "CF1@top3")} == {
        k: metrics["last_epoch"]["model"][k] for k in ("mAP", "OF1@0.5", "CF1@top3")}
    predicted = [line.split(None, 1)[1] for line in out["predict"].splitlines()[1:]]
    assert len(predicted) == 3 and set(predicted) <= set(CLASSES), out["predict"]
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    # make reproduce: notebooks 01, 02, 04, 06, every table named after the dataset, none with a paper column
    results = tmp_path / "results" / "own-mydata"  # an override: a named variant (NAME=mydata)
    manifest = json.loads((results / "manifest.json").read_text())
    assert list(manifest["notebooks"]) == ["01_data_splits", "02_category_embeddings", "04_training",
                                           "06_visualization"]
    assert manifest["notebooks"]["01_data_splits"]["metrics"]["own"]["unlabelled"]["test"] == UNLABELLED_TEST
    assert manifest["notebooks"]["04_training"]["metrics"]["own"]["dataset"] == "own"
    for table in ("table1_own", "group_map", "data_groups"):
        text = (results / "tables" / f"{table}.md").read_text()
        assert "own:birds" in text and "paper mAP" not in text and "VOC-LT result" not in text, table
    table1 = (results / "tables" / "table1_own.md").read_text()
    assert "Δ mAP [95 % CI]" in table1 and "CPRFL-MiniLM" in table1 and "DB Focal" in table1
    assert "head >= 12, medium 4-11, tail < 4" in (results / "tables" / "data_groups.md").read_text()
    assert (results / "figures" / "per_class_ap_vs_count.png").is_file()
    assert not (results / "tables" / "data_generator.csv").exists()  # generated-data statistics: none here
    assert snapshot(data) == before  # nothing written in the user's folder
    assert not (ROOT / "results" / "own").exists()
