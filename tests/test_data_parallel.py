"""Data-parallel steps equal the one-process step (learning/data_parallel.py): two gloo worker processes,
float64, dropout on, the reversible engine, end K search steps (first and second order) and K retrain
steps at the same α and θ as one process that computes both shards of every global batch itself."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from revsearch.data.batching import shard_batch
from revsearch.learning.data_parallel import DataParallel, TokenWeightedSync, shard_seed
from revsearch.search import BilevelSearch, SearchConfig, Supernet, build_derived_model, uniform_genotype
from revsearch.search.loop import SearchData, SearchLoop
from revsearch.train.trainer import TrainConfig, Trainer
from tests.search_fixtures import reversal_pairs, tiny_config

STEPS = 3
SEED = 7
WORLD = 2


def search_run(second_order: bool, parallel: DataParallel):
    torch.manual_seed(0)
    net = Supernet(tiny_config(dropout=0.1)).double()
    config = SearchConfig(lr=1e-2, warmup_steps=2, alpha_lr=3e-2, clip_norm=0.5, second_order=second_order)
    search = BilevelSearch(net, config, parallel=parallel)
    data = SearchData(reversal_pairs(24, 1), reversal_pairs(24, 2), reversal_pairs(6, 3), max_tokens=64, seed=1)
    loop = SearchLoop(search, data, valid_batches=1)
    loop.run(STEPS, report_every=STEPS)
    return {"alpha": [a.detach().clone() for a in net.arch_parameters()],
            "theta": [w.detach().clone() for w in net.weight_parameters()],
            "streams": (loop.weight_stream.state_dict(), loop.arch_stream.state_dict())}


def retrain_run(parallel: DataParallel):
    torch.manual_seed(0)
    model = build_derived_model(uniform_genotype(2, "self_attn", "ffn", layers=2),
                                tiny_config(dropout=0.1)).double()
    config = TrainConfig(lr=1e-2, warmup_steps=2, max_tokens=64, max_steps=STEPS, valid_every=0, log_every=1,
                         quiet=True, restore_best=False, clip_norm=0.5, seed=3)
    Trainer(model, reversal_pairs(30, 4), reversal_pairs(4, 5), config, parallel=parallel).train()
    return {"theta": [p.detach().clone() for p in model.parameters()]}


RUNS = {"search": lambda par: search_run(False, par),
        "search_second_order": lambda par: search_run(True, par),
        "retrain": retrain_run}


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for name, run in RUNS.items():
            result = run(DataParallel.worker(SEED))
            torch.save(result, os.path.join(out_dir, f"{name}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def max_rel_err(got, want):
    return max(((g - w).norm() / w.norm().clamp_min(1e-300)).item() for g, w in zip(got, want))


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    mp.spawn(worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return {name: [torch.load(tmp / f"{name}_rank{r}.pt", weights_only=True) for r in range(WORLD)]
            for name in RUNS}


@pytest.mark.parametrize("name", list(RUNS))
def test_two_workers_equal_one_process(worker_results, name):
    reference = RUNS[name](DataParallel.reference(WORLD, SEED))
    for rank, result in enumerate(worker_results[name]):
        for group in ("alpha", "theta"):
            if group in reference:
                assert max_rel_err(result[group], reference[group]) <= 1e-10, (name, rank, group)
    # the workers agree with each other bit for bit (identical all-reduced gradients)
    for a, b in zip(worker_results[name][0]["theta"], worker_results[name][1]["theta"]):
        assert torch.equal(a, b)
    # and the steps moved α (the comparison is not of two untouched architectures)
    if name != "retrain":
        torch.manual_seed(0)
        start = Supernet(tiny_config(dropout=0.1)).double().arch_parameters()
        assert max((a - s).abs().max().item() for a, s in zip(reference["alpha"], start)) > 1e-4


def test_dropout_masks_differ_between_shards_and_steps():
    """Each shard's stream is its own: different shards and steps give different seeds."""
    seeds = {shard_seed(SEED, step, k) for step in range(4) for k in range(3)}
    assert len(seeds) == 12


def test_shards_are_disjoint_token_balanced_and_cover_the_batch():
    pairs = reversal_pairs(40, 9)
    indices = list(range(0, 40, 2))
    shards = shard_batch(pairs, indices, 3)
    assert sorted(i for s in shards for i in s) == sorted(indices)
    loads = [sum(len(pairs[i][0]) + len(pairs[i][1]) - 1 for i in s) for s in shards]
    longest = max(len(pairs[i][0]) + len(pairs[i][1]) - 1 for i in indices)
    assert max(loads) - min(loads) <= longest
    assert shard_batch(pairs, indices, 1) == [indices]
    assert sum(1 for s in shard_batch(pairs, [0, 1], 3) if not s) == 1   # fewer examples than shards


def test_one_process_sync_is_the_identity():
    sync = TokenWeightedSync()
    g = [torch.ones(2), None]
    grads, extras = sync.reduce(g, [torch.zeros(2), torch.zeros(3)], extras=[torch.tensor(5.0)])
    assert grads[0] is g[0] and grads[1] is None and float(extras[0]) == 5.0
    assert sync.global_tokens(4, 6) == (4, 6) and sync.world_size == 1


def test_search_resumes_at_its_stream_position_with_any_worker_count():
    """The checkpoint holds the position in the stream of global batches, which does not depend on the
    worker count: a resumed search continues bit for bit with the same count, and at the same global
    batch with another."""
    def loop_for(parallel):
        torch.manual_seed(0)
        net = Supernet(tiny_config(dropout=0.1)).double()
        data = SearchData(reversal_pairs(24, 1), reversal_pairs(24, 2), reversal_pairs(6, 3), max_tokens=64, seed=1)
        return SearchLoop(BilevelSearch(net, SearchConfig(lr=1e-2, warmup_steps=2), parallel=parallel), data,
                          valid_batches=1)

    straight = loop_for(DataParallel.reference(2, SEED))
    straight.run(3, report_every=3)
    first = loop_for(DataParallel.reference(2, SEED))
    first.run(2, report_every=2)
    state = first.state_dict()
    resumed = loop_for(DataParallel.reference(2, SEED))
    resumed.load_state_dict(state)
    resumed.run(3, report_every=3)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    other = loop_for(DataParallel.reference(3, SEED))   # resumed on three workers
    other.load_state_dict(state)
    other.run(3, report_every=3)
    assert other.step == 3
    assert other.weight_stream.state_dict() == straight.weight_stream.state_dict()
    assert other.arch_stream.state_dict() == straight.arch_stream.state_dict()
