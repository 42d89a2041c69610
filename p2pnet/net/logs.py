"""Keep py-libp2p's logging quiet unless asked for.

py-libp2p logs expected conditions (dial retries, closed streams) at WARNING and
ERROR, gives its ``libp2p`` logger no handler and stops propagation (so Python's
last-resort handler prints bare lines to stderr), and some of its modules log
through the root logger. This module puts all of that behind one switch.
"""

from __future__ import annotations

import logging
import os

import libp2p

__all__ = ["LIBP2P_DIR", "Libp2pRecordFilter", "inherit_libp2p_log_level", "set_libp2p_log_level"]

LIBP2P_DIR = os.path.dirname(libp2p.__file__) + os.sep


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
    """Make every ``libp2p.*`` logger follow the ``libp2p`` logger's level again.

    Some py-libp2p modules give their logger a level of its own (the auto-connector
    logs at INFO whatever ``libp2p`` is set to), and a record that passes its own
    logger's level reaches every handler up the tree. Call again after py-libp2p
    imported more modules (``open_host`` does).
    """
    for name, child in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(child, logging.Logger):
            child.setLevel(logging.NOTSET)


def set_libp2p_log_level(level: int) -> None:
    """Let py-libp2p's ``libp2p.*`` records of ``level`` and above reach the root handlers.

    Use ``logging.CRITICAL + 1`` to silence it entirely. Records py-libp2p sends through
    the root logger are not covered here; add a ``Libp2pRecordFilter`` to the handler.
    """
    inherit_libp2p_log_level()
    logger = logging.getLogger("libp2p")
    logger.handlers.clear()
    logger.addHandler(logging.NullHandler())
    logger.setLevel(level)
    logger.propagate = True


# Importing p2pnet.net silences py-libp2p's last-resort stderr output at once.
set_libp2p_log_level(logging.CRITICAL + 1)
