"""Zero-shot CLIP on the tiny open_clip config with random weights: shapes and scores, never accuracy."""

from __future__ import annotations

import pytest
import torch
from conftest import one_line_error
from PIL import Image

from cprfl_lib import zero_shot

NAMES = ["cat", "dog", "bus", "potted_plant"]


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def model() -> zero_shot.ZeroShotCLIP:
    return zero_shot.load_zero_shot(NAMES, "clip-tiny", weights=None)


@pytest.fixture
def images() -> list[Image.Image]:
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(40 + 10 * i, 70, 3, generator=g) * 255).byte().numpy()) for i in range(3)]


def test_logits_shapes_range_and_columns(model, images) -> None:
    batch = torch.stack([model.preprocess(img) for img in images])
    assert batch.shape == (3, 3, model.image_size, model.image_size) == (3, 3, 64, 64)
    assert model.text_features.shape == (len(NAMES), 64)
    torch.testing.assert_close(model.text_features.norm(dim=1), torch.ones(len(NAMES)))
    logits = model(batch)
    assert logits.shape == (3, len(NAMES))
    cos = logits / model.clip.logit_scale.exp()
    assert cos.abs().max() <= 1 + 1e-5  # a scaled cosine
    swapped = zero_shot.load_zero_shot(NAMES[::-1], "clip-tiny", weights=None)  # the columns follow the class names
    torch.testing.assert_close(swapped.predict(images, "none"), model.predict(images, "none").flip(1))


def test_softmax_and_sigmoid_scores(model, images) -> None:
    logits = zero_shot.ZeroShotCLIP.activate(torch.stack([model(model.preprocess(i)[None])[0] for i in images]), "none")
    soft = model.predict(images, "softmax")
    sig = model.predict(images, "sigmoid")
    assert soft.shape == sig.shape == (3, len(NAMES))
    torch.testing.assert_close(soft.sum(1), torch.ones(3))
    assert ((sig > 0) & (sig < 1)).all() and not torch.allclose(sig.sum(1), torch.ones(3))
    # both keep the ranking of the logits
    assert torch.equal(soft.argsort(1), logits.argsort(1)) and torch.equal(sig.argsort(1), logits.argsort(1))
    torch.testing.assert_close(sig, torch.sigmoid(logits - logits.mean(1, keepdim=True)))


def test_bad_input(model, images) -> None:
    one_line_error(lambda: model.predict(images, "relu"), "activation 'relu'")
    one_line_error(lambda: model(torch.zeros(3, 64, 64)), "(B, 3, H, W)")
    one_line_error(lambda: model.predict([]), "no images")
    one_line_error(lambda: zero_shot.load_zero_shot([], "clip-tiny", weights=None), "at least one class")


def test_unavailable_weights_say_why(tmp_path, offline) -> None:
    missing = tmp_path / "RN50-openai.bin"
    ok, reason = zero_shot.status("clip-rn50", missing)
    assert not ok and str(missing) in reason
    one_line_error(lambda: zero_shot.load_zero_shot(NAMES, "clip-rn50", weights=missing),
                   "not available: CLIP weights file not found")
    one_line_error(lambda: zero_shot.load_zero_shot(NAMES, "clip-rn50", weights="openai"), "offline")
    assert zero_shot.status("minilm", None) == (False, "'minilm' is not a CLIP encoder (choose one of "
                                                 "['clip-rn50', 'clip-tiny', 'clip-vit-b-16'])")
