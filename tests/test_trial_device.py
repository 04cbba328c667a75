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
