"""``p2pnet mcp``: the swarm's models as Model Context Protocol tools on stdin and stdout,
for an AI agent that starts it (docs/gateway.md, "MCP"). If the peer of this identity
already runs with its HTTP API, the messages are forwarded to that peer's ``/mcp``;
otherwise a peer joins the swarm for the session."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text

from p2pnet.cli.options import (
    DEFAULT_LISTEN,
    Command,
    DiscoveryOptions,
    ParentParsers,
    Subparsers,
    SwarmOptions,
    finish_checks,
    identity_path,
    load_identity,
)
from p2pnet.cli.render import err
from p2pnet.errors import UsageError

__all__ = ["McpOptions", "add_mcp_parser", "run_mcp"]


@dataclass(frozen=True, slots=True)
class McpOptions:
    """The options of ``p2pnet mcp``: ``expose`` the tasks offered as tools (empty: every
    task the peer knows), ``timeout`` the seconds of each call."""

    identity: Path | None
    swarm: SwarmOptions
    expose: tuple[str, ...]
    timeout: float
    listen: tuple[str, ...]
    verbose: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> McpOptions:
        """The parsed arguments as typed options.

        Raises:
            UsageError: an ``--expose`` that is not a task tag or is given twice, or a
                ``--timeout`` that is not above 0.
        """
        from p2pnet.gateway.mcp import check_expose

        if not args.timeout > 0:
            raise UsageError(f"--timeout {args.timeout}: must be above 0")
        try:
            expose = check_expose(args.expose)
        except UsageError as exc:
            raise UsageError(f"--expose: {exc.message}") from None
        return cls(
            identity=identity_path(args),
            swarm=SwarmOptions.from_args(args),
            expose=expose,
            timeout=args.timeout,
            listen=tuple(args.listen or DEFAULT_LISTEN),
            verbose=args.verbose,
        )


def add_mcp_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "mcp",
        parents=[parents.common, parents.swarm],
        help="serve the swarm's models as MCP tools on stdin/stdout (for AI agents)",
        description="Serve the swarm's models as Model Context Protocol tools on stdin and "
        "stdout, one tool per task, until stdin ends. If the peer of this identity runs "
        "with its HTTP API, the messages go to its /mcp; otherwise a peer joins the swarm "
        "(--bootstrap or --swarm) for the session. Logs go to stderr.",
    )
    p.add_argument(
        "--expose",
        action="append",
        default=[],
        metavar="TASK",
        help="offer this task as a tool (repeatable; default: every task the peer knows "
        "of, which a peer that has just started knows few of)",
    )
    p.add_argument(
        "--bootstrap",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="a peer of the swarm to join (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give each tool call this long (default 30)",
    )
    p.add_argument(
        "--listen", action="append", default=None, metavar="MULTIADDR", help=argparse.SUPPRESS
    )
    p.set_defaults(handler=Command(McpOptions.from_args, run_mcp))


def run_mcp(options: McpOptions) -> int:
    """Serve MCP on stdio until stdin ends; 0 then."""
    import trio

    trio.run(_mcp, options)
    return 0


async def _mcp(options: McpOptions) -> None:
    from p2pnet.gateway.mcp import bridge_stdio, endpoint_url, serve_stdio
    from p2pnet.gateway.settings import running_api

    identity, _, _ = load_identity(options.identity)
    api = running_api(identity.peer_id)
    if api is not None:
        # One peer per identity: use the running one, whose connections are warm.
        err.print(Text(f"MCP on stdio through the running peer's API at {api.url}"))
        if options.swarm.bootstrap or options.swarm.name or options.swarm.swarm_key:
            err.print(Text("(the swarm options are not used: that peer is in its swarm)"))
        await bridge_stdio(endpoint_url(api.url, options.expose), api.token)
        return
    join = options.swarm.resolve()
    if not join.bootstrap:
        raise UsageError(
            "no peer of this identity is running with its HTTP API, so p2pnet mcp joins the "
            "swarm itself: give --bootstrap /ip4/.../tcp/PORT/p2p/12D3... or --swarm NAME"
        )
    discovery = DiscoveryOptions(
        identity=options.identity,
        swarm=options.swarm,
        task=None,
        model=None,
        timeout=options.timeout,
        listen=options.listen,
        json=False,
        verbose=options.verbose,
    )
    async with discovery.joining_peer(identity, join) as peer:
        err.print(Text(f"MCP on stdio with peer {peer.peer_id}"))
        await serve_stdio(peer, expose=options.expose, timeout=options.timeout)
        await finish_checks(peer)
