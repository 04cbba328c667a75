"""MLflow tracking for sweeps, trials and retrains, through an explicit ``MlflowClient`` (no global
active-run state, so trials in one worker process never log into each other's runs).

Run tree: one parent run per ``revsearch run``; a child per search trial and per retrain, found again by
tags (``revsearch.trial_key``) so a restarted or resumed trial continues its own run instead of opening
a second one. Parameters, tags and JSON artifacts never contain secrets: secret-named keys are dropped
(params) or masked, credentials in URIs and ``token=...`` assignments are masked.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional

from ..errors import ConfigError

PARENT_TAG = "mlflow.parentRunId"
KEY_TAG = "revsearch.trial_key"
KIND_TAG = "revsearch.kind"
#: a key is secret when one of its words (split at _ - . and camelCase) is one of these ...
_SECRET_WORDS = frozenset({"password", "passwords", "passwd", "pwd", "passphrase", "secret", "secrets",
                           "token", "credential", "credentials", "apikey", "cookie", "authorization"})
# ("signature" is not a secret word: sacreBLEU signatures are exactly what a retrain run must record)
#: ... or two adjacent words are one of these pairs
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"),
                           ("session", "key"), ("client", "secret"), ("auth", "key")})
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<cred>[^/?#\s]+)@", re.I)
_ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z0-9_.-]+)=(?P<value>[^\s&;#]*)")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
MASK = "***"


def is_secret_key(key: Any) -> bool:
    """``api_token``, ``DB_PASSWORD``, ``awsSecretAccessKey``, ``private-key``: True; ``max_tokens``,
    ``tokenizer``: False."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key))
    words = re.findall(r"[a-z]+", spaced.lower())
    return any(w in _SECRET_WORDS for w in words) or any(p in _SECRET_PAIRS for p in zip(words, words[1:]))


def mask_secrets(value: Any) -> Any:
    """Strings: ``https://user:pw@host`` -> ``https://***@host`` (a password holding ``@`` included), and
    the value of any ``secret_name=value`` (query parameters, keyword DSNs) -> ``secret_name=***``.
    Other values unchanged."""
    if not isinstance(value, str):
        return value
    value = _URI_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", value)
    return _ASSIGNMENT.sub(lambda m: f"{m.group('key')}={MASK}" if is_secret_key(m.group("key")) else m.group(0),
                           value)


def redact(data: Any) -> Any:
    """A copy of nested mappings/lists with secret-named keys' values replaced by ``***`` and credentials
    masked in every string (for JSON artifacts)."""
    if isinstance(data, Mapping):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact(v) for v in data]
    return mask_secrets(data)


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> Dict[str, str]:
    """Nested config -> flat ``a.b.c`` string params (MLflow limits values to 6000 chars). Secret-named
    keys are left out; credentials inside values are masked."""
    flat: Dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if is_secret_key(key):
            continue
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name + "."))
        else:
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            flat[name] = str(mask_secrets(str(value)))[:6000]
    return flat


_PROGRESS_BAR_VARIABLE = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def no_artifact_progress_bar() -> Iterator[None]:
    """Artifact downloads inside the block draw no MLflow progress bar on stderr (MLflow draws one per
    download by default, which would break the CLI's one-line messages). A value the user set for
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is left as it is; otherwise the variable is unset again after
    the block. The one place revsearch touches it."""
    if _PROGRESS_BAR_VARIABLE in os.environ:
        yield
        return
    os.environ[_PROGRESS_BAR_VARIABLE] = "false"
    try:
        yield
    finally:
        os.environ.pop(_PROGRESS_BAR_VARIABLE, None)


def probe_tracking_uri(tracking_uri: str) -> None:
    """Can MLflow use this (already resolved) tracking URI? Fast checks, each failure one ``ConfigError``
    line: not a URI, a file store (MLflow 3.17 refuses them unless ``MLFLOW_ALLOW_FILE_STORE=true``), or an
    http(s) server that gives no HTTP answer within ``REVSEARCH_TRACKING_CONNECT_TIMEOUT`` seconds
    (default 5; MLflow itself retries for minutes). The form of a user-given URI is checked, and resolved,
    earlier by ``sweep.resolve_tracking_uri_option`` / the sweep file's ``tracking.uri``."""
    shown = mask_secrets(tracking_uri)
    if not isinstance(tracking_uri, str) or not tracking_uri.strip():
        raise ConfigError(f"tracking.uri: empty MLflow tracking URI {shown!r}")
    file_store_ok = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true")
    is_file = tracking_uri.startswith("file:") or (not _URI_SCHEME.match(tracking_uri)
                                                    and tracking_uri != "databricks")
    if is_file and not file_store_ok:
        raise ConfigError(f"tracking.uri: {shown!r} is a file store, which MLflow 3.17 refuses; use "
                          f"sqlite:////abs/path/mlflow.db or a tracking server (http://host:5000)")
    parsed = urllib.parse.urlsplit(tracking_uri)
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        return
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError as err:
        raise ConfigError(f"tracking.uri: {shown!r} is not a valid URL ({err})") from None
    if not host:
        raise ConfigError(f"tracking.uri: {shown!r} has no host")
    # one GET of the server's /health, without the credentials, through the environment's proxies; any
    # HTTP answer (even 401 or 404) or a TLS problem means "reachable" and MLflow takes it from there
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    probe = urllib.parse.urlunsplit((scheme, netloc, parsed.path.rstrip("/") + "/health", "", ""))
    timeout = float(os.environ.get("REVSEARCH_TRACKING_CONNECT_TIMEOUT", "5"))
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):
            return
        if isinstance(reason, (socket.timeout, TimeoutError)):
            text = f"no answer within {timeout:g}s"
        else:
            text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        raise ConfigError(f"tracking.uri: cannot reach the MLflow tracking server {shown!r} "
                          f"({mask_secrets(text)}); start it or fix the URI") from None


def sqlite_path(tracking_uri: str) -> Optional[str]:
    """The database file of a ``sqlite:`` URI (None for an in-memory database or another scheme)."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    rest = tracking_uri[len("sqlite:"):].split("?", 1)[0]
    if not rest.startswith("///"):
        return None                        # sqlite:// : in memory
    path = rest[3:]
    return None if path in ("", ":memory:") else path


def _check_sqlite(tracking_uri: str) -> None:
    """The database file of a ``sqlite:`` URI exists as an SQLite file, or can be created (MLflow creates
    it and its folders on first use; here nothing is created). Without this, a directory given as the
    database costs ~2 minutes of MLflow's retries before its error."""
    import sqlite3
    from .writable import creatable_problem
    path = sqlite_path(tracking_uri)
    if path is None:
        return
    shown = mask_secrets(tracking_uri)
    if os.path.isdir(path):
        raise ConfigError(f"tracking.uri: {shown!r} names a directory; give the database file, e.g. "
                          f"sqlite:///{os.path.join(path, 'mlflow.db')}")
    if os.path.lexists(path) and not os.path.exists(path):
        raise ConfigError(f"tracking.uri: {shown!r}: {path} is a broken symbolic link (or a link loop)")
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise ConfigError(f"tracking.uri: {shown!r}: {path} is not a regular file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"tracking.uri: {shown!r}: cannot read and write {path} (permission denied)")
        try:   # read only: a look, not a write
            con = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
            try:
                con.execute("select count(*) from sqlite_master").fetchone()
            finally:
                con.close()
        except sqlite3.Error as err:
            raise ConfigError(f"tracking.uri: {shown!r}: {path} is not an SQLite database ({err})") from None
        return
    problem = creatable_problem(os.path.dirname(os.path.abspath(path)))
    if problem:
        raise ConfigError(f"tracking.uri: {shown!r}: cannot create the database {path} ({problem})")


def check_tracking_store(tracking_uri: str, experiment: str) -> None:
    """Everything ``Tracker`` needs, checked without creating anything: the URI (``probe_tracking_uri``),
    an SQLite file that exists as a database or can be created, and for a server or another database a
    read of the experiment (the store is reachable and its driver installed). One ``ConfigError`` line."""
    probe_tracking_uri(tracking_uri)
    if tracking_uri.startswith("sqlite:"):
        _check_sqlite(tracking_uri)
        return
    try:
        from mlflow.tracking import MlflowClient
        MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(experiment)
    except Exception as err:  # noqa: BLE001 - any failure to reach the store is one user-facing line
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"tracking.uri: cannot use MLflow tracking URI {mask_secrets(tracking_uri)!r}: "
                          f"{type(err).__name__}: {mask_secrets(first)}") from None


def check_existing_store(tracking_uri: str) -> None:
    """For commands that only read (``report``, ``translate --model``): the URI's checks, and an SQLite
    database that already exists (reading must not create an empty one). One ``ConfigError`` line."""
    probe_tracking_uri(tracking_uri)
    _check_sqlite(tracking_uri)
    path = sqlite_path(tracking_uri)
    if path is not None and not os.path.exists(path):
        raise ConfigError(f"tracking.uri: no MLflow database at {path} (nothing has been tracked there yet)")


class _MissingExperiment(Exception):
    pass


class Tracker:
    """Thin, explicit wrapper of ``MlflowClient`` bound to one experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Optional[str] = None,
                 create: bool = True):
        """``create=False``: only read (``revsearch report``): a missing SQLite database or experiment is a
        ``ConfigError`` instead of being created."""
        probe_tracking_uri(tracking_uri)
        if not create:
            _check_sqlite(tracking_uri)
            path = sqlite_path(tracking_uri)
            if path is not None and not os.path.exists(path):
                raise ConfigError(f"tracking.uri: no MLflow database at {path} (nothing has been tracked "
                                  f"there yet)")
        self.tracking_uri, self.experiment_name = tracking_uri, experiment
        # a new SQLite store announces its schema migration on stderr; keep the CLI's output to our lines
        for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            import mlflow
            from mlflow.tracking import MlflowClient

            mlflow.set_tracking_uri(tracking_uri)
            self.client = MlflowClient(tracking_uri=tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None and not create:
                raise _MissingExperiment()
            if found is None:
                location = None
                if artifact_root and tracking_uri.startswith("sqlite:"):
                    # a sqlite store would otherwise put artifacts under ./mlruns of whatever cwd a
                    # trial has; keep them next to the database
                    location = "file://" + os.path.abspath(artifact_root)
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment_id = found.experiment_id
        except _MissingExperiment:
            raise ConfigError(f"tracking.uri: {mask_secrets(tracking_uri)!r} has no experiment "
                              f"{experiment!r}") from None
        except Exception as err:  # noqa: BLE001 - any failure to reach the store is one user-facing line
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"tracking.uri: cannot use MLflow tracking URI {mask_secrets(tracking_uri)!r}: "
                              f"{type(err).__name__}: {mask_secrets(first)}") from None

    # --- runs ------------------------------------------------------------------------------------
    def find_run(self, tags: Mapping[str, str]) -> Optional[str]:
        clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=clauses, max_results=1,
                                       order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def start_run(self, name: str, tags: Mapping[str, str], parent: Optional[str] = None,
                  key: Optional[str] = None) -> str:
        """Create a run, or reopen the one with the same ``key`` under the same parent."""
        lookup = {}
        if key is not None:
            lookup[KEY_TAG] = key
            if parent:
                lookup[PARENT_TAG] = parent
            existing = self.find_run(lookup)
            if existing:
                self.client.update_run(existing, status="RUNNING")
                return existing
        all_tags = dict(tags)
        all_tags["mlflow.runName"] = name
        if parent:
            all_tags[PARENT_TAG] = parent
        if key is not None:
            all_tags[KEY_TAG] = key
        return self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # --- logging ---------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        existing = self.client.get_run(run_id).data.params
        flat = flatten_params(params)
        fresh = [Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[i:i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag
        batch = [RunTag(k, MASK if is_secret_key(k) else mask_secrets(str(v))) for k, v in tags.items()]
        if batch:  # one request: on a tracking server every call is a round trip
            self.client.log_batch(run_id, tags=batch)

    def log_artifact(self, run_id: str, path: str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(name))
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            self.log_artifact(run_id, path, os.path.dirname(name) or None)

    def log_json(self, run_id: str, data: Any, name: str) -> None:
        self.log_text(run_id, json.dumps(redact(data), indent=2, sort_keys=True, default=str), name)

    def children(self, parent: str, kind: Optional[str] = None) -> Iterable:
        clauses = f"tags.`{PARENT_TAG}` = '{parent}'"
        if kind:
            clauses += f" and tags.`{KIND_TAG}` = '{kind}'"
        return self.client.search_runs([self.experiment_id], filter_string=clauses, max_results=1000)

    def end_running_children(self, parent: str, status: str = "KILLED") -> List[str]:
        """End every child of ``parent`` still RUNNING (trials a Ctrl-C stopped before they could end
        their own run); returns their ids. A resumed trial reopens its run."""
        ended = []
        for run in self.children(parent):
            if run.info.status == "RUNNING":
                self.end_run(run.info.run_id, status)
                ended.append(run.info.run_id)
        return ended
