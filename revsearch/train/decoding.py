"""Batched greedy and beam-search decoding for any model with ``encode``/``decode`` (see
``revsearch.models.transformer``), and ``translate`` from text to text.

Decoding re-runs ``model.decode`` on the whole prefix at every step (no incremental state), which keeps
the interface minimal; the cost is quadratic in the output length, fine for sentences.
Beam scores are summed log-probabilities divided by the GNMT length penalty ((5 + |y|) / 6) ** alpha;
the maximum output length is ``ceil(max_len_ratio * source length) + max_len_extra``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import torch
from torch import Tensor, nn

from ..data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from ..errors import ConfigError


@dataclass
class DecodeConfig:
    beam_size: int = 4            # 1: greedy
    length_penalty: float = 1.0   # alpha of the GNMT penalty; 0: raw log-probability
    max_len_ratio: float = 1.5
    max_len_extra: int = 10
    max_tokens: int = 4096        # source tokens per decoding batch (divided by the beam size)

    def __post_init__(self):
        if self.beam_size < 1:
            raise ConfigError(f"beam size must be >= 1, got {self.beam_size}")
        if self.max_len_ratio <= 0 or self.max_len_extra < 0:
            raise ConfigError("max_len_ratio must be > 0 and max_len_extra >= 0")


def _max_lengths(src: Tensor, cfg: DecodeConfig) -> Tensor:
    src_len = src.ne(PAD_ID).sum(1)
    return torch.ceil(src_len.float() * cfg.max_len_ratio).long() + cfg.max_len_extra


@torch.no_grad()
def greedy_decode(model: nn.Module, src: Tensor, cfg: DecodeConfig = None) -> List[List[int]]:
    """Token ids (no bos, no eos) of the argmax continuation for each source row."""
    cfg = cfg or DecodeConfig(beam_size=1)
    model.eval()
    memory, pad = model.encode(src)
    bsz = src.size(0)
    max_len = _max_lengths(src, cfg).to(src.device)
    ys = torch.full((bsz, 1), BOS_ID, dtype=torch.long, device=src.device)
    done = torch.zeros(bsz, dtype=torch.bool, device=src.device)
    for t in range(int(max_len.max())):
        logits = model.decode(ys, memory, pad)[:, -1].float()
        logits[:, PAD_ID] = logits[:, BOS_ID] = -math.inf
        nxt = logits.argmax(-1)
        nxt = torch.where(t + 1 >= max_len, torch.full_like(nxt, EOS_ID), nxt)
        nxt = nxt.masked_fill(done, PAD_ID)
        ys = torch.cat([ys, nxt.unsqueeze(1)], 1)
        done |= nxt.eq(EOS_ID)
        if bool(done.all()):
            break
    out = []
    for row in ys[:, 1:].tolist():
        seq = []
        for tok in row:
            if tok in (EOS_ID, PAD_ID):
                break
            seq.append(tok)
        out.append(seq)
    return out


def _length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha if alpha else 1.0


@torch.no_grad()
def beam_search(model: nn.Module, src: Tensor, cfg: DecodeConfig = None) -> List[List[int]]:
    """Best hypothesis (ids, no bos/eos) per source row by batched beam search."""
    cfg = cfg or DecodeConfig()
    k = cfg.beam_size
    if k == 1:
        return greedy_decode(model, src, cfg)
    model.eval()
    bsz, device = src.size(0), src.device
    memory, pad = model.encode(src)
    memory, pad = memory.repeat_interleave(k, 0), pad.repeat_interleave(k, 0)
    max_len = _max_lengths(src, cfg).tolist()
    tokens = torch.full((bsz * k, 1), BOS_ID, dtype=torch.long, device=device)
    scores = torch.zeros(bsz, k, device=device)
    scores[:, 1:] = -math.inf                      # at first only beam 0 is real
    finished: List[List[tuple]] = [[] for _ in range(bsz)]
    done = [False] * bsz
    for t in range(max(max_len)):
        logp = torch.log_softmax(model.decode(tokens, memory, pad)[:, -1].float(), -1)
        logp[:, PAD_ID] = logp[:, BOS_ID] = -math.inf
        vocab = logp.size(-1)
        for b in range(bsz):                           # forced end at the length limit
            if t + 1 >= max_len[b]:
                rows = logp[b * k:(b + 1) * k]
                eos = rows[:, EOS_ID].clone()
                rows.fill_(-math.inf)
                rows[:, EOS_ID] = eos
        cand = (scores.view(-1, 1) + logp).view(bsz, k * vocab)
        top_scores, top_idx = cand.topk(2 * k, dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        next_rows, next_toks, next_scores = [], [], []
        for b in range(bsz):
            alive = []
            if not done[b]:
                for rank, (sc, idx) in enumerate(zip(top_scores[b], top_idx[b])):
                    if sc == -math.inf:
                        break
                    beam, tok = divmod(idx, vocab)
                    if tok == EOS_ID:
                        # as in fairseq: an end counts only when it ranks among the top k candidates
                        if rank < k:
                            hyp = tokens[b * k + beam, 1:].tolist()
                            norm = sc / _length_penalty(len(hyp) + 1, cfg.length_penalty)
                            fin = finished[b]
                            if len(fin) < k or norm > fin[-1][0]:
                                fin.append((norm, hyp))
                                fin.sort(key=lambda x: -x[0])
                                del fin[k:]
                    else:
                        alive.append((sc, b * k + beam, tok))
                    if len(alive) == k:
                        break
                # done when k hypotheses ended and no live one can still beat the worst of them
                # (Hugging Face's heuristic: the live score normalised at the next length)
                if not alive or (len(finished[b]) >= k and alive[0][0] / _length_penalty(
                        t + 2, cfg.length_penalty) <= finished[b][-1][0]):
                    done[b] = True
            if done[b]:
                alive = [(-math.inf, b * k, PAD_ID)] * k
            alive += [(-math.inf, b * k, PAD_ID)] * (k - len(alive))
            for sc, row, tok in alive:
                next_scores.append(sc)
                next_rows.append(row)
                next_toks.append(tok)
        if all(done):
            break
        rows = torch.tensor(next_rows, device=device)
        tokens = torch.cat([tokens[rows], torch.tensor(next_toks, device=device).unsqueeze(1)], 1)
        scores = torch.tensor(next_scores, device=device).view(bsz, k)
    out = []
    for b in range(bsz):
        if finished[b]:
            out.append(finished[b][0][1])
        else:  # unreachable with the forced end, kept as a guard
            out.append([x for x in tokens[b * k, 1:].tolist() if x not in (PAD_ID, EOS_ID)])
    return out


def decode_batch(model: nn.Module, src: Tensor, cfg: DecodeConfig) -> List[List[int]]:
    return greedy_decode(model, src, cfg) if cfg.beam_size == 1 else beam_search(model, src, cfg)


def translate_ids(model: nn.Module, sources: Sequence[Sequence[int]], cfg: DecodeConfig,
                  device="cpu") -> List[List[int]]:
    """Decode many encoded sources (each ending with eos), batched by length; output in input order."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    budget = max(cfg.max_tokens // cfg.beam_size, 1)
    results: List[List[int]] = [[] for _ in sources]
    i = 0
    while i < len(order):
        j, width = i, 0
        while j < len(order) and (j == i or max(width, len(sources[order[j]])) * (j - i + 1) <= budget):
            width = max(width, len(sources[order[j]]))
            j += 1
        chunk = order[i:j]
        src = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        for r, idx in enumerate(chunk):
            src[r, : len(sources[idx])] = torch.tensor(sources[idx], dtype=torch.long)
        for idx, hyp in zip(chunk, decode_batch(model, src.to(device), cfg)):
            results[idx] = hyp
        i = j
    return results


def translate(model: nn.Module, tokenizer, lines: Sequence[str], cfg: DecodeConfig = None,
              device="cpu") -> List[str]:
    """Text in, detokenized text out (SentencePiece decode)."""
    cfg = cfg or DecodeConfig()
    sources = [tokenizer.encode_src(line.strip()) for line in lines]
    return [tokenizer.decode(ids) for ids in translate_ids(model, sources, cfg, device)]
