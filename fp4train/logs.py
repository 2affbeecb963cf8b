"""A run's text log, and the library noise it leaves out.

Under ``python -m fp4train.train`` Hydra configures logging (``hydra.job_logging`` in
``conf/train.yaml``): messages below WARNING to stdout, WARNING and above to stderr, and all of
them, timestamped, to ``<run dir>/train.log``. ``route_lightning_logs`` sends Lightning's
messages there too (Lightning gives its loggers their own stderr handler when it is imported,
before Hydra has configured anything). From Python, ``fp4train`` messages go to stdout (warnings
and errors to stderr) through handlers of our own unless the caller has configured logging.

``quiet_library_noise`` drops, by exact message, what the libraries print on every run and a user
cannot act on: Lightning's advertising tips, its device and ``limit_val_batches`` lines, a
deprecation inside Lightning's own code (``LeafSpec``, torch 2.10+), the "GPU available but not
used" warning (the accelerator is a config choice here) and the warning about a ``training_step``
returning ``None`` (ours does so on purpose, to skip a step with a non-finite loss).
"""

from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["BelowLevel", "LIGHTNING_NOISE", "WARNING_NOISE", "quiet_library_noise", "route_lightning_logs", "use_stdout_if_unconfigured"]

# Lightning info lines (logged by ``lightning.*.utilities.rank_zero``) dropped by their start
LIGHTNING_NOISE = (
    "💡 Tip:",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "`Trainer(limit_val_batches=",
)
# (message regex, category) of warnings ignored; each names one known message
WARNING_NOISE = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"GPU available but not used", Warning),
    (r"`training_step` returned `None`", Warning),
)
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class BelowLevel(logging.Filter):
    """Passes records below ``level`` (for a stdout handler beside a WARNING+ stderr one)."""

    def __init__(self, level: str | int = "WARNING") -> None:
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


class _DropByPrefix(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


_DROP_LIGHTNING_NOISE = _DropByPrefix(LIGHTNING_NOISE)


def quiet_library_noise() -> None:
    """Install the filters named in the module docstring (idempotent)."""
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_LIGHTNING_NOISE not in logger.filters:
            logger.addFilter(_DROP_LIGHTNING_NOISE)
    for message, category in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)


def route_lightning_logs() -> None:
    """Send Lightning's loggers through the root logger's handlers (console and ``train.log``)
    when the root has any, in place of the stderr handlers Lightning attached at import."""
    if not logging.getLogger().handlers:
        return
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


def use_stdout_if_unconfigured() -> None:
    """If nothing would show the ``fp4train`` logger's messages (no handler on the root logger, as
    in a plain Python session), give it plain handlers: INFO to stdout, WARNING and above to stderr."""
    logger = logging.getLogger("fp4train")
    if logging.getLogger().handlers or logger.handlers:
        return
    info, problems = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    info.addFilter(BelowLevel("WARNING"))
    problems.setLevel(logging.WARNING)
    for handler in (info, problems):
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
