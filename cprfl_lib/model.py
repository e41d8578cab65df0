"""The CPRFL model, equation by equation (arXiv 2408.08125, §3), and the linear baseline.

Shapes: B batch, v visual tokens, c classes, m text-embedding width, d model width.

    F  = φ(f_loc)                                  Eq. 1   (B, v, d)
    P  = GELU(W W1 + b1) W2 + b2                   Eq. 2   (c, d)     Prompt Initialization (PI)
    Z  = [F; P]                                    Eq. 3   (B, v + c, d)
    P' = VSI(Z)[:, v:]                             Eqs. 4-5 (B, c, d)  Visual-Semantic Interaction
    s_i = sigmoid(p'_i · p_i)                      Eq. 6   logits (B, c); the sigmoid is in the loss/metrics

P is used twice, so the loss reaches it along two paths (Dual-Path Back-Propagation):
P1 directly through the classifier of Eq. 6, and P2 through the VSI input of Eq. 3.
``cut_p1`` / ``cut_p2`` detach exactly one of them; ``no_feature_grad`` is the official
code's broader switch, which detaches the whole VSI output (and so also stops every gradient
to the VSI, φ and the backbone).

The VSI layer follows the official code (method.md §2): pre-LayerNorm multi-head attention
with an output projection, then a pre-LayerNorm FFN, dropout 0.1, and *no* residual
connections (paper and code have none); ``residual=True`` adds them.
"""

from __future__ import annotations

import torch
from torch import nn

from cprfl_lib.errors import CprflError


def to_tokens(features: torch.Tensor) -> torch.Tensor:
    """A backbone feature map (B, C_b, h, w) or tokens (B, v, C_b) as tokens (B, v, C_b)."""
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2)
    if features.dim() == 3:
        return features
    raise CprflError(f"expected a feature map (B, C, h, w) or tokens (B, v, C), got shape {tuple(features.shape)}")


class PromptInitialization(nn.Module):
    """Eq. 2: a two-layer MLP with GELU from text embeddings (c, m) to prompts (c, d); hidden τ·d."""

    def __init__(self, embed_dim: int, dim: int, tau: float = 0.5):
        super().__init__()
        hidden = int(tau * dim)
        if hidden < 1:
            raise CprflError(f"tau * dim must be at least 1, got tau={tau}, dim={dim}")
        self.fc1 = nn.Linear(embed_dim, hidden)  # W1, b1
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)  # W2, b2

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(w)))


class Attention(nn.Module):
    """Eq. 4: pre-LN multi-head self-attention, scale 1/√dim_head, output projection, dropout."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)  # W_q, W_k, W_v for all heads
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))
        self.last_attention: torch.Tensor | None = None  # (B, heads, n, n), kept only when asked

    def forward(self, x: torch.Tensor, keep_attention: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, h, n, dh)
        if keep_attention:
            attn = torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1)  # α_ij   (B, h, n, n)
            self.last_attention = attn.detach()
            out = attn @ v
        else:  # the same computation through the fused kernel
            out = nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))  # p̄_i, projected   (B, n, d)


class FeedForward(nn.Module):
    """Eq. 5: pre-LN two-layer GELU MLP with dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VSILayer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float, residual: bool):
        super().__init__()
        self.attn = Attention(dim, heads, dim_head, dropout)
        self.ff = FeedForward(dim, mlp_dim, dropout)
        self.residual = residual

    def forward(self, x: torch.Tensor, keep_attention: bool = False) -> torch.Tensor:
        y = self.attn(x, keep_attention)
        x = x + y if self.residual else y
        y = self.ff(x)
        return x + y if self.residual else y


class CPRFLHead(nn.Module):
    """Everything after the backbone: φ, the PI network, the VSI and the dot-product classifier.

    The class embeddings W (c, m) come either frozen, as a buffer computed once by a text
    encoder (``class_embeddings``), or from a trainable ``text_encoder`` module called with no
    argument that returns (c, m) with gradients (the official code fine-tunes CLIP's text tower).
    """

    def __init__(self, feat_dim: int, num_classes: int, *, class_embeddings: torch.Tensor | None = None,
                 text_encoder: nn.Module | None = None, embed_dim: int | None = None, dim: int = 2048,
                 tau: float = 0.5, depth: int = 1, heads: int = 8, dim_head: int = 512, mlp_dim: int = 2048,
                 dropout: float = 0.1, residual: bool = False, cut_p1: bool = False, cut_p2: bool = False,
                 no_feature_grad: bool = False):
        super().__init__()
        if (class_embeddings is None) == (text_encoder is None):
            raise CprflError("CPRFLHead needs exactly one of class_embeddings (frozen) or text_encoder (trainable)")
        if class_embeddings is not None:
            if class_embeddings.dim() != 2 or class_embeddings.shape[0] != num_classes:
                raise CprflError(f"class embeddings must be ({num_classes}, m), got {tuple(class_embeddings.shape)}")
            self.register_buffer("class_embeddings", class_embeddings.detach().float().clone())
            embed_dim = class_embeddings.shape[1]
        elif embed_dim is None:
            raise CprflError("with a trainable text encoder, give embed_dim (the width of its output)")
        self.text_encoder = text_encoder
        self.num_classes, self.cut_p1, self.cut_p2, self.no_feature_grad = num_classes, cut_p1, cut_p2, no_feature_grad
        self.visual_proj = nn.Linear(feat_dim, dim)  # φ, Eq. 1
        self.prompt_init = PromptInitialization(embed_dim, dim, tau)  # Eq. 2
        self.vsi = nn.ModuleList(VSILayer(dim, heads, dim_head, mlp_dim, dropout, residual) for _ in range(depth))
        self._frozen_prompts: torch.Tensor | None = None

    def semantic_embeddings(self) -> torch.Tensor:
        """W (c, m): the text encoder's class-name embeddings."""
        return self.text_encoder() if self.text_encoder is not None else self.class_embeddings

    def prompts(self) -> torch.Tensor:
        """P (c, d), Eq. 2."""
        if self._frozen_prompts is not None:
            return self._frozen_prompts
        return self.prompt_init(self.semantic_embeddings().float())

    @torch.no_grad()
    def freeze_prompts(self) -> None:
        """Compute P once and reuse it until :meth:`release_prompts` (an evaluation: the weights do not change,
        and a trainable text tower would otherwise run again for every batch)."""
        self._frozen_prompts = None
        self._frozen_prompts = self.prompts()

    def release_prompts(self) -> None:
        self._frozen_prompts = None

    def forward(self, features: torch.Tensor, return_attention: bool = False):
        f = self.visual_proj(to_tokens(features))  # F, Eq. 1                     (B, v, d)
        b, v, _ = f.shape
        p = self.prompts()  # P, Eq. 2                                             (c, d)
        p_vsi = p.detach() if self.cut_p2 else p  # path P2 enters the VSI here
        z = torch.cat([f, p_vsi.to(f.dtype).expand(b, -1, -1)], dim=1)  # Z, Eq. 3  (B, v + c, d)
        for layer in self.vsi:
            z = layer(z, keep_attention=return_attention)  # Eqs. 4-5
        if self.no_feature_grad:
            z = z.detach()
        p_refined = z[:, v:]  # P', the category-specific features                (B, c, d)
        p_cls = p.detach() if self.cut_p1 else p  # path P1: P as the classifier
        logits = (p_refined.float() * p_cls.float()).sum(-1)  # Eq. 6: p'_i · p_i, in float32    (B, c)
        if not return_attention:
            return logits
        # Where each class looks: the first layer's attention of prompt i over the visual tokens.
        attn = self.vsi[0].attn.last_attention.mean(1)[:, v:, :v]  # (B, c, v)
        return logits, attn


class LinearHead(nn.Module):
    """The baseline: global average pooling over the visual tokens, then one linear layer."""

    def __init__(self, feat_dim: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(feat_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = to_tokens(features).mean(1).float()
        kind = pooled.device.type
        if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):  # float32 logits: bf16 would create AP ties
            with torch.autocast(kind, enabled=False):
                return self.fc(pooled)
        return self.fc(pooled)


class MultiLabelClassifier(nn.Module):
    """Images → logits: input normalisation, a backbone (images → feature map), a head (feature map → logits).

    Images are uint8 (B, 3, H, W) (or floats in [0, 1]); they are normalised here, on their device,
    with the ``mean``/``std`` the recipe's transform preset gives (None: none, as the official code).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, mean=None, std=None):
        super().__init__()
        self.backbone, self.head = backbone, head
        if (mean is None) != (std is None):
            raise CprflError("give both mean and std, or neither")
        for name, value in (("input_mean", mean), ("input_std", std)):  # not in the state dict: from the recipe
            self.register_buffer(name, None if value is None else torch.tensor(value, dtype=torch.float32),
                                 persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise CprflError(f"expected images (B, 3, H, W), got shape {tuple(images.shape)}")
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255
        if self.input_mean is not None:
            x = (x - self.input_mean.view(1, 3, 1, 1)) / self.input_std.view(1, 3, 1, 1)
        return x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map (B, C_b, h, w) of (normalised) images."""
        return self.backbone(self.normalize(images))

    def forward(self, images: torch.Tensor, return_attention: bool = False):
        features = self.features(images)
        return self.head(features, return_attention=True) if return_attention else self.head(features)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
