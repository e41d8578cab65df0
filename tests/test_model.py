"""Contracts of the CPRFL model: shapes, batch of one, the two gradient paths, bad input."""

import pytest
import torch
from conftest import one_line_error
from torch import nn

from cprfl_lib.model import CPRFLHead, LinearHead, MultiLabelClassifier

TINY = dict(dim=32, heads=2, dim_head=8, mlp_dim=48, dropout=0.0)


def tiny_head(c=20, m=16, feat=24, **kw):
    torch.manual_seed(0)
    return CPRFLHead(feat, c, class_embeddings=torch.randn(c, m), **{**TINY, **kw})


@pytest.mark.parametrize("c", [20, 80])
@pytest.mark.parametrize("b", [1, 3])
def test_logits_shape_for_feature_maps_and_tokens(c, b):
    for head in (tiny_head(c=c), LinearHead(24, c)):  # the CPRFL head and the linear baseline
        assert head(torch.randn(b, 24, 4, 4)).shape == (b, c)  # batch of 1 keeps its batch axis
        assert head(torch.randn(b, 16, 24)).shape == (b, c)


def test_classifier_with_backbone_and_attention():
    backbone = nn.Conv2d(3, 24, kernel_size=8, stride=8)
    model = MultiLabelClassifier(backbone, tiny_head(c=20))
    logits, attn = model(torch.randn(2, 3, 32, 32), return_attention=True)
    assert logits.shape == (2, 20) and attn.shape == (2, 20, 16)
    # a share of each prompt's attention goes to the other prompts, the rest to the 16 visual tokens
    assert (attn >= 0).all() and (attn.sum(-1) < 1).all()


def test_logit_is_dot_product_of_refined_feature_and_prompt():
    head = tiny_head(c=5).eval()
    x = torch.randn(2, 24, 3, 3)
    logits = head(x)
    p = head.prompts()
    z = torch.cat([head.visual_proj(x.flatten(2).transpose(1, 2)), p.expand(2, -1, -1)], 1)
    for layer in head.vsi:
        z = layer(z)
    assert torch.allclose(logits, torch.einsum("bcd,cd->bc", z[:, 9:], p), atol=1e-5)
    assert torch.allclose(logits, head(x, return_attention=True)[0], atol=1e-5)  # the attention path: the same


def test_residual_switch_changes_output():
    x = torch.randn(2, 24, 2, 2)
    plain, res = tiny_head(), tiny_head(residual=True)
    res.load_state_dict(plain.state_dict())
    assert not torch.allclose(plain.eval()(x), res.eval()(x))


# --- Dual-path back-propagation (full = P1 + P2 on the switches: test_model_analysis.py) ------------------

def _prompt_grad(**switches):
    """Gradient of the loss w.r.t. the prompts P, with the given switches."""
    head = tiny_head(c=6, **switches).eval()
    x = torch.randn(3, 24, 2, 2, generator=torch.Generator().manual_seed(1))
    p = head.prompts().detach().requires_grad_(True)
    head.prompts = lambda: p  # feed P in as a leaf so autograd gives dL/dP
    head(x).pow(2).sum().backward()
    return p.grad, head


def test_cutting_both_paths_leaves_no_prompt_gradient():
    grad, _ = _prompt_grad(cut_p1=True, cut_p2=True)
    assert grad is None or grad.abs().sum() == 0


def test_cut_p2_keeps_vsi_training_but_no_feature_grad_stops_it():
    p1_only, head = _prompt_grad(cut_p2=True)
    assert head.vsi[0].attn.to_qkv.weight.grad.abs().sum() > 0
    assert head.visual_proj.weight.grad.abs().sum() > 0
    grad, head = _prompt_grad(no_feature_grad=True)
    assert head.vsi[0].attn.to_qkv.weight.grad is None and head.visual_proj.weight.grad is None
    # the prompts get the same gradient as in the clean P1-only cut; the difference is the VSI and φ stop learning
    assert torch.allclose(grad, p1_only, atol=1e-6)


def test_gradient_reaches_the_pi_network_along_both_paths():
    head = tiny_head(c=4)
    head(torch.randn(2, 24, 2, 2)).sum().backward()
    assert head.prompt_init.fc1.weight.grad.abs().sum() > 0


# --- Bad input (a trainable text encoder's gradient, dW: test_parity.py::test_head_logits_and_gradients_match_official)

def test_bad_inputs_raise_clear_errors():
    one_line_error(lambda: CPRFLHead(24, 7, **TINY), "exactly one")
    one_line_error(lambda: CPRFLHead(24, 7, class_embeddings=torch.randn(5, 10), **TINY), "(7, m)")
    one_line_error(lambda: tiny_head()(torch.randn(24)), "feature map")
    one_line_error(lambda: MultiLabelClassifier(nn.Identity(), LinearHead(3, 2))(torch.randn(2, 4, 8, 8)), "images")


def test_logits_are_float32_under_bfloat16_autocast():
    """AP is computed from the logits: bf16 logits would create ties (docs/DIFFERENCES.md)."""
    for head in (tiny_head(c=5, dropout=0.1), LinearHead(24, 5)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert head(torch.randn(2, 24, 3, 3)).dtype == torch.float32
