"""Evaluation: per-class AP, mAP, head/medium/tail mAP, and the OP/OR/OF1/CP/CR/CF1 family.

The protocol (method.md §6): AP is non-interpolated (scikit-learn's
``average_precision_score``); mAP is the plain mean of per-class APs x 100; the group
figures are unweighted means inside each group, with groups from *training* counts
(head >= 100, medium 20-99, tail < 20). A class with no positive in the evaluated set has
no AP: it is reported by name and left out of the means, never silently averaged in.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from cprfl_lib.errors import CprflError

GROUPS = ("head", "medium", "tail")
COLUMNS = ("mAP", *GROUPS)  # the figures every table reports
HEAD_MIN, MEDIUM_MIN = 100, 20  # the official code's >= rule; only it gives 6/6/8 and 22/33/25


def class_groups(train_counts, thresholds=None) -> np.ndarray:
    """Group of each class from its number of training images: 'head', 'medium' or 'tail'.

    ``thresholds``: (head minimum, medium minimum), the paper's (100, 20) when None (``data.group_thresholds``).
    """
    counts = np.asarray(train_counts)
    if counts.ndim != 1 or (counts < 0).any():
        raise CprflError(f"train counts must be a 1-D array of non-negative integers, got {counts!r}")
    head, medium = group_thresholds(thresholds)
    return np.where(counts >= head, "head", np.where(counts >= medium, "medium", "tail"))


def group_thresholds(thresholds=None) -> tuple[int, int]:
    """(head minimum, medium minimum) checked: whole numbers, head > medium >= 1; None: (HEAD_MIN, MEDIUM_MIN)."""
    if thresholds is None:
        return HEAD_MIN, MEDIUM_MIN
    values = list(thresholds) if isinstance(thresholds, (list, tuple, np.ndarray)) else []
    values = [int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else None for v in values]
    if len(values) != 2 or None in values or not values[0] > values[1] >= 1:
        raise CprflError(f"group thresholds must be [head minimum, medium minimum], whole numbers with "
                         f"head > medium >= 1, got {thresholds!r}")
    return values[0], values[1]


def groups_note(thresholds=None) -> str:
    """The sentence that says how the groups were cut."""
    head, medium = group_thresholds(thresholds)
    return (f"Groups by training images per class: head >= {head}, medium {medium}-{head - 1}, tail < {medium}"
            + ("" if (head, medium) == (HEAD_MIN, MEDIUM_MIN) else " (not the paper's 100 / 20)") + ".")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check(scores, targets) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = _as_numpy(scores), _as_numpy(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise CprflError(f"scores and targets must both be (N, C); got {scores.shape} and {targets.shape}")
    if not np.isfinite(scores).all():
        bad = np.argwhere(~np.isfinite(scores))[0]
        raise CprflError(f"scores contain NaN or inf (first at sample {bad[0]}, class {bad[1]})")
    if not np.isin(targets, (0, 1)).all():
        raise CprflError("targets must be multi-hot 0/1 values")
    return scores, targets


def average_precision(scores, targets) -> np.ndarray:
    """Per-class non-interpolated AP in [0, 1]; NaN for a class without positives."""
    # imported here: scikit-learn imports pandas when it is installed, which the library itself never needs
    from sklearn.metrics import average_precision_score

    scores, targets = _check(scores, targets)
    ap = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        if targets[:, c].any():
            ap[c] = average_precision_score(targets[:, c], scores[:, c])
    return ap


@dataclass
class GroupMAP:
    """mAP (in %) over all classes and per group (head / medium / tail), with the per-class APs behind them."""

    mAP: float
    head: float
    medium: float
    tail: float
    ap: np.ndarray  # per class, in [0, 1], NaN where undefined
    groups: np.ndarray
    no_positive: list[str] = field(default_factory=list)  # classes left out of the means

    def as_dict(self) -> dict[str, float]:
        return {"mAP": self.mAP, "head": self.head, "medium": self.medium, "tail": self.tail}


def _mean_pct(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean() * 100) if values.size else float("nan")


def mean_average_precision(scores, targets) -> float:
    """mAP in %: the mean of the per-class APs, classes with no positive left out (NaN if none has one)."""
    return _mean_pct(average_precision(scores, targets))


def map_report(scores, targets, train_counts, class_names=None, thresholds=None) -> GroupMAP:
    """mAP and head/medium/tail mAP; classes with no positive are listed, not averaged."""
    ap = average_precision(scores, targets)
    groups = class_groups(train_counts, thresholds)
    if len(groups) != len(ap):
        raise CprflError(f"{len(groups)} train counts for {len(ap)} classes")
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(ap))]
    missing = [names[i] for i in np.flatnonzero(np.isnan(ap))]
    if missing:
        warnings.warn(f"no positive image for {len(missing)} class(es) in the evaluated split, left out of mAP: "
                      f"{missing}", stacklevel=2)
    return GroupMAP(
        mAP=_mean_pct(ap),
        head=_mean_pct(ap[groups == "head"]),
        medium=_mean_pct(ap[groups == "medium"]),
        tail=_mean_pct(ap[groups == "tail"]),
        ap=ap,
        groups=groups,
        no_positive=missing,
    )


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_pos: np.ndarray) -> dict[str, float]:
    """Overall (O*) and per-class averaged (C*) precision, recall and F1, in %."""
    op = tp.sum() / max(n_pred.sum(), 1)
    orr = tp.sum() / max(n_pos.sum(), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cp = np.nanmean(np.where(n_pred > 0, tp / n_pred, 0.0))
        cr = np.nanmean(np.where(n_pos > 0, tp / n_pos, np.nan))
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0  # noqa: E731
    return {k: float(v * 100) for k, v in
            dict(OP=op, OR=orr, OF1=f1(op, orr), CP=cp, CR=cr, CF1=f1(cp, cr)).items()}


def threshold_metrics(scores, targets, threshold: float = 0.5, logits: bool = True) -> dict[str, float]:
    """OP/OR/OF1/CP/CR/CF1 with predictions sigmoid(score) >= threshold (probabilities if logits=False)."""
    scores, targets = _check(scores, targets)
    probs = 1 / (1 + np.exp(-scores)) if logits else scores
    pred = probs >= threshold
    return _prf((pred & (targets == 1)).sum(0), pred.sum(0), targets.sum(0))


def topk_metrics(scores, targets, k: int = 3, threshold: float | None = None) -> dict[str, float]:
    """OP/OR/OF1/CP/CR/CF1 when each image predicts its k highest-scoring classes.

    ``threshold``: keep a top-k class only if sigmoid(score) >= threshold, as the official code's
    meter does; None keeps all k (the usual top-k protocol, this package's default).
    """
    scores, targets = _check(scores, targets)
    if not 1 <= k <= scores.shape[1]:
        raise CprflError(f"top-k needs 1 <= k <= {scores.shape[1]}, got k={k}")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    pred = np.zeros_like(targets, dtype=bool)
    np.put_along_axis(pred, top, True, axis=1)
    if threshold is not None:
        pred &= 1 / (1 + np.exp(-scores)) >= threshold
    return _prf((pred & (targets == 1)).sum(0), pred.sum(0), targets.sum(0))

