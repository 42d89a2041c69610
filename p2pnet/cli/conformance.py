"""``p2pnet conformance``: check a peer, p2pnet or not, against Protocol 1.0
(docs/protocol.md), or with ``--as-provider`` serve a model and check the client that
calls it. Exit status 0 iff no MUST check failed."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from p2pnet.cli.options import (
    DEFAULT_LISTEN,
    Command,
    ParentParsers,
    Subparsers,
    load_identity,
)
from p2pnet.cli.render import err, out, peer_text
from p2pnet.errors import UsageError

if TYPE_CHECKING:
    from p2pnet.conformance.checks import Verdict
    from p2pnet.conformance.provider import ClientObserver
    from p2pnet.net.identity import Identity

__all__ = ["ConformanceOptions", "add_conformance_parser", "run_conformance", "verdicts_table"]


def add_conformance_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "conformance",
        parents=[parents.common, parents.swarm],
        help="check a peer (or, with --as-provider, a client) against Protocol 1.0",
        description="Run the checks of docs/protocol.md against the peer at MULTIADDR "
        "(invoke, describe and kad: valid and invalid requests, error codes, stream rules, "
        "records, kad answers), or with --as-provider serve a model and check what a client "
        "under test sends it. Exit status 0 iff no MUST check failed.",
    )
    p.add_argument("multiaddr", nargs="?", metavar="MULTIADDR", help="the peer to check")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="longest wait for one reply, and for a stream that must end (default 5)",
    )
    p.add_argument(
        "--as-provider",
        action="store_true",
        help="serve a model and check the client that calls it; prints the address to call",
    )
    p.add_argument(
        "--serve",
        metavar="MODEL_FILE",
        help="with --as-provider: the model to serve (default: a built-in identity model, "
        "y = x, float32 [n])",
    )
    p.add_argument(
        "--for",
        dest="duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --as-provider: report after this long (default: at Ctrl-C)",
    )
    p.add_argument(
        "--listen",
        action="append",
        default=None,
        metavar="MULTIADDR",
        help="with --as-provider: where to listen (default /ip4/127.0.0.1/tcp/0)",
    )
    p.set_defaults(handler=Command(ConformanceOptions.from_args, run_conformance))


@dataclass(frozen=True, slots=True)
class ConformanceOptions:
    target: str | None
    json: bool
    timeout: float
    as_provider: bool
    serve: Path | None
    duration: float | None
    listen: tuple[str, ...]
    identity: Path | None
    swarm: str | None
    swarm_key: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ConformanceOptions:
        """Raises: UsageError: no MULTIADDR without --as-provider, or one with it."""
        if args.as_provider == (args.multiaddr is not None):
            raise UsageError("give either MULTIADDR (check a peer) or --as-provider")
        if not args.as_provider and (args.serve or args.duration is not None or args.listen):
            raise UsageError("--serve, --for and --listen go with --as-provider")
        if args.timeout <= 0 or (args.duration is not None and args.duration <= 0):
            raise UsageError("--timeout and --for must be above 0")
        return cls(
            target=args.multiaddr,
            json=args.json,
            timeout=args.timeout,
            as_provider=args.as_provider,
            serve=Path(args.serve) if args.serve else None,
            duration=args.duration,
            listen=tuple(args.listen or DEFAULT_LISTEN),
            identity=Path(args.identity) if args.identity else None,
            swarm=args.swarm,
            swarm_key=Path(args.swarm_key) if args.swarm_key else None,
        )


def run_conformance(options: ConformanceOptions) -> int:
    """Print the verdicts (a table, or ``--json``); 0 iff no MUST check failed."""
    import trio

    from p2pnet.conformance.checks import exit_status

    if options.as_provider:
        from p2pnet.conformance.provider import ClientObserver

        observer = ClientObserver()
        try:
            trio.run(_serve_and_observe, options, observer)
        except KeyboardInterrupt:
            pass  # Ctrl-C ends the observation: report what was seen
        verdicts = observer.verdicts()
    else:
        verdicts = trio.run(_check_peer, options)
    if options.json:
        print(json.dumps({"checks": [v.to_dict() for v in verdicts],
                          "exit_status": exit_status(verdicts)}, indent=2))  # fmt: skip
    else:
        out.print(verdicts_table(verdicts))
        out.print(_summary(verdicts))
    return exit_status(verdicts)


def _identity(options: ConformanceOptions) -> Identity:
    """The --identity given, else a fresh one: a checker leaves no trace in the user's."""
    from p2pnet.net.identity import generate_identity

    if options.identity is None:
        return generate_identity()
    identity, _, _ = load_identity(options.identity)
    return identity


def _swarm_key_file(options: ConformanceOptions) -> Path | None:
    from p2pnet.config import resolve_swarm

    return resolve_swarm(options.swarm, swarm_key=options.swarm_key).swarm_key


async def _check_peer(options: ConformanceOptions) -> list[Verdict]:
    from p2pnet.conformance.client import run_checks
    from p2pnet.core.address import parse_peer_address
    from p2pnet.net.host import open_host
    from p2pnet.net.swarm_key import load_swarm_key

    assert options.target is not None
    peer = parse_peer_address(options.target)
    key_file = _swarm_key_file(options)
    key = load_swarm_key(key_file) if key_file is not None else None
    async with open_host(_identity(options), DEFAULT_LISTEN, swarm_key=key) as host:
        return await run_checks(host, peer, timeout=options.timeout)


async def _serve_and_observe(options: ConformanceOptions, observer: ClientObserver) -> None:
    import trio

    from p2pnet.conformance.provider import ObservingHost, write_identity_model
    from p2pnet.net.host import open_host
    from p2pnet.net.swarm_key import load_swarm_key
    from p2pnet.peer import Peer

    identity = _identity(options)
    key_file = _swarm_key_file(options)
    key = load_swarm_key(key_file) if key_file is not None else None
    with tempfile.TemporaryDirectory(prefix="p2pnet-conformance-") as tmp:
        model = options.serve or write_identity_model(Path(tmp) / "identity.onnx")
        async with open_host(identity, options.listen, swarm_key=key) as host:
            peer = Peer(identity, host=ObservingHost(host, observer))
            info = peer.serve(model, tasks=("conformance",))
            async with peer:
                err.print(Text("serving model ") + peer_text(info.model_id)
                          + Text(" (task conformance); call this peer at:"))  # fmt: skip
                for addr in peer.addrs:
                    out.print(addr, markup=False)
                err.print("checking what its clients send; " + (
                    f"report in {options.duration:g} s" if options.duration
                    else "report at Ctrl-C"))  # fmt: skip
                if options.duration is None:
                    await trio.sleep_forever()
                await trio.sleep(options.duration)


_STYLES = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def verdicts_table(verdicts: Sequence[Verdict]) -> Table:
    """A row per check: outcome, level, name, spec section, and what was seen. What the
    peer sent (in ``detail``) is shown as ``terminal_safe`` text."""
    table = Table(show_edge=False, pad_edge=False)
    for column in ("result", "level", "check", "section", "seen"):
        table.add_column(column, overflow="fold")
    for v in verdicts:
        outcome = v.outcome.value
        table.add_row(
            Text(outcome, style=_STYLES[outcome]),
            v.check.level.value,
            v.check.name,
            v.check.section,
            peer_text(v.detail, limit=160),
        )
    return table


def _summary(verdicts: Sequence[Verdict]) -> Text:
    counts = {o: sum(v.outcome.value == o for v in verdicts) for o in ("pass", "fail", "skip")}
    must = sum(v.outcome.value == "fail" and v.check.level.value == "MUST" for v in verdicts)
    return Text(
        f"{counts['pass']} passed, {counts['fail']} failed ({must} MUST), {counts['skip']} skipped"
    )
