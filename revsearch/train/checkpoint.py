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
    if path.is_dir():
        raise RevsearchError(f"{path}: is a directory, expected a checkpoint file (.pt)")
    if not path.is_file():
        if os.path.lexists(path) and not path.exists():
            raise RevsearchError(f"{path}: a broken symbolic link (or a link loop), expected a checkpoint file")
        if path.exists():
            raise RevsearchError(f"{path}: not a regular file (a FIFO or a device?), expected a checkpoint file")
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
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise RevsearchError(f"{source}: model config must be a mapping, got {type(config).__name__}")
    try:
        return fn(dict(config))
    except (TypeError, ValueError) as err:
        raise RevsearchError(f"{source}: model config does not fit {builder} ({err})") from None
    except KeyError as err:  # a builder reads its config's keys directly
        raise RevsearchError(f"{source}: model config lacks {err} (needed by {builder})") from None


#: a model config with more layers than this is not a model revsearch wrote (the largest has ~12)
MAX_CONFIG_LAYERS = 256


def check_spec_fits_weights(spec: dict, state_dict: dict, source: str) -> None:
    """Before any weight is allocated: the model the spec describes, built on the meta device (shapes
    only, no memory), must have exactly the shapes of the checkpoint's weights. A spec whose config says
    hidden = 24,000 next to a 700 KB state dict would otherwise allocate gigabytes first and fail after."""
    config = spec.get("config", {}) if isinstance(spec, dict) else {}
    if isinstance(config, dict):
        for key, value in config.items():
            if "layers" in str(key) and isinstance(value, int) and value > MAX_CONFIG_LAYERS:
                raise RevsearchError(f"{source}: model config {key} = {value:,}; at most {MAX_CONFIG_LAYERS}")
    if not isinstance(state_dict, dict):
        raise RevsearchError(f"{source}: the 'model' entry is not a state dict")
    with torch.device("meta"):
        meta = build_model(spec, source)
    held = sum(t.numel() for t in state_dict.values() if isinstance(t, torch.Tensor))
    wanted = sum(t.numel() for t in meta.state_dict().values())
    for name, tensor in meta.state_dict().items():
        have = state_dict.get(name)
        shape = tuple(have.shape) if isinstance(have, torch.Tensor) else None
        if shape != tuple(tensor.shape):
            raise RevsearchError(
                f"{source}: the model config does not match the weights: {name} would be "
                f"{list(tensor.shape)}, the checkpoint holds {list(shape) if shape is not None else 'nothing'} "
                f"(config: {wanted:,} values = {wanted * 4 / 2**20:,.1f} MiB; weights: {held:,} values)")


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
    check_spec_fits_weights(state["model_spec"], state["model"], str(path))   # before anything is allocated
    tokenizer = Tokenizer(state["spm_model"], f"{path} (embedded SentencePiece model)")
    model = build_model(state["model_spec"], str(path))
    load_model_state(model, state["model"], str(path))
    check_finite_weights(model, str(path))
    return model.to(device).eval(), tokenizer, state


def check_finite_weights(model: nn.Module, source: str) -> None:
    """A NaN or infinite weight (a diverged training) makes every output NaN: the decoder then emits
    nothing, and an empty translation would pass for a result. Refuse it, naming the first tensor."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise RevsearchError(f"{source}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: "
                             f"{bad[0]}); the training diverged, this checkpoint cannot translate")


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
