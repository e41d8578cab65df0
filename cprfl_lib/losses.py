"""Multi-label losses, one registry by name: ``build_loss(name, train_counts=..., **params)``.

Every loss takes raw logits (B, C) and multi-hot targets (B, C), computes in float32 (even
under autocast: fp16 probabilities underflow the eps clamp), and has an explicit reduction.

- ``asl``: Asymmetric Loss (Ridnik et al.), the paper's loss (method.md §4.1).
- ``bce``, ``mls``, ``focal``: the usual baselines.
- ``rw``: BCE re-weighted by the inverse square root of class frequency (Table 1 "RW").
- ``cb_focal``, ``db_nofocal``, ``db_focal``: the Distribution-Balanced ResampleLoss family with the
  official per-dataset settings (method.md §4.2), built from per-class training counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cprfl_lib.errors import CprflError, NonFiniteError

REDUCTIONS = ("sum", "mean", "batchmean")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":  # over B x C, as the official code
        return loss.mean()
    return loss.sum() / loss.shape[0]  # batchmean: the paper's Eq. 7 sum, per image


def _check_inputs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 2 or targets.shape != logits.shape:
        raise CprflError(
            f"logits and targets must both be (batch, classes); got logits {tuple(logits.shape)} "
            f"and targets {tuple(targets.shape)}"
        )
    if not torch.isfinite(logits).all():
        raise NonFiniteError(f"logits contain NaN or inf ({int((~torch.isfinite(logits)).sum())} values)")
    return logits.float(), targets.float()


class _Loss(nn.Module):
    def __init__(self, reduction: str):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise CprflError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _check_inputs(logits, targets)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return _reduce(self.elementwise(logits, targets), self.reduction)

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AsymmetricLoss(_Loss):
    """ASL: L = -[y (1-p)^γ+ log p + (1-y) p_m^γ- log(1-p_m)], p_m = max(p - clip, 0).

    Written with the probability of the true state: p_t = p for positives and
    min(1 - p + clip, 1) for negatives, loss = -(1 - p_t)^γ log(max(p_t, eps)). The focusing
    weight (1 - p_t)^γ is a constant for back-propagation (detached, as the official
    ``disable_torch_grad_focal_loss=True``), with no change to the global grad mode.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 eps: float = 1e-8, reduction: str = "mean"):
        super().__init__(reduction)
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def elementwise(self, logits, targets):
        p = torch.sigmoid(logits)
        p_neg = 1 - p
        if self.clip > 0:
            p_neg = (p_neg + self.clip).clamp(max=1)  # probability margin: easy negatives are discarded
        p_t = targets * p + (1 - targets) * p_neg
        loss = torch.log(p_t.clamp(min=self.eps))
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            gamma = self.gamma_pos * targets + self.gamma_neg * (1 - targets)
            loss = loss * torch.pow(1 - p_t.detach(), gamma)
        return -loss


class BCELoss(_Loss):
    """Binary cross-entropy with logits, with optional per-class weights."""

    def __init__(self, reduction: str = "mean", class_weight: torch.Tensor | None = None):
        super().__init__(reduction)
        self.register_buffer("class_weight", class_weight)

    def elementwise(self, logits, targets):
        return F.binary_cross_entropy_with_logits(logits, targets, weight=self.class_weight, reduction="none")


class MultiLabelSoftMarginLoss(_Loss):
    """MLS: BCE averaged over classes per image (torch's MultiLabelSoftMarginLoss)."""

    def __init__(self, reduction: str = "mean"):
        super().__init__(reduction)

    def forward(self, logits, targets):
        logits, targets = _check_inputs(logits, targets)
        per_image = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
        return {"mean": per_image.mean(), "batchmean": per_image.mean(), "sum": per_image.sum()}[self.reduction]


class FocalLoss(_Loss):
    """Sigmoid focal loss: -(1 - p_t)^γ log p_t, with the focusing weight kept in the graph."""

    def __init__(self, gamma: float = 2.0, reduction: str = "mean"):
        super().__init__(reduction)
        self.gamma = gamma

    def elementwise(self, logits, targets):
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (1 - torch.exp(-bce)) ** self.gamma * bce


class ResampleLoss(_Loss):
    """The Distribution-Balanced loss family (Wu et al. 2020) as the CPRFL code configures it.

    weight: per element from ``reweight`` ('CB': class-balanced (1 - β)/(1 - β^n_i); 'rebalance':
    sigmoid(β_map((1/n_i)/r - γ_map)) + α_map with r = Σ_k y_k/n_k); logit regularisation: a
    per-class bias init_bias = -log(N/n_i - 1)·0.05/neg_scale is added (not in place, so the
    metrics see the model's own logits) and negative logits and weights are scaled by
    neg_scale and 1/neg_scale. With ``focal`` the loss is multiplied by
    balance·(1 - p_t)^γ. Here p_t is per element, as in the original DB code; the official
    CPRFL code computes it through a BCE with a hard-coded mean reduction, which makes the
    focusing factor one scalar per batch: ``scalar_focal=True`` replicates that bug.
    """

    def __init__(self, train_counts, num_train: int, reweight: str | None, focal: bool, neg_scale: float,
                 map_gamma: float = 0.3, map_alpha: float = 0.1, map_beta: float = 10.0, cb_beta: float = 0.9,
                 gamma: float = 2.0, balance: float = 2.0, init_bias_coef: float = 0.05, loss_weight: float = 1.0,
                 scalar_focal: bool = False, reduction: str = "mean"):
        super().__init__(reduction)
        counts = torch.as_tensor(train_counts, dtype=torch.float32)
        if counts.dim() != 1 or (counts <= 0).any() or (counts >= num_train).any():
            raise CprflError(f"ResampleLoss needs 0 < count < num_train ({num_train}) for every class, "
                             f"got {counts.tolist()}")
        if reweight not in (None, "CB", "rebalance"):
            raise CprflError(f"unknown reweight {reweight!r}; choose None, 'CB' or 'rebalance'")
        self.register_buffer("freq_inv", 1.0 / counts)
        self.register_buffer("init_bias", -torch.log(num_train / counts - 1) * init_bias_coef / neg_scale)
        self.register_buffer("cb_weight", (1 - cb_beta) / (1 - cb_beta ** counts))
        self.reweight, self.focal, self.neg_scale = reweight, focal, neg_scale
        self.map_gamma, self.map_alpha, self.map_beta = map_gamma, map_alpha, map_beta
        self.gamma, self.balance, self.loss_weight, self.scalar_focal = gamma, balance, loss_weight, scalar_focal

    def weights(self, targets: torch.Tensor) -> torch.Tensor:
        if self.reweight == "CB":
            return self.cb_weight.expand_as(targets)
        if self.reweight == "rebalance":
            repeat_rate = (targets * self.freq_inv).sum(1, keepdim=True).clamp(min=1e-12)
            return torch.sigmoid(self.map_beta * (self.freq_inv / repeat_rate - self.map_gamma)) + self.map_alpha
        return torch.ones_like(targets)

    def elementwise(self, logits, targets):
        weight = self.weights(targets)
        logits = logits + self.init_bias
        logits = logits * (1 - targets) * self.neg_scale + logits * targets
        weight = weight / self.neg_scale * (1 - targets) + weight * targets
        loss = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction="none")
        if self.focal:  # a BCE of its own: sharing `loss`'s would reorder the gradient sums (last-digit changes)
            bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
            pt = torch.exp(-(bce.mean() if self.scalar_focal else bce))
            loss = self.balance * (1 - pt) ** self.gamma * loss
        return self.loss_weight * loss


# Per-dataset ResampleLoss settings of the official code (train.py:121-202): (neg_scale, map_gamma).
DB_SETTINGS = {"voc": (5.0, 0.3), "coco": (2.0, 0.2)}


def _resample(reweight, focal, loss_weight):
    def build(train_counts=None, num_train=None, family="coco", **params):
        if train_counts is None or num_train is None:
            raise CprflError("this loss is built from the training counts: pass train_counts and num_train")
        if family not in DB_SETTINGS:
            raise CprflError(f"unknown dataset family {family!r} for ResampleLoss; choose {sorted(DB_SETTINGS)}")
        neg_scale, map_gamma = DB_SETTINGS[family]
        kw = dict(reweight=reweight, focal=focal, neg_scale=neg_scale, map_gamma=map_gamma, loss_weight=loss_weight)
        return ResampleLoss(train_counts, num_train, **{**kw, **params})
    return build


def _rw(train_counts=None, num_train=None, family=None, **params):
    if train_counts is None or num_train is None:
        raise CprflError("the RW loss is built from the training counts: pass train_counts and num_train")
    w = torch.sqrt(num_train / torch.as_tensor(train_counts, dtype=torch.float32))
    return BCELoss(class_weight=w / w.mean(), **params)  # mean 1 keeps the loss scale of plain BCE


def _plain(cls):
    return lambda train_counts=None, num_train=None, family=None, **params: cls(**params)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "asl": _plain(AsymmetricLoss),
    "bce": _plain(BCELoss),
    "mls": _plain(MultiLabelSoftMarginLoss),
    "focal": _plain(FocalLoss),
    "rw": _rw,
    "cb_focal": _resample("CB", True, 10.0),
    "db_nofocal": _resample("rebalance", False, 0.5),
    "db_focal": _resample("rebalance", True, 1.0),
}


# The class each registry entry builds.
LOSS_CLASSES: dict[str, type] = {"asl": AsymmetricLoss, "bce": BCELoss, "mls": MultiLabelSoftMarginLoss,
                                 "focal": FocalLoss, "rw": BCELoss, "cb_focal": ResampleLoss,
                                 "db_nofocal": ResampleLoss, "db_focal": ResampleLoss}


@dataclass(frozen=True)
class Param:
    """A parameter a recipe's ``loss.params`` may set: one of ``choices``, else a finite number in the range
    from ``lo`` to ``hi`` (None: unbounded; ``*_open``: the bound itself excluded). recipes.validate checks it."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None


_REDUCTION, _SWITCH = Param(choices=REDUCTIONS), Param(choices=(True, False))
_AT_LEAST_0, _ABOVE_0 = Param(lo=0), Param(lo=0, lo_open=True)
_RESAMPLE = {"reweight": Param(choices=(None, "CB", "rebalance")), "focal": _SWITCH, "neg_scale": _ABOVE_0,
             "map_gamma": Param(), "map_alpha": _AT_LEAST_0, "map_beta": _AT_LEAST_0,
             "cb_beta": Param(0, 1, hi_open=True), "gamma": _AT_LEAST_0, "balance": _ABOVE_0,
             "init_bias_coef": _AT_LEAST_0, "loss_weight": _ABOVE_0, "scalar_focal": _SWITCH, "reduction": _REDUCTION}
# What loss.params may set for each loss, and the values each parameter takes (the rest of a loss's
# constructor arguments are the registry's: the training counts, RW's class weights).
LOSS_PARAMS: dict[str, dict[str, Param]] = {
    "asl": {"gamma_neg": _AT_LEAST_0, "gamma_pos": _AT_LEAST_0, "clip": Param(0, 1, hi_open=True),
            "eps": Param(0, 1, lo_open=True, hi_open=True), "reduction": _REDUCTION},
    "bce": {"reduction": _REDUCTION},
    "mls": {"reduction": _REDUCTION},
    "focal": {"gamma": _AT_LEAST_0, "reduction": _REDUCTION},
    "rw": {"reduction": _REDUCTION},
    "cb_focal": _RESAMPLE, "db_nofocal": _RESAMPLE, "db_focal": _RESAMPLE,
}


def build_loss(name: str, train_counts=None, num_train: int | None = None, family: str = "coco", **params) -> nn.Module:
    """Build a loss by registry name; ``family`` ('voc' or 'coco') picks the DB settings."""
    if name not in LOSSES:
        raise CprflError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    try:
        return LOSSES[name](train_counts=train_counts, num_train=num_train, family=family, **params)
    except TypeError as exc:  # an unknown keyword from a recipe or the CLI
        raise CprflError(f"bad parameter for loss {name!r}: {exc}") from None

