"""Search levers a DARTS user expects: θ-only warm-up, α's own Adam betas, the collapse report (share of
parameter-free choices, top-1 − top-2 margin) and the α trajectories kept across a checkpoint."""
import copy
import io
import math

import pytest
import torch

from revsearch.errors import ConfigError
from revsearch.ops import DECODER_OPS
from revsearch.ops.registry import OpConfig, build_op, is_parameter_free
from revsearch.search import BilevelSearch, SearchConfig, Supernet, derive_genotype, sequence_loss
from revsearch.search.collapse import collapse_metrics, top_margin
from revsearch.search.loop import SearchData, SearchLoop
from revsearch.search.plots import plot_alpha_trajectories
from revsearch.search.trajectory import AlphaTrajectory
from revsearch.learning import InverseSqrtSchedule
from tests.search_fixtures import reversal_batch, reversal_pairs, tiny_config

PNG = b"\x89PNG\r\n\x1a\n"


def alphas_of(net):
    return [a.detach().clone() for a in net.arch_parameters()]


def weights_of(net):
    return [w.detach().clone() for w in net.weight_parameters()]


# --- θ-only warm-up -------------------------------------------------------------------------------
@pytest.mark.parametrize("second_order", [False, True])
def test_alpha_warmup_freezes_alpha_exactly_then_releases_it(second_order):
    torch.manual_seed(0)
    net = Supernet(tiny_config(dropout=0.0))
    search = BilevelSearch(net, SearchConfig(lr=3e-3, warmup_steps=2, alpha_lr=0.05, alpha_warmup_steps=3,
                                             second_order=second_order))
    alpha0, theta0 = alphas_of(net), weights_of(net)
    for step in range(3):
        out = search.step(reversal_batch(100 + step), reversal_batch(200 + step))
        assert math.isnan(out["arch_loss"]) and math.isfinite(out["train_loss"])
        assert all(torch.equal(a, b) for a, b in zip(net.arch_parameters(), alpha0))
        assert all(a.grad is None for a in net.arch_parameters())
    assert search.alpha_optimizer.state == {}  # Adam's moments start when α does
    assert any(not torch.equal(w, v) for w, v in zip(net.weight_parameters(), theta0))
    out = search.step(reversal_batch(103), reversal_batch(203))
    assert math.isfinite(out["arch_loss"])
    assert all(not torch.equal(a, b) for a, b in zip(net.arch_parameters(), alpha0))


def test_alpha_warmup_is_plain_theta_training():
    """During warm-up the θ updates are exactly Adam on the weight loss with α held fixed (float64)."""
    torch.manual_seed(0)
    net = Supernet(tiny_config(dropout=0.0)).double()
    reference = copy.deepcopy(net)
    config = SearchConfig(lr=3e-3, warmup_steps=3, alpha_warmup_steps=4)
    search = BilevelSearch(net, config)
    weights = reference.weight_parameters()
    optimizer = torch.optim.Adam(weights, lr=config.lr, betas=config.betas)
    schedule = InverseSqrtSchedule(config.lr, config.warmup_steps)
    for step in range(4):
        search.step(reversal_batch(step), reversal_batch(50 + step))
        for group in optimizer.param_groups:
            group["lr"] = schedule(step + 1)
        optimizer.zero_grad(set_to_none=True)
        src, tgt_in, tgt_out = reversal_batch(step)
        sequence_loss(reference(src, tgt_in), tgt_out, config.label_smoothing).backward()
        optimizer.step()
    for w, r in zip(net.weight_parameters(), weights):
        torch.testing.assert_close(w, r, rtol=1e-9, atol=1e-11)
    assert all(torch.equal(a, b) for a, b in zip(net.arch_parameters(), reference.arch_parameters()))


def test_warmup_in_the_loop_reports_and_resumes_bit_identical():
    def make_loop(seed=0):
        torch.manual_seed(seed)
        net = Supernet(tiny_config())
        search = BilevelSearch(net, SearchConfig(lr=3e-3, warmup_steps=4, alpha_lr=0.05, alpha_warmup_steps=3))
        data = SearchData(reversal_pairs(40, 1), reversal_pairs(40, 2), reversal_pairs(12, 3), max_tokens=48)
        return SearchLoop(search, data, valid_batches=2)

    reports = []
    straight = make_loop()
    straight.run(6, report_every=2, on_report=lambda step, m, loop: reports.append(m))
    assert math.isnan(reports[0]["arch_loss"])          # steps 1-2: warm-up only
    assert math.isfinite(reports[1]["arch_loss"])       # step 3 warm-up, step 4 has an α step
    for m in reports:
        assert 0.0 <= m["param_free_share"] <= 1.0 and 0.0 <= m["alpha_margin_min"] <= m["alpha_margin"]

    first = make_loop()
    first.run(2, report_every=2)  # checkpoint in the middle of the warm-up
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = make_loop(seed=99)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    second.run(6, report_every=2)
    for p, q in zip(straight.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)
    assert straight.trajectory.steps == second.trajectory.steps == [2, 4, 6]
    for side in ("encoder", "decoder"):
        assert torch.equal(straight.trajectory.side(side), second.trajectory.side(side))


# --- α betas --------------------------------------------------------------------------------------
def test_alpha_betas_default_to_theta_betas_and_are_used_when_set():
    net = Supernet(tiny_config())
    default = BilevelSearch(net)
    assert default.alpha_optimizer.param_groups[0]["betas"] == SearchConfig().betas
    own = BilevelSearch(net, SearchConfig(alpha_betas=[0.5, 0.6]))
    assert own.config.alpha_betas == (0.5, 0.6)
    assert own.alpha_optimizer.param_groups[0]["betas"] == (0.5, 0.6)
    assert own.weight_optimizer.param_groups[0]["betas"] == (0.9, 0.98)


def _two_steps(config):
    torch.manual_seed(0)
    net = Supernet(tiny_config(dropout=0.0))
    search = BilevelSearch(net, config)
    trace = []
    for step in range(2):
        search.step(reversal_batch(step), reversal_batch(10 + step))
        trace.append((alphas_of(net), weights_of(net)))
    return trace


def test_alpha_betas_drive_the_alpha_updates():
    base = dict(lr=3e-3, warmup_steps=2, alpha_lr=0.05)
    default = _two_steps(SearchConfig(**base))
    explicit = _two_steps(SearchConfig(**base, alpha_betas=(0.9, 0.98)))
    other = _two_steps(SearchConfig(**base, alpha_betas=(0.5, 0.6)))
    for (a, w), (b, v) in zip(default, explicit):  # naming θ's betas again changes nothing
        assert all(map(torch.equal, a, b)) and all(map(torch.equal, w, v))
    # Adam's first step is lr · g/|g| whatever the betas (bias correction); the second is not
    (a1, _), (a2, _) = default
    (b1, _), (b2, _) = other
    for x, y in zip(a1, b1):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    assert max(float((x - y).abs().max()) for x, y in zip(a2, b2)) > 1e-3


@pytest.mark.parametrize("kwargs,fragment", [
    ({"alpha_warmup_steps": -1}, "alpha_warmup_steps must be an integer >= 0"),
    ({"alpha_warmup_steps": 1.5}, "alpha_warmup_steps must be an integer >= 0"),
    ({"alpha_betas": (0.9,)}, "alpha_betas must be two numbers in [0, 1)"),
    ({"alpha_betas": (0.9, 1.0)}, "alpha_betas must be two numbers in [0, 1)"),
    ({"betas": (0.9, "x")}, "betas must be two numbers in [0, 1)"),
])
def test_search_config_rejects_bad_levers(kwargs, fragment):
    with pytest.raises(ConfigError) as e:
        SearchConfig(**kwargs)
    assert fragment in str(e.value)


# --- the collapse report --------------------------------------------------------------------------
def test_parameter_free_ops_are_the_ops_without_weights():
    assert [name for name in DECODER_OPS if is_parameter_free(name)] == ["zero", "identity"]
    config = OpConfig(dim=8, causal=True, heads=2)
    for name in DECODER_OPS:
        op = build_op(name, config)
        inner = getattr(op, "op", op)
        assert is_parameter_free(name) == (sum(p.numel() for p in inner.parameters()) == 0), name


def set_probabilities(alpha, probabilities):
    with torch.no_grad():
        alpha.copy_(torch.tensor(probabilities).log())


def test_collapse_metrics_on_a_hand_built_alpha():
    net = Supernet(tiny_config(encoder_ops=("conv3", "zero", "identity"),
                               decoder_ops=("self_attn", "identity", "cross_attn")))
    enc, dec = net.alpha_grid("encoder"), net.alpha_grid("decoder")
    # encoder: identity wins by 0.2, conv3 by 0.5, identity by 0.1, conv3 by 0.8
    set_probabilities(enc[0][0], [0.2, 0.3, 0.5])
    set_probabilities(enc[0][1], [0.7, 0.1, 0.2])
    set_probabilities(enc[1][0], [0.3, 0.3, 0.4])
    set_probabilities(enc[1][1], [0.9, 0.0 + 1e-12, 0.1 - 1e-12])
    # decoder: identity by 0.6, self_attn by 0.0 (a tie broken by order), cross_attn by 0.4, cross_attn by 0.5
    set_probabilities(dec[0][0], [0.1, 0.75, 0.15])
    set_probabilities(dec[0][1], [0.4, 0.4, 0.2])
    set_probabilities(dec[1][0], [0.2, 0.2, 0.6])
    set_probabilities(dec[1][1], [0.25, 0.0 + 1e-12, 0.75 - 1e-12])
    genotype = derive_genotype(net)
    assert genotype.encoder.cell == [["identity", "conv3"], ["identity", "conv3"]]
    assert genotype.decoder.cell[0][0] == "identity" and genotype.decoder.cell[1] == ["cross_attn", "cross_attn"]
    metrics = collapse_metrics(genotype)
    assert metrics["param_free_share"] == pytest.approx(3 / 8)
    assert metrics["alpha_margin"] == pytest.approx((0.2 + 0.5 + 0.1 + 0.8 + 0.6 + 0.0 + 0.4 + 0.5) / 8)
    assert metrics["alpha_margin_min"] == pytest.approx(0.0, abs=1e-9)
    assert top_margin([1.0]) == 1.0


def test_uniform_alpha_has_no_margin_and_all_identity_is_full_collapse():
    net = Supernet(tiny_config(encoder_ops=("conv3", "identity"), decoder_ops=("identity", "cross_attn")))
    for a in net.arch_parameters():
        set_probabilities(a, [0.5, 0.5])
    assert collapse_metrics(derive_genotype(net))["alpha_margin"] == 0.0
    for a in net.encoder_alphas:
        set_probabilities(a, [0.1, 0.9])
    for a in net.decoder_alphas:
        set_probabilities(a, [0.9, 0.1])
    metrics = collapse_metrics(derive_genotype(net))
    assert metrics["param_free_share"] == 1.0 and metrics["alpha_margin"] == pytest.approx(0.8)


# --- α trajectories -------------------------------------------------------------------------------
def test_trajectory_records_softmax_and_survives_a_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    net = Supernet(tiny_config(cell_layers=1))
    trajectory = AlphaTrajectory()
    for step in (5, 10):
        with torch.no_grad():
            for a in net.arch_parameters():
                a.add_(torch.randn_like(a))
        trajectory.record(step, net)
    enc = trajectory.side("encoder")
    assert enc.shape == (2, 1, 2, len(net.config.encoder_ops))
    torch.testing.assert_close(enc[-1, 0, 1], torch.softmax(net.alpha_grid("encoder")[0][1].detach(), 0))
    buffer = io.BytesIO()
    torch.save(trajectory.state_dict(), buffer)
    buffer.seek(0)
    loaded = AlphaTrajectory()
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert loaded.steps == [5, 10]
    assert all(torch.equal(loaded.side(s), trajectory.side(s)) for s in ("encoder", "decoder"))
    loaded.record(10, net)            # a restart from an earlier checkpoint replaces its stale future
    loaded.record(7, net)
    assert loaded.steps == [5, 7] and len(loaded.probabilities["decoder"]) == 2
    empty = AlphaTrajectory()
    empty.load_state_dict(AlphaTrajectory().state_dict())
    assert len(empty) == 0

    genotype = derive_genotype(net)
    for name, traj in (("t.png", trajectory), ("empty.png", AlphaTrajectory())):
        path = plot_alpha_trajectories(traj, genotype, str(tmp_path / name), alpha_warmup_steps=3)
        assert open(path, "rb").read(8) == PNG


def test_loop_state_without_a_trajectory_still_loads():
    """Checkpoints written before trajectories were kept resume with an empty history."""
    torch.manual_seed(0)
    net = Supernet(tiny_config())
    data = SearchData(reversal_pairs(20, 1), reversal_pairs(20, 2), reversal_pairs(6, 3), max_tokens=48)
    loop = SearchLoop(BilevelSearch(net, SearchConfig(warmup_steps=2)), data, valid_batches=1)
    loop.run(2, report_every=2)
    state = loop.state_dict()
    assert loop.trajectory.steps == [2]
    del state["alpha_trajectory"]
    loop.load_state_dict(state)
    assert len(loop.trajectory) == 0


def test_a_decoder_without_target_side_mixing_is_flagged():
    from revsearch.orchestration.trainables import describe_genotype
    from revsearch.search.collapse import decoder_lacks_target_context
    from revsearch.search.genotype import Genotype

    def genotype(decoder_ops):
        return Genotype.from_dict({"schema_version": 1, "splits": 2, "pooling": "max",
                                   "encoder": {"candidates": ["conv3", "ffn"], "cell": [["conv3", "ffn"]]},
                                   "decoder": {"candidates": ["conv3", "self_attn", "cross_attn", "ffn"],
                                               "cell": [decoder_ops]}})
    assert decoder_lacks_target_context(genotype(["cross_attn", "ffn"]))
    assert not decoder_lacks_target_context(genotype(["cross_attn", "conv3"]))
    assert not decoder_lacks_target_context(genotype(["self_attn", "ffn"]))
    assert describe_genotype(genotype(["cross_attn", "cross_attn"]).to_json()).endswith(
        "(decoder mixes no target positions)")
