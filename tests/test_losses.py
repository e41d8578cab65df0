"""Losses against their formulas and the oracle values of method.md §11.2."""

import inspect
import math

import pytest
import torch
from conftest import one_line_error

from cprfl_lib.losses import LOSS_CLASSES, LOSS_PARAMS, LOSSES, AsymmetricLoss, ResampleLoss, build_loss

X = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, -3.0]])
Y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def asl_reference(logits, targets, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8) -> float:
    """The ASL formula written out element by element in plain Python: the oracle AsymmetricLoss is checked against."""
    total = 0.0
    for row_x, row_y in zip(logits, targets):
        for x, y in zip(row_x, row_y):
            p = 1 / (1 + math.exp(-x))
            if y:
                total -= (1 - p) ** gamma_pos * math.log(max(p, eps))
            else:
                p_m = max(p - clip, 0.0)
                total -= p_m ** gamma_neg * math.log(max(1 - p_m, eps))
    return total


# (0, 0, 0): without focusing or clipping, ASL is binary cross-entropy, which asl_reference then computes
@pytest.mark.parametrize("gneg,gpos,clip,expected", [(4, 0, 0.05, 1.682909), (4, 1, 0.05, 1.112519), (0, 0, 0, 3.324703)])
def test_asl_oracle_values(gneg, gpos, clip, expected):
    loss = AsymmetricLoss(gamma_neg=gneg, gamma_pos=gpos, clip=clip, reduction="sum")(X, Y)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert asl_reference(X.tolist(), Y.tolist(), gneg, gpos, clip) == pytest.approx(expected, abs=1e-5)


def test_asl_reductions_relate():  # the sum, 1.682909 (test_asl_oracle_values), over the 6 elements and the 2 images
    assert AsymmetricLoss(reduction="mean")(X, Y).item() == pytest.approx(0.280485, abs=1e-5)
    assert AsymmetricLoss(reduction="batchmean")(X, Y).item() == pytest.approx(0.841454, abs=1e-5)


def test_asl_focusing_weight_has_no_gradient_and_no_grad_mode_side_effect():
    x = X.clone().requires_grad_(True)
    AsymmetricLoss(reduction="sum")(x, Y).backward()
    # d/dx of -(w * log p_t) with w constant, for a positive with γ+ = 0: -(1 - p)
    assert x.grad[0, 0].item() == pytest.approx(-(1 - torch.sigmoid(torch.tensor(1.0))).item(), abs=1e-6)
    # negative (y=0, x=2): w = p_m^4 treated as constant, d/dx[-w log(1 - p_m)] = w * p(1 - p) / (1 - p_m)
    p = torch.sigmoid(torch.tensor(2.0)).item()
    p_m = p - 0.05
    assert x.grad[0, 1].item() == pytest.approx(p_m ** 4 * p * (1 - p) / (1 - p_m), rel=1e-5)
    assert torch.is_grad_enabled()


def test_asl_computes_in_float32_under_half_inputs():
    loss = AsymmetricLoss(reduction="sum")(X.half(), Y.half())
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(1.682909, abs=1e-3)


def test_cb_and_db_weights_by_hand():
    counts, n = [2, 5, 10], 20
    cb = ResampleLoss(counts, n, reweight="CB", focal=False, neg_scale=1.0)
    expected = [(1 - 0.9) / (1 - 0.9 ** c) for c in counts]  # 0.526316, 0.244194, 0.153534
    assert cb.weights(torch.zeros(1, 3))[0].tolist() == pytest.approx(expected, rel=1e-5)

    db = ResampleLoss(counts, n, reweight="rebalance", focal=False, neg_scale=1.0, map_gamma=0.3)
    y = torch.tensor([[1.0, 1.0, 0.0]])
    r = 1 / 2 + 1 / 5  # Σ_k y_k / n_k = 0.7
    want = [1 / (1 + math.exp(-10 * ((1 / c) / r - 0.3))) + 0.1 for c in counts]
    assert db.weights(y)[0].tolist() == pytest.approx(want, rel=1e-5)
    # init bias: -log(N / n_i - 1) * 0.05 / neg_scale
    assert cb.init_bias.tolist() == pytest.approx([-math.log(20 / c - 1) * 0.05 for c in counts], rel=1e-5)


def test_resample_loss_does_not_touch_the_logits_and_focal_is_per_element():
    counts, n = [3, 6, 9], 20
    x, y = torch.randn(4, 3), torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    x0 = x.clone()
    per_el = build_loss("db_focal", counts, n, family="voc", reduction="sum")
    scalar = build_loss("db_focal", counts, n, family="voc", reduction="sum", scalar_focal=True)
    a, b = per_el(x, y), scalar(x, y)
    assert torch.equal(x, x0)
    assert not torch.isclose(a, b)
    assert per_el.neg_scale == 5.0 and per_el.map_gamma == 0.3
    assert build_loss("cb_focal", counts, n, family="coco").neg_scale == 2.0


def test_rw_weights_follow_inverse_sqrt_frequency():
    loss = build_loss("rw", train_counts=[4, 16], num_train=20)
    w = loss.class_weight
    assert (w[0] / w[1]).item() == pytest.approx(2.0) and w.mean().item() == pytest.approx(1.0)


def test_bad_inputs():
    one_line_error(lambda: build_loss("nope"), "'nope'")
    one_line_error(lambda: AsymmetricLoss()(X, torch.zeros(2, 4)), "(2, 3)", "(2, 4)")
    one_line_error(lambda: AsymmetricLoss()(torch.tensor([[float("nan"), 0.0, 1.0]]), torch.zeros(1, 3)), "NaN")
    one_line_error(lambda: AsymmetricLoss(reduction="avg"), "reduction")
    one_line_error(lambda: build_loss("db_focal"), "training counts")
    one_line_error(lambda: build_loss("asl", gamma=3), "bad parameter")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_backpropagates_and_takes_each_parameter_a_recipe_may_set(name):
    """losses.LOSS_PARAMS (what recipes.validate checks loss.params against) names constructor arguments of each
    loss, and every loss builds with each of them set to a value in its range."""
    x, y = torch.randn(5, 4, requires_grad=True), (torch.rand(5, 4) > 0.6).float()
    loss = build_loss(name, train_counts=[3, 6, 9, 40], num_train=50, family="coco")(x, y)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and x.grad.abs().sum() > 0
    assert set(LOSS_PARAMS) == set(LOSSES)
    params = LOSS_PARAMS[name]
    assert set(params) <= set(inspect.signature(LOSS_CLASSES[name].__init__).parameters)
    for key, p in params.items():
        value = p.choices[-1] if p.choices else (p.lo + (1e-3 if p.lo_open else 0)) if p.lo is not None else 0.5
        loss = build_loss(name, train_counts=[5, 20, 40], num_train=100, **{key: value})
        assert torch.isfinite(loss(X, Y)), (key, value)
