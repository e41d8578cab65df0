"""Image loading on a tiny VOC-layout tree, and the transform presets. (Missing and unreadable images, a missing
data root: test_faults.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from cprfl_lib.data.datasets import MultiLabelImageDataset, find_unreadable
from cprfl_lib.data.decoded import decoded_images
from cprfl_lib.data.lists import SplitList, read_split
from cprfl_lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD, CutoutPIL, build_transform, preprocessing

JPEG_DIR = "VOCdevkit/VOC2012/JPEGImages"


@pytest.fixture
def voc_tree(tmp_path: Path) -> tuple[Path, SplitList]:
    """A data root with 6 generated JPEGs (one greyscale) and the split list over them, as read."""
    root = tmp_path / "data"
    (root / JPEG_DIR).mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        size = (40 + 4 * i, 30 + 2 * i)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(pixels)
        if i == 5:
            img = img.convert("L")
        img.save(root / JPEG_DIR / f"2008_00000{i}.jpg", quality=90)
        labels = " ".join(str(c) for c in range(3) if (i + c) % 2 == 0)
        lines.append(f"{JPEG_DIR}/2008_00000{i}.jpg {labels}".rstrip())
    lst = tmp_path / "train.txt"
    lst.write_text("\n".join(lines) + "\n")
    return root, read_split(lst, 3)


def test_dataset_and_loader(voc_tree: tuple[Path, SplitList]) -> None:
    root, split = voc_tree
    ds = MultiLabelImageDataset(root, split, preprocessing("imagenet", 32))
    assert len(ds) == 6
    image, target = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8  # normalised later, on the device
    assert target.dtype == torch.float32 and target.tolist() == [1.0, 0.0, 1.0]
    images, targets = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4, 3)
    assert torch.equal(targets, torch.from_numpy(split.targets[:4]).float())
    grey = ds[5][0]  # the greyscale file comes back with three equal channels
    assert grey.shape == (3, 32, 32) and torch.equal(grey[0], grey[1])


def test_decoded_cache_holds_the_decoded_images_and_is_keyed_by_content(voc_tree, tmp_path) -> None:
    (root, split), prep = voc_tree, preprocessing("imagenet", 32)
    folder = tmp_path / "decoded"
    path = decoded_images(root, split, prep, progress=False, folder=folder)
    pixels = np.load(path, mmap_mode="r")
    assert pixels.shape == (6, 3, 32, 32) and pixels.dtype == np.uint8
    plain = MultiLabelImageDataset(root, split, prep)
    cached = MultiLabelImageDataset(root, split, prep, decoded=path)
    assert all(torch.equal(plain[i][0], cached[i][0]) for i in range(6))
    assert decoded_images(root, split, prep, progress=False, folder=folder) == path  # reused
    assert decoded_images(root, split, preprocessing("imagenet", 40), progress=False, folder=folder) != path
    # other images under the same name (even with the old time stamp) give another entry
    victim = root / JPEG_DIR / "2008_000003.jpg"
    stat = victim.stat()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(victim)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    other = decoded_images(root, split, prep, progress=False, folder=folder)
    assert other != path and np.load(other)[3].max() == 0


def test_augmentation_depends_on_seed_epoch_and_index_only(voc_tree) -> None:
    """An augmented item indexed (epoch, index) is the same in any process, after any other draws."""
    root, split = voc_tree
    ds = MultiLabelImageDataset(root, split, preprocessing("official", 32), train=True, seed=7)
    first = ds[(1, 2)][0]
    torch.rand(100)  # the caller's random numbers move on
    assert torch.equal(ds[(1, 2)][0], first)
    assert not torch.equal(ds[(2, 2)][0], first)  # another epoch, another augmentation
    state = torch.get_rng_state()
    ds[(3, 1)]
    assert torch.equal(torch.get_rng_state(), state)  # and the caller's stream is left alone


def test_tensor_augmentation_equals_the_pil_one_in_distribution() -> None:
    """The official train pipeline on tensors (Cutout, RandAugment) against the PIL pipeline it replaces,
    from the same random numbers: the same ops and rectangles, pixels within the kernels' differences."""
    steps = [type(t).__name__ for t in preprocessing("official", 16).augmentation(train=True).steps]
    assert steps == ["Cutout", "RandAugment"] and preprocessing("official", 16).mean is None
    rng = np.random.default_rng(3)
    pil_pipe = T.Compose([T.Resize((48, 48)), CutoutPIL(0.5), T.RandAugment(), T.ToTensor()])
    ours = build_transform("official", 48, train=True)
    diffs = []
    for i in range(60):
        img = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
        torch.manual_seed(i)
        a = pil_pipe(img)
        torch.manual_seed(i)
        b = ours(img)
        diffs.append(float((a - b).abs().mean()))
    diffs = np.array(diffs)
    print(f"mean |PIL - tensor| per image: median {np.median(diffs) * 255:.2f}/255, max {diffs.max() * 255:.2f}/255")
    assert np.median(diffs) < 0.1 / 255 and diffs.max() < 1 / 255  # measured: median 0.00, max 0.34 (of 255)


def test_unreadable_images_are_all_listed(voc_tree) -> None:
    root, split = voc_tree
    (root / split.paths[1]).write_bytes(b"<html>not an image</html>")
    (root / split.paths[4]).write_bytes((root / split.paths[4]).read_bytes()[:300])
    bad = find_unreadable(root, split.paths)
    assert [p for p, _ in bad] == [split.paths[1], split.paths[4]] and all(why for _, why in bad)


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize("preset", ["official", "imagenet", "backbone"])
@pytest.mark.parametrize("train", [True, False])
def test_presets_give_square_float_tensors(preset: str, train: bool) -> None:
    torch.manual_seed(0)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    tf = build_transform(preset, 24, train=train, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = tf(img)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    if preset == "official":
        assert 0.0 <= out.min() and out.max() <= 1.0
    else:
        assert out.min() < 0.0  # normalised


def test_normalisation_values() -> None:
    img = Image.new("RGB", (8, 8), (255, 0, 128))
    raw = build_transform("official", 8, train=False)(img)
    assert raw[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 128 / 255], abs=1e-6)
    half = build_transform("backbone", 8, train=False, mean=(0.5,) * 3, std=(0.5,) * 3)(img)
    assert half[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, 2 * 128 / 255 - 1], abs=1e-6)
    imnet = build_transform("imagenet", 8, train=False)(img)
    assert imnet[0, 0, 0].item() == pytest.approx((1.0 - 0.485) / 0.229, abs=1e-5)
    # decode + resize + normalise equals the PIL pipeline it replaces (Resize, ToTensor, Normalize)
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    old = T.Compose([T.Resize((24, 24)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    assert torch.equal(build_transform("imagenet", 24, train=False)(img), old)


def test_bad_presets() -> None:
    one_line_error(lambda: build_transform("clip", 224, train=True),
                   "unknown transform preset 'clip'; known: official, imagenet, backbone")
    one_line_error(lambda: build_transform("backbone", 224, train=True), "needs the backbone's mean and std")
    one_line_error(lambda: build_transform("imagenet", 0, train=True), "positive integer")


def test_cutout_paints_half_size_rectangle(monkeypatch: pytest.MonkeyPatch) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    draws = iter([torch.tensor(10), torch.tensor(20), torch.tensor([200, 100, 50])])  # yc, xc, fill
    monkeypatch.setattr(torch, "randint", lambda *a, **k: next(draws))
    out = np.asarray(CutoutPIL(0.5)(img))
    painted = (out == [200, 100, 50]).all(axis=2)
    rows, cols = painted.any(axis=1).nonzero()[0], painted.any(axis=0).nonzero()[0]
    assert painted.sum() == 10 * 20  # exactly 0.5·H × 0.5·W
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 14, 10, 29)
    assert np.asarray(img).max() == 0  # the input is left untouched


def test_cutout_clips_at_border_and_is_seedable() -> None:
    img = Image.new("RGB", (32, 32), (0, 0, 0))
    cut = CutoutPIL(0.5)
    torch.manual_seed(0)
    areas = []
    for _ in range(50):
        out = np.asarray(cut(img))
        areas.append(int((out != 0).any(axis=2).sum()))  # a fill may have a zero channel, not all three
    assert max(areas) <= 16 * 16 and min(areas) < 16 * 16  # clipped near the edges
    torch.manual_seed(3)
    a = np.asarray(cut(img))
    torch.manual_seed(3)
    assert np.array_equal(a, np.asarray(cut(img)))
