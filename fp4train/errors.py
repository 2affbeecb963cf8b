"""``ConfigError``: bad input from the person running a job (a config value, a path, a file).

The command line (``fp4train.train.main``) prints its message alone and exits with status 2;
Python callers get the exception. It is a ``ValueError``, so code that catches bad values keeps
catching it.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A problem the user fixes in their config or files; the message names the thing at fault,
    the offending value and what would be valid."""
