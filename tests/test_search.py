"""The DARTS supernet on the reversible engine against its plain-autograd twin, and the search step."""
import json

import pytest
import torch

from revsearch.errors import ConfigError
from revsearch.ops import DECODER_OPS, ENCODER_OPS
from revsearch.search import (BilevelSearch, Genotype, SearchConfig, Supernet, build_derived_model,
                              derive_genotype, sequence_loss, uniform_genotype)
from revsearch.search.plots import plot_alpha_heatmap, plot_cell
from tests.search_fixtures import reversal_batch, tiny_config


def grads_by_group(net, batch, mode, seed):
    net.set_mode(mode)
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    src, tgt_in, tgt_out = batch
    loss = sequence_loss(net(src, tgt_in), tgt_out, 0.1)
    loss.backward()
    theta = torch.cat([p.grad.flatten() for p in net.weight_parameters() if p.grad is not None])
    alpha = torch.cat([a.grad.flatten() for a in net.arch_parameters()])
    return loss.detach(), theta, alpha


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("splits,share,seed", [(2, True, 0), (3, False, 1), (2, False, 2)])
def test_supernet_reversible_gradients_equal_plain_float64(splits, share, seed):
    torch.manual_seed(seed)
    net = Supernet(tiny_config(hidden=8 * splits, splits=splits, encoder_layers=3, decoder_layers=3,
                               cell_layers=2, share_alpha=share)).double()
    assert net.config.encoder_ops == ENCODER_OPS and net.config.decoder_ops == DECODER_OPS
    batch = reversal_batch(seed)
    assert (batch[0] == 0).any() and (batch[1] == 0).any()  # padding on both sides
    loss_p, theta_p, alpha_p = grads_by_group(net, batch, "plain", seed)
    loss_r, theta_r, alpha_r = grads_by_group(net, batch, "reversible", seed)
    assert torch.equal(loss_p, loss_r)
    assert theta_p.shape == theta_r.shape and alpha_p.abs().sum() > 0
    assert rel(theta_r, theta_p) <= 1e-10
    assert rel(alpha_r, alpha_p) <= 1e-10


def test_alpha_sharing_counts():
    shared = Supernet(tiny_config(encoder_layers=4, decoder_layers=4, cell_layers=2, share_alpha=True))
    separate = Supernet(tiny_config(encoder_layers=4, decoder_layers=4, cell_layers=2, share_alpha=False))
    assert len(shared.arch_parameters()) == 2 * 2 + 2 * 2
    assert len(separate.arch_parameters()) == 4 * 2 + 4 * 2
    node_alpha = shared.encoder.layers[2].functions[0].alpha
    assert node_alpha is shared.encoder.layers[0].functions[0].alpha
    arch = {id(a) for a in shared.arch_parameters()}
    assert not any(id(p) in arch for p in shared.weight_parameters())


def test_supernet_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    net = Supernet(tiny_config()).double().eval()
    src, tgt_in, _ = reversal_batch(3)
    with torch.no_grad():
        base = net(src, tgt_in)
        future = tgt_in.clone()
        future[:, 4:] = torch.randint(4, 20, future[:, 4:].shape)
        changed = net(src, future)
        assert torch.equal(base[:, :4], changed[:, :4])
        assert not torch.equal(base[:, 4:], changed[:, 4:])
        # padding is defined by token id 0, so "change the pads" means: add more of them. Extra pad
        # columns on both sides must not move any real position's encoder output or logit.
        memory, mask = net.encode(src)
        extra_src = torch.cat([src, torch.zeros(src.shape[0], 3, dtype=src.dtype)], dim=1)
        extra_tgt = torch.cat([tgt_in, torch.zeros(tgt_in.shape[0], 2, dtype=tgt_in.dtype)], dim=1)
        memory_extra, mask_extra = net.encode(extra_src)
        assert mask_extra[:, -3:].all()
        torch.testing.assert_close(memory_extra[:, :src.shape[1]], memory, rtol=0, atol=1e-12)
        logits_extra = net(extra_src, extra_tgt)[:, :tgt_in.shape[1]]
        real = tgt_in != 0
        torch.testing.assert_close(logits_extra[real], base[real], rtol=0, atol=1e-10)
        assert torch.equal(memory[mask], torch.zeros_like(memory[mask]))


def _search(seed, steps=25):
    torch.manual_seed(seed)
    net = Supernet(tiny_config(dropout=0.1))
    search = BilevelSearch(net, SearchConfig(lr=3e-3, warmup_steps=5, alpha_lr=0.3))
    entropies = [net.alpha_entropy()]
    losses = []
    for step in range(steps):
        metrics = search.step(reversal_batch(1000 + step), reversal_batch(5000 + step))
        losses.append(metrics["train_loss"])
    entropies.append(net.alpha_entropy())
    return net, entropies, losses


def test_short_search_lowers_alpha_entropy_and_is_bit_identical():
    net_a, ent_a, loss_a = _search(seed=0)
    net_b, ent_b, loss_b = _search(seed=0)
    assert ent_a[1] < ent_a[0] - 0.05
    assert loss_a == loss_b and ent_a == ent_b
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(p, q)
    assert derive_genotype(net_a).to_json() == derive_genotype(net_b).to_json()


def test_alpha_is_not_in_theta_optimizer():
    net = Supernet(tiny_config())
    search = BilevelSearch(net)
    in_theta = {id(p) for g in search.weight_optimizer.param_groups for p in g["params"]}
    assert not any(id(a) in in_theta for a in net.arch_parameters())
    assert search.alpha_optimizer.param_groups[0]["weight_decay"] == 1e-3


def test_second_order_step_runs_and_restores_weights():
    torch.manual_seed(0)
    net = Supernet(tiny_config(dropout=0.0))
    search = BilevelSearch(net, SearchConfig(second_order=True, warmup_steps=1))
    before = [p.detach().clone() for p in net.weight_parameters()]
    alpha_before = [a.detach().clone() for a in net.arch_parameters()]
    search.alpha_optimizer.step = lambda: None  # inspect the gradient before α moves
    search.weight_optimizer.step = lambda: None
    search.step(reversal_batch(0), reversal_batch(1))
    assert all(torch.equal(p, q) for p, q in zip(net.weight_parameters(), before))
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.arch_parameters())
    assert all(torch.equal(a, b) for a, b in zip(net.arch_parameters(), alpha_before))


def test_genotype_round_trip_and_pictures(tmp_path):
    torch.manual_seed(0)
    net = Supernet(tiny_config(encoder_ops=("conv3", "self_attn", "zero"),
                               decoder_ops=("conv3", "self_attn", "cross_attn")))
    with torch.no_grad():
        net.encoder_alphas[0][1] = 5.0
    genotype = derive_genotype(net)
    assert genotype.encoder.cell[0][0] == "self_attn"
    assert abs(sum(genotype.encoder.probabilities[0][0]) - 1) < 1e-9
    path = tmp_path / "g.json"
    genotype.save(str(path))
    loaded = Genotype.load(str(path))
    assert loaded.to_dict() == genotype.to_dict()
    assert json.loads(path.read_text())["schema_version"] == 1
    for plot, name in ((plot_alpha_heatmap, "alpha.png"), (plot_cell, "cell.png")):
        out = plot(genotype, str(tmp_path / name))
        assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["encoder"]["cell"][0].__setitem__(0, "conv4"), "unknown op 'conv4'"),
    (lambda d: d["encoder"]["cell"][0].append("conv3"), "must list 2 ops"),
    (lambda d: d.__setitem__("schema_version", 99), "schema_version"),
    (lambda d: d["decoder"].__setitem__("probabilities", [[0.5]]), "probabilities must have shape"),
    (lambda d: d["encoder"]["candidates"].append("cross_attn"), "cross_attn"),
    (lambda d: d.__setitem__("splits", "two"), "splits must be an integer"),
])
def test_genotype_validation(tmp_path, mutate, message):
    data = uniform_genotype(2, "conv3", "self_attn").to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as info:
        Genotype.load(str(path))
    assert str(path) in str(info.value)


def test_genotype_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Genotype.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match="not a genotype JSON"):
        Genotype.load(str(bad))


def test_config_errors():
    with pytest.raises(ConfigError, match="not divisible by splits 3"):
        tiny_config(hidden=16, splits=3)
    with pytest.raises(ConfigError, match="unknown op 'conv4'"):
        tiny_config(encoder_ops=("conv3", "conv4"))


def test_derived_model_trains_and_is_smaller_than_supernet():
    torch.manual_seed(0)
    config = tiny_config(encoder_layers=4, decoder_layers=4, mode="plain")
    genotype = uniform_genotype(2, "self_attn", "self_attn", layers=2)
    model = build_derived_model(genotype, config)
    supernet = Supernet(tiny_config(encoder_layers=4, decoder_layers=4))
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model) < count(supernet) / 3
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = reversal_batch(0)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = sequence_loss(model(batch[0], batch[1]), batch[2], 0.0)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first * 0.5
    with pytest.raises(ConfigError, match="3 splits"):
        build_derived_model(uniform_genotype(3, "ffn", "ffn"), config)


# --- derivation as in DARTS: zero is never derived unless allowed -----------------------------------
def _supernet_preferring_zero(splits=2, runner_up="conv3"):
    """A supernet whose α puts ``zero`` first and ``runner_up`` second at every node."""
    net = Supernet(tiny_config(hidden=8 * splits, splits=splits))
    with torch.no_grad():
        for side in ("encoder", "decoder"):
            ops = list(net.config.ops(side))
            for row in net.alpha_grid(side):
                for alpha in row:
                    alpha.zero_()
                    alpha[ops.index("zero")] = 3.0
                    alpha[ops.index(runner_up)] = 2.0
    return net


def test_derivation_skips_zero_and_takes_the_next_best_op(tmp_path):
    net = _supernet_preferring_zero()
    genotype = derive_genotype(net)
    for side in ("encoder", "decoder"):
        assert all(op == "conv3" for row in genotype.side(side).cell for op in row)
        zero = genotype.side(side).candidates.index("zero")   # the probabilities still show zero first
        assert all(max(p) == p[zero] for row in genotype.side(side).probabilities for p in row)
    assert genotype.to_dict()["derivation"] == {"rule": "argmax", "excluded": ["zero"]}
    path = tmp_path / "g.json"
    genotype.save(str(path))
    assert Genotype.load(str(path)).derivation == {"rule": "argmax", "excluded": ["zero"]}
    allowed = derive_genotype(net, allow_zero=True)
    assert all(op == "zero" for row in allowed.encoder.cell for op in row)
    assert allowed.derivation == {"rule": "argmax", "excluded": []}


def test_derivation_without_zero_is_the_plain_argmax_and_keys_are_stable():
    torch.manual_seed(3)
    net = Supernet(tiny_config())
    with torch.no_grad():
        for alpha in net.arch_parameters():
            alpha.normal_()
            alpha[list(ENCODER_OPS).index("zero")] = -10.0   # zero is never the argmax here
    excluded, allowed = derive_genotype(net), derive_genotype(net, allow_zero=True)
    assert excluded.encoder.cell == allowed.encoder.cell and excluded.decoder.cell == allowed.decoder.cell
    assert excluded.key() == allowed.key()   # the derivation record is provenance, not identity
    plain = Genotype.from_dict({k: v for k, v in excluded.to_dict().items() if k != "derivation"})
    assert plain.derivation is None and plain.key() == excluded.key()   # files written before it was recorded


def test_search_config_option_reaches_the_derivation():
    from revsearch.search.loop import SearchData, SearchLoop
    from tests.search_fixtures import reversal_pairs
    pairs = reversal_pairs(8, 0)
    for allow, expected in ((False, "conv3"), (True, "zero")):
        net = _supernet_preferring_zero()
        loop = SearchLoop(BilevelSearch(net, SearchConfig(derive_allow_zero=allow)),
                          SearchData(pairs, pairs, pairs, max_tokens=64), valid_batches=1)
        assert loop.genotype().encoder.cell[0][0] == expected


def test_genotype_derivation_record_is_validated():
    data = uniform_genotype(2, "ffn", "ffn").to_dict()
    data["derivation"] = {"excluded": "zero"}
    with pytest.raises(ConfigError, match="derivation must be an object"):
        Genotype.from_dict(data)
