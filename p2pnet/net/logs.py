"""Keep py-libp2p's logging quiet unless asked for (without importing py-libp2p).

py-libp2p logs expected conditions (dial retries, closed streams) at WARNING and
ERROR, gives its ``libp2p`` logger no handler and stops propagation (so Python's
last-resort handler prints bare lines to stderr), and some of its modules log
through the root logger. This module puts all of that behind one switch.
"""

from __future__ import annotations

import importlib.util
import logging
import os

__all__ = ["LIBP2P_DIR", "Libp2pRecordFilter", "inherit_libp2p_log_level", "set_libp2p_log_level"]


def _libp2p_dir() -> str:
    """py-libp2p's source folder, found without importing it (that takes half a second)."""
    spec = importlib.util.find_spec("libp2p")
    origin = spec.origin if spec is not None else None
    return os.path.dirname(origin) + os.sep if origin else "\0no libp2p\0"


LIBP2P_DIR = _libp2p_dir()
# The level p2pnet lets py-libp2p's records through at (set_libp2p_log_level).
_level = logging.CRITICAL + 1


class Libp2pRecordFilter(logging.Filter):
    """Drops records emitted from py-libp2p's source below ``level``, whatever logger they use."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.pathname.startswith(LIBP2P_DIR):
            return record.levelno >= self.level
        return True


def inherit_libp2p_log_level() -> None:
    """Apply the level ``set_libp2p_log_level`` chose (again).

    Importing py-libp2p resets its ``libp2p`` logger (``libp2p.utils.logging.setup_logging``
    clears its handlers, sets WARNING and turns propagation off, so Python's last-resort
    handler would print its warnings), and some of its modules give their logger a level
    of their own (the auto-connector logs at INFO whatever ``libp2p`` is set to). Every
    ``libp2p.*`` logger is made to follow ``libp2p`` again. ``open_host`` calls this once
    py-libp2p is imported.
    """
    for name, child in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(child, logging.Logger):
            child.setLevel(logging.NOTSET)
    logger = logging.getLogger("libp2p")
    logger.handlers[:] = [logging.NullHandler()]
    logger.setLevel(_level)
    logger.propagate = True


def set_libp2p_log_level(level: int) -> None:
    """Let py-libp2p's ``libp2p.*`` records of ``level`` and above reach the root handlers.

    Use ``logging.CRITICAL + 1`` to silence it entirely (the default). Records py-libp2p
    sends through the root logger are not covered here; add a ``Libp2pRecordFilter`` to
    the handler.
    """
    global _level
    _level = level
    inherit_libp2p_log_level()


# Importing p2pnet.net.logs silences py-libp2p's last-resort stderr output at once, if it
# is loaded already; open_host does it again once it is.
inherit_libp2p_log_level()
