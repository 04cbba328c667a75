"""The reversible engine against plain autograd of the very same modules and a hand-written reference."""
import pytest
import torch

from revsearch.reversible import MultiSplitCoupling, ReversibleStack, SavedTensorMeter
from tests.reversible_fixtures import ToyCoupling, make_inputs, make_stack


def loss_of(outputs):
    # uses the outputs more than once, so autograd sums several gradients before our backward
    return sum((y ** 2).sum() for y in outputs) + 3.0 * outputs[0].sum() + (outputs[-1] * outputs[0]).mean()


def all_grads(stack, tensors, mode, seed=1, context=()):
    """Gradient vector over every parameter and every input/context tensor, with a fixed RNG stream."""
    stack.mode = mode
    stack.zero_grad(set_to_none=True)
    for t in tensors:
        t.grad = None
    torch.manual_seed(seed)
    xs = [t for t in tensors[:stack.num_splits]]
    outputs = stack(xs, context)
    loss_of(outputs).backward()
    parts = [p.grad.flatten() for p in stack.parameters() if p.grad is not None]
    parts += [t.grad.flatten() for t in tensors if t.grad is not None]
    return torch.cat(parts), [o.detach() for o in outputs]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def reference_layer(functions, xs, context):
    """Hand-written forward of docs/method.md, "Multi-split reversible layer":
    Y_k = X_k + G_k(Y_{<k}, X_{>k}), k = 1..n."""
    n = len(xs)
    ys = []
    for k in range(n):
        others = ys[:k] + list(xs[k + 1:])
        ys.append(xs[k] + functions[k](others, *context))
    return ys


@pytest.mark.parametrize("splits", [2, 3, 4])
@pytest.mark.parametrize("depth", [1, 3, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reversible_gradients_equal_plain_float64(splits, depth, seed):
    stack = make_stack(splits, depth, dropout=0.1, seed=seed)
    xs, memory, mask = make_inputs(splits, seed=seed)
    context = (memory, mask)
    plain, plain_out = all_grads(stack, xs + [memory], "plain", seed=seed, context=context)
    rev, rev_out = all_grads(stack, xs + [memory], "reversible", seed=seed, context=context)
    for a, b in zip(rev_out, plain_out):
        assert torch.equal(a, b)  # same RNG stream, same ops: bit-identical forward
    assert plain.shape == rev.shape
    assert memory.grad is not None and memory.grad.abs().sum() > 0  # the context is trained
    assert rel_err(rev, plain) <= 1e-10


def test_float32_depth12_gradient_error():
    stack = make_stack(2, 12, width=32, memory_width=16, dtype=torch.float32, seed=3)
    xs, memory, mask = make_inputs(2, width=32, memory_width=16, length=16, dtype=torch.float32, seed=3)
    plain, _ = all_grads(stack, xs + [memory], "plain", context=(memory, mask))
    rev, _ = all_grads(stack, xs + [memory], "reversible", context=(memory, mask))
    assert rel_err(rev, plain) <= 1e-4


def test_checkpoint_mode_matches_plain():
    stack = make_stack(3, 3, seed=4)
    xs, memory, mask = make_inputs(3, seed=4)
    plain, _ = all_grads(stack, xs + [memory], "plain", context=(memory, mask))
    ckpt, _ = all_grads(stack, xs + [memory], "checkpoint", context=(memory, mask))
    assert rel_err(ckpt, plain) <= 1e-12


@pytest.mark.parametrize("splits", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 5])
def test_layer_forward_matches_hand_written_reference(splits, seed):
    stack = make_stack(splits, 1, seed=seed).eval()
    xs, memory, mask = make_inputs(splits, seed=seed)
    with torch.no_grad():
        expected = reference_layer(stack.layers[0].functions, xs, (memory, mask))
        got = stack(xs, (memory, mask))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("splits", [2, 3, 4])
def test_two_splits_is_revnet_and_inverse_recovers_inputs(splits):
    stack = make_stack(splits, 4, seed=7).eval()
    xs, memory, mask = make_inputs(splits, seed=7)
    with torch.no_grad():
        ys = stack(xs, (memory, mask))
        rebuilt = stack.inverse(ys, (memory, mask))
    for a, b in zip(rebuilt, xs):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)
    if splits == 2:
        g1, g2 = stack.layers[0].functions
        x1, x2 = xs
        with torch.no_grad():
            y1 = x1 + g1([x2], memory, mask)
            y2 = x2 + g2([y1], memory, mask)
            got = stack.layers[0]([x1, x2], (memory, mask))
        assert torch.equal(got[0], y1) and torch.equal(got[1], y2)


def test_reconstruction_report_with_dropout_is_exact_in_float64():
    stack = make_stack(3, 6, dropout=0.3, seed=2)
    xs, memory, mask = make_inputs(3, seed=2)
    report = stack.reconstruction_report(xs, (memory, mask))
    assert [r["layer"] for r in report] == list(range(6))
    assert max(r["max_abs_error"] for r in report) < 1e-12
    # without replaying the RNG, dropout makes the reconstruction wrong: the replay really matters
    with torch.no_grad():
        ys = stack(xs, (memory, mask))
        wrong = stack.inverse(ys, (memory, mask))
    assert max((a - b).abs().max().item() for a, b in zip(wrong, xs)) > 1e-3


def test_adam_steps_through_both_paths_end_at_same_weights():
    weights = {}
    for mode in ("plain", "reversible"):
        stack = make_stack(3, 3, seed=11)
        stack.mode = mode
        opt = torch.optim.Adam(stack.parameters(), lr=1e-2)
        torch.manual_seed(123)
        for step in range(5):
            xs, memory, mask = make_inputs(3, seed=100 + step)
            opt.zero_grad()
            loss_of(stack(xs, (memory, mask))).backward()
            opt.step()
        weights[mode] = torch.cat([p.detach().flatten() for p in stack.parameters()])
        weights[mode + "_rng"] = torch.get_rng_state()
    assert rel_err(weights["reversible"], weights["plain"]) <= 1e-10
    # backward replays randomness inside fork_rng: the global stream advances exactly as in plain mode
    assert torch.equal(weights["reversible_rng"], weights["plain_rng"])


def test_inputs_not_requiring_grad_still_train_parameters():
    stack = make_stack(2, 3, seed=5)
    xs, memory, mask = make_inputs(2, seed=5)
    xs = [x.detach() for x in xs]
    memory = memory.detach()
    plain, _ = all_grads(stack, xs, "plain", context=(memory, mask))
    rev, _ = all_grads(stack, xs, "reversible", context=(memory, mask))
    assert all(x.grad is None for x in xs)
    assert rel_err(rev, plain) <= 1e-10


def test_autograd_grad_api_works():
    stack = make_stack(2, 2, seed=6)
    xs, memory, mask = make_inputs(2, seed=6)
    params = list(stack.parameters())
    grads = {}
    for mode in ("plain", "reversible"):
        stack.mode = mode
        torch.manual_seed(0)
        loss = loss_of(stack(xs, (memory, mask)))
        grads[mode] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params + [memory] + xs)])
    assert rel_err(grads["reversible"], grads["plain"]) <= 1e-10


def test_no_grad_stores_nothing():
    stack = make_stack(2, 4, seed=1)
    xs, memory, mask = make_inputs(2, seed=1)
    with SavedTensorMeter(stack.parameters()) as meter, torch.no_grad():
        ys = stack(xs, (memory, mask))
    assert meter.total_packed_bytes == 0
    assert all(y.grad_fn is None for y in ys)
    with SavedTensorMeter(stack.parameters()) as meter, torch.inference_mode():
        ys = stack(xs, (memory, mask))
    assert meter.total_packed_bytes == 0


def _saved_bytes(mode, depth, width=32, length=32):
    stack = make_stack(2, depth, width=width, memory_width=8, dtype=torch.float32, seed=0)
    stack.mode = mode
    xs, memory, mask = make_inputs(2, width=width, memory_width=8, length=length, dtype=torch.float32)
    with SavedTensorMeter(stack.parameters()) as meter:
        ys = stack(xs, (memory, mask))
        forward = meter.live_bytes
        loss_of(ys).backward()
    return forward, meter.peak_bytes, meter.live_bytes


def test_saved_bytes_do_not_grow_with_depth_for_reversible_and_do_for_plain():
    split_bytes = 3 * 32 * 32 * 4  # one split tensor
    rev = {d: _saved_bytes("reversible", d) for d in (1, 4, 8)}
    plain = {d: _saved_bytes("plain", d) for d in (1, 4, 8)}
    # reversible: per layer only the RNG states (~5 KB per coupling call) are kept, no activations
    per_layer_rng = 2 * torch.get_rng_state().numel()
    assert rev[8][0] - rev[1][0] == 7 * per_layer_rng
    assert rev[8][0] - rev[1][0] < split_bytes * 7  # far less than one activation per extra layer
    # plain: several activations per layer
    assert plain[8][0] - plain[1][0] > 7 * 2 * split_bytes
    assert plain[8][0] > 3 * rev[8][0]
    # everything saved is freed after backward (memory really is released)
    assert all(v[2] == 0 for v in list(rev.values()) + list(plain.values()))


def test_backward_frees_the_graph():
    import gc
    import weakref
    stack = make_stack(2, 3, seed=0)
    xs, memory, mask = make_inputs(2)
    ys = stack(xs, (memory, mask))
    ref = weakref.ref(ys[0])
    loss_of(ys).backward()
    del ys
    gc.collect()
    assert ref() is None


def test_standalone_layer_reverse_and_grad_matches_autograd():
    torch.manual_seed(0)
    layer = MultiSplitCoupling([ToyCoupling(6, 10, 0.0) for _ in range(3)]).double()
    xs, memory, mask = make_inputs(3)
    ys = layer(xs, (memory, mask))
    dys = [torch.randn_like(y) for y in ys]
    expected = torch.autograd.grad(ys, xs + [memory] + list(layer.parameters()), dys)
    memory_leaf = memory.detach().requires_grad_()
    rebuilt, dxs = layer.reverse_and_grad([y.detach() for y in ys], dys, (memory_leaf, mask))
    for a, b in zip(rebuilt, xs):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-12)
    got = list(dxs) + [memory_leaf.grad] + [p.grad for p in layer.parameters()]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bad_configurations_are_clear_errors():
    with pytest.raises(ValueError, match="at least 2"):
        MultiSplitCoupling([ToyCoupling(4, 4)])
    layer2 = MultiSplitCoupling([ToyCoupling(4, 4) for _ in range(2)])
    layer3 = MultiSplitCoupling([ToyCoupling(4, 4) for _ in range(3)])
    with pytest.raises(ValueError, match="same number of splits"):
        ReversibleStack([layer2, layer3])
    with pytest.raises(ValueError, match="unknown mode"):
        ReversibleStack([layer2], mode="magic")
    with pytest.raises(ValueError, match="2 splits, got 3"):
        ReversibleStack([layer2])([torch.zeros(1, 1, 4)] * 3)
