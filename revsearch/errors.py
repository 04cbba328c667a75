"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""


class RevsearchError(Exception):
    """A problem with the user's input (file, field, argument) that we can describe in one line."""


class ConfigError(RevsearchError):
    """A malformed configuration value; the message names the file and/or field."""


class DataError(RevsearchError):
    """A corpus problem; the message names the file (and line, where there is one)."""
