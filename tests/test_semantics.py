"""Category semantics: shapes, known values, checkpoints by path, offline failures, the cache."""

from __future__ import annotations

import pytest
import torch
from conftest import one_line_error

from cprfl_lib import semantics
from cprfl_lib.semantics import (
    CLIPTextEncoder,
    FixedEmbedding,
    build_text_encoder,
    embedding_dim,
    encode_classes,
    encoder_status,
)
from cprfl_lib.semantics import clip as semantics_clip

NAMES = ["cat", "dog", "traffic_light"]


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A seeded tiny CLIP saved as a state dict, and the reference text features of NAMES."""
    import open_clip

    semantics_clip.register_tiny_config()
    torch.manual_seed(123)
    model = open_clip.create_model("cprfl-tiny-RN").eval()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    tokens = open_clip.get_tokenizer("cprfl-tiny-RN")(["a photo of a cat.", "a photo of a dog.",
                                                       "a photo of a traffic light."])
    with torch.no_grad():
        return path, model.encode_text(tokens)


# --- CLIP --------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder, m", [("clip-rn50", 1024), ("clip-vit-b-16", 512)])
def test_clip_random_weights_shape(encoder, m):
    emb = encode_classes(encoder, NAMES, weights=None, cache=False)  # None = random (tests only)
    assert emb.shape == (3, m) and emb.dtype == torch.float32 and torch.isfinite(emb).all()
    assert embedding_dim(encoder) == m
    assert not torch.allclose(emb[0], emb[1])  # different prompts, different features


def test_clip_checkpoint_by_path_reproduces_features(tiny_ckpt):
    path, expected = tiny_ckpt
    got = encode_classes("clip-tiny", NAMES, weights=path, cache=False)
    torch.testing.assert_close(got, expected)
    assert embedding_dim("clip-tiny") == 64
    # unnormalised by default, as the official code; normalize=True gives unit rows
    assert not torch.allclose(got.norm(dim=1), torch.ones(3))
    unit = encode_classes("clip-tiny", NAMES, weights=path, normalize=True, cache=False)
    torch.testing.assert_close(unit, torch.nn.functional.normalize(expected, dim=1))


def test_clip_safetensors_and_quick_gelu_from_file_name(tiny_ckpt, tmp_path):
    from safetensors.torch import save_file

    path, expected = tiny_ckpt
    openai_named = tmp_path / "tiny-openai.safetensors"
    save_file(torch.load(path, weights_only=True), openai_named)
    # a file named *openai* gets QuickGELU by default, which changes the features ...
    assert semantics_clip.default_quick_gelu("clip-tiny", openai_named)
    quick = encode_classes("clip-tiny", NAMES, weights=openai_named, cache=False)
    assert not torch.allclose(quick, expected, atol=1e-4)
    # ... and the explicit parameter overrides the guess
    plain = encode_classes("clip-tiny", NAMES, weights=openai_named, quick_gelu=False, cache=False)
    torch.testing.assert_close(plain, expected)


def test_clip_random_weights_follow_the_seed():
    a = encode_classes("clip-tiny", NAMES, weights="random", seed=0, cache=False)
    b = encode_classes("clip-tiny", NAMES, weights="random", seed=0, cache=False)
    c = encode_classes("clip-tiny", NAMES, weights="random", seed=1, cache=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_clip_bad_weights(tmp_path):
    one_line_error(lambda: encode_classes("clip-tiny", NAMES, weights=tmp_path / "absent.pt", cache=False), "not found")
    one_line_error(lambda: encode_classes("clip-rn50", NAMES, weights="nope", cache=False), "unknown pretrained tag 'nope'")
    bad = tmp_path / "wrong.pt"
    torch.save({"foo": torch.zeros(2)}, bad)
    one_line_error(lambda: encode_classes("clip-tiny", NAMES, weights=bad, cache=False), "wrong.pt")


def test_openai_tag_offline_is_an_unavailable_encoder(offline):  # the error it gives: test_faults.py
    ok, why = encoder_status("clip-rn50", weights="openai")
    assert not ok and "offline" in why and "local file" in why
    assert encoder_status("clip-rn50", weights=None)[0]  # random weights need nothing


def test_unreachable_hub_is_probed_before_open_clip(monkeypatch):
    import open_clip
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-hf-cache")
    monkeypatch.setattr(semantics_clip, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("open_clip would retry for ~46 s"))
    one_line_error(lambda: encode_classes("clip-vit-b-16", NAMES, weights="openai", cache=False), "unreachable")
    assert encoder_status("clip-vit-b-16", weights="openai")[0] is False


def test_clip_text_encoder_trains_or_is_frozen(tiny_ckpt):
    path, expected = tiny_ckpt
    enc = build_text_encoder("clip-tiny", NAMES, weights=path, frozen=False)
    assert isinstance(enc, CLIPTextEncoder) and enc.embed_dim == 64
    assert not hasattr(enc.clip, "visual")
    out = enc()
    assert out.shape == (3, 64)
    torch.testing.assert_close(out.detach(), expected)  # same features as the frozen path
    out.pow(2).sum().backward()
    for name in ("token_embedding.weight", "text_projection", "ln_final.weight"):
        grad = dict(enc.clip.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.clip.transformer.parameters())
    assert set(enc.state_dict()) >= {"clip.token_embedding.weight", "clip.positional_embedding"}
    # a checkpoint reloads into a random-weights rebuild with the same QuickGELU choice ...
    again = CLIPTextEncoder("clip-tiny", NAMES, weights=None, quick_gelu=False)
    again.load_state_dict(enc.state_dict())
    torch.testing.assert_close(again().detach(), out.detach())
    # ... and refuses one with another (no parameter would reveal the mismatch)
    one_line_error(lambda: CLIPTextEncoder("clip-tiny", NAMES, weights=None, quick_gelu=True).load_state_dict(
        enc.state_dict()), "quick_gelu")
    # frozen: nothing trains
    frozen_clip = CLIPTextEncoder("clip-tiny", NAMES, weights=path, frozen=True)
    assert not any(p.requires_grad for p in frozen_clip.parameters())
    assert not frozen_clip().requires_grad
    fixed = build_text_encoder("clip-tiny", NAMES, weights=path)  # frozen by default, as the paper
    assert isinstance(fixed, FixedEmbedding) and fixed.embed_dim == 64
    torch.testing.assert_close(fixed(), expected)
    one_line_error(lambda: build_text_encoder("randn", NAMES, frozen=False), "only the CLIP encoders")


# --- MiniLM ------------------------------------------------------------------------------

def test_minilm_semantics():
    emb = encode_classes("minilm", ["cat", "dog", "bus"], cache=False)
    assert emb.shape == (3, 384) == (3, embedding_dim("minilm"))
    cos = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(emb, dim=1).T
    assert cos[0, 1] > cos[0, 2] + 0.1  # cat~dog (0.62) closer than cat~bus (0.35)
    assert encoder_status("minilm")[0]


# --- GloVe / word2vec --------------------------------------------------------------------

def _write_vectors(path, rows, header=False):
    lines = [f"{len(rows)} {len(next(iter(rows.values())))}"] if header else []
    lines += [" ".join([word, *map(str, vec)]) for word, vec in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


VOCAB = {
    "cat": [1.0, 0.0, 0.0], "traffic": [0.0, 2.0, 0.0], "light": [0.0, 0.0, 4.0],
    "dining": [2.0, 2.0, 2.0], "table": [0.0, 0.0, 2.0], "hair": [1.0, 1.0, 1.0],
}


def test_word_vectors_average_words_and_alias_voc_names(tmp_path, monkeypatch):
    glove = _write_vectors(tmp_path / "glove.txt", VOCAB)
    emb = encode_classes("glove", ["Cat", "traffic light", "traffic_light", "diningtable"], path=glove, cache=False)
    expected = torch.tensor([[1.0, 0, 0], [0, 1.0, 2.0], [0, 1.0, 2.0], [1.0, 1.0, 2.0]])
    torch.testing.assert_close(emb, expected)
    assert embedding_dim("glove", path=glove) == 3
    # the joined token wins where the vocabulary has it
    glove2 = _write_vectors(tmp_path / "glove2.txt", {**VOCAB, "diningtable": [9.0, 9.0, 9.0]})
    torch.testing.assert_close(encode_classes("glove", ["diningtable"], path=glove2, cache=False),
                               torch.tensor([[9.0, 9.0, 9.0]]))
    # word2vec's text format: a header line; the file named by the environment
    w2v = _write_vectors(tmp_path / "w2v.txt", VOCAB, header=True)
    monkeypatch.setenv("CPRFL_WORD2VEC", str(w2v))
    emb = encode_classes("word2vec", ["cat", "traffic light"], cache=False)
    torch.testing.assert_close(emb, torch.tensor([[1.0, 0, 0], [0, 1.0, 2.0]]))
    assert embedding_dim("word2vec") == 3 and encoder_status("word2vec")[0]


def test_word_vectors_missing_files(tmp_path, monkeypatch):  # missing words: test_faults.py
    monkeypatch.delenv("CPRFL_GLOVE", raising=False)
    one_line_error(lambda: encode_classes("glove", ["cat"], cache=False), "CPRFL_GLOVE")
    ok, why = encoder_status("glove")
    assert not ok and "CPRFL_GLOVE" in why
    bad = tmp_path / "bad.txt"
    bad.write_text("dog 1 2 3\ncat 1 2\n")
    one_line_error(lambda: encode_classes("glove", ["cat"], path=bad, cache=False), "bad.txt:2")


# --- randn / onehot / argument checks ----------------------------------------------------

def test_randn_and_onehot():
    a = encode_classes("randn", NAMES, seed=3)
    assert a.shape == (3, semantics.DEFAULT_RANDN_DIM) == (3, embedding_dim("randn"))
    torch.testing.assert_close(a, torch.randn(3, 1024, generator=torch.Generator().manual_seed(3)))
    assert not torch.allclose(a, encode_classes("randn", NAMES, seed=4))
    assert encode_classes("randn", NAMES, dim=300).shape == (3, 300) and embedding_dim("randn", dim=300) == 300
    torch.testing.assert_close(encode_classes("onehot", NAMES), torch.eye(3))
    assert embedding_dim("onehot", num_classes=5) == 5
    one_line_error(lambda: embedding_dim("onehot"), "num_classes")


def test_bad_arguments(tmp_path):
    one_line_error(lambda: encode_classes("bert", NAMES), "unknown text encoder 'bert'")
    one_line_error(lambda: encode_classes("randn", []), "no class names")
    one_line_error(lambda: encode_classes("minilm", NAMES, weights="openai"), "only applies to the CLIP")
    one_line_error(lambda: encode_classes("clip-tiny", NAMES, weights="random", dim=32, cache=False), "dim=32")
    assert encoder_status("bert") == (False, "unknown text encoder 'bert'")


# --- the on-disk cache -------------------------------------------------------------------

@pytest.fixture
def calls(monkeypatch) -> list:
    """One entry per embedding computed (a cache miss)."""
    calls, compute = [], semantics._compute
    monkeypatch.setattr(semantics, "_compute", lambda *a, **k: calls.append(a[1]) or compute(*a, **k))
    return calls


def test_cache_hits_recomputes_and_rejects_foreign_files(tmp_path, calls):
    glove = _write_vectors(tmp_path / "glove.txt", VOCAB)
    first = encode_classes("glove", ["cat", "traffic light"], path=glove)
    second = encode_classes("glove", ["cat", "traffic light"], path=glove)
    assert len(calls) == 1
    torch.testing.assert_close(first, second)
    encode_classes("glove", ["cat", "hair"], path=glove)  # a changed class name recomputes
    encode_classes("glove", ["cat", "traffic light"], path=glove, normalize=True)  # so does normalize
    assert len(calls) == 3
    _write_vectors(glove, {**VOCAB, "cat": [5.0, 5.0, 5.0], "extra": [0.0, 0.0, 0.0]})
    changed = encode_classes("glove", ["cat", "traffic light"], path=glove)  # a changed file recomputes
    assert len(calls) == 4 and changed[0, 0] == 5.0

    assert len(list((tmp_path / "cache" / "embeddings").glob("glove-*.pt"))) == 4  # a file that disagrees: test_faults


def test_clip_cache_is_keyed_by_weights_file(tiny_ckpt, calls):
    path, expected = tiny_ckpt
    torch.testing.assert_close(encode_classes("clip-tiny", NAMES, weights=path), expected)
    torch.testing.assert_close(encode_classes("clip-tiny", NAMES, weights=path), expected)
    assert len(calls) == 1
    encode_classes("clip-tiny", NAMES, weights=path, template="a {}.")
    encode_classes("clip-tiny", NAMES, weights="random")
    assert len(calls) == 3


# --- the embedding scale: centring and rescaling after the cache --------------------------------------

def _emb(c=5, m=8, seed=0, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, m, generator=g) + offset  # a common offset: mutually close rows, like MiniLM's


def test_rescale_centres_and_sets_the_row_norms():
    from cprfl_lib.semantics import rescale

    emb = _emb()
    torch.testing.assert_close(rescale(emb), emb)  # nothing asked: unchanged
    centred = rescale(emb, centre=True)
    torch.testing.assert_close(centred, emb - emb.mean(0, keepdim=True))
    assert centred.mean(0).abs().max() < 1e-6
    for norm, want in (("sqrt_m", 8 ** 0.5), (2.5, 2.5), (1, 1.0)):
        out = rescale(emb, norm=norm)
        torch.testing.assert_close(out.norm(dim=1), torch.full((5,), want))
        torch.testing.assert_close(out, emb / emb.norm(dim=1, keepdim=True) * want)  # directions kept
    both = rescale(emb, centre=True, norm="sqrt_m")
    torch.testing.assert_close(both.norm(dim=1), torch.full((5,), 8 ** 0.5))
    torch.testing.assert_close(both, centred / centred.norm(dim=1, keepdim=True) * 8 ** 0.5)
    assert rescale(emb.half(), centre=True).dtype == torch.float16 and both.dtype == torch.float32
    assert rescale(_emb(3, 300), norm="sqrt_m").norm(dim=1).allclose(torch.full((3,), 300 ** 0.5))
    assert torch.equal(emb, _emb())  # the input is left alone


@pytest.mark.parametrize("norm", [0, -1.0, True, "sqrt", "1"])
def test_rescale_refuses_a_bad_norm(norm):
    one_line_error(lambda: semantics.rescale(_emb(), norm=norm), "semantics.norm")


def test_rescale_refuses_centring_one_class():
    one_line_error(lambda: semantics.rescale(_emb(1), centre=True), "two classes")
    torch.testing.assert_close(semantics.rescale(_emb(1), norm=2.0).norm(), torch.tensor(2.0))


def test_mean_cosine_of_known_vectors():
    from cprfl_lib.semantics import mean_cosine

    assert mean_cosine(torch.eye(4)) == pytest.approx(0.0, abs=1e-12)
    assert mean_cosine(torch.ones(3, 5)) == pytest.approx(1.0)
    assert mean_cosine(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-1.0)
    # pairs: (0, 1) -> 0, (0, 2) and (1, 2) -> 1/sqrt(2): the mean of the three
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert mean_cosine(x) == pytest.approx(2 ** 0.5 / 3)
    assert mean_cosine(x * torch.tensor([[3.0], [0.5], [7.0]])) == pytest.approx(2 ** 0.5 / 3)  # lengths do not count
    assert mean_cosine(x.requires_grad_()) == pytest.approx(2 ** 0.5 / 3)  # a tensor that needs grad
    emb = _emb(6, 16)
    pairs = [torch.nn.functional.cosine_similarity(emb[i], emb[j], dim=0).item()
             for i in range(6) for j in range(6) if i != j]
    assert mean_cosine(emb) == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert mean_cosine(emb) > 0.8  # the common offset: mutually close
    assert abs(mean_cosine(semantics.rescale(emb, centre=True))) < mean_cosine(emb) - 0.5  # centring spreads them
    # a regular simplex (rows of one length summing to zero): every pair at cosine -1/(c-1); centring changes nothing
    simplex = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    assert mean_cosine(simplex) == pytest.approx(-1 / 3)
    torch.testing.assert_close(semantics.rescale(simplex, centre=True), simplex)
    assert mean_cosine(torch.ones(1, 3)) != mean_cosine(torch.ones(1, 3))  # NaN for one row
