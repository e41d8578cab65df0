"""Split lists (cprfl_lib/data/lists.py): fetching with pinned checksums, installing a user's copy, parsing. (The
benchmarks they make: test_benchmarks.py; a list with another checksum, malformed list lines: test_faults.py.)"""

from __future__ import annotations

import io
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from cprfl_lib.data import lists
from cprfl_lib.data.lists import fetch_split_lists, read_labels, read_split

# ---------------------------------------------------------------- the published lists


def _copy_lists(shared_data: Path, folder: Path, benchmark: str = "voc_lt", official: bool = False) -> Path:
    """The benchmark's three lists into ``folder``, under their short or their ``official`` names."""
    folder.mkdir(parents=True, exist_ok=True)
    for role in ("train", "test", "labels"):
        name = lists.SPECS[benchmark.replace("_", "-")].files[role].filename if official else f"{role}.txt"
        shutil.copy(shared_data / benchmark / f"{role}.txt", folder / name)
    return folder


def test_fetch_reads_a_user_folder_with_short_or_official_names(shared_data: Path, tmp_path: Path) -> None:
    files = fetch_split_lists("voc-lt", list_dir=shared_data / "voc_lt", download=False)
    assert files == {role: shared_data / "voc_lt" / f"{role}.txt" for role in ("train", "test", "labels")}
    _copy_lists(shared_data, tmp_path, "coco_lt", official=True)
    assert fetch_split_lists("coco-lt", list_dir=tmp_path, download=False)["labels"] == tmp_path / "coco_labels.txt"


def test_the_other_benchmarks_lists_are_named_for_what_they_are(shared_data: Path, tmp_path: Path) -> None:
    """A COCO-LT list folder given for VOC-LT: both sides named, no advice to delete a verified file."""
    coco = _copy_lists(shared_data, tmp_path / "coco", "coco_lt")
    message = one_line_error(lambda: fetch_split_lists("voc-lt", list_dir=coco, download=False),  # short names, told
                             "holds the coco-lt lists, not voc-lt's")  # apart by content
    assert "delete" not in message
    official = _copy_lists(shared_data, tmp_path / "official", "coco_lt", official=True)
    one_line_error(lambda: fetch_split_lists("voc-lt", list_dir=official, download=False),
                   "holds the coco-lt lists, not voc-lt's")
    mixed = _copy_lists(shared_data, tmp_path / "mixed")
    shutil.copy(coco / "train.txt", mixed / "train.txt")
    one_line_error(lambda: fetch_split_lists("voc-lt", list_dir=mixed, download=False),
                   "train.txt is the published coco-lt train list, not voc-lt's train list")


@pytest.mark.parametrize("names", [("voc_lt", "coco_lt"), ("voc", "coco"), ("voc-lt", "coco-lt")])
def test_a_parent_folder_holds_both_benchmarks(shared_data: Path, tmp_path: Path, names) -> None:
    _copy_lists(shared_data, tmp_path / names[0], "voc_lt")
    _copy_lists(shared_data, tmp_path / names[1], "coco_lt")
    assert fetch_split_lists("voc-lt", list_dir=tmp_path)["train"] == tmp_path / names[0] / "train.txt"
    assert fetch_split_lists("coco-lt", list_dir=tmp_path)["labels"] == tmp_path / names[1] / "labels.txt"
    assert lists.list_folder("coco-lt", tmp_path / names[1]) == tmp_path / names[1]


def test_a_folder_without_the_lists_says_where_it_looked(tmp_path: Path) -> None:
    one_line_error(lambda: fetch_split_lists("voc-lt", list_dir=tmp_path), "holds no voc-lt lists",
                   "voc_lt_train.txt or train.txt", "voc_lt/")
    one_line_error(lambda: fetch_split_lists("voc-lt", list_dir=tmp_path / "nope"), "does not exist")
    (tmp_path / "labels.txt").write_text("x 0\n")
    one_line_error(lambda: fetch_split_lists("voc-lt", list_dir=tmp_path),
                   "lacks the voc-lt list(s) voc_lt_train.txt, voc_lt_test.txt")


def test_install_copies_a_verified_user_copy_into_the_cache(shared_data: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, private_cache) -> None:
    user = _copy_lists(shared_data, tmp_path / "lists" / "coco_lt", "coco_lt")
    before = {p.name: p.read_bytes() for p in user.iterdir()}
    calls = _offline(monkeypatch)
    installed = lists.install_split_lists("coco-lt", tmp_path / "lists")
    assert installed["train"] == tmp_path / "cache" / "lists" / "coco-lt" / "coco_lt_train.txt"
    assert fetch_split_lists("coco-lt", download=False) == installed  # later runs need no --list-dir
    assert {p.name: p.read_bytes() for p in user.iterdir()} == before and calls == []


# ---------------------------------------------------------------- fetching without network


def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def fail(url: str, timeout: float | None = None):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(lists.urllib.request, "urlopen", fail)
    return calls


def test_no_network_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No mock first: a refused connection (nothing listens on the local discard port) is a CprflError.
    entry = lists.ListFile("http://127.0.0.1:9/voc_labels.txt", "0" * 64, "voc_labels.txt", "labels.txt")
    one_line_error(lambda: lists._download(entry, tmp_path / "voc_labels.txt", timeout=2.0),
                   "could not download http://127.0.0.1:9/voc_labels.txt")
    assert not (tmp_path / "voc_labels.txt").exists()
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path))
    calls = _offline(monkeypatch)
    one_line_error(lambda: fetch_split_lists("voc-lt", download=False), "voc-lt labels list is not in the cache",
                   "cprfl data fetch")
    assert calls == []  # download=False: no attempt
    url = "https://raw.githubusercontent.com/jiexuanyan/CPRFL/main/data/coco/coco_labels.txt"
    one_line_error(lambda: fetch_split_lists("coco-lt"), f"could not download {url}", "Name or service not known",
                   "--list-dir", tmp_path / "lists" / "coco-lt" / "coco_labels.txt")
    assert calls == [url]
    assert list((tmp_path / "lists" / "coco-lt").iterdir()) == []  # nothing half-written


def test_download_verifies_and_writes_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     shared_data: Path) -> None:
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path))
    sources = {f.url: shared_data / "voc_lt" / f"{r}.txt" for r, f in lists.SPECS["voc-lt"].files.items()}
    monkeypatch.setattr(lists.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(sources[url].read_bytes()))
    files = fetch_split_lists("voc-lt")
    folder = tmp_path / "lists" / "voc-lt"
    assert sorted(p.name for p in folder.iterdir()) == ["voc_labels.txt", "voc_lt_test.txt", "voc_lt_train.txt"]
    assert files["train"].read_bytes() == (shared_data / "voc_lt" / "train.txt").read_bytes()

    # A damaged cached copy is fetched again; a server that returns something else is refused.
    files["test"].write_text("damaged\n")
    assert fetch_split_lists("voc-lt")["test"].read_bytes() == (shared_data / "voc_lt" / "test.txt").read_bytes()
    files["test"].write_text("damaged\n")
    one_line_error(lambda: fetch_split_lists("voc-lt", download=False), "cached copy of voc_lt_test.txt is damaged",
                   "cprfl data fetch")
    monkeypatch.setattr(lists.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"nope\n"))
    one_line_error(lambda: fetch_split_lists("voc-lt"), "gave sha256")
    assert files["test"].read_text() == "damaged\n"  # the refused download did not replace anything


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


