"""Start a local Ray or join a running cluster, with one clear line when joining cannot work.

Left to itself, ``ray.init(address=...)`` retries an address where nothing listens for minutes and prints
a stream of C++ warnings; a cluster with token authentication and a missing or wrong token gives a bare
``ConnectionError`` after ~20 s of the same. Here a TCP probe answers the first case in seconds, and
Ray's own output during the join is held back and read for the reason (authentication, version) when
the join fails, or passed on unchanged when it succeeds.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

from ..errors import ConfigError

CONNECT_TIMEOUT_ENV = "REVSEARCH_RAY_CONNECT_TIMEOUT"
_TOKEN_HELP = ("the cluster uses token authentication: set RAY_AUTH_MODE=token and give the cluster's token "
               "in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")


def split_address(address: str, name: str = "--address"):
    """``host:port`` / ``[v6]:port`` -> (host, port); ConfigError if it is neither."""
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\]:(?P<port>\d+)|(?P<host>[^:\s]+):(?P<port2>\d+)", address.strip())
    if not match:
        raise ConfigError(f"{name} {address!r}: expected host:port of the head's GCS (e.g. 10.0.0.5:6379), "
                          f"or 'auto' on a cluster node")
    host = match.group("v6") or match.group("host")
    port = int(match.group("port") or match.group("port2"))
    if not 0 < port < 65536:
        raise ConfigError(f"{name} {address!r}: port {port} is out of range")
    return host, port


def check_ray_address(address: str, name: str = "--address") -> None:
    """Fail fast, in one line, where no Ray head can be listening."""
    if address.startswith("ray://"):
        raise ConfigError(f"{name} {address}: Ray Client (ray://) is not supported; run revsearch on the "
                          f"head node (ray submit or ray job submit, see docs/cluster.md) with --address auto")
    if address in ("auto", "local"):
        return  # Ray finds the cluster this node belongs to, and says so clearly when there is none
    host, port = split_address(address, name)
    timeout = float(os.environ.get(CONNECT_TIMEOUT_ENV, "5"))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        raise ConfigError(f"{name} {address}: no answer within {timeout:g}s; is the Ray head running "
                          f"(ray start --head) and its port open to this machine?") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"{name} {address}: no Ray cluster there ({reason}); start one with "
                          f"'ray start --head --port {port}' or fix the address") from None


@contextmanager
def _held_stderr() -> Iterator[List[str]]:
    """Redirect file descriptor 2 (Python and Ray's C++ core both write there) into a temp file; the
    yielded list receives its text when the block ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: List[str] = []
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines.extend(held.read().decode("utf-8", "replace").splitlines())


def _reason(err: BaseException, output: List[str]) -> str:
    text = "\n".join(output) + "\n" + str(err)
    if type(err).__name__ == "AuthenticationError" or "InvalidAuthToken" in text or "Unauthenticated" in text:
        return _TOKEN_HELP
    if "version mismatch" in text.lower():
        line = next((l for l in text.splitlines() if "version" in l.lower()), "")
        return "Ray/Python versions differ between this machine and the cluster: " + line.strip()[:200]
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {first[:200]}"


def cluster_address(address: Optional[str]) -> Tuple[Optional[str], str]:
    """(the cluster to join: ``address``, else ``$RAY_ADDRESS``, else None for a local Ray; the name to
    show in errors)."""
    if address:
        return address, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


#: Ray warnings that tell a revsearch user nothing they can act on; dropped unless ``verbose``
QUIET_RAY_WARNINGS = (
    "Token authentication is enabled for this Ray cluster",   # every local start, by design
    "Experiment state snapshotting has been triggered",        # frequent checkpoints of short trials
    "Failed to fetch metrics for",                             # a resumed trial that never reported
)


class _DropRayNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(noise) for noise in QUIET_RAY_WARNINGS)


def quiet_ray_logging() -> None:
    """The driver's "ray" logger: warnings and errors only, without :data:`QUIET_RAY_WARNINGS`."""
    import ray  # noqa: F401 - configures the "ray" logger and its handler
    ray_logger = logging.getLogger("ray")
    ray_logger.setLevel(logging.WARNING)
    for handler in ray_logger.handlers:
        if not any(isinstance(f, _DropRayNoise) for f in handler.filters):
            handler.addFilter(_DropRayNoise())


def init_ray(address: Optional[str], num_cpus: Optional[int] = None, verbose: bool = True) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``), or start a private local Ray without a dashboard.
    ``verbose=False`` (the default console of ``revsearch run``): the workers' output is not copied to
    this process (their "Checkpoint successfully created" lines, ANSI-coloured ``(trainable pid=N)``
    prefixes; a trial's error still reaches the driver through Tune), and Ray logs warnings only."""
    address, name = cluster_address(address)
    if address:
        check_ray_address(address, name)  # before importing Ray: a bad address is answered in a second
    import ray
    if ray.is_initialized():
        return
    from ..interrupts import reclaim
    options = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if not verbose:
        quiet_ray_logging()
    if not address:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **options)
        reclaim()   # Ctrl-C / SIGTERM handlers: ray.init() replaced the SIGTERM one
        return
    failure: Optional[BaseException] = None
    with _held_stderr() as output:
        try:
            ray.init(address=address, **options)
            reclaim()
        except Exception as err:  # noqa: BLE001 - every failure to join becomes one line below
            failure = err
    if failure is not None:
        raise ConfigError(f"{name} {address}: cannot join the Ray cluster ({_reason(failure, output)})") from None
    if output:
        sys.stderr.write("\n".join(output) + "\n")
