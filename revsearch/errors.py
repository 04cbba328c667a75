"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""


class RevsearchError(Exception):
    """A problem with the user's input (file, field, argument) that we can describe in one line."""


class ConfigError(RevsearchError):
    """A malformed configuration value; the message names the file and/or field."""


class DataError(RevsearchError):
    """A corpus problem; the message names the file (and line, where there is one)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a command after it saved what it had done; the message says
    how to continue. The CLI prints it as one line and exits 128 + ``signum`` (130 for Ctrl-C)."""

    def __init__(self, message: str = "", signum: int = 2):  # 2: SIGINT
        super().__init__(message)
        self.signum = signum
