"""Aligned multi-head attention: ``nn.MultiheadAttention`` whose projections carry backward kernels.

The module keeps torch's parameters (``in_proj_weight`` or ``q_proj_weight``/``k_proj_weight``/
``v_proj_weight``, ``in_proj_bias``, ``bias_k``, ``bias_v``, ``out_proj.weight``, ``out_proj.bias``;
state dicts load either way) and adds, beside each projection weight ``<name>``, its backward
kernel ``backward_<name>`` (``backward_in_proj_weight``, ...; ``out_proj`` is an ``AlignedLinear``
with its own ``backward_weight``). With H heads of size d = E / H, inputs batch-first::

    q, k, v = x_q W_q^T + b_q, x_k W_k^T + b_k, x_v W_v^T + b_v    (aligned linear ops: dx = dy B)
    A       = softmax(q k^T / sqrt(d) + mask) per head               (unchanged: torch's
    y       = (A v) W_o^T + b_o                                       scaled_dot_product_attention
                                                                      when no weights are returned)

so backprop through the attention itself (softmax, the products with q, k, v) is exact and only
the weight transport of the four projections is replaced: with every B equal to its W, the
output and every gradient are ``nn.MultiheadAttention``'s.

The layer contract (docs/internals.md) is met per projection: each in-projection is a
``Projection``, a child module that holds no parameter but reads its W, B and bias from the
attention module (``in_proj`` for the packed weight; ``q_proj``, ``k_proj``, ``v_proj`` when
kdim/vdim differ from embed_dim); ``out_proj`` is an ordinary aligned layer. So ``layer_metrics``,
gradient angles, snapshots, the alignment pass and feedback paths see ``<attn>.in_proj`` and
``<attn>.out_proj`` as layers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neural_alignment.core.layers import AlignedLinear, DenseLayer, match_backward_scale
from neural_alignment.core.ops import aligned_linear

__all__ = ["AlignedMultiheadAttention", "Projection"]


class Projection(DenseLayer):
    """One in-projection of an ``AlignedMultiheadAttention``: y = x W^T + b, dx = dy B, where W is
    the attention's parameter ``<weight_name>``, B its ``backward_<weight_name>`` and b the rows
    ``bias_rows`` of its ``in_proj_bias``.

    The packed projection (``in_proj``) maps one input to [q, k, v] (self-attention:
    ``forward(x)``, one op), or three inputs each through its third of W (``forward(q, k, v)``, three
    ops; ``last_input`` is then the three inputs' tokens side by side, the samples this linear
    map saw, and ``last_output`` None, so the alignment pass projects them itself).
    """

    _owner: nn.MultiheadAttention

    def __init__(self, owner: nn.MultiheadAttention, weight_name: str, bias_rows: slice, rule):
        super().__init__()
        self.__dict__["_owner"] = owner  # a plain reference: the owner is this module's parent
        self.weight_name = weight_name
        self.bias_rows = bias_rows
        self._init_aligned(rule, owner=owner, weight_name=weight_name)

    @property
    def weight(self) -> nn.Parameter:  # type: ignore[override]  # read-only: a view of the attention's W
        return getattr(self._owner, self.weight_name)

    @property
    def backward_weight(self) -> nn.Parameter | None:  # type: ignore[override]  # read-only, as weight
        return getattr(self._owner, "backward_" + self.weight_name)

    @property
    def bias(self) -> Tensor | None:
        bias = self._owner.in_proj_bias
        return None if bias is None else bias[self.bias_rows]

    def extra_repr(self) -> str:
        return f"{self.weight_name}, rule={self.rule.name}"

    def reset_backward_weight(self) -> None:
        """Sample B as torch samples the attention's projection weights: xavier_uniform_."""
        if self.backward_weight is not None:
            with torch.no_grad():
                nn.init.xavier_uniform_(self.backward_weight)

    def _linear(self, x: Tensor, W: Tensor, b: Tensor | None, B: Tensor | None, input_gradient) -> Tensor:
        if B is None:
            return F.linear(x, W, b)
        return aligned_linear(x, W, b, B, self.transport_scale, input_gradient)

    def forward(self, x: Tensor, key: Tensor | None = None, value: Tensor | None = None) -> Any:
        W, b = self.weight, self.bias
        B = None if self.backward_weight is None else self._backward_kernel()
        input_gradient = None if B is None else self._feedback_path()
        if key is None:
            return self._remember(x, self._linear(x, W, b, B, input_gradient))
        if value is None:
            raise TypeError(f"{type(self).__name__}.forward() takes a value with a key")
        thirds = [t.chunk(3) if t is not None else (None,) * 3 for t in (W, b, B)]
        outputs = tuple(
            self._linear(inp, w, bias, back, input_gradient)
            for inp, w, bias, back in zip((x, key, value), *thirds, strict=True)
        )
        self.last_input = torch.cat([x.detach(), key.detach(), value.detach()], dim=1)
        self.last_output = None
        return outputs


class AlignedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (every argument, every forward option) whose four projections use
    backward kernels (see the module docstring); torch's arguments plus the keyword ``rule``."""

    out_proj: AlignedLinear  # type: ignore[assignment]  # torch infers its NonDynamicallyQuantizableLinear, a Linear

    def __init__(self, *args: Any, rule, **kwargs: Any):
        super().__init__(*args, **kwargs)
        E = self.embed_dim
        native_out = self._modules.pop("out_proj")  # re-added after the in-projections: module order
        assert isinstance(native_out, nn.Linear), "torch's out_proj is a Linear"
        if self._qkv_same_embed_dim:
            self.in_proj = Projection(self, "in_proj_weight", slice(None), rule)
        else:
            self.q_proj = Projection(self, "q_proj_weight", slice(0, E), rule)
            self.k_proj = Projection(self, "k_proj_weight", slice(E, 2 * E), rule)
            self.v_proj = Projection(self, "v_proj_weight", slice(2 * E, 3 * E), rule)
        self.out_proj = AlignedLinear.from_module(native_out, rule)
        for projection in self.projections():
            match_backward_scale(projection)

    def projections(self) -> list[Projection]:
        """The in-projections, in order."""
        return [m for m in self.children() if isinstance(m, Projection)]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """What ``nn.MultiheadAttention.forward`` returns, with aligned projections."""
        batched = query.dim() == 3
        self_attention = key is query and value is query
        if not batched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        N, L, E = query.shape
        H, d = self.num_heads, self.head_dim

        if self._qkv_same_embed_dim:
            q, k, v = self.in_proj(query).chunk(3, dim=-1) if self_attention else self.in_proj(query, key, value)
        else:
            q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)

        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask,
            mask_name="key_padding_mask",
            other_type=F._none_or_dtype(attn_mask),
            other_name="attn_mask",
            target_type=q.dtype,
        )
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # scaled_dot_product_attention applies the causal mask itself
        else:
            attn_mask = F._canonical_mask(
                mask=attn_mask,
                mask_name="attn_mask",
                other_type=None,
                other_name="",
                target_type=q.dtype,
                check_other=False,
            )
            is_causal = is_causal and key_padding_mask is None

        def extend(k: Tensor, v: Tensor, k_row: Tensor, v_row: Tensor):
            """Append one key/value token (bias_k/bias_v or add_zero_attn's zeros), masks padded to match."""
            nonlocal attn_mask, key_padding_mask
            k = torch.cat([k, k_row.expand(N, 1, E)], dim=1)
            v = torch.cat([v, v_row.expand(N, 1, E)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
            return k, v

        if self.bias_k is not None and self.bias_v is not None:
            k, v = extend(k, v, self.bias_k, self.bias_v)
        if self.add_zero_attn:
            zeros = k.new_zeros(1, 1, E)
            k, v = extend(k, v, zeros, zeros)
        S = k.shape[1]
        q, k, v = (t.reshape(N, -1, H, d).transpose(1, 2) for t in (q, k, v))  # [N, H, tokens, d]
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.view(N, H, L, S)
        if key_padding_mask is not None:
            padding = key_padding_mask.view(N, 1, 1, S)
            attn_mask = padding if attn_mask is None else attn_mask + padding
        dropout_p = self.dropout if self.training else 0.0

        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / d)) @ k.transpose(-2, -1)
            if attn_mask is not None:
                scores = scores + attn_mask
            weights = torch.softmax(scores, dim=-1)
            if dropout_p > 0:
                weights = F.dropout(weights, p=dropout_p)  # torch returns the weights after dropout too
            attended = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
        out = self.out_proj(attended.transpose(1, 2).reshape(N, L, E))
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """Load torch's own state dicts: a missing backward kernel keeps its init."""
        before = len(missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for projection in self.projections():
            key = prefix + "backward_" + projection.weight_name
            if key in missing_keys[before:]:
                missing_keys.remove(key)

    @classmethod
    def from_module(cls, module: nn.MultiheadAttention, rule) -> AlignedMultiheadAttention:
        """The aligned twin of an ``nn.MultiheadAttention``: every argument kept, parameters copied
        (requires_grad too), the mode kept, each B at its W's scale."""
        W = module.out_proj.weight
        layer = cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            add_bias_kv=module.bias_k is not None,
            add_zero_attn=module.add_zero_attn,
            kdim=module.kdim,
            vdim=module.vdim,
            batch_first=module.batch_first,
            device=W.device,
            dtype=W.dtype,
            rule=rule,
        )
        layer.load_state_dict(module.state_dict())
        native = dict(module.named_parameters())
        for name, p in layer.named_parameters():
            if name in native:
                p.requires_grad_(native[name].requires_grad)
        for aligned in (*layer.projections(), layer.out_proj):
            match_backward_scale(aligned)
        return layer.train(module.training)
