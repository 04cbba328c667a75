"""Token-count batching and the weight/architecture split for the search."""
import random

import pytest
import torch

from revsearch.data.batching import collate, encode_pairs, filter_long, make_batches, split_for_search
from revsearch.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from revsearch.errors import DataError


def examples(n=200, seed=0):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        s, t = r.randint(1, 40), r.randint(1, 40)
        out.append(([r.randint(4, 99) for _ in range(s)] + [EOS_ID],
                    [BOS_ID] + [r.randint(4, 99) for _ in range(t)] + [EOS_ID]))
    return out


def test_batches_cover_everything_within_budget():
    ex = examples()
    batches = make_batches(ex, max_tokens=300, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(ex)))
    for b in batches:
        width = max(max(len(ex[i][0]), len(ex[i][1]) - 1) for i in b)
        assert width * len(b) <= 300 or len(b) == 1
        tl = [len(ex[i][1]) for i in b]
        assert max(tl) - min(tl) <= 10                     # length-bucketed


def test_batches_deterministic_per_seed_and_epoch():
    ex = examples()
    a = make_batches(ex, 300, seed=1, epoch=0)
    assert a == make_batches(ex, 300, seed=1, epoch=0)
    assert a != make_batches(ex, 300, seed=1, epoch=1)
    assert a != make_batches(ex, 300, seed=2, epoch=0)
    fixed = make_batches(ex, 300, shuffle=False)
    assert fixed == make_batches(ex, 300, seed=9, shuffle=False)


def test_oversized_example_gets_its_own_batch():
    ex = [([5] * 50 + [EOS_ID], [BOS_ID, 5, EOS_ID]), ([5, EOS_ID], [BOS_ID, 5, EOS_ID])]
    batches = make_batches(ex, max_tokens=10, shuffle=False)
    assert sorted(map(sorted, batches)) == [[0], [1]]


def test_filter_long():
    ex = examples(50)
    keep, dropped = filter_long(ex, 20)
    assert dropped == 50 - len(keep) > 0
    assert all(len(ex[i][0]) <= 20 and len(ex[i][1]) <= 20 for i in keep)


def test_collate_shifts_target():
    ex = [([7, 8, EOS_ID], [BOS_ID, 9, EOS_ID]), ([7, EOS_ID], [BOS_ID, 9, 10, 11, EOS_ID])]
    b = collate(ex, [0, 1])
    assert b.src.tolist() == [[7, 8, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert b.tgt_in.tolist() == [[BOS_ID, 9, PAD_ID, PAD_ID], [BOS_ID, 9, 10, 11]]
    assert b.tgt_out.tolist() == [[9, EOS_ID, PAD_ID, PAD_ID], [9, 10, 11, EOS_ID]]
    assert b.num_tokens == 6 and b.src.dtype == torch.long


class _FakeTok:
    def encode_batch(self, texts, add_bos=False, add_eos=True):
        return [([BOS_ID] if add_bos else []) + [len(w) + 4 for w in t.split()] + ([EOS_ID] if add_eos else [])
                for t in texts]


def test_encode_pairs_convention():
    (s, t), = encode_pairs(_FakeTok(), [("ab c", "de")])
    assert s == [6, 5, EOS_ID] and t == [BOS_ID, 6, EOS_ID]


def test_split_for_search_deterministic_disjoint_complete():
    pairs = [(f"s{i}", f"t{i}") for i in range(1000)]
    w, a = split_for_search(pairs, arch_fraction=0.4, seed=3)
    assert (w, a) == split_for_search(pairs, arch_fraction=0.4, seed=3)
    assert len(a) == 400 and len(w) == 600
    assert not set(w) & set(a) and set(w) | set(a) == set(pairs)
    assert w == [p for p in pairs if p in set(w)]           # original order kept
    w2, a2 = split_for_search(pairs, arch_fraction=0.4, seed=4)
    assert set(a2) != set(a)


def test_split_for_search_keeps_duplicates_together():
    pairs = [("dup", "x")] * 10 + [(f"s{i}", f"t{i}") for i in range(30)]
    for seed in range(5):
        w, a = split_for_search(pairs, 0.5, seed)
        assert (("dup", "x") in w) != (("dup", "x") in a)
        assert len(w) + len(a) == 40


def test_split_for_search_errors():
    with pytest.raises(DataError, match="arch_fraction"):
        split_for_search([(1, 2), (3, 4)], 1.0)
    with pytest.raises(DataError, match="at least 2"):
        split_for_search([(1, 2)], 0.5)
    with pytest.raises(DataError, match="identical"):
        split_for_search([(1, 2)] * 4, 0.5)
