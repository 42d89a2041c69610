"""``p2pnet ledger [receipts | export | verify]``: this peer's balances and receipts, and
checks of exported receipt logs (p2pnet/ledger)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.text import Text

from p2pnet.cli.options import Command, ParentParsers, PeerFile, Subparsers
from p2pnet.cli.render import err, out, peer_text
from p2pnet.errors import LedgerError

if TYPE_CHECKING:  # the ledger (SQLite, receipts) is imported when the command runs
    from p2pnet.ledger import Ledger, LedgerTotals, StoredReceipt
    from p2pnet.ledger.store import Role

__all__ = [
    "BalancesOptions",
    "ExportOptions",
    "ReceiptsOptions",
    "VerifyOptions",
    "add_ledger_parser",
    "export_receipts",
    "show_balances",
    "show_receipts",
    "units_text",
    "verify_receipts",
]


def ledger_file(args: argparse.Namespace) -> PeerFile:
    """``--ledger FILE``, else the ledger of ``--identity`` (or the default identity)."""
    from p2pnet.ledger import Ledger, default_ledger_path

    return PeerFile.from_args(args, "ledger", Ledger.kind, default_ledger_path)


@dataclass(frozen=True, slots=True)
class BalancesOptions:
    """The options of ``p2pnet ledger``."""

    file: PeerFile
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BalancesOptions:
        return cls(ledger_file(args), getattr(args, "json", False))


@dataclass(frozen=True, slots=True)
class ReceiptsOptions:
    """The options of ``p2pnet ledger receipts``."""

    file: PeerFile
    peer: str
    role: Role | None
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReceiptsOptions:
        return cls(ledger_file(args), args.peer, args.role, getattr(args, "json", False))


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """The options of ``p2pnet ledger export``: whose pairs (None: all), where to."""

    file: PeerFile
    peer: str | None
    out: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ExportOptions:
        return cls(ledger_file(args), args.peer, Path(args.out) if args.out else None)


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    """The options of ``p2pnet ledger verify``."""

    log: Path
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> VerifyOptions:
        return cls(Path(args.log), getattr(args, "json", False))


def add_ledger_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "ledger",
        parents=[parents.common],
        help="this peer's balances per peer and totals; its receipts; receipt logs",
    )
    _ledger_options(p, False)
    p.set_defaults(handler=Command(BalancesOptions.from_args, show_balances))
    ledger_sub = p.add_subparsers(dest="ledger_command", required=False, metavar="COMMAND")
    r = ledger_sub.add_parser(
        "receipts", parents=[parents.common], help="the receipts of the pairs with one peer"
    )
    _ledger_options(r, True)
    r.add_argument("--peer", required=True, metavar="ID", help="the other peer's ID")
    r.add_argument(
        "--role",
        choices=("provider", "caller"),
        help="only those where this peer was the provider, or the caller",
    )
    r.set_defaults(handler=Command(ReceiptsOptions.from_args, show_receipts))
    e = ledger_sub.add_parser(
        "export", parents=[parents.common], help="write a receipt log (JSON lines) to check"
    )
    _ledger_options(e, True, json_option=False)
    e.add_argument("--peer", metavar="ID", help="only the pairs with this peer (default: all)")
    e.add_argument("--out", metavar="FILE", help="write to FILE (default: stdout)")
    e.set_defaults(handler=Command(ExportOptions.from_args, export_receipts))
    v = ledger_sub.add_parser(
        "verify", parents=[parents.common], help="check an exported receipt log"
    )
    v.add_argument("log", metavar="FILE", help="a receipt log from p2pnet ledger export")
    v.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="as JSON")
    v.set_defaults(handler=Command(VerifyOptions.from_args, verify_receipts))


def _ledger_options(
    parser: argparse.ArgumentParser, nested: bool, *, json_option: bool = True
) -> None:
    # On a sub-command the options default to SUPPRESS, so that ``p2pnet ledger --json
    # receipts`` keeps the --json given before the sub-command.
    default: Any = argparse.SUPPRESS if nested else None
    parser.add_argument(
        "--ledger",
        metavar="FILE",
        default=default,
        help="the ledger file (default: that of --identity, under $XDG_DATA_HOME/p2pnet/ledger)",
    )
    if json_option:
        parser.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS if nested else False,
            help="machine-readable output",
        )


def units_text(micro_units: int) -> str:
    """Micro-units as units with six decimals, exactly: 1500000 -> ``1.500000``."""
    sign = "-" if micro_units < 0 else ""
    whole, fraction = divmod(abs(micro_units), 1_000_000)
    return f"{sign}{whole:,}.{fraction:06d}"


def _open(file: PeerFile) -> Ledger | None:
    """The ledger, or None if there is none yet (said on stderr)."""
    from p2pnet.ledger import Ledger

    path = file.existing("this peer has recorded no receipts")
    return None if path is None else Ledger.open(path, create=False)


def _totals_json(totals: LedgerTotals) -> dict[str, int]:
    return {
        "served_units": totals.served_units,
        "consumed_units": totals.consumed_units,
        "receipts_as_provider": totals.receipts_as_provider,
        "receipts_as_caller": totals.receipts_as_caller,
        "acknowledgements": totals.acknowledgements,
        "peers": totals.peers,
    }


def show_balances(options: BalancesOptions) -> int:
    """Print the balance with each peer and the ledger's totals (micro-units in JSON)."""
    from p2pnet.ledger import LedgerTotals

    ledger = _open(options.file)
    if ledger is None:
        totals = LedgerTotals(0, 0, 0, 0, 0, 0)
        balances = []
    else:
        with ledger:
            totals, balances = ledger.totals(), ledger.peer_balances()
    if options.json:
        rows = [
            {
                "peer": b.peer,
                "served_units": b.served,
                "consumed_units": b.consumed,
                "balance_units": b.balance,
                "updated_at": b.updated_at,
            }
            for b in balances
        ]
        print(json.dumps({"balances": rows, "totals": _totals_json(totals)}, indent=2))
        return 0
    from rich.table import Table

    table = Table("peer", "served", "consumed", "balance", title="balances (units)")
    for b in balances:
        table.add_row(
            peer_text(b.peer), units_text(b.served), units_text(b.consumed), units_text(b.balance)
        )
    if balances:
        out.print(table)
    out.print(
        Text(
            f"{totals.peers} peers; served {units_text(totals.served_units)} units in "
            f"{totals.receipts_as_provider} receipts, consumed "
            f"{units_text(totals.consumed_units)} in {totals.receipts_as_caller}; "
            f"{totals.acknowledgements} acknowledgements"
        )
    )
    return 0


def show_receipts(options: ReceiptsOptions) -> int:
    """Print the receipts of the pairs with ``--peer``."""
    from p2pnet.ledger import receipt_fields

    ledger = _open(options.file)
    receipts: list[StoredReceipt] = []
    if ledger is not None:
        with ledger:
            receipts = ledger.receipts(options.peer, options.role)
    if options.json:
        print(json.dumps([receipt_fields(r) for r in receipts], indent=2))
        return 0
    from rich.table import Table

    table = Table("provider", "caller", "seq", "units", "model", "receipt")
    for r in receipts:
        table.add_row(
            peer_text(r.provider),
            peer_text(r.caller),
            str(r.seq),
            units_text(r.units),
            peer_text(r.model_id),
            r.receipt_hash.hex()[:16],
        )
    if receipts:
        out.print(table)
    out.print(Text(f"{len(receipts)} receipts with ") + peer_text(options.peer))
    return 0


def export_receipts(options: ExportOptions) -> int:
    """Write the receipt log to ``--out`` or stdout."""
    from p2pnet.ledger import Ledger

    path = options.file.path()
    with Ledger.open(path, create=False) as ledger:
        if options.out is None:
            ledger.export(options.peer, sys.stdout)
            return 0
        try:
            with options.out.open("x", encoding="utf-8") as fh:
                lines = ledger.export(options.peer, fh)
        except OSError as exc:
            raise LedgerError(f"cannot write {options.out}: {exc.strerror or exc}") from None
    err.print(Text(f"{lines} lines written to {options.out}"))
    return 0


def verify_receipts(options: VerifyOptions) -> int:
    """Check the receipt log's signatures, chain links and totals; exit status 1 if it
    fails."""
    from p2pnet.ledger import stored_acknowledgement, stored_receipt, verify_log

    try:
        fh = options.log.open(encoding="utf-8", errors="strict")
    except OSError as exc:
        raise LedgerError(f"cannot read {options.log}: {exc.strerror or exc}") from None
    status: Literal["ok", "failed"] = "ok"
    try:
        with fh:
            summary = verify_log(
                fh,
                name=str(options.log),
                check_receipt=stored_receipt,
                check_acknowledgement=stored_acknowledgement,
            )
    except UnicodeDecodeError as exc:
        problem = f"{options.log}: not UTF-8 text ({exc.reason})"
        status = "failed"
    except LedgerError as exc:
        problem = str(exc)
        status = "failed"
    if status == "failed":
        if options.json:
            print(json.dumps({"ok": False, "problem": problem}))
        else:
            err.print(Text("not valid: ", style="bold red") + peer_text(problem, limit=4000))
        return 1
    if options.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "pairs": summary.pairs,
                    "receipts": summary.receipts,
                    "acknowledgements": summary.acknowledgements,
                    "units": summary.units,
                    "signatures_checked": summary.signatures_checked,
                }
            )
        )
        return 0
    out.print(
        Text(
            f"valid: {summary.receipts} receipts in {summary.pairs} chains, "
            f"{summary.acknowledgements} acknowledgements, {units_text(summary.units)} units; "
            + ("signatures checked" if summary.signatures_checked else "signatures NOT checked")
        )
    )
    return 0
