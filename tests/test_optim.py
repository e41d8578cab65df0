"""Optimizer groups, learning-rate schedules and the weight EMA (optim.py)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import one_line_error
from torch import nn

from cprfl_lib.train.optim import ModelEma, build_optimizer, build_scheduler, param_groups
from cprfl_lib.train.recipes import load_recipe


class Toy(nn.Module):
    """A trainable backbone (conv + BN) and a head (linear, LayerNorm, a matrix parameter, a frozen part)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.ModuleDict({"fc": nn.Linear(4, 5), "norm": nn.LayerNorm(5), "frozen": nn.Linear(5, 5)})
        self.head["frozen"].requires_grad_(False)
        self.prompts = nn.Parameter(torch.randn(5, 4))  # a 2-D parameter that is not a Linear weight

    def forward(self, x):
        f = self.backbone(x).mean((2, 3))
        return self.head["norm"](self.head["fc"](f)) + (self.prompts @ f.T).T.mean()


def optim_cfg(**kw) -> dict:
    return {**load_recipe("tiny")["optim"], **kw}


def test_every_trainable_parameter_is_in_one_group_with_weight_decay_only_on_matrices_and_kernels():
    model = Toy()
    groups = param_groups(model, lr=1e-3, weight_decay=0.05)
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            expected = 0.05 if p.ndim >= 2 and not name.endswith(".bias") else 0.0
            assert by_param[id(p)]["weight_decay"] == expected, name
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}  # not the frozen part
    assert {g["name"] for g in groups} == {"backbone/decay", "backbone/no_decay", "head/decay", "head/no_decay"}
    one_line_error(lambda: param_groups(Toy().requires_grad_(False), lr=1e-3, weight_decay=0.0), "no trainable parameter")


@pytest.mark.parametrize("optimizer, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_keeps_the_groups(optimizer, cls):  # and the backbone's lr multiplier
    opt = build_optimizer(Toy(), optim_cfg(optimizer=optimizer, lr=2e-3, weight_decay=0.01, backbone_lr_mult=0.5))
    assert type(opt) is cls
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups} == {
        "backbone/decay": (1e-3, 0.01), "backbone/no_decay": (1e-3, 0.0),
        "head/decay": (2e-3, 0.01), "head/no_decay": (2e-3, 0.0)}


def test_unknown_optimizer_or_schedule_is_an_error():
    one_line_error(lambda: build_optimizer(Toy(), optim_cfg(optimizer="sgd")), "sgd")
    opt = build_optimizer(Toy(), optim_cfg())
    one_line_error(lambda: build_scheduler(opt, optim_cfg(schedule="linear"), steps_per_epoch=3), "linear")


def run_schedule(cfg: dict, steps_per_epoch: int, steps: int, mult: float = 1.0):
    """The lr of every group before each of ``steps`` optimizer steps (no gradients: the weights stay)."""
    opt = build_optimizer(Toy(), {**cfg, "backbone_lr_mult": mult})
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_backbone_lr_multiplier_survives_every_schedule(schedule):
    cfg = optim_cfg(schedule=schedule, lr=1e-3, epochs=3, warmup_epochs=1 if schedule == "cosine" else 0)
    lrs = run_schedule(cfg, steps_per_epoch=4, steps=10, mult=0.1)
    moves = len({round(s["head/decay"], 12) for s in lrs})
    assert (moves == 1) if schedule == "constant" else (moves >= 6)  # the schedule does move the lr
    for s in lrs:
        assert s["backbone/decay"] == pytest.approx(0.1 * s["head/decay"], rel=1e-9)
        assert s["backbone/no_decay"] == pytest.approx(0.1 * s["head/no_decay"], rel=1e-9)
        assert s["head/no_decay"] == pytest.approx(s["head/decay"], rel=1e-9)


def test_cosine_with_warmup():
    lr, spe = 1e-2, 4
    lrs = [s["head/decay"] for s in run_schedule(optim_cfg(schedule="cosine", lr=lr, epochs=3, warmup_epochs=1),
                                                 steps_per_epoch=spe, steps=12)]
    assert lrs[:4] == pytest.approx([lr * k / 4 for k in (1, 2, 3, 4)])  # linear warmup over the first epoch
    # then a half cosine from lr to 0 over the remaining 8 steps
    assert lrs[4:] == pytest.approx([lr * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_onecycle_sized_for_80_epochs_and_run_for_79_never_reaches_the_final_lr():
    lr, spe = 1e-4, 5
    cfg = optim_cfg(optimizer="adamw", schedule="onecycle", lr=lr, schedule_epochs=80, epochs=79, pct_start=0.1)
    lrs = [s["head/decay"] for s in run_schedule(cfg, steps_per_epoch=spe, steps=79 * spe)]
    assert lrs[0] == pytest.approx(lr / 25)  # torch default div_factor
    peak = 8 * spe  # 10% of 80 epochs
    assert max(lrs) == pytest.approx(lr) and lrs.index(max(lrs)) == pytest.approx(peak, abs=1)
    final = lr / 25 / 1e4  # torch default final_div_factor
    last = lrs[-1]  # the lr of the last step of epoch 79
    assert last > 100 * final, "the cosine tail of the 80th epoch must not be reached"
    assert last < 0.01 * lr  # but it is near the end of the annealing
    # sized by the epochs run instead, the same steps would end at the final lr
    short = [s["head/decay"] for s in run_schedule({**cfg, "schedule_epochs": None}, spe, 79 * spe)]
    assert short[-1] == pytest.approx(final, rel=0.05)


def test_onecycle_cycles_adam_beta1_as_the_official_code():
    cfg = optim_cfg(optimizer="adamw", schedule="onecycle", lr=1e-4, schedule_epochs=10, epochs=10)
    opt = build_optimizer(Toy(), cfg)
    build_scheduler(opt, cfg, steps_per_epoch=2)
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95)


# --- EMA ---------------------------------------------------------------------------------------

def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


@pytest.mark.parametrize("decay", [0.5, 0.9])
def test_ema_weights_the_old_value_by_its_decay(decay):
    model = bn_model()
    ema = ModelEma(model, decay)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 3))  # moves the BN running statistics
    new = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(old["1.running_mean"], new["1.running_mean"])
    ema.update(model)
    got = ema.module.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(got[key], decay * old[key] + (1 - decay) * new[key], msg=key)
    assert got["1.num_batches_tracked"] == new["1.num_batches_tracked"]  # integers are copied, not averaged


def test_ema_is_a_copy_in_eval_mode_without_gradients():
    model = bn_model()
    ema = ModelEma(model, 0.998)
    assert ema.module is not model[0] and ema.module[0].weight is not model[0].weight
    ema.train()
    assert not ema.training and not ema.module.training and not ema.module[1].training
    assert all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the original is untouched
    assert not ema(torch.randn(2, 3)).requires_grad


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_ema_decay_outside_the_open_interval_is_an_error(decay):
    one_line_error(lambda: ModelEma(nn.Linear(2, 2), decay), "decay")


class WithExtraState(nn.Linear):
    """Like the CLIP text tower, which keeps its class names as a module's extra state."""

    def get_extra_state(self):
        return {"class_names": ["cat", "dog"]}

    def set_extra_state(self, state):
        assert state == {"class_names": ["cat", "dog"]}


def test_ema_skips_a_modules_extra_state():
    model = nn.Sequential(WithExtraState(2, 2))
    ema = ModelEma(model, 0.5)
    with torch.no_grad():
        model[0].weight.add_(2.0)
    ema.update(model)  # used to fail: 'dict' object has no attribute 'detach'
    torch.testing.assert_close(ema.module[0].weight, model[0].weight - 1.0)
