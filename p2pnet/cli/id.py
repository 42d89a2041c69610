"""``p2pnet id``: create or show this peer's identity."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from p2pnet.cli.options import Command, ParentParsers, Subparsers, identity_path, load_identity
from p2pnet.cli.render import err, out

__all__ = ["IdOptions", "add_id_parser", "show_id"]


@dataclass(frozen=True, slots=True)
class IdOptions:
    """The options of ``p2pnet id``."""

    identity: Path | None
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> IdOptions:
        return cls(identity_path(args), args.json)


def add_id_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser("id", parents=[parents.common], help="create or show this peer's identity")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=Command(IdOptions.from_args, show_id))


def show_id(options: IdOptions) -> int:
    """Print the peer ID (its key file on stderr), creating the identity if needed."""
    from p2pnet.net.identity import peer_id_of

    identity, path, created = load_identity(options.identity)
    if options.json:
        print(
            json.dumps({"peer_id": peer_id_of(identity), "identity": str(path), "created": created})
        )
    else:
        out.print(peer_id_of(identity))
        err.print(f"identity: {path}" + (" (new)" if created else ""))
    return 0
