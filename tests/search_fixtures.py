"""A tiny generated translation task for supernet tests: the target is the source reversed, shifted by
one token id, so it needs attention/long-range ops; sentences have padding."""
import torch

from revsearch.search import SupernetConfig

BOS, EOS = 2, 3


def tiny_config(**overrides) -> SupernetConfig:
    base = dict(vocab_size=24, hidden=16, splits=2, embed_dim=8, encoder_layers=2, decoder_layers=2,
                heads=2, dropout=0.1)
    base.update(overrides)
    return SupernetConfig(**base)


def reversal_batch(seed: int, batch: int = 6, max_len: int = 7, vocab: int = 24):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, max_len + 1, (batch,), generator=g)
    src = torch.zeros(batch, max_len, dtype=torch.long)
    tgt_in = torch.zeros(batch, max_len + 1, dtype=torch.long)
    tgt_out = torch.zeros(batch, max_len + 1, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens = torch.randint(4, vocab - 1, (n,), generator=g)
        target = tokens.flip(0) + 1
        src[i, :n] = tokens
        tgt_in[i, 0] = BOS
        tgt_in[i, 1:n + 1] = target
        tgt_out[i, :n] = target
        tgt_out[i, n] = EOS
    return src, tgt_in, tgt_out


def reversal_pairs(n: int, seed: int, vocab: int = 24, max_len: int = 7):
    """Encoded pairs for the batch streams: (src ... eos, bos tgt ... eos)."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        length = int(torch.randint(3, max_len + 1, (1,), generator=g))
        tokens = torch.randint(4, vocab - 1, (length,), generator=g).tolist()
        pairs.append((tokens + [EOS], [BOS] + [t + 1 for t in reversed(tokens)] + [EOS]))
    return pairs
