"""Output directories named on the command line (``--out``): checked before any work is done, so a typo
costs a second, not a SentencePiece training, and ends as one line naming the option."""
from __future__ import annotations

import os
import tempfile

from ..errors import ConfigError


def ensure_output_dir(path: str, option: str = "--out") -> str:
    """Create ``path`` (and its parents) if needed and prove it is a writable directory by creating and
    removing a temporary file in it. One ``ConfigError`` line naming ``option`` otherwise. Returns the
    path."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{option}: {path} is a file, expected a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(f"{option}: cannot write the directory {path} "
                          f"({err.strerror or type(err).__name__})") from None
    return path
