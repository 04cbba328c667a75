"""The console for people: the live view of ``revsearch run`` and the training progress bar, rendered
from given states at given times (no Ray, no clock), compared line for line."""
import io

from revsearch.commands.progress import TrainingProgress
from revsearch.console import StatusBlock, format_duration, remaining_seconds
from revsearch.orchestration.live_view import StageView, error_summary


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def search_view():
    """Four search trials, two at a time: c finished (9 s, valid_loss 4.2), a reported twice, b started."""
    view = StageView("stage 1 search", total=4, max_concurrent=2, metric="valid_loss", mode="min", started=0.0)
    view.start("c", "trial c", 0.0)
    view.result("c", {"step": 40, "total_steps": 40, "valid_loss": 4.2}, 8.0)
    view.finish("c", 9.0)
    view.start("a", "trial a", 10.0)
    view.result("a", {"step": 10, "total_steps": 40, "valid_loss": 5.0, "steps_per_s": 3.0}, 20.0)
    view.result("a", {"step": 20, "total_steps": 40, "valid_loss": 4.5}, 30.0)
    view.start("b", "trial b", 25.0)
    return view


def test_durations_and_time_left():
    assert [format_duration(s) for s in (None, float("nan"), 0, 44.6, 60, 185, 7620)] == \
        ["?", "?", "0s", "45s", "1m00s", "3m05s", "2h07m"]
    assert remaining_seconds(20, 40, 2.0) == 10.0
    assert remaining_seconds(20, 40, 2.0, budget_s=60, trained_s=55) == 5.0   # the budget ends first
    assert remaining_seconds(20, None, None) is None


def test_stage_view_before_and_after_a_trials_first_report():
    view = search_view()
    assert view.render(40.0) == [
        "stage 1 search: 1 done, 2 running, 1 pending | 40s elapsed | best valid_loss 4.2 (trial c)",
        "  trial a: step 20/40, 1.00 steps/s, ETA 20s, valid_loss 4.5 (30s)",
        "  trial b: starting (15s)",          # no report yet: still shows it is alive, and for how long
    ]
    view.result("b", {"step": 5, "total_steps": 40}, 45.0)
    view.result("b", {"step": 10, "total_steps": 40}, 50.0)
    # stage ETA: the longest running trial (b: 30 s) + one wave for the pending trial (c took 9 s)
    assert view.render(50.0) == [
        "stage 1 search: 1 done, 2 running, 1 pending | 50s elapsed | ETA 39s | best valid_loss 4.2 (trial c)",
        "  trial a: step 20/40, 1.00 steps/s, ETA 20s, valid_loss 4.5 (40s)",
        "  trial b: step 10/40, 1.00 steps/s, ETA 30s (25s)",
    ]
    assert view.done_line("c") == "stage 1 search: trial c done in 9s: valid_loss 4.2"


def test_stage_view_failures_retries_and_summary():
    view = search_view()
    view.retry("a", 35.0)                   # Tune restarts it from its checkpoint: its rate starts afresh
    assert view.render(36.0)[1] == "  trial a: step 20/40, valid_loss 4.5 (1s)"
    view.finish("a", 60.0, failed=True)
    view.finish("b", 70.0)
    assert view.render(100.0) == [
        "stage 1 search: 2 done, 0 running, 1 pending, 1 failed | 1m40s elapsed | ETA 27s | best valid_loss 4.2 "
        "(trial c)"]   # ETA: the pending trial, as long as c and b took on average
    assert view.summary_line(100.0) == "stage 1 search: 2 done, 1 failed, 1 unfinished in 1m40s"


def test_retrain_view_ranks_by_the_highest_validation_bleu_and_budget_eta():
    view = StageView("stage 2 retrain", total=2, max_concurrent=2, metric="valid_bleu", mode="max",
                     metric_label="valid BLEU", started=0.0)
    for key, bleu in (("x", 12.5), ("y", 17.25)):
        view.start(key, key, 0.0)
        view.result(key, {"valid_bleu": bleu}, 5.0)
        view.finish(key, 6.0)
    assert view.render(6.0) == [
        "stage 2 retrain: 2 done, 0 running, 0 pending | 6s elapsed | best valid BLEU 17.25 (y)"]
    budget = StageView("stage 2 retrain", total=1, max_concurrent=1, metric="valid_bleu", mode="max", started=0.0)
    budget.start("z", "z", 0.0)
    budget.result("z", {"step": 100, "budget_s": 300.0, "elapsed_s": 120.0}, 130.0)
    assert budget.render(130.0)[1] == "  z: step 100, ETA 3m00s (2m10s)"


def test_error_summary_is_the_last_line_of_the_trace():
    trace = "Traceback (most recent call last):\n  File \"x.py\", line 1\n    boom()\nValueError: bad width\n\n"
    assert error_summary(trace) == "ValueError: bad width"
    assert error_summary(None) == "unknown error"


def test_plain_output_is_periodic_and_has_no_ansi_codes():
    out, clock = io.StringIO(), Clock()
    block = StatusBlock(out, interval_s=30.0, clock=clock)
    assert not block.live
    block.quoted_value(["a 1"])
    clock.now = 10.0
    block.quoted_value(["a 2"])                     # within 30 s: not printed
    block.line("event")
    block.quoted_value(["a 3"], force=True)         # a trial started or ended: printed at once
    clock.now = 41.0
    block.quoted_value(["a 4", "  b"])
    block.close()
    assert out.getvalue() == "a 1\nevent\na 3\na 4\n  b\n"


def test_terminal_output_is_redrawn_in_place():
    out, clock = Terminal(), Clock()
    block = StatusBlock(out, clock=clock)
    assert block.live
    block.quoted_value(["head", "  t1"])
    clock.now = 1.0
    block.line("done t0")                   # above the block, which is drawn again below it
    clock.now = 2.0
    block.quoted_value(["head 2"])
    clock.now = 4.0
    block.quoted_value(["head 2"])                  # unchanged: not redrawn
    block.close()
    assert out.getvalue() == ("head\n  t1\n" "\x1b[2F\x1b[Jdone t0\nhead\n  t1\n"
                              "\x1b[2F\x1b[Jhead 2\n" "\x1b[1F\x1b[J")


def test_training_progress_bar():
    bar = TrainingProgress("train", total_steps=100, width=10, block=StatusBlock(io.StringIO()))
    assert bar.line(50, 25.0, 3.14159, 2.0) == "train: [#####-----] step 50/100 | loss 3.142 | 2.00 steps/s | ETA 25s"
    assert bar.line(1, 0.5, 9.0, None) == "train: [----------] step 1/100 | loss 9.000"
    timed = TrainingProgress("derived-1", budget_s=600, width=10, block=StatusBlock(io.StringIO()))
    assert timed.line(30, 150.0, 4.0, 0.2) == "derived-1: [##--------] step 30 | loss 4.000 | 0.20 steps/s | ETA 7m30s"

    out, clock = io.StringIO(), Clock(100.0)
    fed = TrainingProgress("train", total_steps=100, width=10, block=StatusBlock(out, interval_s=0, clock=clock),
                           clock=clock)
    fed(1, 0.4, 9.0)                        # the Trainer's on_step: the rate is measured from here
    clock.now = 104.0
    fed(9, 4.4, 7.5)
    fed.log("step 9 | valid nll 7.1")
    fed.close()
    assert out.getvalue() == ("train: [----------] step 1/100 | loss 9.000\n"
                              "train: [----------] step 9/100 | loss 7.500 | 2.00 steps/s | ETA 46s\n"
                              "step 9 | valid nll 7.1\n")
