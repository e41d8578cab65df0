"""cprfl_lib/model_analysis.py and its tables (cprfl_repro/analysis/model.py), for notebook 03: the traced forward pass,
the two gradient paths, the parameter count, the initial prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_line_error
from matplotlib.figure import Figure
from PIL import Image

from cprfl_lib import model_analysis, semantics
from cprfl_lib.losses import build_loss
from cprfl_lib.model import count_parameters
from cprfl_lib.train import factory, recipes
from cprfl_repro.analysis import model as model_tables
from cprfl_repro.plots import model as pm

NAMES = ["cat", "dog", "bus", "car", "sofa"]
GROUPS = np.array(["head", "head", "medium", "tail", "tail"])


pytestmark = pytest.mark.usefixtures("private_cache", "close_figures", "keep_determinism")


@pytest.fixture
def keep_determinism():
    """initial_prompts and engine.train switch torch's deterministic algorithms on: put the switch back."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def model():
    """The tiny recipe's model (tiny trunk, d = 32, randn W with m = 16), in train mode as built."""
    torch.manual_seed(0)
    return factory.model_from(recipes.load_recipe("tiny"), NAMES)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    targets = torch.zeros(3, len(NAMES))
    targets[0, [0, 3]] = targets[1, 1] = targets[2, [2, 4]] = 1
    return torch.randn(3, 3, 32, 40, generator=g), targets


def test_trace_shapes_follow_the_equations(model, batch) -> None:
    images, _ = batch
    t = model_analysis.trace(model, images)
    b, c, (h, w) = 3, len(NAMES), (4, 5)  # tiny trunk: stride 8
    v, cb, d, m = h * w, 64, 32, 16
    assert model_analysis.shape_metrics(t) == {
        "feature_map": [b, cb, h, w], "tokens": [b, v, cb], "F": [b, v, d], "W": [c, m], "P": [c, d],
        "Z": [b, v + c, d], "P_refined": [b, c, d], "logits": [b, c], "attention": [b, c, h, w]}
    assert t.grid == (h, w)
    # the traced tensors are those of the real forward pass
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(t.logits, model(images))
        torch.testing.assert_close(t.P, model.head.prompts())
    assert t.eq6_max_abs_diff < 1e-5
    torch.testing.assert_close(t.Z[:, v:], t.P.expand(b, -1, -1))  # prompts last in Z
    torch.testing.assert_close(t.Z[:, :v], t.F)
    # attention of each prompt over the visual tokens: a part of a softmax over v + c tokens
    assert (t.attention >= 0).all() and (t.attention.sum((2, 3)) <= 1 + 1e-5).all()
    table = model_tables.shapes_table(t)
    assert list(table["measured"]) == [str(s) for s in [(b, cb, h, w), (b, v, cb), (b, v, d), (c, m), (c, d),
                                                       (b, v + c, d), (b, v + c, d), (b, c, d), (b, c), (b, c, h, w)]]


def test_trace_restores_train_mode_and_rejects_the_linear_baseline(model, batch) -> None:
    model.train()
    model_analysis.trace(model, batch[0])
    assert model.training and model.head.vsi[0].attn.to_out[1].training
    linear = factory.model_from(recipes.load_recipe("tiny", {"model.head": "linear"}), NAMES)
    one_line_error(lambda: model_analysis.trace(linear, batch[0]), "LinearHead")
    one_line_error(lambda: model_analysis.trace(model, batch[0][0]), "(B, 3, H, W)")


def test_full_gradient_is_the_sum_of_the_two_paths_and_p1_is_as_by_hand(model, batch) -> None:
    images, targets = batch
    model.train()  # dropout 0.1 would make the three runs differ: the function must switch it off
    loss = build_loss("asl", reduction="mean")
    r = model_analysis.dual_path_gradients(model, images, targets, loss)
    full, p1, p2 = model_analysis.PATHS
    assert r.max_abs_diff_P < 1e-6 * max(1.0, float(r.grad_P[full].abs().max()))
    assert r.max_abs_diff_PI < 1e-5
    # both paths carry gradient, and neither alone is the full one
    for key in (p1, p2):
        assert r.grad_P[key].norm() > 0
        assert (r.grad_P[key] - r.grad_P[full]).abs().max() > 1e3 * max(r.max_abs_diff_P, 1e-12)
    table = model_tables.dual_path_table(r)
    assert list(table["gradient"]) == [full, p1, p2, "P1 + P2"]
    assert table["‖dL/dP‖"].iloc[0] == pytest.approx(table["‖dL/dP‖"].iloc[3], rel=1e-6)
    # the switches and the mode are back as they were
    head = model.head
    assert (head.cut_p1, head.cut_p2, head.no_feature_grad) == (False, False, False) and model.training
    assert isinstance(pm.plot_dual_path(r, NAMES, GROUPS), Figure)
    # P1 alone by hand: dL/dP = Σ_b dL/dlogit_b ⊙ P'_b (Eq. 6 with P' held fixed)
    t = model_analysis.trace(model, images)
    logits = t.logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(logits, targets), logits)
    torch.testing.assert_close(r.grad_P[p1], (g[:, :, None] * t.P_refined).sum(0).double(), rtol=1e-4, atol=1e-7)


def test_prompt_similarity_and_plots(model, batch) -> None:
    t = model_analysis.trace(model, batch[0])
    sim = model_analysis.prompt_similarity(t)
    assert sim["cos_W"].shape == sim["cos_P_centred"].shape == (len(NAMES),) * 2
    np.testing.assert_allclose(np.diag(sim["cos_P"]), 1.0)
    assert -1 <= sim["pearson_r"] <= 1
    # a shared offset (the PI output bias) makes raw cosines near 1; centring removes it
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    trace = model_analysis.Trace(*[torch.zeros(1)] * 3, w, w + 100.0, *[torch.zeros(1)] * 5)
    shifted = model_analysis.prompt_similarity(trace)
    assert shifted["mean_cos_P"] > 0.99 and shifted["pearson_r"] == pytest.approx(1.0)
    np.testing.assert_allclose(shifted["cos_P_centred"], shifted["cos_W_centred"], atol=1e-9)
    assert isinstance(pm.plot_prompt_init(t, NAMES, GROUPS, title="x"), Figure)
    image = Image.new("RGB", (40, 32), (10, 200, 10))
    assert isinstance(pm.plot_attention(image, t.attention[0], NAMES, [0, 3], GROUPS, scores=np.ones(5)), Figure)


def test_take_batch() -> None:
    data = [(torch.full((3, 4, 4), float(i)), torch.tensor([i % 2, 1.0])) for i in range(6)]
    images, targets, idx = model_analysis.take_batch(data, 2, start=3)
    assert images.shape == (2, 3, 4, 4) and idx == [3, 4] and images[1, 0, 0, 0] == 4
    one_line_error(lambda: model_analysis.take_batch(data, 7), "batch_size must be between 1 and 6")


def test_paper_parameter_counts_as_in_method_md_and_the_text_tower_as_trained() -> None:
    table = model_tables.paper_parameter_table("paper-coco")
    counts = model_tables.parameter_metrics(table)
    assert counts == {"backbone": 42_500_160, "phi": 4_196_352, "vsi": 41_957_376, "pi": 3_148_800,
                      "text": 63_690_240, "trainable_paper": 91_802_688, "trainable_official_code": 155_492_928}
    assert table["method.md §2"].iloc[:5].tolist() == table["parameters"].iloc[:5].tolist()
    # the meta-device count of the text tower equals the trainable CLIPTextEncoder that semantics builds
    built = semantics.build_text_encoder("clip-tiny", NAMES, frozen=False, weights=None)
    assert count_parameters(model_analysis.text_tower("clip-tiny")) == count_parameters(built) > 0


def test_initial_prompts_follow_the_seed_and_the_embeddings() -> None:
    # (that they are the prompts a training run starts from: the last test of this file)
    config = recipes.load_recipe("tiny", {"train.seed": 3})
    got = model_analysis.initial_prompts(config, NAMES)
    assert got.shape == (len(NAMES), config["model"]["dim"]) and not got.requires_grad
    assert torch.equal(got, model_analysis.initial_prompts(config, NAMES))
    other = model_analysis.initial_prompts(recipes.load_recipe("tiny", {"train.seed": 4}), NAMES)
    assert not torch.allclose(other, got)  # the PI network's initialisation follows the run's seed
    scaled = model_analysis.initial_prompts(recipes.load_recipe("tiny", {"train.seed": 3, "semantics.centre": True}), NAMES)
    assert not torch.allclose(scaled, got)  # and the prompts follow the embeddings W
    assert -1 <= semantics.mean_cosine(got) <= 1
    one_line_error(lambda: model_analysis.initial_prompts(recipes.load_recipe("tiny", {"model.head": "linear"}), NAMES),
                   "model.head='linear' has no prompts")


@pytest.mark.parametrize("rng", [torch, np.random])
def test_initial_prompts_leave_the_callers_rng_alone(rng) -> None:
    """torch's and numpy's global generators (seed_everything seeds numpy's, which torch.random.fork_rng does not
    restore)."""
    rng.manual_seed(11) if rng is torch else rng.seed(11)
    expected = rng.rand(4)
    rng.manual_seed(11) if rng is torch else rng.seed(11)
    model_analysis.initial_prompts(recipes.load_recipe("tiny"), NAMES)
    assert np.array_equal(np.asarray(rng.rand(4)), np.asarray(expected))


def test_initial_prompts_equal_the_prompts_a_training_run_starts_from(tmp_path, monkeypatch) -> None:
    from cprfl_lib.data.benchmarks import benchmark_class_names
    from cprfl_lib.train import engine

    config = recipes.load_recipe("tiny", {"data.synthetic_limit": 16, "optim.epochs": 1, "train.max_steps_per_epoch": 1,
                                           "train.device": "cpu", "train.seed": 2, "train.save_weights": False})
    built = []
    real = factory.model_from

    def keep(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            built.append(model.head.prompts().detach().clone())
        return model

    monkeypatch.setattr(factory, "model_from", keep)
    engine.train(config, tmp_path / "run", progress=False)
    monkeypatch.setattr(factory, "model_from", real)
    names = benchmark_class_names("synth-voc-lt")
    assert len(built) == 1 and torch.equal(model_analysis.initial_prompts(config, names), built[0])
