"""Can a directory be created and written later, asked without creating anything now.

A run checks every input before it writes its first byte: a storage folder, an MLflow database or a run
directory made for a run that then fails on a bad corpus or a bad flag is litter the user must find and
remove. So the checks look at the nearest existing ancestor instead of calling ``makedirs``.
"""
from __future__ import annotations

import errno
import os
import tempfile
from typing import Optional


def _existing_ancestor(path: str) -> str:
    probe = path
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


def creatable_problem(path: str) -> Optional[str]:
    """None when ``path`` is a writable directory or could be created as one; else why not, in a few
    words (``Not a directory``, ``symbolic link loop``, ``Permission denied``, ...). Leaves no trace:
    writability is proven by creating and removing an empty directory in the nearest existing
    ancestor."""
    path = os.path.abspath(path)
    probe = _existing_ancestor(path)
    try:
        os.stat(probe)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"{probe} is a symbolic link loop"
        if err.errno == errno.ENOENT and os.path.islink(probe):
            return f"{probe} is a symbolic link to a missing target"
        return f"{probe}: {err.strerror or type(err).__name__}"
    if not os.path.isdir(probe):
        return "Not a directory" if probe != path else f"{path} is a file"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".revsearch-probe-", dir=probe))
    except OSError as err:
        return err.strerror or type(err).__name__
    return None
