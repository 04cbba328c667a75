"""The standard Transformer's seq2seq interface, the loss and the learning-rate schedule."""
import math

import pytest
import torch

from revsearch.errors import ConfigError
from revsearch.models.transformer import StandardTransformer, TransformerConfig, build_from_config, count_parameters
from revsearch.learning import label_smoothed_nll
from revsearch.learning import InverseSqrtSchedule


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, embed_dim=16, hidden=32, encoder_layers=2, decoder_layers=2, heads=4,
               ffn_dim=64, dropout=0.0)
    cfg.update(kw)
    return StandardTransformer(TransformerConfig(**cfg)).eval()


def test_interface_shapes_and_pad_mask():
    m = tiny()
    src = torch.tensor([[5, 6, 7, 3], [8, 3, 0, 0]])
    tgt = torch.tensor([[2, 9, 10], [2, 11, 0]])
    memory, pad = m.encode(src)
    assert memory.shape == (2, 4, 32) and pad.tolist() == [[False] * 4, [False, False, True, True]]
    logits = m.decode(tgt, memory, pad)
    assert logits.shape == (2, 3, 50)
    assert torch.allclose(m(src, tgt), logits)


def test_decoder_is_causal_and_padding_is_masked():
    m = tiny()
    src = torch.tensor([[5, 6, 7, 3]])
    a = m(src, torch.tensor([[2, 9, 10, 11]]))
    b = m(src, torch.tensor([[2, 9, 12, 13]]))
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6) and not torch.allclose(a[:, 2:], b[:, 2:])
    padded = m(torch.tensor([[5, 6, 7, 3, 0, 0]]), torch.tensor([[2, 9]]))
    assert torch.allclose(padded, m(src, torch.tensor([[2, 9]])), atol=1e-5)


def test_factorized_tied_embeddings_and_parameter_count():
    m = tiny()
    assert m.src_embed.embed.weight is m.tgt_embed.embed.weight
    assert m.src_embed.embed.weight.shape == (50, 16) and m.src_embed.proj.weight.shape == (32, 16)
    untied = tiny(tie_embeddings=False)
    assert count_parameters(untied) - count_parameters(m) == 50 * 16
    assert count_parameters(m) == sum(p.numel() for p in set(m.parameters()))
    rebuilt = build_from_config(m.spec()["config"])
    assert count_parameters(rebuilt) == count_parameters(m)
    post_ln = tiny(pre_norm=False)
    assert post_ln.encoder.norm is None and post_ln(torch.tensor([[5, 3]]), torch.tensor([[2]])).shape == (1, 1, 50)


def test_config_validation():
    with pytest.raises(ConfigError, match="divisible"):
        TransformerConfig(vocab_size=10, hidden=30, heads=4)
    with pytest.raises(ConfigError, match="vocab_size"):
        TransformerConfig(vocab_size=3)


def test_label_smoothed_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    target = torch.tensor([[4, 5, 0], [6, 0, 0]])
    loss, nll, n = label_smoothed_nll(logits, target, 0.0)
    ref = torch.nn.functional.cross_entropy(logits.view(-1, 7), target.view(-1), ignore_index=0, reduction="sum")
    assert n == 3 and torch.allclose(loss, ref) and torch.allclose(nll, ref)
    smooth, nll2, _ = label_smoothed_nll(logits, target, 0.1)
    logp = logits.log_softmax(-1)
    mask = target.ne(0)
    expected = (0.9 * -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) + 0.1 * -logp.mean(-1))[mask].sum()
    assert torch.allclose(smooth, expected) and torch.allclose(nll2, ref)


def test_inverse_sqrt_schedule():
    s = InverseSqrtSchedule(peak_lr=1e-3, warmup_steps=100, init_lr=0.0)
    assert s(50) == pytest.approx(5e-4) and s(100) == pytest.approx(1e-3)
    assert s(400) == pytest.approx(1e-3 * math.sqrt(100 / 400))
    assert InverseSqrtSchedule(1e-3, 0)(1) == 1e-3
