"""Equal-size retraining (search/sizing.py and retrain_candidates): every retrained model lands within the
tolerance of one parameter target, counted exactly as the real model has it, or the run stops with one
line naming the model and the nearest count."""
import json

import pytest
import torch

from revsearch.errors import ConfigError
from revsearch.models.transformer import count_parameters
from revsearch.ops import DECODER_OPS, ENCODER_OPS
from revsearch.search import Genotype, build_derived_model, uniform_genotype
from revsearch.search.sizing import (baseline_heads, derived_model_config, derived_param_count, size_derived,
                                     size_transformer, transformer_param_count)

VOCAB = 200
DERIVED = {"hidden": 64, "splits": 2, "embed_dim": 32, "encoder_layers": 2, "decoder_layers": 2, "heads": 4,
           "pooling": "max", "dropout": 0.1, "tie_embeddings": True}
BASELINE = {"hidden": 64, "embed_dim": 32, "heads": 8, "encoder_layers": 2, "decoder_layers": 2, "dropout": 0.1,
            "ffn_dim": 256}


def identity_heavy(splits: int) -> Genotype:
    """Every node identity except the last split of each layer (a conv in the encoder, attention in the
    decoder): the cheapest cell that still learns something."""
    def cell(op):
        return [["identity"] * (splits - 1) + [op] for _ in range(2)]
    return Genotype.from_dict({"schema_version": 1, "splits": splits, "pooling": "max",
                               "encoder": {"candidates": list(ENCODER_OPS), "cell": cell("conv3")},
                               "decoder": {"candidates": list(DECODER_OPS), "cell": cell("self_attn")}})


GENOTYPES = {
    "conv-only": lambda s: uniform_genotype(s, "conv7", "conv7", layers=2),
    "attention-only": lambda s: uniform_genotype(s, "self_attn", "self_attn", layers=2),
    "identity-heavy": identity_heavy,
    "dynconv-only": lambda s: uniform_genotype(s, "dynconv15", "dynconv15", layers=2),
}


def real_count_derived(genotype, model):
    torch.manual_seed(0)
    return count_parameters(build_derived_model(genotype, derived_model_config(model, VOCAB)))


@pytest.mark.parametrize("splits", [2, 3, 4])
@pytest.mark.parametrize("kind", sorted(GENOTYPES))
def test_derived_models_land_within_the_tolerance_of_the_transformer(kind, splits):
    target = transformer_param_count(BASELINE, VOCAB)
    genotype = GENOTYPES[kind](splits)
    sized = size_derived(kind, genotype, dict(DERIVED, splits=splits), VOCAB, target, 0.03)
    hidden = sized.model["hidden"]
    assert hidden % splits == 0 and sized.model["splits"] == splits
    assert abs(sized.params - target) <= 0.03 * target and sized.deviation == (sized.params - target) / target
    assert sized.params == real_count_derived(genotype, sized.model)   # the meta count is the real one
    # heads: the search's 4 when a width with 4 heads per op is close enough, else a divisor of it, and
    # the split width is a multiple of it; nearest on that rung: one step either way is no closer
    heads = sized.model["heads"]
    assert DERIVED["heads"] % heads == 0 and (hidden // splits) % heads == 0
    step = splits * heads
    for other in (hidden - step, hidden + step):
        if other >= step:
            assert abs(derived_param_count(genotype, dict(sized.model, hidden=other), VOCAB) - target) \
                >= abs(sized.params - target)


def test_finer_widths_are_used_only_when_the_coarse_ones_miss():
    genotype = identity_heavy(3)
    target = transformer_param_count(BASELINE, VOCAB)
    coarse = size_derived("g", genotype, dict(DERIVED, splits=3), VOCAB, target, 0.03)
    tight = size_derived("g", genotype, dict(DERIVED, splits=3), VOCAB, target, 0.01)
    assert abs(tight.deviation) <= 0.01 < abs(coarse.deviation) <= 0.03
    assert coarse.model["heads"] == 4 and tight.model["heads"] < 4


def test_baseline_at_the_reference_width_is_the_default_target_itself():
    target = transformer_param_count(BASELINE, VOCAB)
    sized = size_transformer("transformer-baseline", dict(BASELINE, ffn_dim=None), VOCAB, target, 0.03)
    assert (sized.model["hidden"], sized.model["ffn_dim"], sized.params, sized.deviation) == (64, 256, target, 0.0)


@pytest.mark.parametrize("scale,tolerance", [(1.6, 0.03), (0.7, 0.03), (1.13, 0.001)])
def test_baseline_reaches_an_explicit_budget(scale, tolerance):
    target = int(transformer_param_count(BASELINE, VOCAB) * scale)
    sized = size_transformer("transformer-baseline", BASELINE, VOCAB, target, tolerance)
    m = sized.model
    assert abs(sized.deviation) <= tolerance and m["hidden"] % m["heads"] == 0
    from revsearch.orchestration.candidates import build_retrain_model
    model, spec = build_retrain_model({"kind": "baseline", "model": m, "label": "b"}, VOCAB)
    assert count_parameters(model) == sized.params
    assert model.config.ffn_dim == m["ffn_dim"] and spec["config"]["ffn_dim"] == m["ffn_dim"]


def test_unreachable_target_is_one_line_naming_the_model_and_the_nearest_count():
    genotype = uniform_genotype(3, "ffn", "ffn", layers=2)
    with pytest.raises(ConfigError) as err:
        size_derived("derived-1-abc", genotype, dict(DERIVED, splits=3), VOCAB, 5_000, 0.03, what="q.yaml: retrain.size")
    text = str(err.value)
    smallest = derived_param_count(genotype, dict(DERIVED, splits=3, hidden=3, heads=1), VOCAB)
    assert "\n" not in text
    assert text.startswith("q.yaml: retrain.size: derived-1-abc cannot reach 5,000 params within 3%: "
                           f"nearest {smallest:,} (") and text.endswith("at hidden 3, heads 1")
    with pytest.raises(ConfigError, match=r"transformer-baseline cannot reach 1,000 params within 3%: nearest .* "
                                          r"at hidden 8, ffn_dim 1$"):
        size_transformer("transformer-baseline", BASELINE, VOCAB, 1_000, 0.03)


def test_baseline_heads():
    assert [baseline_heads(h) for h in (64, 60, 7, 36, 4)] == [8, 6, 7, 6, 4]


# --- through retrain_candidates -------------------------------------------------------------------------
def sweep_with(retrain, **space):
    from revsearch.orchestration.sweep import validate_sweep_dict
    return validate_sweep_dict({
        "name": "sizing", "data": {"kind": "synthetic", "vocab_size": VOCAB, "max_len": 32},
        "search": {"hidden": 64, "splits": 2, "embed_dim": 32, "heads": 4, "cell_layers": 2,
                   "encoder_layers": 2, "decoder_layers": 2, "steps": 10, "report_every": 5,
                   "checkpoint_every": 5},
        "num_samples": 2, "retrain": dict({"top_k": 2}, **retrain), "space": space}, "sizing.yaml")


def chosen(*genotypes):
    return [{"rank_in_search": i, "trial_id": f"t{i}", "config": {"splits": g.splits}, "genotype": g.to_json(),
             "genotype_key": g.key(), "search_run_id": "", "search_seconds": 1.0}
            for i, g in enumerate(genotypes, 1)]


def test_retrain_candidates_are_sized_to_the_baseline_and_build_exactly():
    from revsearch.orchestration.candidates import retrain_candidates
    from revsearch.orchestration.candidates import build_retrain_model
    sweep = sweep_with({"random_genotypes": 2})
    candidates = retrain_candidates(sweep, chosen(uniform_genotype(2, "conv3", "conv3", layers=2),
                                                  identity_heavy(3)))
    assert [c["kind"] for c in candidates] == ["baseline", "derived", "derived", "random", "random"]
    assert [c["label"] for c in candidates][-2:] == ["random-1", "random-2"]
    target = transformer_param_count(dict(BASELINE, ffn_dim=256), VOCAB)
    json.dumps(candidates)   # saved in run_state.json and passed to Tune
    for c in candidates:
        assert c["target_params"] == target and abs(c["param_deviation"]) <= 0.03
        model, _ = build_retrain_model(c, VOCAB)
        assert count_parameters(model) == c["params"], c["label"]
    assert candidates[0]["model"]["hidden"] == 64 and candidates[0]["params"] == target
    assert candidates[2]["model"]["splits"] == 3 and candidates[2]["model"]["hidden"] % 3 == 0


def test_all_candidates_train_on_the_best_trials_data_when_the_space_samples_it():
    """A space sampling ``max_len``, ``vocab_size``, the SentencePiece type, the embedding width and the
    dropout: derived-2, the randoms and the baseline all take the best trial's data setting and embedding
    and dropout (else they would be trained and scored on other
    tokens and another length filter), derived-2 keeps its own in ``search_data``, and every model is sized
    with that one vocabulary as SentencePiece really gives it."""
    from revsearch.orchestration.candidates import DATA_KEYS, build_retrain_model, retrain_candidates
    sweep = sweep_with({"random_genotypes": 2},
                       splits={"type": "choice", "values": [2, 3]},
                       hidden={"type": "derived", "expr": "splits * 32"},
                       max_len={"type": "choice", "values": [24, 40]},
                       vocab_size={"type": "choice", "values": [150, 300]},
                       spm_model_type={"type": "choice", "values": ["unigram", "bpe"]},
                       embed_dim={"type": "choice", "values": [32, 48]},
                       dropout={"type": "uniform", "low": 0.0, "high": 0.3})
    best = {"max_len": 24, "vocab_size": 150, "spm_model_type": "bpe"}
    second = {"max_len": 40, "vocab_size": 300, "spm_model_type": "unigram"}
    picks = chosen(uniform_genotype(2, "conv3", "conv3", layers=2), identity_heavy(3))
    picks[0]["config"].update(best, embed_dim=32, dropout=0.1)
    picks[1]["config"].update(second, embed_dim=48, dropout=0.25)
    asked = []

    def vocab_size_of(requested, model_type):   # SentencePiece may give fewer pieces than asked
        asked.append((requested, model_type))
        return requested - 7
    candidates = retrain_candidates(sweep, picks, vocab_size_of=vocab_size_of)
    json.dumps(candidates)   # saved in run_state.json and passed to Tune
    assert [c["kind"] for c in candidates] == ["baseline", "derived", "derived", "random", "random"]
    assert all({k: c[k] for k in DATA_KEYS} == best for c in candidates), [c["label"] for c in candidates]
    derived = [c for c in candidates if c["kind"] == "derived"]
    assert [c["search_data"] for c in derived] == [best, second]   # each trial's own, for the record
    # one embedding width and one dropout too (the cell's splits stay each genotype's own)
    assert all((c["model"]["embed_dim"], c["model"]["dropout"]) == (32, 0.1) for c in candidates)
    assert [c["search_model"]["embed_dim"] for c in derived] == [32, 48]
    assert [c["search_model"]["dropout"] for c in derived] == [0.1, 0.25]
    assert set(asked) == {(150, "bpe")}
    vocab = 150 - 7
    baseline = candidates[0]
    target = transformer_param_count(dict(BASELINE, ffn_dim=256), vocab)
    assert baseline["params"] == target and baseline["model"]["hidden"] == 64
    for c in candidates:
        assert c["target_params"] == target and abs(c["param_deviation"]) <= 0.03, c["label"]
        model, _ = build_retrain_model(c, vocab)
        assert count_parameters(model) == c["params"], c["label"]
    assert derived[1]["model"]["splits"] == 3 and derived[1]["model"]["hidden"] % 3 == 0


def test_match_width_keeps_todays_widths_and_an_explicit_budget_moves_all():
    from revsearch.orchestration.candidates import retrain_candidates
    g = uniform_genotype(2, "self_attn", "self_attn", layers=2)
    same = retrain_candidates(sweep_with({"size": {"match": "width"}}), chosen(g))
    assert [c["model"]["hidden"] for c in same] == [64, 64]
    assert [c["target_params"] for c in same] == [None, None] and same[1]["params"] > 0
    budget = retrain_candidates(sweep_with({"size": {"params": 400_000}}), chosen(g))
    for c in budget:
        assert c["target_params"] == 400_000 and abs(c["params"] - 400_000) <= 12_000
    with pytest.raises(ConfigError, match=r"^sizing.yaml: retrain.size: transformer-baseline cannot reach 1,000 "
                                          r"params within 3%: nearest [0-9,]+ \(.*\) at hidden 8, ffn_dim 1$"):
        retrain_candidates(sweep_with({"size": {"params": 1000}}), chosen(g))


def test_cli_retrain_stops_with_one_line_when_no_width_fits(tmp_path, capsys):
    """``revsearch retrain`` sizes before anything is trained or recorded: exit 2, one line."""
    import yaml
    from revsearch import cli
    config = sweep_with({"size": {"params": 1000}}).to_dict()
    config.update(storage=str(tmp_path / "storage"), tracking={"uri": None})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    genotype = tmp_path / "g.json"
    uniform_genotype(2, "conv3", "self_attn", layers=2).save(str(genotype))
    rc = cli.main(["retrain", str(genotype), "--config", str(tmp_path / "s.yaml"), "--storage",
                   str(tmp_path / "storage")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "s.yaml: retrain.size: derived-1-manual cannot reach 1,000 params within 3%: nearest" in err
    rc = cli.main(["retrain", str(genotype), "--config", str(tmp_path / "s.yaml"), "--storage",
                   str(tmp_path / "storage"), "--baseline"])
    err = capsys.readouterr().err
    assert rc == 2 and "retrain.size: transformer-baseline cannot reach 1,000 params" in err and err.count("\n") == 1
    assert not (tmp_path / "storage" / "retrain-cli").exists()
