"""MLflow tracking for sweeps, trials and retrains, through an explicit ``MlflowClient`` (no global
active-run state, so trials in one worker process never log into each other's runs).

Run tree: one parent run per ``revsearch run``; a child per search trial and per retrain, found again by
tags (``revsearch.trial_key``) so a restarted or resumed trial continues its own run instead of opening
a second one. Parameters are flat, dotted, and never contain secrets (credentials in URIs are masked).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from typing import Any, Dict, Iterable, Mapping, Optional

from ..errors import ConfigError

PARENT_TAG = "mlflow.parentRunId"
KEY_TAG = "revsearch.trial_key"
KIND_TAG = "revsearch.kind"
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api[_-]?key|credential)", re.I)
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<cred>[^/@\s]+)@", re.I)


def mask_secrets(value: Any) -> Any:
    """``https://user:pw@host`` -> ``https://***@host``; other values unchanged."""
    if isinstance(value, str):
        return _URI_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", value)
    return value


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> Dict[str, str]:
    """Nested config -> flat ``a.b.c`` string params (MLflow limits values to 6000 chars)."""
    flat: Dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if _SECRET_KEY.search(str(key)):
            continue
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name + "."))
        else:
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            flat[name] = str(mask_secrets(value))[:6000]
    return flat


def default_tracking_uri(storage: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(storage), "mlflow.db")


class Tracker:
    """Thin, explicit wrapper of ``MlflowClient`` bound to one experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Optional[str] = None):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.tracking_uri, self.experiment_name = tracking_uri, experiment
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = None
                if artifact_root and tracking_uri.startswith("sqlite:"):
                    # a sqlite store would otherwise put artifacts under ./mlruns of whatever cwd a
                    # trial has; keep them next to the database
                    location = "file://" + os.path.abspath(artifact_root)
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment_id = found.experiment_id
        except Exception as err:  # noqa: BLE001 - any failure to reach the store is one user-facing line
            raise ConfigError(f"tracking.uri: cannot use MLflow tracking URI {mask_secrets(tracking_uri)!r}: "
                              f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None

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
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_artifact(self, run_id: str, path: str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(name))
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            self.log_artifact(run_id, path, os.path.dirname(name) or None)

    def log_json(self, run_id: str, data: Any, name: str) -> None:
        self.log_text(run_id, json.dumps(data, indent=2, sort_keys=True, default=str), name)

    def children(self, parent: str, kind: Optional[str] = None) -> Iterable:
        clauses = f"tags.`{PARENT_TAG}` = '{parent}'"
        if kind:
            clauses += f" and tags.`{KIND_TAG}` = '{kind}'"
        return self.client.search_runs([self.experiment_id], filter_string=clauses, max_results=1000)
