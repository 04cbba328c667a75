"""Output directories named on the command line (``--out``): checked before any work is done, so a typo
costs a second, not a SentencePiece training, and ends as one line naming the option."""
from __future__ import annotations

import os

from ..errors import ConfigError
from ..orchestration.writable import creatable_problem


def ensure_output_dir(path: str, option: str = "--out") -> str:
    """Create ``path`` (and its parents) if needed, once ``creatable_problem`` (the check of ``--storage``)
    has found it a writable directory or one that can be created. One ``ConfigError`` line naming
    ``option`` otherwise. Returns the path."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{option}: {path} is a file, expected a directory")
    problem = creatable_problem(path)
    if problem is None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as err:   # lost a race, or a filesystem that refuses what the probe allowed
            problem = err.strerror or type(err).__name__
    if problem:
        raise ConfigError(f"{option}: cannot write the directory {path} ({problem})")
    return path
