"""``build_parser``: the ``p2pnet`` parser, composed of each command's parser."""

from __future__ import annotations

import argparse

from p2pnet import __version__
from p2pnet.cli.call import add_call_parser
from p2pnet.cli.chat import add_chat_parser
from p2pnet.cli.conformance import add_conformance_parser
from p2pnet.cli.find import add_find_parser
from p2pnet.cli.id import add_id_parser
from p2pnet.cli.ledger import add_ledger_parser
from p2pnet.cli.mcp import add_mcp_parser
from p2pnet.cli.model import add_model_parsers
from p2pnet.cli.options import parent_parsers
from p2pnet.cli.peer import add_peer_parser
from p2pnet.cli.pipeline import add_pipeline_parsers
from p2pnet.cli.simulate import add_simulate_parser
from p2pnet.cli.status import add_status_parser
from p2pnet.cli.swarm_key import add_swarm_key_parsers
from p2pnet.cli.trust import add_trust_parser

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``p2pnet`` parser: a sub-parser per command, whose ``handler`` default is the
    command's ``Command``."""
    parser = argparse.ArgumentParser(
        prog="p2pnet", description="A peer-to-peer network for AI models."
    )
    parser.add_argument("--version", action="version", version=f"p2pnet {__version__}")
    parents = parent_parsers()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in (
        add_id_parser,
        add_model_parsers,
        add_peer_parser,
        add_call_parser,
        add_chat_parser,
        add_find_parser,
        add_mcp_parser,
        add_pipeline_parsers,
        add_swarm_key_parsers,
        add_status_parser,
        add_ledger_parser,
        add_trust_parser,
        add_simulate_parser,
        add_conformance_parser,
    ):
        add_parser(sub, parents)
    return parser
