"""Split lists: fetching with pinned checksums, parsing, and the facts of the published benchmarks."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from cprfl_lib.data import lists as splits
from cprfl_lib.data.benchmarks import Benchmark, load_benchmark
from cprfl_lib.data.lists import BenchmarkSpec, fetch_split_lists, read_labels, read_split
from cprfl_lib.errors import CprflError

VOC_COUNTS = [6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5, 82, 7, 64]
VOC_HEAD = {"bottle", "car", "chair", "diningtable", "person", "pottedplant"}
VOC_MEDIUM = {"bicycle", "cat", "dog", "motorbike", "sofa", "tvmonitor"}


# ---------------------------------------------------------------- the published lists


@pytest.fixture
def voc(shared_data: Path) -> Benchmark:
    return load_benchmark("voc-lt", list_dir=shared_data / "voc_lt", download=False)


@pytest.fixture
def coco(shared_data: Path) -> Benchmark:
    return load_benchmark("coco-lt", list_dir=shared_data / "coco_lt", download=False)


def test_fetch_reads_a_user_folder_with_short_names(shared_data: Path) -> None:
    files = fetch_split_lists("voc-lt", list_dir=shared_data / "voc_lt", download=False)
    assert files == {role: shared_data / "voc_lt" / f"{role}.txt" for role in ("train", "test", "labels")}
    for role, path in files.items():
        assert splits.sha256_file(path) == splits.SPECS["voc-lt"].files[role].sha256


def test_fetch_accepts_official_names(shared_data: Path, tmp_path: Path) -> None:
    for role, official in [("train", "coco_lt_train.txt"), ("test", "coco_lt_test.txt"), ("labels", "coco_labels.txt")]:
        shutil.copy(shared_data / "coco_lt" / f"{role}.txt", tmp_path / official)
    files = fetch_split_lists("coco-lt", list_dir=tmp_path, download=False)
    assert files["labels"] == tmp_path / "coco_labels.txt"


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


def test_coco_lt_facts(coco: Benchmark) -> None:
    assert (len(coco.train), len(coco.test), coco.num_classes) == (1909, 5000, 80)
    assert coco.class_names[9] == "traffic light"
    assert coco.class_names[38] == "tennis racket"
    assert int((coco.test.targets.sum(axis=1) == 0).sum()) == 48
    assert (coco.train.targets.sum(axis=1) > 0).all()
    counts = coco.train_counts
    assert (counts.max(), counts.min()) == (1128, 6)
    assert counts[24] == 100 and counts[8] == 20 and counts[38] == 20 and counts[14] == 19


def test_groups_voc(voc: Benchmark) -> None:
    groups = voc.groups
    assert [int((groups == g).sum()) for g in ("head", "medium", "tail")] == [6, 6, 8]
    names = np.array(voc.class_names)
    assert set(names[groups == "head"]) == VOC_HEAD
    assert set(names[groups == "medium"]) == VOC_MEDIUM


def test_groups_coco(coco: Benchmark) -> None:
    groups = coco.groups
    assert [int((groups == g).sum()) for g in ("head", "medium", "tail")] == [22, 33, 25]
    names = coco.class_names
    assert groups[names.index("backpack")] == "head"
    for medium in ("boat", "tennis racket"):
        assert groups[names.index(medium)] == "medium"
    assert groups[names.index("bird")] == "tail"


def _copy_lists(shared_data: Path, folder: Path, benchmark: str = "voc_lt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for role in ("train", "test", "labels"):
        shutil.copy(shared_data / benchmark / f"{role}.txt", folder / f"{role}.txt")
    return folder


def test_tampered_copy_fails_checksum_and_is_left_alone(shared_data: Path, tmp_path: Path) -> None:
    _copy_lists(shared_data, tmp_path)
    train = tmp_path / "train.txt"
    train.write_text(train.read_text().replace(" 14 4 19", " 14 4", 1))
    before = train.read_bytes()
    with pytest.raises(CprflError, match=r"train\.txt: sha256 .* is not that of the published voc_lt_train\.txt") as info:
        fetch_split_lists("voc-lt", list_dir=tmp_path, download=False)
    assert "replace it with the published file" in str(info.value) and "delete" not in str(info.value)
    assert train.read_bytes() == before
    # read_split itself never checks sums: a hand-edited list still parses.
    assert len(read_split(train, 20)) == 1142


def test_the_other_benchmarks_lists_are_named_for_what_they_are(shared_data: Path, tmp_path: Path) -> None:
    """A COCO-LT list folder given for VOC-LT: both sides named, no advice to delete a verified file."""
    coco = _copy_lists(shared_data, tmp_path / "coco", "coco_lt")
    with pytest.raises(CprflError, match=r"holds the coco-lt lists, not voc-lt's") as info:
        fetch_split_lists("voc-lt", list_dir=coco, download=False)  # short names, told apart by content
    assert "delete" not in str(info.value)
    official = tmp_path / "official"
    official.mkdir()
    for role, name in (("train", "coco_lt_train.txt"), ("test", "coco_lt_test.txt"), ("labels", "coco_labels.txt")):
        shutil.copy(coco / f"{role}.txt", official / name)
    with pytest.raises(CprflError, match=r"holds the coco-lt lists, not voc-lt's"):
        fetch_split_lists("voc-lt", list_dir=official, download=False)
    mixed = _copy_lists(shared_data, tmp_path / "mixed")
    shutil.copy(coco / "train.txt", mixed / "train.txt")
    with pytest.raises(CprflError, match=r"train\.txt is the published coco-lt train list, not voc-lt's train list"):
        fetch_split_lists("voc-lt", list_dir=mixed, download=False)


@pytest.mark.parametrize("names", [("voc_lt", "coco_lt"), ("voc", "coco"), ("voc-lt", "coco-lt")])
def test_a_parent_folder_holds_both_benchmarks(shared_data: Path, tmp_path: Path, names) -> None:
    _copy_lists(shared_data, tmp_path / names[0], "voc_lt")
    _copy_lists(shared_data, tmp_path / names[1], "coco_lt")
    assert fetch_split_lists("voc-lt", list_dir=tmp_path)["train"] == tmp_path / names[0] / "train.txt"
    assert fetch_split_lists("coco-lt", list_dir=tmp_path)["labels"] == tmp_path / names[1] / "labels.txt"
    assert splits.list_folder("coco-lt", tmp_path / names[1]) == tmp_path / names[1]


def test_a_folder_without_the_lists_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(CprflError, match=r"holds no voc-lt lists .*voc_lt_train\.txt or train\.txt.*voc_lt/"):
        fetch_split_lists("voc-lt", list_dir=tmp_path)
    with pytest.raises(CprflError, match="does not exist"):
        fetch_split_lists("voc-lt", list_dir=tmp_path / "nope")
    (tmp_path / "labels.txt").write_text("x 0\n")
    with pytest.raises(CprflError, match=r"lacks the voc-lt list\(s\) voc_lt_train\.txt, voc_lt_test\.txt"):
        fetch_split_lists("voc-lt", list_dir=tmp_path)


def test_install_copies_a_verified_user_copy_into_the_cache(shared_data: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    user = _copy_lists(shared_data, tmp_path / "lists" / "coco_lt", "coco_lt")
    before = {p.name: p.read_bytes() for p in user.iterdir()}
    calls = _offline(monkeypatch)
    installed = splits.install_split_lists("coco-lt", tmp_path / "lists")
    assert installed["train"] == tmp_path / "cache" / "lists" / "coco-lt" / "coco_lt_train.txt"
    assert fetch_split_lists("coco-lt", download=False) == installed  # later runs need no --list-dir
    assert {p.name: p.read_bytes() for p in user.iterdir()} == before and calls == []


def test_labels_count_must_match_spec(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the COCO labels are VOC's: checksums pass, the class count does not.
    spec = splits.SPECS["voc-lt"]
    coco_sums = {r: splits.SPECS["coco-lt"].files[r].sha256 for r in ("train", "test", "labels")}
    fake = BenchmarkSpec("voc-lt", 20, {r: splits.ListFile(f.url, coco_sums[r], f.filename, f.alias)
                                        for r, f in spec.files.items()}, spec.folders)
    monkeypatch.setitem(splits.SPECS, "voc-lt", fake)
    for sha in coco_sums.values():
        monkeypatch.setitem(splits.PUBLISHED, sha, ("voc-lt", "?"))
    with pytest.raises(CprflError, match=r"labels\.txt: 80 classes, but voc-lt has 20"):
        load_benchmark("voc-lt", list_dir=shared_data / "coco_lt", download=False)


# ---------------------------------------------------------------- fetching without network


def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def fail(url: str, timeout: float | None = None):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(splits.urllib.request, "urlopen", fail)
    return calls


def test_no_network_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path))
    calls = _offline(monkeypatch)
    with pytest.raises(CprflError) as info:
        fetch_split_lists("coco-lt")
    msg = str(info.value)
    url = "https://raw.githubusercontent.com/jiexuanyan/CPRFL/main/data/coco/coco_labels.txt"
    assert calls == [url]
    assert f"could not download {url}" in msg and "Name or service not known" in msg
    assert "--list-dir" in msg and str(tmp_path / "lists" / "coco-lt" / "coco_labels.txt") in msg
    assert list((tmp_path / "lists" / "coco-lt").iterdir()) == []  # nothing half-written


def test_refused_connection(tmp_path: Path) -> None:
    # No mock: a refused connection (nothing listens on the local discard port) is a CprflError.
    entry = splits.ListFile("http://127.0.0.1:9/voc_labels.txt", "0" * 64, "voc_labels.txt", "labels.txt")
    with pytest.raises(CprflError, match="could not download http://127.0.0.1:9/voc_labels.txt"):
        splits._download(entry, tmp_path / "voc_labels.txt", timeout=2.0)
    assert not (tmp_path / "voc_labels.txt").exists()


class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def read(self) -> bytes:
        return self.data


def test_download_verifies_and_writes_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     shared_data: Path) -> None:
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path))
    sources = {f.url: shared_data / "voc_lt" / f"{r}.txt" for r, f in splits.SPECS["voc-lt"].files.items()}
    monkeypatch.setattr(splits.urllib.request, "urlopen", lambda url, timeout=None: _Response(sources[url].read_bytes()))
    files = fetch_split_lists("voc-lt")
    folder = tmp_path / "lists" / "voc-lt"
    assert sorted(p.name for p in folder.iterdir()) == ["voc_labels.txt", "voc_lt_test.txt", "voc_lt_train.txt"]
    assert files["train"].read_bytes() == (shared_data / "voc_lt" / "train.txt").read_bytes()

    # A damaged cached copy is fetched again; a server that returns something else is refused.
    files["test"].write_text("damaged\n")
    assert fetch_split_lists("voc-lt")["test"].read_bytes() == (shared_data / "voc_lt" / "test.txt").read_bytes()
    files["test"].write_text("damaged\n")
    with pytest.raises(CprflError, match=r"cached copy of voc_lt_test\.txt is damaged.*cprfl data fetch"):
        fetch_split_lists("voc-lt", download=False)
    monkeypatch.setattr(splits.urllib.request, "urlopen", lambda url, timeout=None: _Response(b"nope\n"))
    with pytest.raises(CprflError, match="gave sha256"):
        fetch_split_lists("voc-lt")
    assert files["test"].read_text() == "damaged\n"  # the refused download did not replace anything


def test_download_false_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path))
    calls = _offline(monkeypatch)
    with pytest.raises(CprflError, match=r"voc-lt labels list is not in the cache .*cprfl data fetch"):
        fetch_split_lists("voc-lt", download=False)
    assert calls == []


def test_unknown_benchmark_lists_known_ones() -> None:
    with pytest.raises(CprflError, match="voc-lt, coco-lt, synth-voc-lt, synth-coco-lt"):
        load_benchmark("imagenet-lt")
    with pytest.raises(CprflError, match="unknown benchmark 'nus'"):
        fetch_split_lists("nus")


# ---------------------------------------------------------------- parsing hand-made lists


def test_messy_but_valid_files(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"cat 0\r\ntraffic light 1 \r\n  hair   drier 2\r\n\r\n")
    assert read_labels(labels) == ["cat", "traffic light", "hair   drier"]
    lst = tmp_path / "train.txt"
    lst.write_bytes(b"a/1.jpg 0 2 \r\nb/2.jpg\r\nc/3.jpg 1 1  \r\nd/4.jpg 2")  # CRLF, trailing spaces, no final newline
    split = read_split(lst, 3)
    assert split.paths == ["a/1.jpg", "b/2.jpg", "c/3.jpg", "d/4.jpg"]
    assert split.targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert split.targets.dtype == np.uint8 and split.source == lst
    lst.write_text("a/1.jpg 0\nb/2.jpg 1\n\n\n  \n")  # blank trailing lines
    assert len(read_split(lst, 3)) == 2


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("a.jpg 0\nb.jpg x1\n", r"train\.txt:2: label 'x1' is not an integer"),
        ("a.jpg 0\nb.jpg 1\nc.jpg 3\n", r"train\.txt:3: label 3 is out of range 0\.\.2"),
        ("a.jpg -1\n", r"train\.txt:1: label -1 is out of range"),
        ("a.jpg 0\n\n4 2\n", r"train\.txt:3: no image path \(the line starts with '4'\)"),
        ("\n \n", r"train\.txt: the list is empty"),
    ],
)
def test_malformed_split_lines(tmp_path: Path, content: str, pattern: str) -> None:
    path = tmp_path / "train.txt"
    path.write_text(content)
    with pytest.raises(CprflError, match=pattern):
        read_split(path, 3)


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("cat 0\ndog 2\n", r"labels\.txt:2: class index '2' should be 1"),
        ("cat 0\ndog\n", r"labels\.txt:2: expected 'class name INDEX', got 'dog'"),
        ("cat 0\nbig dog one\n", r"labels\.txt:2: class index 'one' should be 1"),
        ("cat 0\ncat 1\n", r"labels\.txt:2: class name 'cat' appears twice"),
        ("\n", r"labels\.txt: no class names"),
    ],
)
def test_malformed_labels(tmp_path: Path, content: str, pattern: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_text(content)
    with pytest.raises(CprflError, match=pattern):
        read_labels(path)


def test_missing_file_is_a_cprfl_error(tmp_path: Path) -> None:
    with pytest.raises(CprflError, match="nope.txt: file not found"):
        read_split(tmp_path / "nope.txt", 3)


# ---------------------------------------------------------------- generated benchmarks


def test_synthetic_uses_generated_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cprfl_lib.data import synthetic

    folder = tmp_path / "synth"
    folder.mkdir()
    (folder / "labels.txt").write_text("a 0\nb 1\n")
    (folder / "train.txt").write_text("img/0.jpg 0\nimg/1.jpg 0 1\nimg/2.jpg 0\n")
    (folder / "test.txt").write_text("img/3.jpg 1\n")
    seen: list[tuple] = []

    def generated_folder(name: str, data_root=None, **options) -> Path:
        seen.append((name, data_root, options))
        return folder

    monkeypatch.setattr(synthetic, "generated_folder", generated_folder)
    bench = load_benchmark("synth-voc-lt", data_root=tmp_path, synthetic_options={"seed": 3})
    assert seen == [("synth-voc-lt", tmp_path, {"seed": 3, "splits": ("train", "val", "test")})]
    assert bench.is_synthetic and bench.image_root == folder and bench.list_files["labels"] == folder / "labels.txt"
    assert bench.train_counts.tolist() == [3, 1] and bench.val is None
    with pytest.raises(CprflError, match="drop --list-dir"):
        load_benchmark("synth-coco-lt", list_dir=tmp_path)
    with pytest.raises(CprflError, match="apply only to synth"):
        load_benchmark("voc-lt", synthetic_options={"seed": 1})


def _fake_generated(folder: Path, splits=("train", "val", "test")) -> Path:
    folder.mkdir()
    (folder / "labels.txt").write_text("a 0\nb 1\n")
    lines = {"train": "img/0.jpg 0\nimg/1.jpg 0 1\nimg/2.jpg 0\n", "val": "img/4.jpg 0\nimg/5.jpg 1\n",
             "test": "img/3.jpg 1\n"}
    for split in splits:
        (folder / f"{split}.txt").write_text(lines[split])
    return folder


def test_eval_splits_of_a_generated_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cprfl_lib.data import synthetic

    full, notest = _fake_generated(tmp_path / "full"), _fake_generated(tmp_path / "notest", ("train", "val"))
    seen: list[dict] = []

    def generated_folder(name: str, data_root=None, **options) -> Path:
        seen.append(options)
        return notest if "test" not in options["splits"] else full

    monkeypatch.setattr(synthetic, "generated_folder", generated_folder)
    both = load_benchmark("synth-voc-lt")
    assert both.evaluated is None and list(both.eval_splits) == ["val", "test"]
    assert both.eval_splits["val"].targets.tolist() == [[1, 0], [0, 1]] and len(both.eval_splits["test"]) == 1
    assert both.list_files["val"] == full / "val.txt"

    val = load_benchmark("synth-voc-lt", eval_splits=["val"])  # drawn without its test split
    assert seen[-1]["splits"] == ("train", "val")
    assert val.test is None and val.evaluated == ("val",) and list(val.eval_splits) == ["val"]
    assert "test" not in val.list_files and val.image_root == notest and val.train_counts.tolist() == [3, 1]

    test = load_benchmark("synth-voc-lt", eval_splits=["test"])  # drawn without its validation split
    assert seen[-1]["splits"] == ("train", "test")
    assert list(test.eval_splits) == ["test"]  # the full folder has a val split: it is read, not evaluated
    assert test.val is not None and test.evaluated == ("test",)
    assert list(load_benchmark("synth-voc-lt", eval_splits=["test", "val"]).eval_splits) == ["val", "test"]

    # the caller's own choice of splits is kept
    load_benchmark("synth-voc-lt", eval_splits=["val"], synthetic_options={"splits": ("train", "val", "test")})
    assert seen[-1]["splits"] == ("train", "val", "test")


def test_asking_for_a_split_that_does_not_exist_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cprfl_lib.data import synthetic

    folders = {"novel": _fake_generated(tmp_path / "a", ("train", "test")),
               "notest": _fake_generated(tmp_path / "b", ("train", "val"))}
    pick = {"folder": folders["novel"]}
    monkeypatch.setattr(synthetic, "generated_folder", lambda name, data_root=None, **options: pick["folder"])
    with pytest.raises(CprflError, match="synth-voc-lt has no validation split to evaluate"):
        load_benchmark("synth-voc-lt", eval_splits=["val"])
    bench = load_benchmark("synth-voc-lt")  # by default, the splits that are there
    assert bench.val is None and list(bench.eval_splits) == ["test"]
    pick["folder"] = folders["notest"]
    with pytest.raises(CprflError, match="synth-voc-lt has no test split to evaluate"):
        load_benchmark("synth-voc-lt", eval_splits=["val", "test"])
    with pytest.raises(CprflError, match="no test split"):  # by default the test split is required
        load_benchmark("synth-voc-lt")


def test_a_published_benchmark_has_no_validation_split(shared_data: Path) -> None:
    with pytest.raises(CprflError, match=r"voc-lt has no validation split.*data\.eval_splits"):
        load_benchmark("voc-lt", list_dir=shared_data / "voc_lt", download=False, eval_splits=["val"])
    bench = load_benchmark("voc-lt", list_dir=shared_data / "voc_lt", download=False, eval_splits=["test"])
    assert list(bench.eval_splits) == ["test"] and bench.val is None and len(bench.test) == 4952


def test_benchmark_eval_splits_follow_evaluated(tmp_path: Path) -> None:
    one = splits.SplitList(paths=["x.jpg"], targets=np.array([[1, 0]], dtype=np.uint8), source=tmp_path / "x.txt")
    kw = dict(name="x", class_names=["a", "b"], train=one, image_root=None, list_files={})
    assert list(Benchmark(test=one, val=one, **kw).eval_splits) == ["val", "test"]
    assert list(Benchmark(test=one, val=None, **kw).eval_splits) == ["test"]
    assert list(Benchmark(test=one, val=one, evaluated=("test",), **kw).eval_splits) == ["test"]
    assert list(Benchmark(test=None, val=one, evaluated=("val",), **kw).eval_splits) == ["val"]
    assert list(Benchmark(test=None, val=one, **kw).eval_splits) == ["val"]
