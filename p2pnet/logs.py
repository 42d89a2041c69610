"""Logging for the command line: quiet by default, more with each ``-v``."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

from p2pnet.net.logs import Libp2pRecordFilter, set_libp2p_log_level

__all__ = ["configure_logging"]

# verbosity -> (p2pnet level, py-libp2p level)
_LEVELS = {
    0: (logging.WARNING, logging.CRITICAL + 1),
    1: (logging.INFO, logging.CRITICAL + 1),
    2: (logging.DEBUG, logging.WARNING),
    3: (logging.DEBUG, logging.DEBUG),
}


def configure_logging(verbosity: int) -> None:
    """0: warnings from p2pnet only; -v: info; -vv: debug plus py-libp2p warnings and the
    HTTP client's requests; -vvv: all."""
    ours, theirs = _LEVELS[max(0, min(verbosity, 3))]
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    handler.addFilter(Libp2pRecordFilter(theirs))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(ours, theirs))
    logging.getLogger("p2pnet").setLevel(ours)
    # httpx logs every request of the local API's client at INFO: with -vv only.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    set_libp2p_log_level(theirs)
