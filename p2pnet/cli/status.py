"""``p2pnet status``: what the peers running on this machine are doing, from their status
files (p2pnet/status.py)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from p2pnet.cli.options import Command, ParentParsers, Subparsers
from p2pnet.cli.render import err, out
from p2pnet.status import read_statuses

__all__ = ["StatusOptions", "add_status_parser", "show_status"]


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
    statuses = [
        s for s in read_statuses() if options.pid is None or s.data.get("pid") == options.pid
    ]
    if options.json:
        print(json.dumps([s.data | {"age_s": round(s.age, 1)} for s in statuses], indent=2))
        return 0 if statuses else 1
    if not statuses:
        err.print("no running peer on this machine (p2pnet peer writes its status when ready)")
        return 1
    for i, st in enumerate(statuses):
        d = st.data
        if i:
            out.print()
        role = " (bootstrap)" if d.get("role") == "bootstrap" else ""
        out.print(f"[bold]peer {d['peer_id']}[/]{role}  pid {d['pid']}")
        if st.stale:
            out.print(f"  [bold red]not updated for {st.age:.0f} s: the peer may be hung[/]")
        swarm = d.get("swarm") or "-"
        key = d.get("swarm_key_fingerprint")
        out.print(f"  swarm        {swarm}" + (f", private (key {key})" if key else ""))
        for addr in d.get("listen_addrs", []):
            out.print(f"  listening    {addr}", markup=False)
        if d.get("announced_addrs") != d.get("listen_addrs"):
            for addr in d.get("announced_addrs", []):
                out.print(f"  announcing   {addr}", markup=False)
        out.print(f"  reachability {d.get('reachability', 'unknown')}")
        c = d["connections"]
        out.print(f"  connections  {c['total']} ({c['direct']} direct, {c['relayed']} relayed)")
        out.print(f"  routing      {d.get('routing_table', 0)} peers in the DHT routing table")
        for m in d.get("models", []):
            tasks = ", ".join(m["tasks"]) or "-"
            out.print(f"  serving      {m['name']} {m['model_id']}  tasks {tasks}", markup=False)
            if m.get("allow") is not None:
                allowed = ", ".join(m["allow"]) or "this peer only"
                out.print(f"               only for {allowed}", markup=False)
    return 0
