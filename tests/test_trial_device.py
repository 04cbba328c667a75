"""Where a trial computes: the GPU Ray gave a one-process trial (when the sweep asks for one and CUDA is
there), and, for the work a data-parallel trial does after its Train run, a Ray task holding one
worker's resources outside the trial's placement group (which only holds a token request)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from revsearch.orchestration.search_trial import device_tags, trial_device


def test_trial_device_is_the_cpu_without_a_gpu_request_or_without_cuda():
    assert trial_device(0) is None
    assert trial_device(0.0) is None
    if not torch.cuda.is_available():   # a GPU asked for on a CPU-only torch: the CPU, and the tag says so
        assert trial_device(1) is None
        assert device_tags(trial_device(1)) == {"revsearch.device": "cpu"}
    else:
        assert trial_device(0.5) == torch.device("cuda", 0)
        assert device_tags(trial_device(1))["revsearch.device"] == "cuda:0"
    assert device_tags(None) == {"revsearch.device": "cpu"}


def scored(values):   # a module-level function: Ray pickles it by reference into the task
    return sum(values), torch.get_num_threads() >= 1


@pytest.mark.slow
def test_work_after_a_train_run_escapes_the_trial_placement_group(tmp_path):
    """In a real local Ray: an actor in a placement group that captures child tasks and holds only a token
    memory bundle (what a data-parallel Tune trial gets, stages.py) runs a 1-CPU task through
    ``run_with_worker_resources``; captured in the group, Ray refuses it (no bundle holds a CPU)."""
    script = textwrap.dedent("""
        import ray
        from types import SimpleNamespace   # stands for the sweep's ResourcesSection (cpu, gpu)
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        from tests.test_trial_device import scored

        ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        group = placement_group([{"memory": 2 ** 20}])
        ray.get(group.ready(), timeout=60)

        @ray.remote(num_cpus=0, memory=2 ** 20)
        class Trial:
            def run(self):
                from revsearch.orchestration.data_parallel_trial import run_with_worker_resources
                return run_with_worker_resources(SimpleNamespace(cpu=1, gpu=0), scored, [1, 2, 3])

        trial = Trial.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_capture_child_tasks=True)).remote()
        print("RESULT", ray.get(trial.run.remote(), timeout=120))
        ray.shutdown()
    """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT (6, True)" in proc.stdout


def test_one_process_search_batches_go_to_the_models_device():
    """The one-process loop moves both batches of a step to the supernet's device (a GPU trial's model
    is on CUDA; the batches are collated on the host). Checked with a stand-in device: the loop's device
    set to ``meta`` and the step replaced by a recorder of where its inputs are."""
    from tests.test_search_loop import make_loop
    loop = make_loop()
    loop.device = torch.device("meta")
    seen = []

    def record(weight, arch):
        seen.append({t.device.type for batch in (weight, arch) for t in batch})
        return {"train_loss": 0.0, "arch_loss": float("nan")}
    loop.search.step = record
    loop.metrics = dict   # the report at the last step would validate the CPU model on meta batches
    loop.run(2, report_every=100)
    assert seen == [{"meta"}, {"meta"}]


def test_the_last_search_report_carries_the_outcome(tmp_path):
    """``report_search`` at the last step puts the genotype and the α trajectory beside the state, and
    ``read_search_outcome`` gives them back as the loop has them: what a data-parallel trial reads
    instead of building the supernet."""
    import shutil
    from dataclasses import asdict
    from types import SimpleNamespace
    from revsearch.models.split_seq2seq import SplitSeq2SeqConfig
    from revsearch.orchestration.search_trial import (GENOTYPE_FILE, STATE_FILE, TRAJECTORY_FILE,
                                                      read_search_outcome, report_search)
    from tests.test_search_loop import make_loop

    loop = make_loop()
    config = SplitSeq2SeqConfig(**{k: v for k, v in asdict(loop.model.config).items()
                                   if k in SplitSeq2SeqConfig.__dataclass_fields__})
    settings = SimpleNamespace(steps=4, checkpoint_every=2)
    saved, reports = [], []

    class Keep:   # stands for tune.Checkpoint / ray.train.Checkpoint: keeps a copy of the directory
        @staticmethod
        def from_directory(directory):
            copy = tmp_path / f"checkpoint{len(saved)}"
            shutil.copytree(directory, copy)
            saved.append(copy)
            return copy

    def on_report(step, metrics, loop):
        report_search(step, metrics, loop, settings, config, 0.0, "run", None,
                      lambda result, checkpoint=None: reports.append((result["genotype"], checkpoint)),
                      Keep)
    loop.run(4, report_every=1, on_report=on_report)
    assert [c is not None for _, c in reports] == [False, True, False, True]   # every checkpoint_every
    assert sorted(os.listdir(saved[0])) == [STATE_FILE]                      # the outcome only at the end
    assert sorted(os.listdir(saved[1])) == sorted([STATE_FILE, GENOTYPE_FILE, TRAJECTORY_FILE])
    genotype, trajectory = read_search_outcome(str(saved[1]))
    assert genotype.to_json() == loop.genotype().to_json() == reports[-1][0]
    assert trajectory.steps == loop.trajectory.steps == [1, 2, 3, 4]
    for side in ("encoder", "decoder"):
        assert torch.equal(trajectory.side(side), loop.trajectory.side(side))


def test_a_resumed_search_logs_each_step_once(tmp_path):
    """A trial resumed from a checkpoint older than its last report runs the steps in between again, with
    the same values; ``log_new_steps`` (real MLflow SQLite store) logs only the steps the run lacks."""
    from revsearch.orchestration.search_trial import log_new_steps
    from revsearch.orchestration.tracking import Tracker
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "resume", artifact_root=str(tmp_path / "art"))
    run = tracker.start_run("search-t", {"revsearch.kind": "search"})
    first = log_new_steps(tracker, run)          # a fresh run logs everything
    for step in (10, 20):
        first(run, {"valid_loss": 1.0 / step}, step)
    resumed = log_new_steps(tracker, run)        # restarted from the step-10 checkpoint
    for step in (20, 30):
        resumed(run, {"valid_loss": 1.0 / step}, step)
    history = tracker.client.get_metric_history(run, "valid_loss")
    assert sorted(m.step for m in history) == [10, 20, 30]
    assert {m.step: m.value for m in history} == {10: 0.1, 20: 0.05, 30: 1.0 / 30}
