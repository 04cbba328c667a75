"""Where the data-parallel steps wait on the device and on each other (learning/data_parallel.py):
token counts are taken on the host when a batch is collated, never read back from the device, and the
trainer's time-budget stop travels in the per-step token-count all-reduce instead of a collective of
its own, with every worker still stopping at the same step."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from revsearch.data.batching import collate
from revsearch.learning.data_parallel import DataParallel, TokenWeightedSync
from revsearch.search import BilevelSearch, SearchConfig, Supernet, build_derived_model, uniform_genotype
from revsearch.search.loop import BatchStream
from revsearch.train.trainer import TrainConfig, Trainer
from tests.search_fixtures import reversal_pairs, tiny_config

SEED = 7
# tensors on the meta device have no data: reading one (int(), .item()) raises, so a count that comes
# back from one was taken on the host
META = torch.device("meta")


def host_tokens(pairs, indices) -> int:
    return int(collate(pairs, indices).tgt_out.ne(0).sum())


def test_batch_token_count_is_taken_on_the_host_and_moves_with_the_batch():
    pairs = reversal_pairs(12, 1)
    with pytest.raises(Exception):
        int(torch.ones(2, device=META).sum())
    batch = collate(pairs, list(range(12)))
    moved = batch.to(META)
    assert moved.tgt_out.device.type == "meta"
    assert moved.num_tokens == batch.num_tokens == host_tokens(pairs, range(12)) > 0


def test_search_step_counts_the_shard_tokens_without_reading_the_device():
    weight, arch = reversal_pairs(24, 1), reversal_pairs(24, 2)
    streams = [BatchStream(weight, 64, seed=1), BatchStream(arch, 64, seed=2)]
    shards = [s.next_shards(2, (0, 1), device=META) for s in streams]
    assert shards[0] and all(b.src.device.type == "meta" for _, b in shards[0] + shards[1])
    torch.manual_seed(0)
    search = BilevelSearch(Supernet(tiny_config()), SearchConfig(), parallel=DataParallel.reference(2, SEED))
    search._begin_parallel_step(*shards)
    # the global batch each stream just cut: its token count, computed here on CPU
    expected = [host_tokens(data, BatchStream(data, 64, seed).next_indices())
                for data, seed in ((weight, 1), (arch, 2))]
    assert [search.step_tokens["weight"], search.step_tokens["arch"]] == expected


class RecordingSync(TokenWeightedSync):
    """The one-process sync, recording every ``global_tokens`` call; ``other_worker_spent_from``: from
    that call on, another worker reports its time budget spent (the flag is the last count)."""

    def __init__(self, other_worker_spent_from=None):
        self.group, self.world_size, self.rank, self.distributed = None, 1, 0, False
        self.calls, self.other_worker_spent_from = [], other_worker_spent_from

    def global_tokens(self, *counts):
        self.calls.append(counts)
        spent_elsewhere = self.other_worker_spent_from is not None and len(self.calls) >= self.other_worker_spent_from
        return counts[:-1] + (counts[-1] + int(spent_elsewhere),)


def trainer(parallel, cls=Trainer, **config):
    torch.manual_seed(0)
    model = build_derived_model(uniform_genotype(2, "self_attn", "ffn", layers=1), tiny_config(dropout=0.1))
    base = dict(lr=1e-2, warmup_steps=2, max_tokens=64, max_steps=4, valid_every=0, log_every=1, quiet=True,
                restore_best=False, seed=3)
    base.update(config)
    return cls(model, reversal_pairs(30, 4), reversal_pairs(4, 5), TrainConfig(**base), parallel=parallel)


def test_trainer_takes_one_token_count_all_reduce_per_step_with_the_time_flag_in_it():
    sync = RecordingSync()
    result = trainer(DataParallel(2, (0, 1), SEED, sync), time_budget_s=3600.0).train()
    assert result.steps == 4 and result.stop_reason == "max_steps"
    assert len(sync.calls) == 4                       # one collective per step, none for the budget
    assert all(len(c) == 2 and c[1] == 0 for c in sync.calls)   # (local tokens, time spent here)


def test_trainer_stops_before_a_step_when_another_worker_is_out_of_time():
    sync = RecordingSync(other_worker_spent_from=3)
    result = trainer(DataParallel(2, (0, 1), SEED, sync), max_steps=10, time_budget_s=3600.0).train()
    assert result.stop_reason == "time_budget" and result.steps == 2 and len(sync.calls) == 3


class SlowRankTrainer(Trainer):
    """Rank 1's clock runs out after its second step; rank 0's never does."""

    def _time_spent(self, session_start, elapsed_at_start):
        return self.parallel.sync.rank == 1 and self.step >= 2


def stop_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        t = trainer(DataParallel.worker(SEED), SlowRankTrainer, max_steps=10, time_budget_s=3600.0)
        result = t.train()
        torch.save({"steps": result.steps, "reason": result.stop_reason,
                    "theta": [p.detach().clone() for p in t.model.parameters()]},
                   os.path.join(out_dir, f"stop_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_workers_stop_at_the_same_step_when_one_runs_out_of_time(tmp_path):
    mp.spawn(stop_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"stop_rank{r}.pt", weights_only=True) for r in range(2)]
    assert [(r["steps"], r["reason"]) for r in results] == [(2, "time_budget")] * 2
    for a, b in zip(results[0]["theta"], results[1]["theta"]):
        assert torch.equal(a, b)
