"""The model registry without pickles: register a checkpoint as weights + JSON, load it back by name.

``mlflow.pytorch.log_model`` offers two formats, and neither fits: ``"pickle"`` runs arbitrary code when
loaded, and ``"pt2"`` (``torch.export``) captures one ``forward``, while translating needs ``encode``,
the incremental ``decode_step`` with its growing per-layer cache, and beam search around them (the
Transformer's and the derived models' decoders keep Python dicts of cached keys/values; a derived
model's graph also depends on its genotype). So a registered model is the same thing a checkpoint is,
minus the training state, as the artifacts of an MLflow 3 *logged model* named ``model`` (linked to the
retrain run it came from) that a registered-model version points to::

    model.pt          the state dict alone (tensors): loads with torch.load(weights_only=True)
    model_spec.json   {"builder": "revsearch.<module>:<fn>", "config": {...}}: the spec checkpoints
                      carry (a derived model's genotype is in its config, as JSON)
    tokenizer.model   the SentencePiece model, so the registry alone is enough to translate
    revsearch.json    {"format": "revsearch-registered-model", "version": 1, "label": ..., ...}

``load_registered("models:/NAME@ALIAS")`` downloads those files and rebuilds the model with the same
checks a checkpoint gets (the spec is built on the meta device and must match the weights' shapes; no
NaN weights). Nothing is unpickled: a version registered the old way (``python_model.pkl``,
``data/model.pth``) is refused, not loaded. MLflow's own ``mlflow.pyfunc.load_model`` does not apply
(there is no ``MLmodel`` file); ``revsearch translate --model models:/NAME@best`` is the way in.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from typing import Any, Dict, Optional, Tuple

from ..errors import ConfigError, RevsearchError
from .tracking import check_existing_store, mask_secrets, no_artifact_progress_bar

FORMAT = "revsearch-registered-model"
VERSION = 1
WEIGHTS_FILE = "model.pt"
SPEC_FILE = "model_spec.json"
TOKENIZER_FILE = "tokenizer.model"
META_FILE = "revsearch.json"
LOGGED_MODEL_NAME = "model"
MODEL_TYPE = "revsearch-seq2seq"
#: the files a pickled ``mlflow.pytorch`` model holds; their presence means "not ours, not loaded"
PICKLED_FILES = ("data/model.pth", "python_model.pkl", "model.pth")
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))$")


class RegistryError(ConfigError):
    """A registered model that cannot be found or loaded; the message names the ``models:/`` URI."""


# --- writing ------------------------------------------------------------------------------------------
def write_model_dir(checkpoint: str, directory: str, label: str = "") -> Dict[str, Any]:
    """The four registry files for ``checkpoint`` in ``directory`` (created). The checkpoint is loaded
    and checked as ``revsearch translate`` would (so a model that could not translate is never
    registered); only its weights, spec and SentencePiece model are kept. Returns the spec."""
    import torch
    from ..train.checkpoint import load_for_inference
    model, _, state = load_for_inference(checkpoint)
    os.makedirs(directory, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
               os.path.join(directory, WEIGHTS_FILE))
    spec = state["model_spec"]
    with open(os.path.join(directory, SPEC_FILE), "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2, sort_keys=True)
    with open(os.path.join(directory, TOKENIZER_FILE), "wb") as f:
        f.write(bytes(state["spm_model"]))
    meta = {"format": FORMAT, "version": VERSION, "label": label, "builder": spec.get("builder", ""),
            "params": sum(p.numel() for p in model.parameters()), "step": int(state.get("step", 0) or 0)}
    with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return spec


def register_checkpoint(client, experiment_id: str, run_id: str, checkpoint: str, model_name: str,
                        label: str, alias: str = "best") -> str:
    """Log ``checkpoint`` as a weights-only logged model of ``run_id`` (``client``: an ``MlflowClient``),
    register it as a new version of ``model_name`` and point ``alias`` at it. Returns the version.

    Everything goes through the client: the run is not reopened (a finished retrain stays FINISHED, and
    a Ctrl-C here leaves at most a FAILED logged model, never a RUNNING run)."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.exceptions import MlflowException
    logged = client.create_logged_model(experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id,
                                        model_type=MODEL_TYPE, tags={"revsearch.label": label,
                                                                     "revsearch.format": FORMAT})
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory(prefix="revsearch-register-") as tmp:
            write_model_dir(checkpoint, tmp, label)
            client.log_model_artifacts(logged.model_id, tmp)
        status = "READY"
    finally:
        client.finalize_logged_model(logged.model_id, status)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])   # the run's "Models" tab
    try:
        client.create_registered_model(model_name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = client.create_model_version(model_name, source=f"models:/{logged.model_id}", run_id=run_id,
                                          model_id=logged.model_id,
                                          tags={"revsearch.label": label, "revsearch.format": FORMAT})
    client.set_registered_model_alias(model_name, alias, version.version)
    # the link back from the logged model, as mlflow.register_model records it (the UI shows it)
    client.set_logged_model_tags(logged.model_id, {"mlflow.modelVersions": json.dumps(
        [{"name": model_name, "version": version.version}])})
    return str(version.version)


# --- reading ------------------------------------------------------------------------------------------
def parse_model_uri(uri: str) -> Tuple[str, Optional[str], Optional[str]]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None, VERSION)."""
    match = _URI.match(uri or "")
    if not match:
        raise RegistryError(f"{uri!r}: expected models:/NAME@ALIAS (e.g. models:/revsearch-micro@best) "
                            f"or models:/NAME/VERSION")
    return match.group("name"), match.group("alias"), match.group("version")


def open_registry(tracking_uri: str):
    """An ``MlflowClient`` for reading ``tracking_uri``'s registry, creating nothing (a missing SQLite
    database is an error, not a new empty one). Errors are one ``ConfigError`` line starting with
    ``tracking.uri:`` (callers rename it to the option the URI came from)."""
    import logging
    check_existing_store(tracking_uri)
    for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _first_line(err: BaseException) -> str:
    return mask_secrets((str(err).strip().splitlines() or [type(err).__name__])[0][:200])


def resolve_version(client, uri: str, tracking_uri: str):
    """The ``ModelVersion`` that ``uri`` names, or a ``RegistryError`` saying what exists instead."""
    from mlflow.exceptions import MlflowException
    name, alias, number = parse_model_uri(uri)
    shown = mask_secrets(tracking_uri)
    try:
        try:
            registered = client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            names = sorted(m.name for m in client.search_registered_models(max_results=20))
            known = f"registered: {', '.join(names)}" if names else "it has no registered models"
            raise RegistryError(f"{uri}: no registered model {name!r} at {shown} ({known})") from None
        if alias is not None:
            aliases = sorted(getattr(registered, "aliases", {}) or {})
            if alias not in aliases:
                have = f"its aliases: {', '.join(aliases)}" if aliases else "it has no aliases"
                raise RegistryError(f"{uri}: model {name!r} has no alias {alias!r} ({have})")
            return client.get_model_version_by_alias(name, alias)
        try:
            return client.get_model_version(name, number)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise RegistryError(f"{uri}: model {name!r} has no version {number}") from None
    except RegistryError:
        raise
    except Exception as err:  # noqa: BLE001 - a store that fails mid-way is one line, not a traceback
        raise ConfigError(f"tracking.uri: cannot read the model registry at {shown}: {type(err).__name__}: "
                          f"{_first_line(err)}") from None


def load_model_dir(directory: str, source: str, device: str = "cpu"):
    """(model in eval mode, spec, tokenizer path) from the registry files in ``directory``. ``source``
    (the ``models:/`` URI) is what error lines name. Weights load with ``weights_only=True``."""
    import pickle
    import torch
    from ..train.checkpoint import build_model, check_finite_weights, check_spec_fits_weights, load_model_state
    present = {os.path.relpath(os.path.join(d, f), directory) for d, _, fs in os.walk(directory) for f in fs}
    pickled = sorted(p for p in present if p in PICKLED_FILES)
    if pickled or SPEC_FILE not in present:
        why = f"it holds {pickled[0]} (a pickled model)" if pickled else f"it has no {SPEC_FILE}"
        raise RegistryError(f"{source}: not a weights-only revsearch model ({why}); refusing to load it "
                            f"(use its run's checkpoint/ artifact with --checkpoint, or register a new run)")
    for name in (WEIGHTS_FILE, TOKENIZER_FILE):
        if name not in present:
            raise RegistryError(f"{source}: the registered model has no {name}")
    try:
        with open(os.path.join(directory, META_FILE), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
    if isinstance(meta, dict) and isinstance(meta.get("version"), int) and meta["version"] > VERSION:
        raise RegistryError(f"{source}: registered with format version {meta['version']}, newer than this "
                            f"revsearch understands ({VERSION})")
    try:
        with open(os.path.join(directory, SPEC_FILE), encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as err:
        raise RegistryError(f"{source}: {SPEC_FILE} is not valid JSON ({_first_line(err)})") from None
    weights = os.path.join(directory, WEIGHTS_FILE)
    if not zipfile.is_zipfile(weights):
        raise RegistryError(f"{source}: {WEIGHTS_FILE} is corrupt or truncated (not a complete torch archive)")
    try:
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RegistryError(f"{source}: {WEIGHTS_FILE} holds objects other than tensors; refusing to load "
                            f"it (weights_only)") from None
    except Exception as err:  # noqa: BLE001 - the unpickler raises various types on garbage input
        raise RegistryError(f"{source}: {WEIGHTS_FILE} is corrupt ({type(err).__name__})") from None
    where = f"{source} ({SPEC_FILE})"
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise RegistryError(f"{source}: {WEIGHTS_FILE} is not a state dict (a mapping of tensors)")
    check_spec_fits_weights(spec, state_dict, where)      # before anything is allocated
    model = build_model(spec, where)
    load_model_state(model, state_dict, source)
    check_finite_weights(model, source)
    return model.to(device).eval(), spec, os.path.join(directory, TOKENIZER_FILE)


def load_registered(uri: str, tracking_uri: Optional[str] = None, dst_path: Optional[str] = None,
                    device: str = "cpu"):
    """Load a registered revsearch model: ``(model in eval mode, model spec dict, tokenizer path)``.

    ``uri``: ``models:/NAME@ALIAS`` (e.g. ``models:/revsearch-micro@best``) or ``models:/NAME/VERSION``.
    ``tracking_uri``: the MLflow store holding the registry (default ``$MLFLOW_TRACKING_URI``); nothing
    is created in it. The files are downloaded to ``dst_path`` (default: a new temporary directory that
    the caller may delete once the tokenizer is loaded, e.g. ``Tokenizer(open(path, "rb").read())``).
    Raises a one-line ``ConfigError``/``RegistryError`` for an unknown model or alias, an unreachable or
    missing store, or files that are not a weights-only revsearch model."""
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking_uri:
        raise ConfigError(f"{uri}: no tracking URI given (pass tracking_uri or set $MLFLOW_TRACKING_URI)")
    parse_model_uri(uri)                       # a malformed URI before any connection
    client = open_registry(tracking_uri)
    version = resolve_version(client, uri, tracking_uri)
    directory = dst_path or tempfile.mkdtemp(prefix="revsearch-registered-")
    os.makedirs(directory, exist_ok=True)
    try:
        import mlflow.artifacts
        # the version's concrete artifact location (file:, mlflow-artifacts:, s3:, ...): a models:/ URI
        # here would be resolved against MLflow's *global* registry URI (a ./mlflow.db by default)
        location = client.get_model_version_download_uri(version.name, version.version)
        staging = tempfile.mkdtemp(prefix=".download-", dir=directory)
        with no_artifact_progress_bar():   # four small files: no bar on stderr
            local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=staging,
                                                        tracking_uri=tracking_uri)
        for name in os.listdir(local):     # the files straight into ``directory``, not .../artifacts/
            shutil.move(os.path.join(local, name), os.path.join(directory, name))
        shutil.rmtree(staging)
    except Exception as err:  # noqa: BLE001 - missing or unreadable artifacts are one line
        raise RegistryError(f"{uri}: cannot download version {version.version}'s files: "
                            f"{type(err).__name__}: {_first_line(err)}") from None
    try:
        return load_model_dir(directory, f"{uri} (version {version.version})", device)
    except RegistryError:
        raise
    except RevsearchError as err:   # the checkpoint checks' lines name the file; say which version
        raise RegistryError(str(err)) from None
