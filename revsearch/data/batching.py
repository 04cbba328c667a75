"""Token-count batching, length-bucketed and deterministic for a seed, plus the disjoint split of the
training data into the weight part and the architecture part that the DARTS search alternates between.

A batch is a set of example indices whose padded size ``len(batch) * max(len)`` (on the longer of the
source and target side) stays within ``max_tokens``. Examples are sorted by length (random tie-break from
the seed), cut into batches in that order, and the batch order is shuffled per epoch. The same
``(seed, epoch)`` always gives the same batches, which is what makes training resumable mid-epoch.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Sequence, Tuple, TypeVar

import torch

from ..errors import DataError
from .tokenizer import EOS_ID, PAD_ID

T = TypeVar("T")
EncodedPair = Tuple[List[int], List[int]]   # (src ids ending in eos, tgt ids bos ... eos)


@dataclass
class BatchConfig:
    max_tokens: int = 4096        # padded tokens per batch (longer side)
    max_positions: int = 256      # pairs with a side longer than this (in ids) are dropped, and counted
    shuffle: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.max_tokens < 1:
            raise DataError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.max_positions < 2:
            raise DataError(f"max_positions must be >= 2, got {self.max_positions}")


@dataclass
class Batch:
    src: torch.Tensor       # Long[B, S], pad=0
    tgt_in: torch.Tensor    # Long[B, T], starts with bos
    tgt_out: torch.Tensor   # Long[B, T], ends with eos
    indices: List[int]
    # the non-pad target count, taken by ``collate`` on the host and carried by ``to``: reading it from
    # tensors already on a GPU would be a device sync per batch (per shard, data-parallel)
    target_tokens: Optional[int] = None

    @property
    def num_tokens(self) -> int:
        """Target tokens that count in the loss (non-pad)."""
        if self.target_tokens is None:
            self.target_tokens = int((self.tgt_out != PAD_ID).sum())
        return self.target_tokens

    @property
    def num_src_tokens(self) -> int:
        return int((self.src != PAD_ID).sum())

    def to(self, device) -> "Batch":
        return Batch(self.src.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.indices,
                     target_tokens=self.num_tokens)


def filter_long(examples: Sequence[EncodedPair], max_positions: int) -> Tuple[List[int], int]:
    """Indices of examples whose sides both fit ``max_positions``, and how many were dropped."""
    keep = [i for i, (s, t) in enumerate(examples) if len(s) <= max_positions and len(t) <= max_positions]
    return keep, len(examples) - len(keep)


def make_batches(examples: Sequence[EncodedPair], max_tokens: int, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, indices: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Length-bucketed batches of indices into ``examples`` (see the module docstring). A single
    example longer than ``max_tokens`` gets a batch of its own rather than being dropped."""
    idx = list(range(len(examples))) if indices is None else list(indices)
    rng = random.Random(f"{seed}:{epoch}")
    tie = {i: rng.random() for i in idx} if shuffle else {i: 0.0 for i in idx}
    idx.sort(key=lambda i: (len(examples[i][1]), len(examples[i][0]), tie[i], i))
    batches: List[List[int]] = []
    cur: List[int] = []
    cur_max = 0
    for i in idx:
        n = max(len(examples[i][0]), len(examples[i][1]) - 1)
        new_max = max(cur_max, n)
        if cur and new_max * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, new_max = [], n
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    if shuffle:
        rng.shuffle(batches)
    return batches


def shard_batch(examples: Sequence[EncodedPair], indices: Sequence[int], num_shards: int) -> List[List[int]]:
    """Cut one global batch into ``num_shards`` disjoint shards with balanced token counts, one per
    data-parallel worker (learning/data_parallel.py). Longest example first, each to the shard with the
    fewest tokens so far (ties: the lowest shard); each shard keeps the batch's order. Deterministic, and
    independent of which worker asks. A batch with fewer examples than shards leaves some shards empty."""
    if num_shards < 1:
        raise DataError(f"num_shards must be >= 1, got {num_shards}")
    if num_shards == 1:
        return [list(indices)]
    position = {i: p for p, i in enumerate(indices)}
    size = {i: len(examples[i][0]) + len(examples[i][1]) - 1 for i in indices}
    shards: List[List[int]] = [[] for _ in range(num_shards)]
    loads = [0] * num_shards
    for i in sorted(indices, key=lambda i: (-size[i], position[i])):
        k = min(range(num_shards), key=lambda j: (loads[j], j))
        shards[k].append(i)
        loads[k] += size[i]
    return [sorted(s, key=position.__getitem__) for s in shards]


def _pad(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate(examples: Sequence[EncodedPair], indices: Sequence[int]) -> Batch:
    """Pad a batch: src as is, tgt split into ``tgt_in`` (bos ...) and ``tgt_out`` (... eos)."""
    src = _pad([examples[i][0] for i in indices])
    tgt = _pad([examples[i][1] for i in indices])
    tgt_in = tgt[:, :-1].masked_fill(tgt[:, :-1].eq(EOS_ID), PAD_ID)   # eos is never an input
    tgt_out = tgt[:, 1:].contiguous()
    return Batch(src=src, tgt_in=tgt_in, tgt_out=tgt_out, indices=list(indices),
                 target_tokens=int(tgt_out.ne(PAD_ID).sum()))


def encode_pairs(tokenizer, pairs: Sequence[Tuple[str, str]]) -> List[EncodedPair]:
    """Encode text pairs: source ``... eos``, target ``bos ... eos``."""
    if not pairs:
        return []
    src = tokenizer.encode_batch([p[0] for p in pairs], add_bos=False, add_eos=True)
    tgt = tokenizer.encode_batch([p[1] for p in pairs], add_bos=True, add_eos=True)
    return list(zip(src, tgt))


def split_for_search(pairs: Sequence[T], arch_fraction: float = 0.5, seed: int = 0,
                     key=None) -> Tuple[List[T], List[T]]:
    """Split training data into (weight part, architecture part) for the DARTS search.

    Deterministic for ``seed`` and disjoint by content: identical items (by ``key(item)``, default the
    item itself) always land on the same side, so a duplicated sentence pair cannot be in both parts.
    The architecture part holds ``round(arch_fraction * len(pairs))`` items up to duplicate groups;
    both parts keep the original order."""
    if not 0.0 < arch_fraction < 1.0:
        raise DataError(f"arch_fraction must be strictly between 0 and 1, got {arch_fraction}")
    if len(pairs) < 2:
        raise DataError(f"need at least 2 training pairs to split for search, got {len(pairs)}")
    key = key or (lambda x: x)
    groups: Dict[Hashable, List[int]] = {}
    for i, item in enumerate(pairs):
        groups.setdefault(key(item), []).append(i)

    def order(k: Hashable) -> str:
        return hashlib.sha1(f"{seed}\0{k!r}".encode("utf-8")).hexdigest()

    target = round(arch_fraction * len(pairs))
    target = min(max(target, 1), len(pairs) - 1)
    arch_idx = set()
    for k in sorted(groups, key=order):
        if len(arch_idx) >= target:
            break
        arch_idx.update(groups[k])
    if len(arch_idx) == len(pairs):
        raise DataError("cannot split for search: every training pair is identical")
    weight = [p for i, p in enumerate(pairs) if i not in arch_idx]
    arch = [p for i, p in enumerate(pairs) if i in arch_idx]
    return weight, arch
