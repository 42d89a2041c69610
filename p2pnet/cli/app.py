"""``main``: parse the command line, run the command, and return its exit status."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from p2pnet.cli.options import Command
from p2pnet.cli.parser import build_parser
from p2pnet.cli.render import TerminalSafeLogs, err, error_text, exit_status
from p2pnet.errors import P2PNetError, UsageError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 1 failure, 2 usage error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and --version end here, having loaded little
    from p2pnet.logs import configure_logging

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
        err.print(error_text(exc), soft_wrap=True)
        return exit_status(exc)
    except KeyboardInterrupt:
        return 130
