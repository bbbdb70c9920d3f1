"""``vit``: a vision transformer (Dosovitskiy et al. 2021) sized by options, for small images.

With patches of p x p pixels (P = (H / p)(W / p) of them) and width d::

    t_0     = [cls; conv_pxp,stride p(x) as P tokens] + position     (P + 1 tokens of width d)
    t_k'    = t_{k-1} + attention_k(layernorm(t_{k-1}))              (pre-norm blocks, ``depth`` of them)
    t_k     = t_k' + W_2 gelu(W_1 layernorm(t_k') + b_1) + b_2        (MLP of width ``mlp_ratio`` d)
    logits  = head(layernorm(t_depth)[cls])

Every weight that transports an error is a torch layer convert aligns: the patch embedding's
Conv2d, each block's ``nn.MultiheadAttention`` (its in- and out-projections) and MLP Linears,
the head. The class token and the position embedding are added, not multiplied
(``Tokens.weight_transport = False``: convert does not flag them); the LayerNorms' scales are
elementwise. Initialisation as in the reference implementation: tokens N(0, 0.02^2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from neural_alignment.core.errors import UserError
from neural_alignment.core.options import checked_options
from neural_alignment.plugins.architectures.common import image_shape, positive_ints


class Tokens(nn.Module):
    """Prepends the class token and adds the position embedding: [cls; x] + position."""

    weight_transport = False  # both parameters are added to the activations

    def __init__(self, num_patches: int, dim: int):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.position


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding, class token and positions, ``depth`` pre-norm blocks, norm, linear head on cls."""

    def __init__(self, num_classes: int, in_shape, patch: int, dim: int, depth: int, heads: int, mlp_dim: int, dropout):
        super().__init__()
        channels, height, width = in_shape
        self.patch = nn.Conv2d(channels, dim, patch, stride=patch)
        self.tokens = Tokens((height // patch) * (width // patch), dim)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_dim, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        t = self.tokens(self.patch(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(self.blocks(t))[:, 0])


@checked_options("architecture 'vit'")
def vit(
    num_classes: int,
    in_shape: Sequence[int],
    *,
    patch: int = 7,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 2,
    dropout: float = 0.0,
) -> VisionTransformer:
    """A vision transformer: ``patch`` x ``patch`` patches, width ``dim``, ``depth`` blocks of ``heads``
    heads and an MLP of width ``mlp_ratio * dim``; attention dropout ``dropout``."""
    shape = image_shape(in_shape, "vit")
    (patch, dim, depth, heads, mlp_ratio) = (
        positive_ints(value, option, "vit")[0]
        for value, option in (
            (patch, "patch"),
            (dim, "dim"),
            (depth, "depth"),
            (heads, "heads"),
            (mlp_ratio, "mlp_ratio"),
        )
    )
    if shape[1] % patch or shape[2] % patch:
        raise UserError(f"architecture 'vit': patch={patch} must divide the image size {shape[1]}x{shape[2]}")
    if dim % heads:
        raise UserError(f"architecture 'vit': heads={heads} must divide dim={dim}")
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"architecture 'vit': dropout must be in [0, 1), got {dropout!r}")
    return VisionTransformer(num_classes, shape, patch, dim, depth, heads, mlp_ratio * dim, float(dropout))
