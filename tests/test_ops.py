"""Tests for revsearch.ops: the contract every candidate op must keep (shape, causality, padding,
finite gradients), reference checks for the convolutions and attention, and the registry."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from revsearch.errors import ConfigError
from revsearch.ops import (DECODER_OPS, ENCODER_OPS, DynamicConv, OpConfig, SelfAttention, StandardConv,
                           WrappedOp, build_op, masked_softmax, op_param_count, resolve_heads,
                           validate_op_names)

DIM, MEM_DIM, HEADS = 12, 10, 8       # 12 is not divisible by 8: ops must fall back to 6 heads
B, T, S = 3, 9, 7
SEEDS = (0, 1, 2)
# (name, causal): every encoder op non-causal, every decoder op causal
CASES = [(n, False) for n in ENCODER_OPS] + [(n, True) for n in DECODER_OPS]
CASE_IDS = [f"{n}-{'dec' if c else 'enc'}" for n, c in CASES]
LEARNED = [(n, c) for n, c in CASES if n not in ("zero", "identity")]
LEARNED_IDS = [f"{n}-{'dec' if c else 'enc'}" for n, c in LEARNED]
MIXING = ("conv3", "conv5", "conv7", "conv11", "dynconv3", "dynconv7", "dynconv11", "dynconv15", "self_attn")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_op(name, causal, seed, dtype=torch.float64, dropout=0.1, train=False):
    torch.manual_seed(1000 + seed)
    op = build_op(name, OpConfig(dim=DIM, causal=causal, heads=HEADS, dropout=dropout, memory_dim=MEM_DIM))
    return op.to(dtype).train(train)


def make_inputs(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, DIM, generator=g, dtype=dtype)
    memory = torch.randn(B, S, MEM_DIM, generator=g, dtype=dtype)
    lengths = torch.tensor([T, T - 3, 2])
    pad = torch.arange(T)[None, :] >= lengths[:, None]
    if seed % 2:  # non-contiguous padding too: the contract is per position, not per suffix
        pad = torch.rand(B, T, generator=g) < 0.35
        pad[:, 0] = False
    mem_pad = torch.arange(S)[None, :] >= torch.tensor([S, 3, S - 1])[:, None]
    return h, pad, memory, mem_pad


def run(op, h, pad=None, memory=None, mem_pad=None):
    return op(h, pad_mask=pad, memory=memory, memory_pad_mask=mem_pad)


# ---------------------------------------------------------------- the op contract, for every op

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,causal", CASES, ids=CASE_IDS)
def test_output_shape_and_dtype(name, causal, seed):
    for dtype in (torch.float64, torch.float32):
        op = make_op(name, causal, seed, dtype=dtype)
        h, pad, memory, mem_pad = make_inputs(seed, dtype)
        for p, m in ((None, None), (pad, mem_pad)):
            out = run(op, h, p, memory, m)
            assert out.shape == h.shape and out.dtype == dtype
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", DECODER_OPS)
def test_causal_ops_never_read_the_future(name, seed):
    op = make_op(name, True, seed)
    h, pad, memory, mem_pad = make_inputs(seed)
    g = torch.Generator().manual_seed(99 + seed)
    for p, m in ((None, None), (pad, mem_pad)):
        base = run(op, h, p, memory, m)
        for t in range(1, T):
            h2 = h.clone()
            h2[:, t:] = torch.randn(B, T - t, DIM, generator=g, dtype=h.dtype) * 5
            out = run(op, h2, p, memory, m)
            assert torch.equal(out[:, :t], base[:, :t]), f"{name}: position < {t} saw the future"
            if name not in ("zero",) and p is None:  # not vacuous: position t itself does change
                assert not torch.equal(out[:, t], base[:, t])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", MIXING)
def test_non_causal_mixing_ops_do_see_the_future(name, seed):
    op = make_op(name, False, seed)
    h = make_inputs(seed)[0]
    h2 = h.clone()
    h2[:, T // 2 + 1:] += 1.0
    assert not torch.equal(run(op, h2)[:, T // 2], run(op, h)[:, T // 2])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name,causal", CASES, ids=CASE_IDS)
def test_padding_is_invisible_and_zero(name, causal, seed):
    op = make_op(name, causal, seed)
    h, pad, memory, mem_pad = make_inputs(seed)
    base = run(op, h, pad, memory, mem_pad)
    assert (base[pad] == 0).all(), "outputs at pad positions must be exactly 0"
    g = torch.Generator().manual_seed(7 + seed)
    for fill in ("random", "huge", "nan"):
        h2, m2 = h.clone(), memory.clone()
        if fill == "random":
            h2[pad] = torch.randn(int(pad.sum()), DIM, generator=g, dtype=h.dtype) * 10
            m2[mem_pad] = torch.randn(int(mem_pad.sum()), MEM_DIM, generator=g, dtype=h.dtype) * 10
        else:
            h2[pad] = 1e30 if fill == "huge" else float("nan")
            m2[mem_pad] = 1e30 if fill == "huge" else float("nan")
        h2.requires_grad_(True)
        m2.requires_grad_(True)
        out = run(op, h2, pad, m2, mem_pad)
        assert torch.equal(out, base), f"{name}: padding content ({fill}) changed the output"
        out.backward(torch.ones_like(out))
        assert torch.isfinite(h2.grad).all() and (h2.grad[pad] == 0).all()
        assert m2.grad is None or (torch.isfinite(m2.grad).all() and (m2.grad[mem_pad] == 0).all())
        for p in op.parameters():
            assert torch.isfinite(p.grad).all(), f"{name}: padding content ({fill}) reached a gradient"
        op.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name,causal", CASES, ids=CASE_IDS)
def test_mostly_padded_batch_has_finite_outputs_and_gradients(name, causal):
    """One token per sentence, one sentence fully padded, one memory fully padded, dropout on."""
    op = make_op(name, causal, 0, train=True)
    h, _, memory, _ = make_inputs(0)
    h.requires_grad_(True)
    memory.requires_grad_(True)
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[0, 0] = False                 # only the first token is real
    pad[1, T - 1] = False             # only the last token is real
    mem_pad = torch.ones(B, S, dtype=torch.bool)
    mem_pad[0, 0] = False             # row 1 and 2: memory entirely padding
    out = run(op, h, pad, memory, mem_pad)
    assert torch.isfinite(out).all() and (out[pad] == 0).all()
    (out * torch.randn_like(out)).sum().backward()
    grads = [h.grad, memory.grad] + [p.grad for p in op.parameters()]
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all()
    assert h.grad is not None and (h.grad[pad] == 0).all()
    if memory.grad is not None:
        assert (memory.grad[mem_pad] == 0).all()


@pytest.mark.parametrize("name,causal", LEARNED, ids=LEARNED_IDS)
def test_gradient_reaches_every_parameter(name, causal):
    op = make_op(name, causal, 0, train=True)
    h, pad, memory, mem_pad = make_inputs(0)
    h.requires_grad_(True)
    out = run(op, h, pad, memory, mem_pad)
    (out * torch.randn_like(out)).sum().backward()
    params = dict(op.named_parameters())
    assert params, f"{name} should have parameters"
    for pname, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
    assert h.grad[~pad].abs().sum() > 0


def test_zero_and_identity():
    h, pad, memory, mem_pad = make_inputs(0)
    h.requires_grad_(True)
    zero, ident = make_op("zero", False, 0), make_op("identity", True, 0)
    assert not isinstance(zero, WrappedOp) and not isinstance(ident, WrappedOp)
    assert list(zero.parameters()) == [] and list(ident.parameters()) == []
    z = run(zero, h, pad)
    assert z.requires_grad and torch.equal(z, torch.zeros_like(h))
    z.sum().backward()
    assert torch.equal(h.grad, torch.zeros_like(h))
    i = run(ident, h, pad)
    assert torch.equal(i, h.detach().masked_fill(pad[..., None], 0.0))
    assert torch.equal(run(ident, h), h)


# ---------------------------------------------------------------- reference implementations

def dynconv_reference(conv: DynamicConv, h, pad):
    """Slow, loop-by-loop dynamic convolution with ``conv``'s parameters (eval mode, no dropout)."""
    x = conv.input_proj(h.masked_fill(pad[..., None], 0.0))
    x = x[..., :DIM] * torch.sigmoid(x[..., DIM:])
    x = x.masked_fill(pad[..., None], 0.0)
    k, heads = conv.kernel_size, conv.heads
    left = k - 1 if conv.causal else (k - 1) // 2
    cph = DIM // heads
    y = torch.zeros_like(x)
    for b in range(B):
        for t in range(T):
            logits = conv.weight_proj(x[b, t]).view(heads, k)
            w = [[math.exp(v) for v in row] for row in logits.tolist()]
            w = [[v / sum(row) for v in row] for row in w]
            for c in range(DIM):
                acc = 0.0
                for j in range(k):
                    src = t - left + j
                    if 0 <= src < T:
                        acc += w[c // cph][j] * float(x[b, src, c])
                y[b, t, c] = acc
    return conv.output_proj(y).masked_fill(pad[..., None], 0.0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("k", [3, 7])
def test_dynamic_conv_matches_loop_reference(k, causal):
    name = f"dynconv{k}"
    wrapped = make_op(name, causal, 3)
    conv = wrapped.op
    assert isinstance(conv, DynamicConv) and conv.heads == 6 and conv.kernel_size == k
    h, pad, _, _ = make_inputs(3)
    with torch.no_grad():
        fast, slow = run(conv, h, pad), dynconv_reference(conv, h, pad)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("k", [3, 5, 11])
def test_standard_conv_matches_loop_reference(k, causal):
    conv = make_op(f"conv{k}", causal, 1).op
    assert isinstance(conv, StandardConv)
    h, pad, _, _ = make_inputs(2)
    x = h.masked_fill(pad[..., None], 0.0)
    left = k - 1 if causal else (k - 1) // 2
    w, bias = conv.conv.weight, conv.conv.bias            # [out, in, k]
    ref = torch.zeros_like(h)
    for t in range(T):
        ref[:, t] = bias
        for j in range(k):
            src = t - left + j
            if 0 <= src < T:
                ref[:, t] += x[:, src] @ w[:, :, j].T
    ref = ref.masked_fill(pad[..., None], 0.0)
    with torch.no_grad():
        torch.testing.assert_close(run(conv, h, pad), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_sdpa(causal):
    attn = make_op("self_attn", causal, 0).op
    assert isinstance(attn, SelfAttention) and attn.heads == 6
    h, pad, _, _ = make_inputs(0)
    x = h.masked_fill(pad[..., None], 0.0)
    q, k, v = (t.view(B, T, 6, 2).transpose(1, 2) for t in attn.qkv(x).chunk(3, dim=-1))
    allowed = ~pad[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    ref = attn.out_proj(ref.transpose(1, 2).reshape(B, T, DIM)).masked_fill(pad[..., None], 0.0)
    with torch.no_grad():
        torch.testing.assert_close(run(attn, h, pad), ref, rtol=1e-10, atol=1e-10)


def test_masked_softmax_fully_masked_row_is_zero_with_zero_gradient():
    scores = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, True, False, True], [True, True, True, True]])
    p = masked_softmax(scores, mask)
    assert torch.equal(p[1], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(p[0].sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (p[0][mask[0]] == 0).all()
    (p * torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(scores.grad).all() and (scores.grad[1] == 0).all()


# ---------------------------------------------------------------- randomness and structure

@pytest.mark.parametrize("name,causal", LEARNED, ids=LEARNED_IDS)
def test_train_mode_randomness_replays_from_global_generator(name, causal):
    op = make_op(name, causal, 0, dropout=0.3, train=True)
    h, pad, memory, mem_pad = make_inputs(0)
    state = torch.get_rng_state()
    first = run(op, h, pad, memory, mem_pad)
    torch.set_rng_state(state)
    assert torch.equal(run(op, h, pad, memory, mem_pad), first)
    assert not torch.equal(run(op, h, pad, memory, mem_pad), first)   # dropout is really active
    assert not torch.equal(op.eval()(h, pad, memory, mem_pad), first)


@pytest.mark.parametrize("name,causal", LEARNED, ids=LEARNED_IDS)
def test_learned_ops_are_wrapped_with_layernorm_only(name, causal):
    op = make_op(name, causal, 0)
    assert isinstance(op, WrappedOp) and op.name == name
    assert isinstance(op.norm, torch.nn.LayerNorm)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in op.modules())


def test_heads_fall_back_to_a_divisor():
    assert resolve_heads(320, 8) == 8
    assert resolve_heads(12, 8) == 6
    assert resolve_heads(7, 8) == 7
    assert resolve_heads(13, 8) == 1
    assert resolve_heads(4, 8) == 4


def test_op_param_count():
    cfg = OpConfig(dim=16, causal=False)
    ln = 2 * 16
    assert op_param_count("conv3", cfg) == 16 * 16 * 3 + 16 + ln
    assert op_param_count("ffn", cfg) == (16 * 64 + 64) + (64 * 16 + 16) + ln
    assert op_param_count("glu", cfg) == 16 * 32 + 32 + ln
    assert op_param_count("self_attn", cfg) == (16 * 48 + 48) + (16 * 16 + 16) + ln
    assert op_param_count("dynconv7", cfg) == (16 * 32 + 32) + (16 * 8 * 7 + 8 * 7) + (16 * 16 + 16) + ln
    assert op_param_count("zero", cfg) == 0 and op_param_count("identity", cfg) == 0
    dec = OpConfig(dim=16, causal=True, memory_dim=24)
    assert op_param_count("cross_attn", dec) == (16 * 16 + 16) + (24 * 32 + 32) + (16 * 16 + 16) + ln


def test_cross_attention_needs_memory():
    op = make_op("cross_attn", True, 0)
    h, pad, memory, _ = make_inputs(0)
    with pytest.raises(ValueError, match="needs memory"):
        run(op, h, pad)
    with pytest.raises(ValueError, match="memory of shape"):
        run(op, h, pad, memory[..., :4])


# ---------------------------------------------------------------- registry

def test_op_name_tuples():
    assert ENCODER_OPS == ("conv3", "conv5", "conv7", "conv11", "dynconv3", "dynconv7", "dynconv11",
                           "dynconv15", "self_attn", "ffn", "glu", "zero", "identity")
    assert DECODER_OPS == ENCODER_OPS + ("cross_attn",)


def test_unknown_name_lists_valid_ops():
    with pytest.raises(ConfigError) as e:
        build_op("conv4", OpConfig(dim=DIM, causal=False))
    assert str(e.value) == "unknown op 'conv4'; valid ops: " + ", ".join(DECODER_OPS)
    with pytest.raises(ConfigError) as e:
        validate_op_names(["conv3", "conv4"], decoder=False)
    msg = str(e.value)
    assert msg == "unknown op 'conv4'; valid ops: " + ", ".join(ENCODER_OPS) and "\n" not in msg


@pytest.mark.parametrize("names,decoder,expected", [
    (["conv3"], False, ("conv3",)),
    (("zero", "self_attn", "conv11"), False, ("zero", "self_attn", "conv11")),   # order kept
    (list(ENCODER_OPS), False, ENCODER_OPS),
    (list(DECODER_OPS), True, DECODER_OPS),
    (["cross_attn", "ffn"], True, ("cross_attn", "ffn")),
    (iter(["glu", "identity"]), True, ("glu", "identity")),
])
def test_validate_op_names_accepts(names, decoder, expected):
    assert validate_op_names(names, decoder=decoder) == expected


@pytest.mark.parametrize("names,decoder,match", [
    ([], False, "encoder op set is empty"),
    ((), True, "decoder op set is empty"),
    (["conv3", "cross_attn"], False, "'cross_attn' is decoder-only"),
    (["conv3", "ffn", "conv3"], True, "duplicate op 'conv3'"),
    (["Conv3"], False, "unknown op 'Conv3'; valid ops: conv3, conv5"),
    ([3], True, "unknown op 3; valid ops"),
    ("conv3", False, "must be a list of op names"),
    (None, False, "must be a list of op names"),
])
def test_validate_op_names_rejects(names, decoder, match):
    with pytest.raises(ConfigError, match=match) as e:
        validate_op_names(names, decoder=decoder)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs", [dict(dim=0), dict(heads=0), dict(dropout=1.0), dict(dropout=-0.1),
                                    dict(memory_dim=0), dict(ffn_multiplier=0)])
def test_op_config_rejects_bad_values(kwargs):
    args = dict(dim=DIM, causal=False)
    args.update(kwargs)
    with pytest.raises(ConfigError):
        OpConfig(**args)
