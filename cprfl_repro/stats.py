"""Confidence intervals for the tables' comparisons: a paired bootstrap over test images, combined over seeds.

The difference between two variants (CPRFL against a baseline, an ablation row against its
reference) varies with the test images drawn and with the training seed. Each bootstrap
replicate therefore draws the test images with replacement (the same images for every run:
paired) and the seeds with replacement (the same seeds for both variants), and takes the
difference of the seed-mean of the metric; the 95 % interval is the 2.5-97.5 percentile range of
those differences. The point estimate is the difference of the seed means on the whole test set.

Average precision under a resample is computed exactly (scikit-learn's definition: precision at
every distinct score, ties grouped) from the images' draw counts, for all replicates at once, as
matrix products (see :func:`resampled_ap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cprfl_lib.errors import CprflError
from cprfl_lib.metrics import COLUMNS, class_groups

N_BOOT = 1000


@dataclass(frozen=True)
class Interval:
    diff: float  # the point estimate: seed-mean difference on the whole test set
    low: float
    high: float
    seeds: int

    def __str__(self) -> str:
        return f"{self.diff:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def resampled_ap(scores: np.ndarray, targets: np.ndarray, counts: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per-class AP (B, C) of ``scores`` (n, C) under B resamples given by draw ``counts`` (B, n); NaN where a
    resample holds no positive of a class. Equals scikit-learn's average_precision_score on the resample.

    AP is the mean over the resample's positives of the precision at their score (ties grouped): for positive p of
    class k, precision = tp / seen over the items scored at least as high. Both are counts @ a 0/1 matrix
    (item i scored >= p), so all replicates come out of two matrix products per chunk of positives.
    """
    n, c = scores.shape
    w = np.ascontiguousarray(counts, dtype=np.float32)  # draw counts are small integers: exact in float32
    y = np.asarray(targets).astype(bool)
    cls = np.concatenate([np.full(int(y[:, k].sum()), k) for k in range(c)]) if y.any() else np.zeros(0, int)
    item = np.concatenate([np.flatnonzero(y[:, k]) for k in range(c)]) if y.any() else np.zeros(0, int)
    weighted = np.zeros((len(w), c))  # sum over positives of draws x precision
    drawn = np.zeros((len(w), c))  # positives drawn
    for start in range(0, len(item), chunk):
        k, i = cls[start:start + chunk], item[start:start + chunk]
        above = scores[:, k] >= scores[i, k][None, :]  # (n, P): scored at least as high as positive p
        seen = (w @ above.astype(np.float32)).astype(np.float64)  # exact integers, then divided in float64
        tp = (w @ (above & y[:, k]).astype(np.float32)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(seen > 0, tp / seen, 0.0)
        for klass in np.unique(k):
            sel = k == klass
            weighted[:, klass] += (w[:, i[sel]].astype(np.float64) * precision[:, sel]).sum(1)
            drawn[:, klass] += w[:, i[sel]].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(drawn > 0, weighted / drawn, np.nan)


class Bootstrap:
    """Paired bootstrap replicates over one test set (fixed draws, so every run is resampled alike)."""

    def __init__(self, targets: np.ndarray, train_counts, n_boot: int = N_BOOT, seed: int = 0, thresholds=None):
        self.targets = np.asarray(targets)
        self.groups = class_groups(train_counts, thresholds)
        rng = np.random.default_rng([seed, len(self.targets)])
        n = len(self.targets)
        self.counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])
        self.n_boot, self.seed = n_boot, seed
        self._memo: dict[str, dict[str, np.ndarray]] = {}

    def figures(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        """{mAP, head, medium, tail}: (B,) values in % of ``scores`` (n, C) under every replicate."""
        if scores.shape != self.targets.shape:
            raise CprflError(f"scores {scores.shape} are not of this test set {self.targets.shape}")
        ap = resampled_ap(np.asarray(scores, dtype=np.float64), self.targets, self.counts) * 100
        out = {"mAP": np.nanmean(ap, axis=1)}
        for g in ("head", "medium", "tail"):
            cols = self.groups == g
            out[g] = np.nanmean(ap[:, cols], axis=1) if cols.any() else np.full(self.n_boot, np.nan)
        return out

    def run_figures(self, run_dir) -> dict[str, np.ndarray]:
        """:meth:`figures` of a run's test logits (its predictions.npz), computed once per run."""
        key = str(run_dir)
        if key not in self._memo:
            with np.load(Path(run_dir) / "predictions.npz") as npz:
                if not np.array_equal(npz["targets"], self.targets):
                    raise CprflError(f"{run_dir}: its predictions are not of this test set")
                self._memo[key] = self.figures(npz["model"])
        return self._memo[key]

    def compare(self, a: list, b: list, column: str = "mAP", point: float | None = None) -> Interval:
        """The interval of seed-mean(a) - seed-mean(b) in ``column``: ``a`` and ``b`` are run folders of the same
        seeds in the same order. ``point``: the difference on the whole test set (else the replicates' mean)."""
        if column not in COLUMNS:
            raise CprflError(f"unknown column {column!r}; choose one of {COLUMNS}")
        if len(a) != len(b) or not a:
            raise CprflError(f"a paired comparison needs the same seeds on both sides, got {len(a)} and {len(b)}")
        diffs = np.stack([self.run_figures(x)[column] - self.run_figures(y)[column] for x, y in zip(a, b)])
        rng = np.random.default_rng([self.seed, 2, len(a)])  # the same seed draws for every comparison
        picks = rng.integers(0, len(a), (self.n_boot, len(a)))  # seeds drawn with replacement
        boot = diffs[picks, np.arange(self.n_boot)[:, None]].mean(1)
        boot = boot[np.isfinite(boot)]
        low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan)
        return Interval(float(np.nanmean(boot)) if point is None else float(point), float(low), float(high), len(a))
