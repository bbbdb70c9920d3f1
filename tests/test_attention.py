"""Aligned multi-head attention against ``nn.MultiheadAttention``, float64, over random
configurations (batch_first or not, bias, add_bias_kv, add_zero_attn, kdim/vdim, self- or
cross-attention, boolean/float/3-d masks, key padding, is_causal, need_weights, averaging,
dropout): with every B == W the outputs and every gradient are torch's; with random B the
forward is unchanged, out_proj's dW is torch's (its dy is), the input gradient moves off
backprop's, and Kolen-Pollack's dB = angle_scale * dW is delivered for every projection. Also
the backward_<name> parameters, state dicts, unbatched input and the layer contract."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neural_alignment import get_rule
from neural_alignment.core.attention import AlignedMultiheadAttention

F64 = torch.float64
E, H = 8, 2
MIXED_MASKS = "ignore:Support for mismatched key_padding_mask and attn_mask"  # torch's own deprecation


def tie(layer: AlignedMultiheadAttention) -> None:
    with torch.no_grad():
        for aligned in (*layer.projections(), layer.out_proj):
            aligned.backward_weight.copy_(aligned.weight)


@st.composite
def cases(draw):
    """(module arguments, the inputs' tensors and forward keywords, whether self-attention)."""
    N, L = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    separate = draw(st.booleans())
    kdim, vdim = (3, 5) if separate else (E, E)
    self_attention = not separate and draw(st.booleans())
    S = L if self_attention else draw(st.integers(1, 4))
    args = dict(
        embed_dim=E,
        num_heads=H,
        bias=draw(st.booleans()),
        add_bias_kv=draw(st.booleans()),
        add_zero_attn=draw(st.booleans()),
        kdim=kdim,
        vdim=vdim,
        batch_first=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.0, 0.3])),
    )
    layout = (lambda n, t, e: (n, t, e)) if args["batch_first"] else (lambda n, t, e: (t, n, e))
    q = torch.randn(*layout(N, L, E), dtype=F64)
    k, v = (
        (q, q)
        if self_attention
        else (torch.randn(*layout(N, S, kdim), dtype=F64), torch.randn(*layout(N, S, vdim), dtype=F64))
    )
    mask_kind = draw(st.sampled_from([None, "bool", "float", "float3", "causal"]))
    keyword: dict = dict(need_weights=draw(st.booleans()), average_attn_weights=draw(st.booleans()))
    if mask_kind == "bool":
        keyword["attn_mask"] = torch.rand(L, S) < 0.4
        keyword["attn_mask"][:, 0] = False  # no row fully masked (torch gives NaN there)
    elif mask_kind == "float":
        keyword["attn_mask"] = torch.randn(L, S, dtype=F64)
    elif mask_kind == "float3":
        keyword["attn_mask"] = torch.randn(N * H, L, S, dtype=F64)
    elif mask_kind == "causal" and L == S:
        keyword["attn_mask"] = nn.Transformer.generate_square_subsequent_mask(L, dtype=F64)
        keyword["is_causal"] = True
    if draw(st.booleans()) and mask_kind not in ("float", "float3"):
        keyword["key_padding_mask"] = torch.rand(N, S) < 0.4
        keyword["key_padding_mask"][:, 0] = False
    return args, (q, k, v), keyword, self_attention


def run(module, inputs, keyword, seed):
    torch.manual_seed(seed)  # the same dropout masks for both modules
    return module(*inputs, **keyword)


def gradients(out, inputs, params, dy):
    return torch.autograd.grad(out, [*inputs, *params], dy, allow_unused=True)


@pytest.mark.filterwarnings(MIXED_MASKS)
@settings(max_examples=50, deadline=None)
@given(case=cases(), seed=st.integers(0, 2**16))
def test_attention_is_torch_s_with_B_equal_W_and_moves_off_backprop_with_random_B(case, seed):
    args, inputs, keyword, self_attention = case
    torch.manual_seed(seed)
    native = nn.MultiheadAttention(**args, dtype=F64)
    layer = AlignedMultiheadAttention.from_module(native, get_rule("kp", weights={"angle": 0.5, "decay": 0.0}))
    inputs = [t.requires_grad_() for t in inputs[:1]] + (
        [] if self_attention else [t.requires_grad_() for t in inputs[1:]]
    )
    inputs = inputs * 3 if self_attention else inputs
    names = [n for n, _ in native.named_parameters()]
    aligned_params = dict(layer.named_parameters())
    y, w = run(layer, inputs, keyword, seed)
    y_ref, w_ref = run(native, inputs, keyword, seed)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)  # the forward is unchanged by B
    assert (w is None) == (w_ref is None) and (w is None or torch.allclose(w, w_ref, rtol=0, atol=1e-12))
    dy = torch.randn_like(y)
    unique = inputs[:1] if self_attention else inputs
    got = gradients(y, unique, [aligned_params[n] for n in names], dy)
    ref = gradients(y_ref, unique, list(native.parameters()), dy)
    position = len(unique) + names.index("out_proj.weight")
    torch.testing.assert_close(got[position], ref[position], rtol=0, atol=1e-10)  # out_proj's dy is torch's
    value = len(unique) - 1  # (the query's gradient is 0 when there is one key: softmax is 1)
    if ref[value].abs().sum() > 0:  # (dropout may drop every real key: then no gradient either way)
        assert not torch.allclose(got[value], ref[value])  # the input gradient moves off backprop's
    # Kolen-Pollack's dB = angle_scale * dW, delivered for every projection
    for aligned in (*layer.projections(), layer.out_proj):
        (dB, dW) = torch.autograd.grad(
            run(layer, inputs, keyword, seed)[0], [aligned.backward_weight, aligned.weight], dy
        )
        torch.testing.assert_close(dB, 0.5 * dW, rtol=0, atol=0)
    tie(layer)
    y, _ = run(layer, inputs, keyword, seed)
    got = gradients(y, unique, [aligned_params[n] for n in names], dy)
    for name, g, r in zip(["input"] * len(unique) + names, got, ref, strict=True):
        assert (g is None) == (r is None), name
        if g is not None:
            torch.testing.assert_close(g, r, rtol=0, atol=1e-10, msg=name)  # B == W: backprop


def test_backward_kernels_sit_beside_their_weights_and_state_dicts_load_both_ways():
    torch.manual_seed(0)
    packed = AlignedMultiheadAttention(E, H, rule=get_rule("sa"), dtype=F64)
    separate = AlignedMultiheadAttention(E, H, kdim=3, vdim=5, add_bias_kv=True, rule=get_rule("sa"), dtype=F64)
    assert {n for n, _ in packed.named_parameters()} == {
        "in_proj_weight",
        "backward_in_proj_weight",
        "in_proj_bias",
        "out_proj.weight",
        "out_proj.backward_weight",
        "out_proj.bias",
    }
    assert {"backward_q_proj_weight", "backward_k_proj_weight", "backward_v_proj_weight"} <= dict(
        separate.named_parameters()
    ).keys()
    for layer, native in (
        (packed, nn.MultiheadAttention(E, H, dtype=F64)),
        (separate, nn.MultiheadAttention(E, H, kdim=3, vdim=5, add_bias_kv=True, dtype=F64)),
    ):
        kept = {n: p.detach().clone() for n, p in layer.named_parameters() if "backward" in n}
        layer.load_state_dict(native.state_dict(), strict=True)  # torch's own: every B keeps its init
        assert all(torch.equal(dict(layer.named_parameters())[n], B) for n, B in kept.items())
        result = native.load_state_dict(layer.state_dict(), strict=False)
        assert sorted(result.unexpected_keys) == sorted(kept) and not result.missing_keys
        assert torch.equal(native.in_proj_bias, layer.in_proj_bias)
    bp = AlignedMultiheadAttention(E, H, rule=get_rule("bp"))
    assert bp.in_proj.backward_weight is None and not any("backward" in n for n, _ in bp.named_parameters())


def test_unbatched_input_and_the_projections_contract():
    torch.manual_seed(1)
    native = nn.MultiheadAttention(E, H, dtype=F64)
    layer = AlignedMultiheadAttention.from_module(native, get_rule("fa"))
    x = torch.randn(5, E, dtype=F64)
    y, w = layer(x, x, x)
    y_ref, w_ref = native(x, x, x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-12)
    projection = layer.in_proj
    assert projection.weight is layer.in_proj_weight and projection.backward_weight is layer.backward_in_proj_weight
    assert projection.last_input.shape == (1, 5, E)  # batch-first, the batch axis kept
    torch.testing.assert_close(
        projection.project(projection.last_input, projection.weight, projection.bias), projection.last_output
    )
    q, k = torch.randn(3, 2, E, dtype=F64), torch.randn(4, 2, E, dtype=F64)  # (tokens, batch, E)
    layer(q, k, k)  # cross-attention: the three inputs' tokens side by side, no output kept
    assert torch.equal(projection.last_input, torch.cat([q, k, k]).transpose(0, 1))
    assert projection.last_output is None
