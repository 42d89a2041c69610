"""``main``: parse the command line, run the command, and return its exit status."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rich.text import Text

from p2pnet.cli.options import Command
from p2pnet.cli.parser import build_parser
from p2pnet.cli.render import MAX_ERROR_CHARS, TerminalSafeLogs, err, terminal_safe
from p2pnet.errors import P2PNetError, UsageError
from p2pnet.logs import configure_logging

__all__ = ["main"]


# P2PNetError.fault, as the first line of an error says it.
_WHOSE_FAULT = {
    "caller": " (in the call or the configuration)",
    "peer": " (the other peer's fault)",
    "network": " (the network between the peers)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 failure, 2 usage error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    for handler in logging.getLogger().handlers:  # log lines quote other peers' text
        handler.addFilter(TerminalSafeLogs())
    command: Command[Any] = args.handler
    try:
        options = command.options(args)
    except UsageError as exc:
        parser.error(str(exc))
    try:
        return command.run(options)
    except P2PNetError as exc:
        # As text, not markup: messages hold brackets ("float32[n]", "p2pnet[models]"),
        # and text from other peers (their error messages, names), which is made
        # terminal-safe; lines after the first are indented.
        message = terminal_safe(str(exc), limit=MAX_ERROR_CHARS, newline="\n  ")
        fault = _WHOSE_FAULT.get(exc.fault, "")
        err.print(Text("error", style="bold red") + fault + ": " + message, soft_wrap=True)
        return 2 if isinstance(exc, UsageError) else 1
    except KeyboardInterrupt:
        return 130
