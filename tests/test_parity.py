"""Parity with the official CPRFL code (github jiexuanyan/CPRFL at 10b5b7c9d91d): the head, the losses, AP and the
prompt tokens against numbers the authors' code computed (``tests/parity/``, copies of ``/work/shared/parity/``;
``tests/parity/README.md`` describes every array, the official state_dict keys and the tolerances). Errors are
printed (``pytest -s``) so the margin to each tolerance can be seen."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cprfl_lib.cpus import torch_threads
from cprfl_lib.losses import build_loss
from cprfl_lib.metrics import GROUPS, average_precision, class_groups, map_report
from cprfl_lib.model import CPRFLHead
from cprfl_lib.semantics.clip import DEFAULT_TEMPLATE, tokenize_prompts

PARITY = Path(__file__).resolve().parent / "parity"
FAMILIES = ("voc", "coco")

# sha256 prefixes from the fixture README: the copies here are the generated files.
SHA256_PREFIX = {
    "head_d64.npz": "526fdb60dc50e9ab",
    "head_d64_coco.npz": "cf79818f5c019be0",
    "losses.npz": "49ec6ffd7e5a5046",
    "ap.npz": "d6201464b49efeb8",
    "prompts.npz": "7b8127074dd8ec06",
}

# Tolerances: the README's suggested ones (measured re-implementation errors are 10-100x smaller).
HEAD_REL = 1e-4  # logits and every gradient, relative to the reference tensor's max abs
LOSS_VALUE_ABS = 1e-5
LOSS_GRAD_REL = 1e-5
LOSS_BUFFER_REL = 1e-6  # init_bias and weights
AP_ABS = 1e-6  # against the meter's float32 APs
AP64_ABS = 1e-12  # against the float64 APs before the meter's rounding
MAP_ABS = 1e-4  # percentage points

# Official MyModel state_dict key -> our CPRFLHead parameter (depth 1, so layer index 0).
# The official FFN is PreNorm(FeedForward): the norm sits outside `fn.net`, whereas our
# FeedForward.net starts with the LayerNorm, so the official net.0 / net.3 are our net.1 / net.4.
OFFICIAL_TO_OURS = {
    "fc.0.weight": "visual_proj.weight",  # φ
    "fc.0.bias": "visual_proj.bias",
    "label_emb.0.weight": "prompt_init.fc1.weight",  # PI: label_emb.1 Identity, label_emb.2 GELU
    "label_emb.0.bias": "prompt_init.fc1.bias",
    "label_emb.3.weight": "prompt_init.fc2.weight",
    "label_emb.3.bias": "prompt_init.fc2.bias",
    "attention.layers.0.0.norm.weight": "vsi.0.attn.norm.weight",
    "attention.layers.0.0.norm.bias": "vsi.0.attn.norm.bias",
    "attention.layers.0.0.fn.to_qkv.weight": "vsi.0.attn.to_qkv.weight",
    "attention.layers.0.0.fn.to_out.0.weight": "vsi.0.attn.to_out.0.weight",
    "attention.layers.0.0.fn.to_out.0.bias": "vsi.0.attn.to_out.0.bias",
    "attention.layers.0.1.norm.weight": "vsi.0.ff.net.0.weight",
    "attention.layers.0.1.norm.bias": "vsi.0.ff.net.0.bias",
    "attention.layers.0.1.fn.net.0.weight": "vsi.0.ff.net.1.weight",
    "attention.layers.0.1.fn.net.0.bias": "vsi.0.ff.net.1.bias",
    "attention.layers.0.1.fn.net.3.weight": "vsi.0.ff.net.4.weight",
    "attention.layers.0.1.fn.net.3.bias": "vsi.0.ff.net.4.bias",
}
W_KEY = "text_encoder.w"  # the class embeddings, a leaf parameter of FixedEmbeddings below

# Official switch -> our constructor flag.
SWITCHES = {"base": {}, "no_cls_grad": {"cut_p1": True}, "no_feature_grad": {"no_feature_grad": True}}

# Official loss name (train.py --loss_function) -> our registry name.
RESAMPLE_LOSSES = {"CBloss": "cb_focal", "DBloss-noFocal": "db_nofocal", "dbl": "db_focal"}
FOCAL_LOSSES = ("CBloss", "dbl")


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(PARITY / name, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def rel_err(ours: torch.Tensor, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|: the README's per-tensor relative error."""
    ref_t = torch.from_numpy(np.asarray(ref))
    return ((ours.detach().double() - ref_t.double()).abs().max() / ref_t.double().abs().max()).item()


@pytest.fixture
def two_threads():
    """The fixtures were generated with 2 torch threads; restore the caller's setting afterwards."""
    with torch_threads(2):
        yield


@pytest.mark.parametrize("name", sorted(SHA256_PREFIX))
def test_fixture_files_are_the_generated_ones(name):
    assert hashlib.sha256((PARITY / name).read_bytes()).hexdigest()[:16] == SHA256_PREFIX[name]


# --- 1. the head -------------------------------------------------------------------------


class FixedEmbeddings(nn.Module):
    """A stand-in text encoder, as in the fixture: returns W as a leaf parameter, so dW exists."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self) -> torch.Tensor:
        return self.w


def build_head(z: dict[str, np.ndarray], **switch) -> CPRFLHead:
    assert sorted(z["param_keys"]) == sorted(OFFICIAL_TO_OURS)  # the mapping covers all 17 tensors
    cfg = {k.removeprefix("cfg/"): z[k].item() for k in z if k.startswith("cfg/")}
    head = CPRFLHead(
        cfg["feat_dim"], cfg["num_classes"], text_encoder=FixedEmbeddings(torch.from_numpy(z["W"])),
        embed_dim=cfg["emb_dim"], dim=cfg["dim"], tau=cfg["expand"], depth=cfg["depth"], heads=cfg["heads"],
        dim_head=cfg["dim_head"], mlp_dim=cfg["mlp_dim"], dropout=cfg["dropout"], **switch,
    )
    state = {OFFICIAL_TO_OURS[k]: torch.from_numpy(z[f"param/{k}"]) for k in z["param_keys"]}
    state[W_KEY] = torch.from_numpy(z["W"])
    head.load_state_dict(state, strict=True)  # strict: our parameters are exactly the official ones + W
    return head.eval()  # the official forward was run in eval mode: dropout 0.1 is inactive


@pytest.mark.parametrize("switch", sorted(SWITCHES))
@pytest.mark.parametrize("fixture", ["head_d64.npz", "head_d64_coco.npz"])
def test_head_logits_and_gradients_match_official(fixture, switch, two_threads):
    z = load(fixture)
    head = build_head(z, **SWITCHES[switch])
    params = dict(head.named_parameters())
    logits = head(torch.from_numpy(z["x"]))
    (logits * torch.from_numpy(z["cotangent"])).sum().backward()

    errors = {}
    prefix = "" if switch == "base" else f"{switch}/"
    errors["logits"] = rel_err(logits, z[f"{prefix}logits"])
    if switch == "base":
        errors["prompts"] = rel_err(head.prompts(), z["prompts"])
        errors["W"] = rel_err(params[W_KEY].grad, z["grad/W"])  # dW is stored for the base case only
        expected = {k: z[f"grad/{k}"] for k in OFFICIAL_TO_OURS}
        none_keys = []
    else:
        stored, same, none_keys = (list(z[f"{switch}/{what}"])
                                   for what in ("grad_stored", "grad_same_as_base", "grad_none"))
        assert sorted(stored + same + none_keys) == sorted(OFFICIAL_TO_OURS)
        expected = {k: z[f"{switch}/grad/{k}"] for k in stored} | {k: z[f"grad/{k}"] for k in same}
    for key, ref in expected.items():
        grad = params[OFFICIAL_TO_OURS[key]].grad
        assert grad is not None, f"{key}: no gradient, official has one"
        errors[key] = rel_err(grad, ref)
    for key in none_keys:  # the official .grad is None: ours must be None or all zero
        grad = params[OFFICIAL_TO_OURS[key]].grad
        assert grad is None or not grad.any(), f"{key}: official gradient is None, ours is nonzero"

    worst = max(errors, key=errors.get)
    print(f"\n{fixture} {switch}: worst rel {errors[worst]:.2e} ({worst}); logits {errors['logits']:.2e}")
    bad = {k: v for k, v in errors.items() if not v <= HEAD_REL}
    assert not bad, f"relative error above {HEAD_REL}: {bad}"


# --- 2. losses ---------------------------------------------------------------------------


def loss_and_grad(loss_fn: nn.Module, logits: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # Our losses do not shift their input in place (the official ResampleLoss does), so the leaf
    # itself can be passed; the official gradient is also d value / d leaf.
    x = torch.from_numpy(logits).clone().requires_grad_(True)
    value = loss_fn(x, torch.from_numpy(targets))
    value.backward()
    return value.detach(), x.grad


def build_resample(z: dict[str, np.ndarray], family: str, official: str, **params) -> nn.Module:
    # The official ResampleLoss returns mean(loss) over B x C (reduction 'mean'; with focal, the scalar
    # focal factor times the mean weighted BCE), so reduction="mean" here, not our per-image "batchmean".
    return build_loss(RESAMPLE_LOSSES[official], train_counts=z[f"{family}/class_freq"],
                      num_train=int(z[f"{family}/num_train"]), family=family, reduction="mean", **params)


@pytest.mark.parametrize("official", ["asl", *sorted(RESAMPLE_LOSSES)])
@pytest.mark.parametrize("family", FAMILIES)
def test_losses_match_official(family, official):
    z = load("losses.npz")
    ref = f"{family}/{official}"
    logits, targets = z[f"{family}/logits"], z[f"{family}/targets"]
    if official == "asl":
        # AsymmetricLossOptimized(gamma_neg=4, gamma_pos=0, clip=0.05) as train.py builds it; its
        # value is the mean over the B x C elements, which is our reduction="mean".
        loss_fn = build_loss("asl", gamma_neg=4.0, gamma_pos=0.0, clip=0.05, reduction="mean")
    else:
        # scalar_focal=True: the official focal factor is one scalar per batch (no effect without focal).
        loss_fn = build_resample(z, family, official, scalar_focal=True)
    value, grad = loss_and_grad(loss_fn, logits, targets)
    errors = {"value_abs": abs(value.item() - z[f"{ref}/value"].item()), "grad_rel": rel_err(grad, z[f"{ref}/grad"])}
    if official != "asl":
        errors["init_bias_rel"] = rel_err(loss_fn.init_bias, z[f"{ref}/init_bias"])
        # reweight_functions(targets) before the neg_scale division, as our weights() returns it
        errors["weights_rel"] = rel_err(loss_fn.weights(torch.from_numpy(targets)), z[f"{ref}/weights"])
    print(f"\n{ref}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    tolerance = {"value_abs": LOSS_VALUE_ABS, "grad_rel": LOSS_GRAD_REL, "init_bias_rel": LOSS_BUFFER_REL,
                 "weights_rel": LOSS_BUFFER_REL}
    bad = {k: v for k, v in errors.items() if not v <= tolerance[k]}
    assert not bad, f"above the tolerance {tolerance}: {bad}"
    if official in FOCAL_LOSSES:  # our default (per-element p_t, as in the original DB loss) is not the official one
        value, _ = loss_and_grad(build_resample(z, family, official), logits, targets)  # scalar_focal=False
        diff = abs(value.item() - z[f"{ref}/value"].item())
        print(f"{ref} per-element focal: value differs by {diff:.3g}")
        assert diff > 1000 * LOSS_VALUE_ABS  # far outside the parity tolerance, not rounding noise


# --- 3. average precision ----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_ap_and_group_map_match_official(family):
    z = {k.removeprefix(f"{family}/"): v for k, v in load("ap.npz").items() if k.startswith(f"{family}/")}
    scores, targets, counts = z["scores"], z["targets"], z["class_freq"]

    ap = average_precision(scores, targets)
    ap_err = np.abs(ap - z["ap"].astype(np.float64)).max()
    ap64_err = np.abs(ap - z["ap_float64"]).max()
    report = map_report(scores, targets, counts, list(z["lt_class_names"]))
    map_errs = {
        "mAP": abs(report.mAP - z["mAP"].item()),
        "head": abs(report.head - z["head_mAP"].item()),
        "medium": abs(report.medium - z["medium_mAP"].item()),
        "tail": abs(report.tail - z["tail_mAP"].item()),
    }
    print(f"\n{family}: AP abs {ap_err:.2e} (float32 meter), {ap64_err:.2e} (float64); "
          + ", ".join(f"{k} {v:.2e}" for k, v in map_errs.items()))
    assert ap_err <= AP_ABS
    assert ap64_err <= AP64_ABS
    assert report.no_positive == []
    assert max(map_errs.values()) <= MAP_ABS, map_errs

    # ltAnalysis's membership (0 head, 1 medium, 2 tail), exactly: VOC 6/6/8, COCO 22/33/25.
    official_groups = np.array(GROUPS)[z["group"]]
    np.testing.assert_array_equal(class_groups(counts), official_groups)
    np.testing.assert_array_equal(report.groups, official_groups)


# --- 4. prompt tokens --------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_tokens_match_official(family):
    z = load("prompts.npz")
    names = [str(n) for n in z[f"{family}/class_names"]]  # train.py's lists, with underscores
    # The sentences: template "a photo of a {}." with "_" -> " ", as tokenize_prompts builds them.
    assert [DEFAULT_TEMPLATE.format(n.replace("_", " ")) for n in names] == list(z[f"{family}/prompts"])
    tokens = tokenize_prompts("clip-rn50", names)  # open_clip's tokenizer, offline
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, torch.from_numpy(z[f"{family}/tokens"]))
