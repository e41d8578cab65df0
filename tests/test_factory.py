"""Building a model from a recipe: the PI network's input width follows the text encoder."""

import numpy as np
import pytest
import torch
from conftest import spy

from cprfl_lib.train import factory
from cprfl_lib.train.recipes import load_recipe

NAMES = ["person", "dog", "traffic light", "bus", "cat"]


def _glove_300(path):
    rng = np.random.default_rng(0)
    words = {"person", "dog", "traffic", "light", "bus", "cat", "photo"}
    path.write_text("".join(f"{w} " + " ".join(f"{v:.4f}" for v in rng.normal(size=300)) + "\n" for w in sorted(words)))
    return path


@pytest.mark.parametrize("encoder,m", [("glove", 300), ("minilm", 384), ("clip-vit-b-16", 512), ("clip-rn50", 1024)])
def test_prompt_initialization_input_follows_the_encoder(encoder, m, tmp_path, monkeypatch):
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    overrides = {"semantics.encoder": encoder, "semantics.weights": None, "semantics.dim": None}
    if encoder == "glove":
        overrides["semantics.path"] = str(_glove_300(tmp_path / "glove.300d.txt"))
    config = load_recipe("tiny", overrides)
    head = factory.head_from(config, feat_dim=64, class_names=NAMES)
    assert head.class_embeddings.shape == (len(NAMES), m)
    assert head.prompt_init.fc1.in_features == m
    logits = head(torch.randn(1, 64, 4, 4))  # a batch of one
    assert logits.shape == (1, len(NAMES)) and torch.isfinite(logits).all()


def test_computing_embeddings_does_not_move_the_global_rng(tmp_path, monkeypatch):
    """A cold embedding cache (the encoder is built) and a warm one must give the same initialisation."""
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    config = load_recipe("tiny", {"semantics.encoder": "clip-tiny", "semantics.weights": None, "semantics.dim": None})
    torch.manual_seed(0)
    factory.semantics_from(config, NAMES)  # cold: builds the text tower
    cold = torch.rand(3)
    torch.manual_seed(0)
    factory.semantics_from(config, NAMES)  # warm: read from the cache
    assert torch.equal(cold, torch.rand(3))


def test_the_embedding_scale_is_applied_after_the_cache(tmp_path, monkeypatch):
    """semantics.centre / semantics.norm rescale what encode_classes gives (and caches): the cache holds the raw."""
    from cprfl_lib import semantics

    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    calls = spy(monkeypatch, semantics, "_compute")
    base = {"semantics.encoder": "glove", "semantics.path": str(_glove_300(tmp_path / "glove.300d.txt")),
            "semantics.dim": None}
    raw, text, m = factory.semantics_from(load_recipe("tiny", base), NAMES)
    assert text is None and m == 300 and len(calls) == 1
    scaled, _, m2 = factory.semantics_from(load_recipe("tiny", {**base, "semantics.centre": True,
                                                                "semantics.norm": "sqrt_m"}), NAMES)
    assert len(calls) == 1 and m2 == 300  # the same cache entry
    # (what rescale computes: test_semantics.py::test_rescale_centres_and_sets_the_row_norms)
    torch.testing.assert_close(scaled, semantics.rescale(raw, centre=True, norm="sqrt_m"))
    again, _, _ = factory.semantics_from(load_recipe("tiny", base), NAMES)
    torch.testing.assert_close(again, raw)  # the cache was not rescaled in place
    two, _, _ = factory.semantics_from(load_recipe("tiny", {**base, "semantics.norm": 2.0}), NAMES)
    torch.testing.assert_close(two.norm(dim=1), torch.full((len(NAMES),), 2.0))


def test_the_head_is_built_from_the_rescaled_embeddings(tmp_path, monkeypatch):
    monkeypatch.setenv("CPRFL_CACHE", str(tmp_path / "cache"))
    config = load_recipe("tiny", {"semantics.centre": True, "semantics.norm": 3.0})  # randn, m = 16
    head = factory.head_from(config, feat_dim=64, class_names=NAMES)
    from cprfl_lib.semantics import encode_classes, rescale

    want = rescale(encode_classes("randn", NAMES, dim=16, seed=0), centre=True, norm=3.0)  # (5, 16)
    torch.testing.assert_close(head.class_embeddings, want)
