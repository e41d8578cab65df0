"""Metrics against scikit-learn, hand examples and the consistency check of method.md §11.4."""

import numpy as np
import pytest
import torch
from conftest import one_line_error
from sklearn.metrics import average_precision_score

from cprfl_lib.metrics import (
    average_precision,
    map_report,
    threshold_metrics,
    topk_metrics,
)

VOC_COUNTS = [6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5, 82, 7, 64]


def weighted_group_mean(head: float, medium: float, tail: float, sizes) -> float:
    """Class-count-weighted mean of the group figures; equals the total mAP (method.md §11.4)."""
    n_h, n_m, n_t = sizes
    return (n_h * head + n_m * medium + n_t * tail) / (n_h + n_m + n_t)


def test_ap_equals_sklearn_on_random_scores_and_a_hand_example():
    rng = np.random.default_rng(0)
    scores, targets = rng.normal(size=(200, 7)), (rng.random((200, 7)) < 0.2).astype(int)
    ap = average_precision(torch.tensor(scores), torch.tensor(targets))
    for c in range(7):
        assert ap[c] == pytest.approx(average_precision_score(targets[:, c], scores[:, c]))
    # by hand: ranking pos, neg, pos, neg → (1/1 + 2/3) / 2
    ap = average_precision(np.array([[0.9], [0.8], [0.7], [0.1]]), np.array([[1], [0], [1], [0]]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)


def test_group_means_by_hand_and_the_total_as_their_weighted_mean():
    targets = np.eye(4, dtype=int).repeat(2, axis=0)  # each class has two positives
    scores = targets.astype(float).copy()
    scores[:, 3] = np.linspace(1, 0, 8)  # class 3 (tail) ranked badly: positives at ranks 7, 8
    r = map_report(scores, targets, train_counts=[150, 120, 50, 3])
    ap3 = (1 / 7 + 2 / 8) / 2
    assert r.head == pytest.approx(100) and r.medium == pytest.approx(100)
    assert r.tail == pytest.approx(ap3 * 100) and r.mAP == pytest.approx((300 + ap3 * 100) / 4)
    # the total is the class-weighted mean of the groups
    rng = np.random.default_rng(1)
    targets = (rng.random((300, 20)) < 0.15).astype(int)
    r = map_report(rng.normal(size=(300, 20)) + targets, targets, VOC_COUNTS)
    assert r.mAP == pytest.approx(weighted_group_mean(r.head, r.medium, r.tail, (6, 6, 8)))
    # the paper's main rows pass the same check (method.md §11.4)
    assert weighted_group_mean(81.84, 90.51, 86.43, (6, 6, 8)) == pytest.approx(86.28, abs=0.01)
    assert weighted_group_mean(66.35, 70.99, 61.33, (22, 33, 25)) == pytest.approx(66.69, abs=0.01)


def test_class_without_positive_is_reported_not_averaged():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    with pytest.warns(UserWarning, match="cow"):
        r = map_report(np.random.default_rng(0).normal(size=(3, 2)), targets, [200, 5], class_names=["person", "cow"])
    assert r.no_positive == ["cow"] and np.isnan(r.ap[1]) and np.isnan(r.tail) and r.mAP == r.head


def test_threshold_and_topk_metrics_by_hand_and_the_official_top_k():
    targets = np.array([[1, 0, 1], [0, 1, 0]])
    probs = np.array([[0.9, 0.6, 0.2], [0.1, 0.7, 0.8]])
    m = threshold_metrics(probs, targets, threshold=0.5, logits=False)
    # predicted: {0,1} and {1,2}; tp = 2 of 4 predictions, of 3 positives
    assert m["OP"] == pytest.approx(50) and m["OR"] == pytest.approx(200 / 3)
    assert m["CP"] == pytest.approx(100 * (1 + 0.5 + 0) / 3) and m["CR"] == pytest.approx(100 * (1 + 1 + 0) / 3)
    t = topk_metrics(probs, targets, k=1)
    assert t["OP"] == pytest.approx(50) and t["OR"] == pytest.approx(100 / 3)
    assert threshold_metrics(np.log(probs / (1 - probs)), targets)["OF1"] == pytest.approx(m["OF1"])

    # The official meter's top-3: a top class below the threshold is not predicted (docs/DIFFERENCES.md).
    probs[1, 2] = 0.45
    logits = np.log(probs / (1 - probs))
    ours, official = topk_metrics(logits, targets, k=2), topk_metrics(logits, targets, k=2, threshold=0.5)
    # ours: {0, 1} and {1, 2} (2 of 4 right); official: {0, 1} and {1} (2 of 3 right)
    assert ours["OP"] == pytest.approx(50) and official["OP"] == pytest.approx(200 / 3)
    assert ours["OR"] == official["OR"] == pytest.approx(200 / 3)


def test_bad_inputs():
    one_line_error(lambda: average_precision(np.zeros((3, 2)), np.zeros((3, 3))), "(3, 2)", "(3, 3)")
    one_line_error(lambda: average_precision(np.array([[np.nan]]), np.array([[1]])), "NaN")
    one_line_error(lambda: topk_metrics(np.zeros((2, 3)), np.zeros((2, 3)), k=5), "k=5")
