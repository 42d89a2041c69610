"""``p2pnet peer``: run a peer that serves models until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from rich.text import Text

from p2pnet.cli.options import (
    DEFAULT_LISTEN,
    Command,
    ParentParsers,
    Subparsers,
    SwarmOptions,
    accounting_config,
    dht_config,
    identity_path,
    load_identity,
    parse_price,
)
from p2pnet.cli.render import err, out, peer_text
from p2pnet.core.pricing import FREE, Price
from p2pnet.errors import ConfigError, UsageError
from p2pnet.gateway.settings import (
    DEFAULT_HTTP,
    default_token_path,
    is_loopback,
    read_token,
    write_token,
)

# The peer and what it runs on are imported by the code that starts it: parsing the
# command line loads none of it (tests/test_cli_imports.py).
if TYPE_CHECKING:
    import trio

    from p2pnet.core.batching import Batching
    from p2pnet.peer import Peer

__all__ = [
    "DEFAULT_GRPC",
    "GrpcOptions",
    "HttpOptions",
    "PeerOptions",
    "ServedFile",
    "add_peer_parser",
    "parse_grpc",
    "parse_http",
    "run_peer",
]

log = logging.getLogger(__name__)

# What ``--batch-delay-ms`` is unless given.
DEFAULT_BATCH_DELAY_MS = 2.0

# The address ``--grpc`` suggests (Triton's gRPC port, on loopback); off unless given.
DEFAULT_GRPC = ("127.0.0.1", 8001)


@dataclass(frozen=True, slots=True)
class ServedFile:
    """One ``--serve FILE``: the tasks it is announced for and the peers it is served to
    (None: everyone), those given before any ``--serve`` included; its dynamic batching
    (``--batch``, ``--batch-delay-ms``)."""

    path: Path
    tasks: tuple[str, ...]
    allow: tuple[str, ...] | None
    batching: Batching | None = None  # None: one run per call


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Where the peer serves its local HTTP API (docs/gateway.md).

    default: the address is the default one, not given: a taken port falls back to a
        free one instead of stopping the peer.
    token_file: where the token is kept (None: ``http/<peer-id>.token`` in the
        configuration directory, a new token at every start).
    """

    host: str
    port: int
    default: bool = False
    token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class GrpcOptions:
    """Where the peer serves the Open Inference Protocol over gRPC (docs/gateway.md),
    with the HTTP API's token (``token_file``: as ``HttpOptions``)."""

    host: str
    port: int
    token_file: Path | None = None


def parse_http(
    value: str | None, *, remote: bool = False, token_file: Path | None = None
) -> HttpOptions | None:
    """``--http HOST:PORT`` (``[IPv6]:PORT``; None: the default, 127.0.0.1:8739; "off":
    none) with ``--http-remote`` and ``--http-token-file``.

    Raises:
        UsageError: not HOST:PORT, a port outside 0-65535, or an address beyond loopback
        without both ``--http-remote`` and ``--http-token-file``.
    """
    if value is None:
        return HttpOptions(*DEFAULT_HTTP, default=True, token_file=token_file)
    if value == "off":
        return None
    host, port = _address("--http", "the HTTP API", DEFAULT_HTTP, value, remote, token_file)
    return HttpOptions(host, port, token_file=token_file)


def parse_grpc(
    value: str | None, *, remote: bool = False, token_file: Path | None = None
) -> GrpcOptions | None:
    """``--grpc HOST:PORT`` (``[IPv6]:PORT``; None or "off": none) with ``--http-remote``
    and ``--http-token-file``, as ``parse_http``.

    Raises:
        UsageError: as ``parse_http``.
    """
    if value is None or value == "off":
        return None
    host, port = _address("--grpc", "the gRPC API", DEFAULT_GRPC, value, remote, token_file)
    return GrpcOptions(host, port, token_file=token_file)


def _address(
    flag: str,
    what: str,
    example: tuple[str, int],
    value: str,
    remote: bool,
    token_file: Path | None,
) -> tuple[str, int]:
    """(host, port) of ``flag``'s ``value``, HOST:PORT or [IPv6]:PORT.

    Raises:
        UsageError: not HOST:PORT, a port outside 0-65535, or an address beyond loopback
        without both ``remote`` and a ``token_file``.
    """
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(
            f"{flag} {value!r}: expected HOST:PORT (e.g. {example[0]}:{example[1]}) or off"
        )
    if not is_loopback(host) and not (remote and token_file is not None):
        raise UsageError(
            f"{flag} {value}: {host} is reachable beyond this machine; serving {what} "
            "there needs --http-remote and --http-token-file FILE (a token only you hold)"
        )
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class PeerOptions:
    """The options of ``p2pnet peer``."""

    identity: Path | None
    swarm: SwarmOptions
    served: tuple[ServedFile, ...]
    listen: tuple[str, ...]
    announce: tuple[str, ...]
    max_concurrency: int
    threads: int | None
    role: Literal["peer", "bootstrap"]
    reachability: Literal["auto", "public", "private"]
    ledger: Path | None = None  # None: the identity's default ledger
    keep_ledger: bool = True
    price: Price = FREE
    http: HttpOptions | None = None  # None: no HTTP API
    grpc: GrpcOptions | None = None  # None: no gRPC API

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PeerOptions:
        """The parsed arguments as typed options.

        Raises:
            UsageError: ``--max-concurrency`` below 1, ``--threads`` below 0, a
            ``--price`` that is not three whole numbers of micro-units, or ``--http`` or
            ``--grpc`` options that do not fit (``parse_http``, ``parse_grpc``).
        """
        if args.max_concurrency < 1:
            raise UsageError("--max-concurrency must be at least 1")
        if args.threads is not None and args.threads < 0:
            raise UsageError("--threads must be 0 (onnxruntime chooses) or more")
        return cls(
            identity=identity_path(args),
            swarm=SwarmOptions.from_args(args),
            served=_served_files(args),
            listen=tuple(args.listen or DEFAULT_LISTEN),
            announce=tuple(args.announce),
            max_concurrency=args.max_concurrency,
            threads=args.threads,
            role=cast(Literal["peer", "bootstrap"], args.role),
            reachability=cast(Literal["auto", "public", "private"], args.reachability),
            ledger=args.ledger,
            keep_ledger=not args.no_ledger,
            price=parse_price(args.price) if args.price else FREE,
            http=parse_http(args.http, remote=args.http_remote, token_file=args.http_token_file),
            grpc=parse_grpc(args.grpc, remote=args.http_remote, token_file=args.http_token_file),
        )


def _served_files(args: argparse.Namespace) -> tuple[ServedFile, ...]:
    """Each ``--serve``, with the ``--task`` and ``--allow`` given before any ``--serve``
    added to its own, and the ``--batch``/``--batch-delay-ms`` given before any
    ``--serve`` where it has none of its own.

    Raises:
        UsageError: ``--batch-delay-ms`` without ``--batch``, or a bound out of range.
    """
    served = []
    for path, tasks, allow, batch in args.serve:
        everyone = allow is None and not args.allow
        access = None if everyone else (*args.allow, *(allow or ()))
        every = args.batching or {}
        merged = {part: every.get(part) if batch[part] is None else batch[part] for part in batch}
        batching = _batching(merged, path)
        served.append(ServedFile(Path(path), (*args.task, *tasks), access, batching))
    return tuple(served)


def _batching(batch: dict[str, Any] | None, path: str) -> Batching | None:
    """The ``Batching`` of ``--batch ROWS`` and ``--batch-delay-ms MS`` (default 2 ms).

    Raises:
        UsageError: a delay without rows, or a bound out of range.
    """
    if batch is None or (batch["rows"] is None and batch["delay"] is None):
        return None
    if batch["rows"] is None:
        raise UsageError(f"--batch-delay-ms for {path} needs --batch ROWS too")
    from p2pnet.core.batching import Batching

    delay = DEFAULT_BATCH_DELAY_MS if batch["delay"] is None else batch["delay"]
    try:
        return Batching(max_batch=batch["rows"], max_delay_ms=delay)
    except UsageError as exc:
        raise UsageError(f"--batch for {path}: {exc.message}") from None


class _ServeAction(argparse.Action):
    """``--serve FILE``: appends (FILE, tasks, allow) to ``serve``; ``--task`` fills the
    tasks, ``--allow`` the access list (None: everyone)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        served = list(getattr(namespace, "serve", None) or [])
        served.append([values, [], None, {"rows": None, "delay": None}])
        namespace.serve = served


class _TaskAction(argparse.Action):
    """``--task TAG``: a task of the last ``--serve`` model, or of all if none came yet."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        served = getattr(namespace, "serve", None) or []
        if served:
            served[-1][1].append(values)
        else:
            namespace.task = [*(getattr(namespace, "task", None) or []), values]


class _AllowAction(argparse.Action):
    """``--allow PEER[,PEER...]``: the peers the last ``--serve`` model is served to, or
    every model's if none came yet."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        peers = [p.strip() for p in str(values).split(",") if p.strip()]
        served = getattr(namespace, "serve", None) or []
        if served:
            served[-1][2] = [*(served[-1][2] or []), *peers]
        else:
            namespace.allow = [*(getattr(namespace, "allow", None) or []), *peers]


class _BatchAction(argparse.Action):
    """``--batch ROWS`` / ``--batch-delay-ms MS``: the dynamic batching of the last
    ``--serve`` model, or of every model if none came yet."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        part = "rows" if option_string == "--batch" else "delay"
        served = getattr(namespace, "serve", None) or []
        if served:
            served[-1][3][part] = values
        else:
            batch = dict(getattr(namespace, "batching", None) or {"rows": None, "delay": None})
            batch[part] = values
            namespace.batching = batch


def add_peer_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "peer",
        parents=[parents.common, parents.swarm],
        help="run a peer that serves models until Ctrl-C",
    )
    p.add_argument(
        "--serve",
        action=_ServeAction,
        default=[],
        metavar="FILE",
        help="ONNX file or adapter manifest (.json, docs/adapters.md) to serve (repeatable)",
    )
    p.add_argument(
        "--batch",
        action=_BatchAction,
        type=int,
        metavar="ROWS",
        help="run concurrent calls of the model of the --serve before it together, up to "
        "ROWS rows per run (dynamic batching, docs/models.md; every input and output needs "
        "a symbolic first dimension; before any --serve: for every model)",
    )
    p.add_argument(
        "--batch-delay-ms",
        action=_BatchAction,
        type=float,
        metavar="MS",
        help="with --batch: hold a call at most MS milliseconds for others to join its "
        f"batch (default {DEFAULT_BATCH_DELAY_MS:g})",
    )
    p.set_defaults(batching=None)
    p.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="address to listen on (repeatable; default /ip4/127.0.0.1/tcp/0)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=2,
        metavar="N",
        help="concurrent runs per model (default 2)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="onnxruntime threads per run of an ONNX model (default: the CPUs shared "
        "among --max-concurrency runs; 0: onnxruntime chooses, one per core)",
    )
    p.add_argument(
        "--task",
        action=_TaskAction,
        default=[],
        metavar="TAG",
        help="task the model of the --serve before it is announced for, e.g. "
        "sentiment-analysis (repeatable; before any --serve: for every model)",
    )
    p.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="peer to join the swarm through (repeatable); none starts a new swarm",
    )
    p.add_argument(
        "--role",
        choices=("peer", "bootstrap"),
        default="peer",
        help="bootstrap: a DHT peer that others join through (every peer is a DHT server) "
        "and a relay for peers behind NATs",
    )
    p.add_argument(
        "--reachability",
        choices=("auto", "public", "private"),
        default="auto",
        help="auto: ask the bootstrap peers whether they can dial this peer back (default); "
        "private: always reserve a relay slot on them",
    )
    p.add_argument(
        "--allow",
        action=_AllowAction,
        default=[],
        metavar="PEER,...",
        help="serve the model of the --serve before it only to these peer IDs (repeatable; "
        "before any --serve: every model); others get permission_denied",
    )
    p.add_argument(
        "--announce",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="address to put in this peer's records instead of the listen addresses "
        "(repeatable), e.g. a public address forwarded to --listen",
    )
    p.add_argument(
        "--price",
        metavar="CALL,MB,CPU_S",
        help="what a call of every served model costs, in micro-units (1 unit = 10^6): "
        "per call, per MB of tensors moved, per CPU second, e.g. 1000,10000,1000000 "
        "(default: free)",
    )
    p.add_argument(
        "--ledger",
        type=Path,
        metavar="FILE",
        help="where to keep usage receipts and balances (default: "
        "$XDG_DATA_HOME/p2pnet/ledger/<peer-id>.sqlite3)",
    )
    p.add_argument(
        "--no-ledger",
        action="store_true",
        help="keep no ledger: results carry no receipts, callers are not held to credit",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve the local HTTP API and /metrics there (docs/gateway.md; default "
        f"{DEFAULT_HTTP[0]}:{DEFAULT_HTTP[1]}, a free port if that one is taken; off: none)",
    )
    p.add_argument(
        "--http-remote",
        action="store_true",
        help="allow --http and --grpc on an address beyond loopback (needs --http-token-file)",
    )
    p.add_argument(
        "--http-token-file",
        type=Path,
        metavar="FILE",
        help="the API token: read from FILE if it exists (mode 0600), else a new one "
        "written there (default: a new one at every start in "
        "$XDG_CONFIG_HOME/p2pnet/http/<peer-id>.token)",
    )
    p.add_argument(
        "--grpc",
        metavar="HOST:PORT",
        help="serve the Open Inference Protocol over gRPC there, with the HTTP API's token, "
        f"e.g. {DEFAULT_GRPC[0]}:{DEFAULT_GRPC[1]} (docs/gateway.md; default: off)",
    )
    p.set_defaults(handler=Command(PeerOptions.from_args, run_peer))


def run_peer(options: PeerOptions) -> int:
    """Serve until SIGINT or SIGTERM, then stop cleanly."""
    import trio

    trio.run(_serve, options)
    err.print("stopped")
    return 0


async def _serve(options: PeerOptions) -> None:
    import trio

    from p2pnet.config import load_connections, load_sessions, load_trust
    from p2pnet.ledger import default_ledger_path
    from p2pnet.net.nat_config import NatConfig
    from p2pnet.peer import Peer
    from p2pnet.status import keep_status
    from p2pnet.trust import default_trust_path

    join = options.swarm.resolve()
    identity, _, _ = load_identity(options.identity)
    # Signals are caught before "ready" is printed: a supervisor that stops the peer as
    # soon as it is ready must get a clean shutdown, not the default handler's kill.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        ledger = None
        if options.keep_ledger:
            ledger = options.ledger or default_ledger_path(identity.peer_id)
        peer = Peer(
            identity,
            ledger=ledger,
            accounting=accounting_config(),
            # Spot checks of the calls it makes (pipelines it runs), as [trust] says.
            trust_store=default_trust_path(identity.peer_id),
            spot_checks=load_trust(),
            dht=dht_config(),
            sessions=load_sessions(),
            connections=load_connections(),
            listen=options.listen,
            max_concurrency=options.max_concurrency,
            threads=options.threads,
            bootstrap=join.bootstrap,
            swarm_key=join.swarm_key,
            announce=options.announce,
            # A bootstrap peer is also a circuit relay for peers behind NATs.
            nat=NatConfig(
                relay_service=options.role == "bootstrap", reachability=options.reachability
            ),
        )
        for served in options.served:
            peer.serve(
                served.path,
                tasks=served.tasks,
                allow=served.allow,
                price=options.price,
                batching=served.batching,
            )
        async with peer:
            status = peer.status()
            role = " (bootstrap)" if options.role == "bootstrap" else ""
            out.print(_line(f"peer {status.peer_id}{role}"))
            for addr in status.listen_addrs:
                out.print(_line(f"listening {addr}"))
            if options.announce:
                for addr in status.announced_addrs:
                    out.print(_line(f"announcing {addr}"))
            if status.swarm_key_fingerprint is not None:
                out.print(_line(f"private network, swarm key {status.swarm_key_fingerprint}"))
            for model in status.models:  # tasks: an adapter's own too
                tasks = ",".join(model.tasks)
                out.print(_line(f"serving {model.model_id} {model.name} {tasks}".rstrip()))
                if model.allow is not None:
                    out.print(_line(f"  only for {', '.join(model.allow) or 'this peer'}"))
                if model.batching is not None:
                    rows, delay = model.batching["max_batch"], model.batching["max_delay_ms"]
                    out.print(_line(f"  batching up to {rows:.0f} rows, waiting {delay:g} ms"))
            if status.models:
                out.print(f"announced to {await peer.announce()} peers")
            async with trio.open_nursery() as nursery:
                # Before the status file: its first version shows the API's URL.
                # One token for both APIs (its file written even when only gRPC is on).
                gateway = options.http or options.grpc
                if gateway is not None:
                    token, token_path = http_token(gateway, peer.peer_id)
                if options.http is not None:
                    url = await _start_http(nursery, peer, options.http, token)
                    out.print(_line(f"http api {url} (token in {token_path})"))
                    # The token in the fragment: the browser never sends it in the URL.
                    fragment = urllib.parse.quote(token, safe="")
                    out.print(_line(f"status page {url}/#token={fragment}"))
                    gateways = f"{url}/v2 (OIP), {url}/v1 (OpenAI-style chat), {url}/mcp (MCP)"
                    out.print(_line(f"gateways {gateways}"))
                if options.grpc is not None:
                    target = await _start_grpc(nursery, peer, options.grpc, token)
                    out.print(_line(f"grpc api {target} (token in {token_path})"))
                status_path = await nursery.start(
                    functools.partial(
                        keep_status, peer, role=options.role, swarm=options.swarm.name
                    )
                )
                log.info("status in %s", status_path)
                out.print("ready (Ctrl-C to stop)", style="bold")
                sys.stdout.flush()
                async for signum in signals:
                    err.print(f"{signal.Signals(signum).name}: stopping")
                    break
                nursery.cancel_scope.cancel()


def http_token(options: HttpOptions | GrpcOptions, peer_id: str) -> tuple[str, Path]:
    """The API token and its file: the ``--http-token-file``'s if it holds one, else a new
    one written there (or to the identity's default token file).

    Raises:
        ConfigError: the token file is readable by others than its owner, or cannot be
        read or written.
    """
    if options.token_file is not None:
        token = read_token(options.token_file)
        if token:
            return token, options.token_file
    path = options.token_file or default_token_path(peer_id)
    return write_token(path), path


async def _start_http(nursery: trio.Nursery, peer: Peer, options: HttpOptions, token: str) -> str:
    """Serve the peer's HTTP API in ``nursery``; its URL.

    Raises:
        ConfigError: the address cannot be bound.
    """
    from p2pnet.gateway.app import serve_http  # hypercorn and starlette: only when serving

    serve = functools.partial(serve_http, peer, options.host, token=token)
    try:
        url: str = await nursery.start(serve, options.port)
    except OSError as exc:
        if not options.default:
            raise ConfigError(
                f"--http {options.host}:{options.port}: {exc.strerror or exc}"
            ) from None
        log.warning("HTTP port %d: %s; serving on a free port", options.port, exc.strerror)
        url = await nursery.start(serve, 0)
    return url


async def _start_grpc(nursery: trio.Nursery, peer: Peer, options: GrpcOptions, token: str) -> str:
    """Serve the Open Inference Protocol over gRPC in ``nursery``; its address.

    Raises:
        ConfigError: the address cannot be bound.
    """
    try:
        from p2pnet.gateway.oip_grpc import serve_grpc  # grpcio: only when serving
    except ImportError as exc:
        raise ConfigError(
            f"--grpc needs grpcio and tritonclient's gRPC service ({exc.name} is missing): "
            "pip install 'p2pnet[grpc]'"
        ) from None

    serve = functools.partial(serve_grpc, peer, options.host, token=token)
    try:
        target: str = await nursery.start(serve, options.port)
    except OSError as exc:
        raise ConfigError(f"--grpc {options.host}:{options.port}: {exc}") from None
    return target


def _line(text: str) -> Text:
    """A line of the peer's own status as text, not markup: model names come from file
    names, which may hold ``[...]`` or control characters."""
    return peer_text(text, limit=None)
