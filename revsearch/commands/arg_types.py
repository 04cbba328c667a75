"""argparse ``type=`` validators for numeric options, so a value that parses but makes no sense
(``--chunk 0``, ``--max-tokens -1``, ``--lenpen nan``) is refused by the parser as one line naming the
option (``revsearch translate: error: argument --chunk: must be an integer >= 1, got '0'``), instead of
looping forever, silently doing nothing, or failing deep inside decoding.

Use ``type=positive_int`` etc. on any option; argparse adds the option name to the message.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    parse.__name__ = f"int>={low}"
    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def finite_float(text: str) -> float:
    """Any finite number (nan and ±inf are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def check_device(text: str, option: str = "--device") -> str:
    """``text`` if torch can run on that device here; otherwise one ``ConfigError`` line naming
    ``option`` (an unknown device string, or CUDA/MPS asked for where there is none)."""
    import torch
    from ..errors import ConfigError
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{option}: invalid device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{option}: {text!r} asked for, but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{option}: {text!r} asked for, but there are only {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option}: 'mps' asked for, but MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{option}: unsupported device {text!r}; use cpu, cuda or cuda:N")
    return text


def check_output_file(path: str, option: str = "--output") -> str:
    """``path`` if a file can be created there: its folder exists and it is not a directory. Checked
    before any work, so a typo does not cost a whole translation."""
    import os
    from ..errors import ConfigError
    if os.path.isdir(path):
        raise ConfigError(f"{option}: {path} is a directory, expected a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"{option}: folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{option}: cannot write in folder {folder}")
    return path
