"""A real multi-node Ray cluster and a real MLflow tracking server on one machine, for tests.

Each Ray node is its own ``ray start --block`` process group with its own ports and its own ``--temp-dir``
(two nodes sharing a temp dir break runtime_env setup). Token authentication stays on, as on a real
cluster: the token travels in ``RAY_AUTH_TOKEN`` instead of ``~/.ray/auth_token``, so the user's home is
never touched. Every process is stopped by process group (SIGTERM, then SIGKILL), never with ``ray stop``,
which would kill every Ray on the machine.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import shutil
import sys
import tempfile
import time
import urllib.request
from typing import Dict, List, Optional

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _tail(path: str, chars: int = 3000) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


class LocalRayCluster:
    """``head`` plus ``add_node`` workers, each with ``num_cpus`` CPUs, all on 127.0.0.1."""

    def __init__(self, root: str):
        self.root = root
        self.short_root = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                        PYTHONUNBUFFERED="1")
        self.env.pop("RAY_ADDRESS", None)
        self.procs: List[subprocess.Popen] = []
        self.temp_dirs: List[str] = []
        self.address: Optional[str] = None
        self._next_worker_port = 0

    def _start(self, name: str, args: List[str], num_cpus: int) -> None:
        # Ray puts Unix sockets under the temp dir and their paths may not exceed 107 bytes: keep it short
        temp_dir = os.path.join(self.short_root, name)
        os.makedirs(temp_dir)
        agent_port = free_port()  # the default (52365) would be taken by the first node
        # a private worker-port range per node, away from the other node's
        workers = [f"--min-worker-port={20000 + self._next_worker_port}",
                   f"--max-worker-port={20000 + self._next_worker_port + 199}"]
        self._next_worker_port += 200
        cmd = [os.path.join(BIN, "ray"), "start", "--block", f"--num-cpus={num_cpus}", "--num-gpus=0",
               f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
               f"--dashboard-agent-listen-port={agent_port}", *workers, *args]
        with open(os.path.join(self.root, f"{name}.log"), "w") as log:  # the child keeps its own copy
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                               start_new_session=True))
        self.temp_dirs.append(temp_dir)

    def start_head(self, num_cpus: int = 1, dashboard: bool = False) -> str:
        """``dashboard=True`` also starts the dashboard and job server on 127.0.0.1 (``dashboard_url``)."""
        port = free_port()
        if dashboard:
            self.dashboard_port = free_port()
            self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
            extra = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        else:
            extra = ["--include-dashboard=false"]
        self._start("head", ["--head", f"--port={port}", *extra], num_cpus)
        self.address = f"127.0.0.1:{port}"
        # a driver started before the GCS listens would sit in Ray's minutes-long connect retries
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if self.procs[0].poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the Ray head did not listen on {port}:\n"
                                       f"{_tail(os.path.join(self.root, 'head.log'))}")
                time.sleep(0.5)
        self.wait_for_nodes(1)
        return self.address

    def add_node(self, num_cpus: int = 1) -> None:
        self._start(f"worker{len(self.procs)}", [f"--address={self.address}"], num_cpus)
        self.wait_for_nodes(len(self.procs))

    def nodes(self) -> Dict[str, str]:
        """Alive node id -> the temp dir it was started with (asked through a separate driver process,
        so the test process never joins the cluster itself)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps({n['NodeID']: n['RayletSocketName'] for n in ray.nodes() if n['Alive']}))"
                % self.address)
        proc = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"cannot list the cluster's nodes: {proc.stderr[-2000:]}")
        sockets = json.loads(proc.stdout.strip().splitlines()[-1])
        return {node: next((d for d in self.temp_dirs if path.startswith(d + os.sep)), path)
                for node, path in sockets.items()}

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while True:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError("a Ray node exited while starting:\n" + "\n".join(
                    _tail(os.path.join(self.root, f)) for f in os.listdir(self.root) if f.endswith(".log")))
            try:
                if len(self.nodes()) >= count:
                    return
            except RuntimeError:
                if time.time() > deadline:
                    raise
            if time.time() > deadline:
                raise RuntimeError(f"only some of {count} Ray nodes came up within {timeout:.0f}s")
            time.sleep(2)

    def kill_node(self, temp_dir: str) -> None:
        """SIGKILL every process of one node at once, as when its machine is lost."""
        proc = self.procs[self.temp_dirs.index(temp_dir)]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, the head (GCS) last
            _stop_group(proc)
        shutil.rmtree(self.short_root, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and proxied artifacts (``--artifacts-destination``),
    which is how runs on other nodes hand their files to the server."""

    def __init__(self, root: str, workers: int = 2):
        self.db = os.path.join(root, "server-mlflow.db")
        self.artifacts = os.path.join(root, "server-artifacts")
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(root, "mlflow-server.log")
        with open(self.log_path, "w") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [os.path.join(BIN, "mlflow"), "server", "--backend-store-uri", "sqlite:///" + self.db,
                 "--artifacts-destination", self.artifacts, "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", str(workers)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f}s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        _stop_group(self.proc)
