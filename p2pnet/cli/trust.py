"""``p2pnet trust [forget PEER]``: the verdicts of this peer's spot checks, with their
evidence, and the providers it marked untrusted (p2pnet/trust)."""

from __future__ import annotations

import argparse
import datetime
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from p2pnet.cli.options import Command, ParentParsers, PeerFile, Subparsers
from p2pnet.cli.render import err, out, peer_text

if TYPE_CHECKING:  # the trust store (SQLite) is imported when the command runs
    from p2pnet.trust.store import StoredVerdict, TrustStore

__all__ = [
    "ForgetOptions",
    "TrustOptions",
    "add_trust_parser",
    "forget_peer",
    "show_trust",
]


def trust_file(args: argparse.Namespace) -> PeerFile:
    """``--trust FILE``, else the trust store of ``--identity`` (or the default one)."""
    from p2pnet.trust.store import TrustStore, default_trust_path

    return PeerFile.from_args(args, "trust", TrustStore.kind, default_trust_path)


@dataclass(frozen=True, slots=True)
class TrustOptions:
    """The options of ``p2pnet trust``."""

    file: PeerFile
    peer: str | None
    limit: int
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrustOptions:
        return cls(
            trust_file(args),
            getattr(args, "peer", None),
            getattr(args, "limit", 50),
            getattr(args, "json", False),
        )


@dataclass(frozen=True, slots=True)
class ForgetOptions:
    """The options of ``p2pnet trust forget``."""

    file: PeerFile
    peer: str
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ForgetOptions:
        return cls(trust_file(args), args.forget_peer, getattr(args, "json", False))


def add_trust_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "trust",
        parents=[parents.common],
        help="spot-check verdicts with their evidence, and the providers marked untrusted",
    )
    _trust_options(p, nested=False)
    p.add_argument("--peer", metavar="ID", help="only the verdicts about this peer")
    p.add_argument(
        "--limit", type=int, default=50, metavar="N", help="the latest N verdicts (default 50)"
    )
    p.set_defaults(handler=Command(TrustOptions.from_args, show_trust))
    trust_sub = p.add_subparsers(dest="trust_command", required=False, metavar="COMMAND")
    f = trust_sub.add_parser(
        "forget", parents=[parents.common], help="trust a marked provider again"
    )
    _trust_options(f, nested=True)
    f.add_argument("forget_peer", metavar="PEER", help="the provider's peer ID")
    f.set_defaults(handler=Command(ForgetOptions.from_args, forget_peer))


def _trust_options(parser: argparse.ArgumentParser, *, nested: bool) -> None:
    default: Any = argparse.SUPPRESS if nested else None
    parser.add_argument(
        "--trust",
        metavar="FILE",
        default=default,
        help="the trust store (default: that of --identity, under $XDG_DATA_HOME/p2pnet/trust)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if nested else False,
        help="machine-readable output",
    )


def _open(file: PeerFile) -> TrustStore | None:
    """The trust store, or None if there is none yet (said on stderr)."""
    from p2pnet.trust.store import TrustStore

    path = file.existing("this peer has made no spot check")
    return None if path is None else TrustStore.open(path, create=False)


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _evidence(verdict: StoredVerdict) -> Text:
    """How the results differed, and which signed receipts are kept."""
    first = verdict.comparisons.get("first-second", {})
    text = peer_text(str(first.get("detail", "")), limit=160)
    kept = sum(o.receipt is not None for o in verdict.opinions)
    if kept:
        text += Text(f"; {kept} signed receipts kept")
    return text


def show_trust(options: TrustOptions) -> int:
    """Print the marked providers and the latest verdicts."""
    store = _open(options.file)
    if store is None:
        if options.json:
            print(json.dumps({"untrusted": [], "verdicts": [], "counts": {}}, indent=2))
        return 0
    with store:
        marks = store.marks()
        verdicts = store.verdicts(options.peer, limit=options.limit)
        counts = store.counts()
    if options.json:
        print(
            json.dumps(
                {
                    "untrusted": [
                        {
                            "peer": m.peer,
                            "model_id": m.model_id,
                            "since": m.since,
                            "verdict": m.verdict,
                        }
                        for m in marks
                    ],
                    "verdicts": [v.to_dict() for v in verdicts],
                    "counts": counts,
                },
                indent=2,
            )
        )
        return 0
    if marks:
        table = Table("peer", "model", "since", "verdict", title="untrusted providers")
        for m in marks:
            table.add_row(peer_text(m.peer), peer_text(m.model_id), _when(m.since), str(m.verdict))
        out.print(table)
    if verdicts:
        table = Table("#", "when", "provider", "model", "verdict", "marked", "evidence")
        for v in verdicts:
            table.add_row(
                str(v.id),
                _when(v.checked_at),
                peer_text(v.provider),
                peer_text(v.model_id),
                v.outcome,
                peer_text(v.marked) if v.marked else Text("-"),
                _evidence(v),
            )
        out.print(table)
    out.print(
        Text(
            f"{len(marks)} providers marked untrusted; verdicts kept: {counts['agree']} agree, "
            f"{counts['disagree']} disagree, {counts['unresolved']} unresolved"
        )
    )
    return 0


def forget_peer(options: ForgetOptions) -> int:
    """Clear the mark of a provider; exit status 1 if it was not marked."""
    from p2pnet.trust.store import TrustStore

    path = options.file.path()
    with TrustStore.open(path, create=False) as store:
        forgotten = store.forget(options.peer)
    if options.json:
        print(json.dumps({"peer": options.peer, "forgotten": forgotten}))
    elif forgotten:
        out.print(Text("trusted again: ") + peer_text(options.peer))
    else:
        err.print(Text("not marked: ") + peer_text(options.peer))
    return 0 if forgotten else 1
