"""Incremental (cached) decoding against the uncached reference: every decoder op alone and mixed, the
Transformer in both norm placements. Per-step logits agree within 1e-5 and greedy / beam outputs are
token-identical; each op's ``step`` equals the last row of its causal forward. (The trained-checkpoint
case lives in test_train_overfit.py, next to its fixture.)"""
import math

import pytest
import torch

from revsearch.models.split_seq2seq import SplitSeq2SeqConfig
from revsearch.models.transformer import StandardTransformer, TransformerConfig
from revsearch.ops import DECODER_OPS, OpConfig, build_op
from revsearch.ops.incremental import IncrementalState
from revsearch.search import Supernet
from revsearch.search.derive import build_derived_model
from revsearch.search.genotype import Genotype, uniform_genotype
from revsearch.train.decoding import DecodeConfig, beam_search, greedy_decode, translate_ids, uses_cache

from .search_fixtures import tiny_config

VOCAB = 40
BOS, EOS = 2, 3


def _sources(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (5, 9), generator=g)
    src[:, -1] = EOS
    src[1, 4], src[1, 5:] = EOS, 0          # padded rows: lengths 9, 5, 9, 3, 9
    src[3, 2], src[3, 3:] = EOS, 0
    return src


def _derived(genotype: Genotype, hidden: int = 32, layers: int = 2, seed: int = 1):
    torch.manual_seed(seed)
    return build_derived_model(genotype, SplitSeq2SeqConfig(
        VOCAB, hidden=hidden, splits=genotype.splits, embed_dim=16, heads=2, encoder_layers=1,
        decoder_layers=layers, dropout=0.1, max_len=64)).eval()


MIXED = {"schema_version": 1, "splits": 3, "pooling": "mean",
         "encoder": {"candidates": ["conv3", "self_attn"], "cell": [["conv3", "self_attn", "conv3"]]},
         "decoder": {"candidates": list(DECODER_OPS),
                     "cell": [["dynconv7", "self_attn", "conv5"], ["cross_attn", "ffn", "glu"],
                              ["identity", "zero", "dynconv15"]]}}


def _models():
    for op in DECODER_OPS:
        yield op, lambda op=op: _derived(uniform_genotype(2, "conv3", op, layers=2))
    yield "mixed", lambda: _derived(Genotype.from_dict(MIXED), hidden=48, layers=3)
    for pre in (True, False):
        def transformer(pre=pre):
            torch.manual_seed(2)
            return StandardTransformer(TransformerConfig(VOCAB, embed_dim=16, hidden=32, encoder_layers=1,
                                                         decoder_layers=2, heads=4, ffn_dim=64,
                                                         pre_norm=pre)).eval()
        yield f"transformer-{'pre' if pre else 'post'}-norm", transformer


MODELS = dict(_models())


@pytest.mark.parametrize("name", list(MODELS))
def test_step_logits_equal_full_decode(name):
    model = MODELS[name]()
    assert model.supports_incremental()
    src = _sources()
    with torch.no_grad():
        memory, pad = model.encode(src)
        tgt = torch.randint(4, VOCAB, (src.size(0), 12), generator=torch.Generator().manual_seed(5))
        tgt[:, 0] = BOS
        full = model.decode(tgt, memory, pad)
        state = model.start_decoding(memory, pad)
        for t in range(tgt.size(1)):
            step = model.decode_step(tgt[:, t:t + 1], state)
            torch.testing.assert_close(step, full[:, t], atol=1e-5, rtol=0)
        assert state.position == tgt.size(1)


@pytest.mark.parametrize("name", list(MODELS))
def test_cached_outputs_identical_to_uncached(name):
    model = MODELS[name]()
    for seed in ((0, 1) if name == "mixed" else (0,)):
        src = _sources(seed)
        for beam, alpha in ((3, 1.0), (3, 0.0), (2, 0.6)):
            cfg = dict(beam_size=beam, length_penalty=alpha)
            cached = beam_search(model, src, DecodeConfig(**cfg))
            reference = beam_search(model, src, DecodeConfig(cached=False, **cfg))
            assert cached == reference, (name, seed, beam, alpha)
        assert greedy_decode(model, src) == greedy_decode(model, src, DecodeConfig(beam_size=1, cached=False))


@pytest.mark.parametrize("name", [n for n in DECODER_OPS])
def test_op_step_equals_last_row_of_forward(name):
    torch.manual_seed(0)
    op = build_op(name, OpConfig(dim=12, causal=True, heads=3, memory_dim=20)).eval()
    h = torch.randn(2, 7, 12)
    memory, memory_pad = torch.randn(2, 5, 20), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    cache = IncrementalState().cache(op)
    with torch.no_grad():
        full = op(h, None, memory, memory_pad)
        steps = torch.cat([op.step(h[:, t:t + 1], cache, memory, memory_pad) for t in range(7)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)


def test_reorder_selects_rows_of_every_cache():
    state = IncrementalState()
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    state.cache(a)["keys"] = torch.arange(4.0)[:, None]
    state.cache(b)["inputs"] = torch.arange(4.0)[:, None] * 10
    state.extras["memory"] = torch.arange(4.0)
    state.reorder(torch.tensor([3, 3, 0]))
    assert state.cache(a)["keys"].flatten().tolist() == [3.0, 3.0, 0.0]
    assert state.cache(b)["inputs"].flatten().tolist() == [30.0, 30.0, 0.0]
    assert state.extras["memory"].tolist() == [3.0, 3.0, 0.0]


def test_non_causal_ops_refuse_to_step():
    for name in ("conv3", "dynconv3", "self_attn"):
        op = build_op(name, OpConfig(dim=8, causal=False, heads=2))
        with pytest.raises(ValueError, match="causal"):
            op.step(torch.zeros(1, 1, 8), {})


def test_supernet_falls_back_to_uncached():
    torch.manual_seed(0)
    supernet = Supernet(tiny_config(vocab_size=VOCAB)).eval()
    assert not supernet.supports_incremental()
    assert not uses_cache(supernet, DecodeConfig())
    src = _sources()
    assert beam_search(supernet, src, DecodeConfig(beam_size=2)) == \
        beam_search(supernet, src, DecodeConfig(beam_size=2, cached=False))


def test_output_length_capped_by_model_max_len():
    """A long source may ask for more target positions than the model has: the limit caps it (the
    uncached reference used to fail on the position table)."""
    model = _derived(uniform_genotype(2, "conv3", "conv3", layers=1))
    model.config.max_len = 12
    src = torch.randint(4, VOCAB, (2, 11), generator=torch.Generator().manual_seed(3))
    src[:, -1] = EOS
    for cached in (True, False):
        for beam in (1, 2):
            out = beam_search(model, src, DecodeConfig(beam_size=beam, cached=cached))
            assert all(len(h) + 1 <= 12 for h in out)


def test_translate_ids_sorts_batches_and_reports_progress():
    model = MODELS["mixed"]()
    src = _sources()
    sources = [[t for t in row.tolist() if t] for row in src]
    seen = []
    cfg = DecodeConfig(beam_size=2, max_tokens=12)
    out = translate_ids(model, sources, cfg, progress=seen.append)
    assert sum(seen) == len(sources) and len(seen) > 1
    assert out == translate_ids(model, sources, DecodeConfig(beam_size=2, max_tokens=12, cached=False))
    assert out == beam_search(model, src, cfg)


def test_decode_config_validation():
    from revsearch.errors import ConfigError
    for bad in (dict(length_penalty=math.nan), dict(length_penalty=math.inf), dict(max_tokens=0),
                dict(max_len_ratio=math.nan), dict(beam_size=0)):
        with pytest.raises(ConfigError):
            DecodeConfig(**bad)
