"""The search loop: metrics, and a checkpoint that resumes bit-for-bit (weights_only loading)."""
import io

import torch

from revsearch.search import BilevelSearch, SearchConfig, Supernet
from revsearch.search.loop import BatchStream, SearchData, SearchLoop
from tests.search_fixtures import reversal_pairs, tiny_config


def make_loop(seed=0):
    torch.manual_seed(seed)
    net = Supernet(tiny_config())
    search = BilevelSearch(net, SearchConfig(lr=3e-3, warmup_steps=4, alpha_lr=0.05))
    data = SearchData(reversal_pairs(40, 1), reversal_pairs(40, 2), reversal_pairs(12, 3), max_tokens=48)
    return SearchLoop(search, data, valid_batches=2)


def test_stream_is_endless_and_resumable():
    stream = BatchStream(reversal_pairs(10, 0), max_tokens=24, seed=0)
    first = [stream.next().indices for _ in range(12)]
    assert stream.epoch >= 1  # wrapped around
    again = BatchStream(reversal_pairs(10, 0), max_tokens=24, seed=0)
    for _ in range(5):
        again.next()
    state = again.state_dict()
    resumed = BatchStream(reversal_pairs(10, 0), max_tokens=24, seed=0)
    resumed.load_state_dict(state)
    assert [resumed.next().indices for _ in range(7)] == first[5:]


def test_reports_and_resume_bit_identical():
    reports = []
    straight = make_loop()
    straight.run(6, report_every=3, on_report=lambda step, m, loop: reports.append((step, m)))
    assert [s for s, _ in reports] == [3, 6]
    for _, m in reports:
        assert {"train_loss", "arch_loss", "valid_loss", "alpha_entropy", "steps_per_s",
                "peak_rss_bytes"} <= set(m)
        assert m["valid_loss"] > 0 and m["steps_per_s"] > 0

    first = make_loop()
    first.run(3, report_every=3)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = make_loop(seed=99)  # different init: everything must come from the checkpoint
    second.load_state_dict(torch.load(buffer, weights_only=True))
    second.run(6, report_every=3)
    for p, q in zip(straight.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)
    assert straight.genotype().to_json() == second.genotype().to_json()
