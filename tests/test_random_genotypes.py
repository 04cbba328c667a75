"""The sampling baseline (search/sampling.py): seeded, distinct, uniform over the derivable ops of the
search's space, and buildable."""
import collections
import json

import pytest
import torch

from revsearch.errors import ConfigError
from revsearch.search import Genotype, build_derived_model, uniform_genotype
from revsearch.search.sampling import derivable_ops, sample_genotypes, space_size
from revsearch.models.split_seq2seq import SplitSeq2SeqConfig

LIGHT_ENCODER = ["conv3", "dynconv7", "self_attn", "ffn", "zero", "identity"]
LIGHT_DECODER = ["conv3", "dynconv7", "self_attn", "ffn", "cross_attn", "zero", "identity"]


def template(splits=2, layers=2):
    return uniform_genotype(splits, "conv3", "self_attn", layers=layers, encoder_candidates=LIGHT_ENCODER,
                            decoder_candidates=LIGHT_DECODER)


def test_seeded_distinct_and_avoiding_the_derived_genotypes():
    t = template()
    a = sample_genotypes(t, 8, seed=5, avoid=[t.key()])
    assert [g.to_json() for g in a] == [g.to_json() for g in sample_genotypes(t, 8, seed=5, avoid=[t.key()])]
    assert [g.key() for g in a] != [g.key() for g in sample_genotypes(t, 8, seed=6, avoid=[t.key()])]
    keys = [g.key() for g in a]
    assert len(set(keys)) == 8 and t.key() not in keys
    for g in a:   # the same space as the template
        assert (g.splits, g.pooling, len(g.encoder.cell), len(g.decoder.cell)) == (2, "max", 2, 2)
        assert g.encoder.candidates == LIGHT_ENCODER and g.decoder.candidates == LIGHT_DECODER
        assert g.derivation == {"rule": "uniform random", "seed": 5, "excluded": ["zero"]}
        assert Genotype.from_dict(json.loads(g.to_json())).key() == g.key()


def test_uniform_over_the_derivable_ops_and_zero_only_when_allowed():
    t = template()
    counts = {side: collections.Counter() for side in ("encoder", "decoder")}
    for g in sample_genotypes(t, 400, seed=0):
        for side in counts:
            counts[side].update(op for row in g.side(side).cell for op in row)
    for side, ops in (("encoder", LIGHT_ENCODER), ("decoder", LIGHT_DECODER)):
        allowed = derivable_ops(ops)
        assert "zero" not in counts[side] and set(counts[side]) == set(allowed)
        expected = 400 * 2 * 2 / len(allowed)     # genotypes x layers x splits, one op in |allowed|
        for op in allowed:   # generous: 25% is 4.5-5 binomial standard deviations here
            assert abs(counts[side][op] - expected) < 0.25 * expected, (side, op, counts[side])
    with_zero = sample_genotypes(t, 50, seed=0, allow_zero=True)
    assert any(op == "zero" for g in with_zero for row in g.encoder.cell for op in row)
    assert with_zero[0].derivation["excluded"] == []


@pytest.mark.parametrize("splits", [2, 3, 4])
def test_random_genotypes_build_and_run(splits):
    torch.manual_seed(0)
    config = SplitSeq2SeqConfig(vocab_size=20, hidden=8 * splits, splits=splits, embed_dim=8, encoder_layers=3,
                                decoder_layers=3, heads=2, mode="plain")
    src = torch.randint(4, 20, (2, 5))
    tgt = torch.randint(4, 20, (2, 6))
    for g in sample_genotypes(template(splits), 3, seed=1):
        logits = build_derived_model(g, config)(src, tgt)
        assert logits.shape == (2, 6, 20) and torch.isfinite(logits).all()


def test_too_small_a_space_is_one_line():
    t = uniform_genotype(2, "ffn", "ffn", layers=1, encoder_candidates=["ffn", "zero"],
                         decoder_candidates=["ffn", "identity"])
    assert space_size(t) == 1 * 2 ** 2
    assert len(sample_genotypes(t, 3, seed=0, avoid=[t.key()])) == 3
    with pytest.raises(ConfigError, match=r"^q.yaml: retrain.random_genotypes: 4 asked, but the search space of "
                                          r"2 splits and these candidate ops holds only 3 genotype\(s\) besides "
                                          r"the derived ones$"):
        sample_genotypes(t, 4, seed=0, avoid=[t.key()], what="q.yaml: retrain.random_genotypes")


def test_retrain_candidates_add_seeded_random_genotypes():
    from revsearch.orchestration.candidates import retrain_candidates
    from tests.test_sizing import chosen, sweep_with
    derived = uniform_genotype(2, "conv3", "self_attn", layers=2)
    sweep = sweep_with({"random_genotypes": 3, "baseline": False, "size": {"match": "width"}})
    first = retrain_candidates(sweep, chosen(derived))
    again = retrain_candidates(sweep, chosen(derived))
    assert [c["genotype"] for c in first] == [c["genotype"] for c in again]
    randoms = [c for c in first if c["kind"] == "random"]
    assert [c["label"] for c in randoms] == ["random-1", "random-2", "random-3"]
    assert len({c["genotype_key"] for c in first}) == 4
    for c in randoms:
        g = Genotype.from_dict(json.loads(c["genotype"]))
        assert g.key() == c["genotype_key"] and c["model"]["splits"] == 2 and c["search_seconds"] == 0.0
        assert len(g.encoder.cell) == 2 and g.encoder.candidates == derived.encoder.candidates
