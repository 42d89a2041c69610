"""``p2pnet status``: what the peers running on this machine are doing, from their status
files (p2pnet/status.py)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from rich.markup import escape

from p2pnet.cli.options import Command, ParentParsers, Subparsers
from p2pnet.cli.render import err, out
from p2pnet.status import StatusFile, read_statuses

__all__ = ["StatusOptions", "add_status_parser", "render_status", "show_status"]


@dataclass(frozen=True, slots=True)
class StatusOptions:
    """The options of ``p2pnet status``: the process of the one peer to show (None: all)."""

    pid: int | None
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StatusOptions:
        return cls(args.pid, args.json)


def add_status_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "status",
        parents=[parents.common],
        help="what the peers running on this machine are doing",
    )
    p.add_argument("--pid", type=int, metavar="PID", help="only the peer of this process")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=Command(StatusOptions.from_args, show_status))


def show_status(options: StatusOptions) -> int:
    """Print each running peer's status; exit status 1 if none is running."""
    statuses = [s for s in read_statuses() if options.pid is None or s.pid == options.pid]
    if options.json:
        print(json.dumps([s.data | {"age_s": round(s.age, 1)} for s in statuses], indent=2))
        return 0 if statuses else 1
    if not statuses:
        err.print("no running peer on this machine (p2pnet peer writes its status when ready)")
        return 1
    for i, file in enumerate(statuses):
        if i:
            out.print()
        render_status(file)
    return 0


def render_status(file: StatusFile) -> None:
    """One peer's status, as ``p2pnet status`` prints it."""
    st = file.status
    role = " (bootstrap)" if file.role == "bootstrap" else ""
    out.print(f"[bold]peer {escape(st.peer_id)}[/]{role}  pid {file.pid}")
    if file.stale:
        out.print(f"  [bold red]not updated for {file.age:.0f} s: the peer may be hung[/]")
    key = st.swarm_key_fingerprint
    out.print(
        f"  swarm        {file.swarm or '-'}" + (f", private (key {key})" if key else ""),
        markup=False,
    )
    for addr in st.listen_addrs:
        out.print(f"  listening    {addr}", markup=False)
    if st.announced_addrs != st.listen_addrs:
        for addr in st.announced_addrs:
            out.print(f"  announcing   {addr}", markup=False)
    out.print(f"  reachability {st.reachability}", markup=False)
    paths = [c.path for c in st.connections]
    direct, relayed = paths.count("direct"), paths.count("relayed")
    out.print(f"  connections  {len(paths)} ({direct} direct, {relayed} relayed)")
    out.print(f"  routing      {st.routing_table} peers in the DHT routing table ({st.dht_mode})")
    for m in st.models:
        tasks = ", ".join(m.tasks) or "-"
        out.print(f"  serving      {m.name} {m.model_id}  tasks {tasks}", markup=False)
        if m.allow is not None:
            allowed = ", ".join(m.allow) or "this peer only"
            out.print(f"               only for {allowed}", markup=False)
