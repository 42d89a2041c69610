"""``p2pnet swarm-key new | fingerprint``: private network keys."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from p2pnet.cli.options import Command, ParentParsers, Subparsers
from p2pnet.cli.render import err
from p2pnet.net.swarm_key import (
    format_swarm_key,
    generate_swarm_key,
    load_swarm_key,
    restrict_swarm_key_output,
    write_swarm_key_file,
)

__all__ = [
    "FingerprintOptions",
    "NewKeyOptions",
    "add_swarm_key_parsers",
    "new_swarm_key",
    "show_fingerprint",
]


@dataclass(frozen=True, slots=True)
class NewKeyOptions:
    """The options of ``p2pnet swarm-key new``: the file to create, or None for stdout."""

    out: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> NewKeyOptions:
        return cls(Path(args.out) if args.out else None)


@dataclass(frozen=True, slots=True)
class FingerprintOptions:
    """The options of ``p2pnet swarm-key fingerprint``."""

    file: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FingerprintOptions:
        return cls(Path(args.file))


def add_swarm_key_parsers(sub: Subparsers, parents: ParentParsers) -> None:
    keys = sub.add_parser("swarm-key", help="private network keys")
    keys_sub = keys.add_subparsers(dest="swarm_key_command", required=True, metavar="COMMAND")
    p = keys_sub.add_parser(
        "new",
        parents=[parents.common],
        help="a new random swarm key file on stdout (p2pnet swarm-key new > grid.key)",
    )
    p.add_argument("--out", metavar="FILE", help="write it to FILE (mode 0600, never replaced)")
    p.set_defaults(handler=Command(NewKeyOptions.from_args, new_swarm_key))
    p = keys_sub.add_parser(
        "fingerprint", parents=[parents.common], help="a key file's fingerprint, to compare keys"
    )
    p.add_argument("file", metavar="FILE")
    p.set_defaults(handler=Command(FingerprintOptions.from_args, show_fingerprint))


def new_swarm_key(options: NewKeyOptions) -> int:
    """Write a new random key to ``--out`` or stdout; its fingerprint goes to stderr."""
    key = generate_swarm_key()
    if options.out is not None:
        path = write_swarm_key_file(key, options.out)
        err.print(f"swarm key {key.fingerprint} written to {path}", markup=False)
        return 0
    if not restrict_swarm_key_output(sys.stdout.fileno()) and sys.stdout.isatty():
        err.print("the key goes to the terminal: redirect it, e.g. > grid.key", markup=False)
    sys.stdout.write(format_swarm_key(key))
    sys.stdout.flush()
    err.print(f"swarm key {key.fingerprint}", markup=False)
    return 0


def show_fingerprint(options: FingerprintOptions) -> int:
    """Print a key file's fingerprint."""
    print(load_swarm_key(options.file).fingerprint)
    return 0
