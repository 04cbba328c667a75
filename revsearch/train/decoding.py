"""Batched greedy and beam-search decoding for any model with ``encode``/``decode`` (see
``revsearch.models.transformer``), and ``translate`` from text to text.

Two ways to get the next token's logits, behind one search loop (so greedy and beam search cannot
differ between them except by rounding):

* **cached** (default): models with ``supports_incremental()`` / ``start_decoding`` / ``decode_step``
  (derived models and the Transformer) feed only the newest token each step and keep per-op state
  (``revsearch.ops.incremental``): O(T) decoder work per sentence instead of O(T²);
* **uncached** (``DecodeConfig(cached=False)``, the reference): ``model.decode`` re-runs the whole prefix.
  A model without incremental state (a DARTS supernet) always decodes this way.

Beam scores are summed log-probabilities divided by the GNMT length penalty ((5 + |y|) / 6) ** alpha;
the maximum output length is ``ceil(max_len_ratio * source length) + max_len_extra`` (capped at the
model's ``max_len``). A sentence leaves the batch as soon as it is finished (its cache rows with it), so
late steps run on the long sentences only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

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
    cached: bool = True           # incremental state; False re-runs the prefix (the reference path)

    def __post_init__(self):
        if self.beam_size < 1:
            raise ConfigError(f"beam size must be >= 1, got {self.beam_size}")
        if not math.isfinite(self.length_penalty):
            raise ConfigError(f"length penalty must be a finite number, got {self.length_penalty}")
        if not (math.isfinite(self.max_len_ratio) and self.max_len_ratio > 0) or self.max_len_extra < 0:
            raise ConfigError("max_len_ratio must be > 0 and max_len_extra >= 0")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")


def model_max_len(model: nn.Module) -> Optional[int]:
    """The longest sequence the model's positions allow (None: no limit known)."""
    return getattr(getattr(model, "config", None), "max_len", None)


def _max_lengths(model: nn.Module, src: Tensor, cfg: DecodeConfig) -> List[int]:
    src_len = src.ne(PAD_ID).sum(1)
    limits = (torch.ceil(src_len.float() * cfg.max_len_ratio).long() + cfg.max_len_extra).tolist()
    cap = model_max_len(model)   # the prefix fed at the last step has `limit` tokens (bos included)
    return [min(n, cap) if cap else n for n in limits]


class _Uncached:
    """Logits from ``model.decode`` on the whole prefix (the reference)."""

    def __init__(self, model: nn.Module, memory: Tensor, pad: Tensor):
        self.model, self.memory, self.pad = model, memory, pad

    def logits(self, tokens: Tensor) -> Tensor:
        return self.model.decode(tokens, self.memory, self.pad)[:, -1].float()

    def select(self, rows: Tensor) -> None:
        self.memory, self.pad = self.memory.index_select(0, rows), self.pad.index_select(0, rows)


class _Cached:
    """Logits from ``model.decode_step`` on the newest token, with the model's incremental state."""

    def __init__(self, model: nn.Module, memory: Tensor, pad: Tensor):
        self.model, self.state = model, model.start_decoding(memory, pad)

    def logits(self, tokens: Tensor) -> Tensor:
        return self.model.decode_step(tokens[:, -1:], self.state).float()

    def select(self, rows: Tensor) -> None:
        self.state.reorder(rows)


def uses_cache(model: nn.Module, cfg: DecodeConfig) -> bool:
    supported = getattr(model, "supports_incremental", None)
    return bool(cfg.cached and callable(supported) and supported())


def _scorer(model: nn.Module, memory: Tensor, pad: Tensor, cfg: DecodeConfig):
    return (_Cached if uses_cache(model, cfg) else _Uncached)(model, memory, pad)


@torch.no_grad()
def greedy_decode(model: nn.Module, src: Tensor, cfg: DecodeConfig = None) -> List[List[int]]:
    """Token ids (no bos, no eos) of the argmax continuation for each source row."""
    cfg = cfg or DecodeConfig(beam_size=1)
    model.eval()
    memory, pad = model.encode(src)
    scorer = _scorer(model, memory, pad, cfg)
    max_len = _max_lengths(model, src, cfg)
    active = list(range(src.size(0)))        # source row of each batch row still decoding
    tokens = torch.full((len(active), 1), BOS_ID, dtype=torch.long, device=src.device)
    out: List[List[int]] = [[] for _ in active]
    for t in range(max(max_len, default=0)):
        logits = scorer.logits(tokens)
        logits[:, PAD_ID] = logits[:, BOS_ID] = -math.inf
        nxt = logits.argmax(-1)
        at_limit = [t + 1 >= max_len[i] for i in active]   # host-side: no tensor on most steps
        if any(at_limit):
            nxt = torch.where(torch.tensor(at_limit, device=src.device), torch.full_like(nxt, EOS_ID), nxt)
        tokens = torch.cat([tokens, nxt.unsqueeze(1)], 1)
        ended = nxt.eq(EOS_ID).tolist()
        if not any(ended):
            continue
        keep = []
        for r, (i, end) in enumerate(zip(active, ended)):
            if end:
                out[i] = tokens[r, 1:-1].tolist()
            else:
                keep.append(r)
        if not keep:
            break
        rows = torch.tensor(keep, device=src.device)
        tokens = tokens.index_select(0, rows)
        scorer.select(rows)
        active = [active[r] for r in keep]
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
    device = src.device
    memory, pad = model.encode(src)
    scorer = _scorer(model, memory, pad, cfg)   # one row per sentence at the first step: only bos
    max_len = _max_lengths(model, src, cfg)
    active = list(range(src.size(0)))           # the sentences still searching, in batch order
    tokens = torch.full((len(active), 1), BOS_ID, dtype=torch.long, device=device)
    scores = torch.zeros(len(active), 1, device=device)
    finished: List[List[tuple]] = [[] for _ in active]
    for t in range(max(max_len, default=0)):
        logp = torch.log_softmax(scorer.logits(tokens), -1)
        logp[:, PAD_ID] = logp[:, BOS_ID] = -math.inf
        vocab = logp.size(-1)
        width = scores.size(1)                   # hypotheses per sentence: 1 at the first step, then k
        at_limit = [t + 1 >= max_len[b] for b in active]
        if any(at_limit):                        # forced end at the length limit (decided on the host)
            rows = torch.tensor(at_limit, device=device).repeat_interleave(width)
            eos = logp[:, EOS_ID].clone()
            logp[rows] = -math.inf
            logp[:, EOS_ID] = torch.where(rows, eos, logp[:, EOS_ID])
        cand = (scores.view(-1, 1) + logp).view(len(active), width * vocab)
        top_scores, top_idx = cand.topk(min(2 * k, width * vocab), dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        prefixes = None                          # tokens on the CPU, fetched once if anything ends
        next_rows, next_toks, next_scores, still = [], [], [], []
        for s, b in enumerate(active):
            alive = []
            for rank, (sc, idx) in enumerate(zip(top_scores[s], top_idx[s])):
                if sc == -math.inf:
                    break
                beam, tok = divmod(idx, vocab)
                if tok == EOS_ID:
                    # as in fairseq: an end counts only when it ranks among the top k candidates
                    if rank < k:
                        if prefixes is None:
                            prefixes = tokens[:, 1:].tolist()
                        hyp = prefixes[s * width + beam]
                        norm = sc / _length_penalty(len(hyp) + 1, cfg.length_penalty)
                        fin = finished[b]
                        if len(fin) < k or norm > fin[-1][0]:
                            fin.append((norm, hyp))
                            fin.sort(key=lambda x: -x[0])
                            del fin[k:]
                else:
                    alive.append((sc, s * width + beam, tok))
                if len(alive) == k:
                    break
            # done when k hypotheses ended and no live one can still beat the worst of them
            # (Hugging Face's heuristic: the live score normalised at the next length)
            if not alive or (len(finished[b]) >= k and alive[0][0] / _length_penalty(
                    t + 2, cfg.length_penalty) <= finished[b][-1][0]):
                continue                         # early finish: the sentence leaves the batch
            still.append(b)
            alive += [(-math.inf, alive[0][1], PAD_ID)] * (k - len(alive))
            for sc, row, tok in alive:
                next_scores.append(sc)
                next_rows.append(row)
                next_toks.append(tok)
        if not still:
            break
        rows = torch.tensor(next_rows, device=device)
        tokens = torch.cat([tokens.index_select(0, rows), torch.tensor(next_toks, device=device).unsqueeze(1)], 1)
        scores = torch.tensor(next_scores, device=device).view(len(still), k)
        scorer.select(rows)                      # beam selection reorders the state (and drops finished)
        active = still
    # the forced end finishes every sentence; the fallback only guards an empty search
    return [fin[0][1] if fin else [] for fin in finished]


def decode_batch(model: nn.Module, src: Tensor, cfg: DecodeConfig) -> List[List[int]]:
    return greedy_decode(model, src, cfg) if cfg.beam_size == 1 else beam_search(model, src, cfg)


def translate_ids(model: nn.Module, sources: Sequence[Sequence[int]], cfg: DecodeConfig,
                  device="cpu", progress: Optional[Callable[[int], None]] = None) -> List[List[int]]:
    """Decode many encoded sources (each ending with eos), batched by length (sorted, so a batch
    wastes little padding); output in input order. ``progress(n)`` is called after each batch with the
    number of sentences it decoded."""
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
        if progress is not None:
            progress(len(chunk))
        i = j
    return results


def translate(model: nn.Module, tokenizer, lines: Sequence[str], cfg: DecodeConfig = None,
              device="cpu", progress: Optional[Callable[[int], None]] = None) -> List[str]:
    """Text in, detokenized text out (SentencePiece decode)."""
    cfg = cfg or DecodeConfig()
    sources = [tokenizer.encode_src(line.strip()) for line in lines]
    return [tokenizer.decode(ids) for ids in translate_ids(model, sources, cfg, device, progress)]
