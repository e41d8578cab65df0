"""The paired bootstrap: exact AP under a resample, intervals that cover what they should."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from cprfl_repro.stats import Bootstrap, resampled_ap


def test_resampled_ap_is_scikit_learns_ap_of_the_resample():
    rng = np.random.default_rng(0)
    n, c = 60, 4
    targets = (rng.random((n, c)) < 0.3).astype(int)
    scores = np.round(rng.normal(size=(n, c)) + targets, 1)  # rounded: many ties
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(5)])
    got = resampled_ap(scores, targets, counts)
    for b in range(5):
        idx = np.repeat(np.arange(n), counts[b])
        for k in range(c):
            if targets[idx, k].any():
                assert got[b, k] == pytest.approx(average_precision_score(targets[idx, k], scores[idx, k]), abs=1e-12)
            else:
                assert np.isnan(got[b, k])
    ones = np.ones((1, n), dtype=int)  # no resampling: the plain AP
    assert resampled_ap(scores, targets, ones)[0, 0] == pytest.approx(average_precision_score(targets[:, 0], scores[:, 0]))


def _run(folder, scores, targets):
    folder.mkdir()
    np.savez(folder / "predictions.npz", model=scores, targets=targets)
    return folder


def test_a_real_difference_excludes_zero_and_noise_does_not(tmp_path):
    rng = np.random.default_rng(1)
    n, c = 400, 6
    targets = (rng.random((n, c)) < 0.2).astype(np.uint8)
    counts = [500, 200, 150, 50, 10, 5]
    boot = Bootstrap(targets, counts, n_boot=300)
    good = [_run(tmp_path / f"good{s}", 2.0 * targets + rng.normal(size=(n, c)), targets) for s in range(3)]
    bad = [_run(tmp_path / f"bad{s}", 0.5 * targets + rng.normal(size=(n, c)), targets) for s in range(3)]
    same = [_run(tmp_path / f"same{s}", 0.5 * targets + rng.normal(size=(n, c)), targets) for s in range(3)]
    real = boot.compare(good, bad, "mAP")
    assert real.excludes_zero and real.diff > 10 and real.low < real.diff < real.high
    noise = boot.compare(same, bad, "mAP")
    assert not noise.excludes_zero and abs(noise.diff) < 5
    assert str(real).startswith("+") and "[" in str(real)
    tail = boot.compare(good, bad, "tail")
    assert tail.high - tail.low > real.high - real.low  # two tail classes: a wider interval
    with pytest.raises(Exception, match="same seeds"):
        boot.compare(good[:2], bad, "mAP")

