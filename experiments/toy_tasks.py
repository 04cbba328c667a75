"""The reversal toy task the benchmarks train on: random token sequences whose target is the sequence
reversed, so a model needs long-range ops to learn it, with varying lengths so batches carry padding.

It comes in the two forms the benchmarks feed their models, each drawn exactly as the benchmark that
uses it always drew it (so the recorded results in results/ stay reproducible):

* :func:`reversal_batch` (``bench_precision.py``): one padded batch of tensors for ``BilevelSearch.step``,
  drawn with a ``torch.Generator``; the target is the source reversed.
* :func:`reversal_pairs` (``bench_parallel.py``): encoded sentence pairs for revsearch's batch streams
  (``SearchData``, ``Trainer``), drawn with ``random.Random``; the target is the source reversed with every
  id shifted by one, so no output copies an input id.

Ids 0..3 are pad, unk, bos and eos (``revsearch.special_tokens``); tokens are drawn from 4 up.
"""
from __future__ import annotations

import random
from typing import List, Tuple

import torch

from revsearch.special_tokens import BOS_ID, EOS_ID

BOS, EOS = BOS_ID, EOS_ID   # the vocabulary ids every revsearch model uses


def reversal_batch(sentences: int, length: int, vocab: int, seed: int):
    """``(src, tgt_in, tgt_out)``, each ``[sentences, length (+1)]`` and zero-padded: source tokens then
    eos; bos then the reversed tokens; the reversed tokens then eos. Lengths vary per sentence
    (``length // 2`` up to ``length - 1`` tokens, at least 2); tokens in ``[4, vocab)``."""
    g = torch.Generator().manual_seed(seed)
    src = torch.zeros(sentences, length, dtype=torch.long)
    tgt_in = torch.zeros(sentences, length + 1, dtype=torch.long)
    tgt_out = torch.zeros(sentences, length + 1, dtype=torch.long)
    for i in range(sentences):
        n = int(torch.randint(max(2, length // 2), length, (1,), generator=g))
        tokens = torch.randint(4, vocab, (n,), generator=g)
        src[i, :n], src[i, n] = tokens, EOS
        tgt_in[i, 0], tgt_in[i, 1:n + 1] = BOS, tokens.flip(0)
        tgt_out[i, :n], tgt_out[i, n] = tokens.flip(0), EOS
    return src, tgt_in, tgt_out


def reversal_pairs(n: int, seed: int, vocab: int, max_len: int) -> List[Tuple[List[int], List[int]]]:
    """``n`` encoded pairs ``(src ... eos, bos reversed+1 ... eos)`` of 3..``max_len`` tokens each,
    tokens in ``[4, vocab - 2]`` (so the shifted target ids stay below ``vocab``)."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        tokens = [r.randint(4, vocab - 2) for _ in range(r.randint(3, max_len))]
        out.append((tokens + [EOS], [BOS] + [t + 1 for t in reversed(tokens)] + [EOS]))
    return out
