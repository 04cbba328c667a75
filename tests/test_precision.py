"""Mixed precision (``precision: fp32 | bf16 | fp16``) with exact reconstruction.

The reversible engine keeps split states and the additive coupling in float32 and runs only the coupling
functions under autocast, replaying the forward's autocast state when it recomputes them in backward.
References: the float32 engine (reconstruction error), plain autograd of the same modules under the same
autocast (gradients), the float32 search (loss curve). Performance is in experiments/bench_precision.py.
"""
import math

import pytest
import torch

from revsearch.errors import ConfigError
from revsearch.learning.precision import LossScale, autocast_supported, check_precision
from revsearch.reversible.autocast import AutocastState, replayed_autocast
from revsearch.search import BilevelSearch, SearchConfig, Supernet
from revsearch.train.trainer import TrainConfig
from tests.reversible_fixtures import make_inputs, make_stack
from tests.search_fixtures import reversal_batch, tiny_config

DEPTH = 12


def rebuilt_input_error(precision: str, replay: bool = True, splits: int = 3, width: int = 16,
                        state_dtype=torch.float64) -> float:
    """Relative error of the stack input rebuilt by the backward recomputation (``reverse_and_grad``,
    top layer first, run outside the autocast block like a real ``backward()``) against the stored one."""
    stack = make_stack(splits, DEPTH, width=width, dtype=torch.float32, seed=3)
    stack.autocast_state_dtype = state_dtype
    xs, memory, mask = make_inputs(splits, width=width, batch=4, length=9, dtype=torch.float32, seed=3)
    xs = [x.detach() for x in xs]
    context = (memory.detach(), mask)
    logs, state = [], list(xs)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), amp:
        state, function_dtype = stack.residual_splits(state)
        xs = list(state)
        autocast_state = AutocastState.capture(state)
        for layer in stack.layers:
            log = []
            state = layer(state, context, rng_log=log, function_dtype=function_dtype)
            logs.append(log)
    # split states are never half precision: float32 without autocast, ``state_dtype`` under it
    assert all(s.dtype == (state_dtype if precision == "bf16" else torch.float32) for s in state)
    grads = [torch.ones_like(s) for s in state]
    for layer, log in zip(reversed(stack.layers), reversed(logs)):
        state, grads = layer.reverse_and_grad(state, grads, context, log, lambda *a: None,
                                              autocast_state=autocast_state if replay else None,
                                              function_dtype=function_dtype)
    true, rebuilt = torch.cat([x.flatten() for x in xs]), torch.cat([s.flatten() for s in state])
    return ((rebuilt - true).norm() / true.norm()).item()


def test_bf16_reconstruction_error_within_10x_of_fp32_at_depth_12():
    # measured on this CPU: fp32 1.3e-6; bf16 0.0 (float64 split states: every G_k is recomputed on
    # bit-identical float32 inputs); bf16 recomputed without the replayed autocast state 5e-2
    fp32, bf16 = rebuilt_input_error("fp32"), rebuilt_input_error("bf16")
    assert 0 < fp32 < 1e-5
    assert bf16 <= 10 * fp32, (fp32, bf16)
    # the replay is what makes it exact: recomputing G in float32 after a bf16 forward is off by
    # bf16 rounding (~1e-3), orders of magnitude more
    unreplayed = rebuilt_input_error("bf16", replay=False)
    assert unreplayed > 100 * bf16, (bf16, unreplayed)


def stack_grads(mode: str, backward_inside_autocast: bool = False, splits: int = 3, width: int = 16,
                cache_enabled: bool = True):
    stack = make_stack(splits, DEPTH, width=width, dtype=torch.float32, seed=5)
    stack.mode = mode
    xs, memory, mask = make_inputs(splits, width=width, batch=4, length=9, dtype=torch.float32, seed=5)
    weights = [torch.randn(x.shape, generator=torch.Generator().manual_seed(i)) for i, x in enumerate(xs)]
    torch.manual_seed(11)  # dropout draws
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache_enabled):
        # a half-precision input, as the output of an autocast linear layer would be
        outs = stack([x.to(torch.bfloat16) for x in xs], (memory, mask))
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        if backward_inside_autocast:
            loss.backward()
    if not backward_inside_autocast:
        loss.backward()
    assert all(o.dtype == torch.float32 for o in outs)
    tensors = xs + [memory] + list(stack.parameters())
    return loss.detach(), torch.cat([t.grad.flatten().float() for t in tensors])


def test_bf16_reversible_gradients_match_plain_autograd_under_the_same_autocast():
    loss_plain, plain = stack_grads("plain")
    loss_rev, rev = stack_grads("reversible")
    assert torch.equal(loss_plain, loss_rev)  # the forward pass is the same computation
    rel = ((rev - plain).norm() / plain.norm()).item()
    # measured 4.1e-4 (float32 without autocast: 9e-7). It is plain autograd's: autocast caches the one
    # bf16 copy of the context (a leaf read by all 36 coupling functions), so plain autograd sums its 36
    # gradient contributions in bf16; the engine sums them in float32. Without the cache: 5e-9.
    assert rel <= 1e-2, rel
    _, plain_uncached = stack_grads("plain", cache_enabled=False)
    _, rev_uncached = stack_grads("reversible", cache_enabled=False)
    assert ((rev_uncached - plain_uncached).norm() / plain_uncached.norm()).item() <= 1e-6
    _, checkpointed = stack_grads("checkpoint")
    assert ((checkpointed - plain).norm() / plain.norm()).item() <= 1e-2
    # the autocast state is replayed from the forward: where backward() is called does not matter
    _, inside = stack_grads("reversible", backward_inside_autocast=True)
    assert torch.equal(inside, rev)


def test_no_autocast_state_replayed_when_it_is_already_current():
    state = AutocastState.capture([torch.zeros(1)])
    assert not state.enabled and state.matches_current()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = AutocastState.capture([torch.zeros(1)])
    assert inside.enabled and not inside.matches_current()
    with replayed_autocast(inside):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_fp32_default_enters_no_autocast(monkeypatch):
    """precision fp32 (the default) is today's code path: no autocast context, float64 untouched."""
    assert SearchConfig().precision == "fp32" and TrainConfig(max_steps=1).precision == "fp32"

    def forbidden(*args, **kwargs):
        raise AssertionError("fp32 must not enter torch.autocast")
    monkeypatch.setattr(torch, "autocast", forbidden)
    torch.manual_seed(0)
    net = Supernet(tiny_config()).double()
    search = BilevelSearch(net, SearchConfig(warmup_steps=1))
    out = search.step(reversal_batch(0), reversal_batch(1))
    assert math.isfinite(out["train_loss"]) and all(p.dtype == torch.float64 for p in net.parameters())


def search_curve(precision: str, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    net = Supernet(tiny_config(dropout=0.0, encoder_layers=2, decoder_layers=2))
    search = BilevelSearch(net, SearchConfig(lr=3e-3, warmup_steps=5, alpha_lr=3e-3, precision=precision))
    losses = []
    for step in range(steps):
        out = search.step(reversal_batch(2 * step % 8), reversal_batch(2 * step % 8 + 1))
        losses.append(out["train_loss"])
    return losses, torch.cat([a.detach().flatten() for a in net.arch_parameters()])


def test_bf16_search_tracks_the_fp32_loss_curve():
    fp32, alpha32 = search_curve("fp32", 20)
    bf16, alpha16 = search_curve("bf16", 20)
    assert fp32[-1] < fp32[0] - 0.2  # it learns
    # measured on this CPU: max |Δloss| 6.8e-4 over 20 steps (loss 3.42 -> 3.12), α 1.0e-2 relative
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.02
    assert ((alpha16 - alpha32).norm() / alpha32.norm()).item() < 0.05


def test_precision_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"^precision must be one of: fp32, bf16, fp16; got 'fp8'$"):
        SearchConfig(precision="fp8")
    with pytest.raises(ConfigError, match="training config: precision must be one of"):
        TrainConfig(max_steps=1, precision="half")
    # a device type without autocast support
    with pytest.raises(ConfigError, match=r"precision: bf16 is not supported on device 'meta' here"):
        check_precision("bf16", "meta")
    assert autocast_supported("bf16", "cpu") and autocast_supported("fp32", "meta")


def test_loss_scale_skips_overflowed_steps_and_backs_off():
    scale = LossScale(enabled=True, init_scale=2.0 ** 10, growth_interval=2)
    w = torch.ones(3, requires_grad=True)
    (g,) = scale.grad((w * 2).sum(), [w])
    assert torch.equal(g, torch.full((3,), 2.0)) and scale.finite([g])
    scale.update()
    assert not scale.finite([torch.tensor([1.0, math.inf])])
    scale.update()
    assert scale.scale == 2.0 ** 9 and scale.skipped_steps == 1
    scale.update(), scale.update()
    assert scale.scale == 2.0 ** 10  # two good steps in a row: grow again
    off = LossScale(enabled=False)
    assert off.finite([torch.tensor([math.nan])])  # disabled: never inspects, never skips


@pytest.mark.skipif(not autocast_supported("fp16", "cpu"), reason="no fp16 autocast on this CPU")
def test_fp16_search_steps_with_loss_scale():
    losses, alpha = search_curve("fp16", 3)
    assert all(math.isfinite(x) for x in losses) and torch.isfinite(alpha).all()
    torch.manual_seed(0)
    net = Supernet(tiny_config(dropout=0.0))
    search = BilevelSearch(net, SearchConfig(warmup_steps=5, second_order=True, precision="fp16"))
    before = torch.cat([a.detach().flatten() for a in net.arch_parameters()])
    out = search.step(reversal_batch(0), reversal_batch(1))
    after = torch.cat([a.detach().flatten() for a in net.arch_parameters()])
    assert math.isfinite(out["arch_loss"]) and not torch.equal(before, after)  # α stepped
    assert search.loss_scale.scale == 2.0 ** 16 and search.loss_scale.skipped_steps == 0


def retrain_losses(precision: str, tmp_path=None):
    from revsearch.train.trainer import Trainer
    from tests.search_fixtures import reversal_pairs
    torch.manual_seed(0)
    net = Supernet(tiny_config(encoder_ops=("conv3", "self_attn"), decoder_ops=("conv3", "self_attn")))
    config = TrainConfig(lr=3e-3, warmup_steps=2, max_tokens=80, max_steps=6, valid_every=0, log_every=1,
                         quiet=True, precision=precision, save_dir=str(tmp_path) if tmp_path else None)
    trainer = Trainer(net, reversal_pairs(40, seed=0), reversal_pairs(8, seed=1), config)
    result = trainer.train()
    return [h["train_loss"] for h in result.history if "train_loss" in h], trainer


def test_bf16_retrain_tracks_fp32_and_fp16_keeps_its_loss_scale(tmp_path):
    fp32, _ = retrain_losses("fp32")
    bf16, _ = retrain_losses("bf16")
    assert len(fp32) == len(bf16) == 6
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.02, (fp32, bf16)
    if autocast_supported("fp16", "cpu"):
        fp16, trainer = retrain_losses("fp16", tmp_path)
        assert all(math.isfinite(x) for x in fp16)
        state = trainer.state()
        assert state["loss_scale"]["scale"] > 0 and "loss_scale" not in retrain_losses("fp32")[1].state()


@pytest.mark.slow
def test_bench_precision_quick_writes_the_documented_json(tmp_path):
    import json
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "precision.json"
    env = dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(repo, "experiments", "bench_precision.py"), "--quick",
                           "--json", str(out)], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert [r["dtype"] for r in data["precision"]] == ["fp32", "bf16"]
    for r in data["precision"]:
        assert r["recon_err"] >= 0 and r["step_seconds"] > 0
    assert data["precision"][1]["recon_err"] <= 10 * data["precision"][0]["recon_err"]
    assert data["ablation_float32_states"]["state_dtype"] == "float32"
    assert data["loss_curves"]["max_abs_loss_diff"] < 0.05 and "recon rel err" in proc.stdout
