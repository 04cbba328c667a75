"""Checkpoints: atomic save, safe load (``weights_only=True``), averaging, and rebuilding a model.

A checkpoint is a dict of tensors and primitive containers only, so it loads with
``torch.load(..., weights_only=True)`` (no code runs at load time):

    format, version, model (state dict), model_spec {builder: "revsearch.<module>:<fn>", config: {...}},
    spm_model (the SentencePiece model bytes, so a checkpoint translates on its own),
    and for resuming: optimizer, schedule, step, epoch, batch_in_epoch, rng, elapsed_s, tokens,
    best_valid, bad_rounds, history, train_config.

``model_spec["builder"]`` names a function under the ``revsearch`` package that takes the config dict
and returns the model; derived models from the search provide their own builder.
"""
from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import RevsearchError

FORMAT = "revsearch-seq2seq"
VERSION = 1


def save_checkpoint(path: os.PathLike, state: dict) -> Path:
    """Write ``state`` atomically: a reader (or a crash) never leaves half a file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state, format=FORMAT, version=VERSION)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint safely. A missing, corrupt, truncated or foreign file raises a
    ``RevsearchError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RevsearchError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise RevsearchError(f"{path}: corrupt or truncated checkpoint (not a complete torch archive)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise RevsearchError(f"{path}: checkpoint holds objects other than tensors and plain containers; "
                                 f"refusing to load it (weights_only)") from None
        raise RevsearchError(f"{path}: corrupt or truncated checkpoint (unpickling failed)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as err:
        reason = str(err).splitlines()[0].split(". ")[0][:120] if str(err) else type(err).__name__
        raise RevsearchError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    except Exception as err:  # noqa: BLE001 - the unpickler raises various types on garbage input
        raise RevsearchError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RevsearchError(f"{path}: not a revsearch checkpoint")
    if state.get("version", 0) > VERSION:
        raise RevsearchError(f"{path}: checkpoint version {state.get('version')} is newer than this "
                             f"revsearch understands ({VERSION})")
    for key in ("model", "model_spec"):
        if key not in state:
            raise RevsearchError(f"{path}: checkpoint has no {key!r} entry")
    return state


def build_model(spec: dict, source: str = "checkpoint") -> nn.Module:
    """Rebuild a model from ``{"builder": "revsearch.x.y:fn", "config": {...}}``."""
    builder = spec.get("builder", "") if isinstance(spec, dict) else ""
    module_name, _, fn_name = builder.partition(":")
    if not module_name.startswith("revsearch.") or not fn_name:
        raise RevsearchError(f"{source}: invalid model builder {builder!r}")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as err:
        raise RevsearchError(f"{source}: model builder {builder!r} not available ({err})") from None
    try:
        return fn(dict(spec.get("config", {})))
    except TypeError as err:
        raise RevsearchError(f"{source}: model config does not fit {builder} ({err})") from None


def load_model_state(model: nn.Module, state_dict: dict, source: str) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise RevsearchError(f"{source}: weights do not match the model ({first[:200]})") from None


def load_for_inference(path: os.PathLike, device="cpu"):
    """(model in eval mode, Tokenizer, checkpoint dict) from a checkpoint with an embedded
    SentencePiece model."""
    from ..data.tokenizer import Tokenizer
    state = load_checkpoint(path)
    if not state.get("spm_model"):
        raise RevsearchError(f"{path}: checkpoint has no SentencePiece model; it cannot translate on its own")
    tokenizer = Tokenizer(state["spm_model"], f"{path} (embedded SentencePiece model)")
    model = build_model(state["model_spec"], str(path))
    load_model_state(model, state["model"], str(path))
    return model.to(device).eval(), tokenizer, state


def average_checkpoints(paths: Sequence[os.PathLike]) -> Dict[str, torch.Tensor]:
    """Element-wise mean of the models' floating-point weights (other tensors from the last file)."""
    if not paths:
        raise RevsearchError("no checkpoints to average")
    total: Optional[Dict[str, torch.Tensor]] = None
    sd: Dict[str, torch.Tensor] = {}
    for p in paths:
        sd = load_checkpoint(p)["model"]
        if total is None:
            total = {k: (v.double().clone() if v.is_floating_point() else v.clone()) for k, v in sd.items()}
            continue
        if sd.keys() != total.keys():
            raise RevsearchError(f"{p}: cannot average, its weights differ from {paths[0]}")
        for k, v in sd.items():
            total[k] = total[k] + v.double() if v.is_floating_point() else v.clone()
    n = len(paths)
    return {k: (v / n).to(sd[k].dtype) if sd[k].is_floating_point() else v for k, v in total.items()}


def step_checkpoints(directory: os.PathLike) -> List[Tuple[int, Path]]:
    """Numbered checkpoints ``checkpoint_<step>.pt`` in ``directory``, oldest first."""
    out = []
    for p in Path(directory).glob("checkpoint_*.pt"):
        tail = p.stem.split("_", 1)[1]
        if tail.isdigit():
            out.append((int(tail), p))
    return sorted(out)
