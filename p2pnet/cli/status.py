"""``p2pnet status``: what the peers running on this machine are doing, from their status
files (p2pnet/status.py)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text

from p2pnet.cli.options import Command, ParentParsers, Subparsers
from p2pnet.cli.render import err, joined_text, out, peer_text

if TYPE_CHECKING:  # p2pnet.status loads trio: imported when the command runs
    from p2pnet.status import JoinState, StatusFile

__all__ = [
    "StatusOptions",
    "add_status_parser",
    "join_text",
    "render_status",
    "show_status",
    "status_text",
]


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
    from p2pnet.status import read_statuses

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
    out.print(status_text(file))


def status_text(file: StatusFile) -> Text:
    """One peer's status as text. The file is this machine's, but its fields hold text
    from elsewhere (model names and tasks from files, addresses), so all of it is shown
    ``terminal_safe``."""
    st = file.status
    role = " (bootstrap)" if file.role == "bootstrap" else ""
    lines = [peer_text(f"peer {st.peer_id}", "bold") + f"{role}  pid {file.pid}"]
    if file.stale:
        lines.append(
            Text(f"  not updated for {file.age:.0f} s: the peer may be hung", style="bold red")
        )
    key = st.swarm_key_fingerprint
    swarm = Text("  swarm        ") + peer_text(file.swarm or "-")
    lines.append(swarm + (peer_text(f", private (key {key})") if key else ""))
    lines.extend(Text("  listening    ") + peer_text(addr) for addr in st.listen_addrs)
    if st.announced_addrs != st.listen_addrs:
        lines.extend(Text("  announcing   ") + peer_text(addr) for addr in st.announced_addrs)
    lines.append(Text("  reachability ") + peer_text(st.reachability))
    paths = [c.path for c in st.connections]
    direct, relayed = paths.count("direct"), paths.count("relayed")
    lines.append(Text(f"  connections  {len(paths)} ({direct} direct, {relayed} relayed)"))
    lines.append(
        Text(f"  routing      {st.routing_table} peers in the DHT routing table (")
        + peer_text(st.dht_mode)
        + ")"
    )
    if st.http is not None:
        lines.append(Text("  http api     ") + peer_text(st.http))
    if st.grpc is not None:
        lines.append(Text("  grpc api     ") + peer_text(st.grpc))
    if st.join is not None:
        lines.append(Text("  join         ") + join_text(st.join, file.data.get("updated_at")))
    if st.dht:
        d = st.dht
        lines.append(
            Text(
                f"  dht          network ~{d.get('network_size', 0):,.0f} peers; "
                f"{d.get('density_alarms', 0):.0f} of {d.get('density_checked', 0):.0f} "
                "lookups judged suspicious (sybils near a key)"
            )
        )
        if d.get("diversity_refused") or d.get("diversity_dropped_replies"):
            lines.append(
                Text(
                    "               IP-group limits: a peer kept out of the routing table "
                    f"{d.get('diversity_refused', 0):.0f} times, "
                    f"{d.get('diversity_dropped_replies', 0):.0f} lookup answers dropped"
                )
            )
    if st.ledger is not None:
        r = st.receipts
        lines.append(
            Text("  ledger       ")
            + peer_text(st.ledger)
            + f"  receipts issued {r.get('issued', 0)}, accepted {r.get('accepted', 0)}"
            + f"; refused for credit {r.get('refused_for_credit', 0)}"
        )
        for peer, units in st.balances.items():
            owes = "owes this peer" if units > 0 else "is owed"
            lines.append(
                Text("  balance      ") + peer_text(peer) + f" {owes} {abs(units):,} micro-units"
            )
    if st.trust:
        t = st.trust
        lines.append(
            Text(
                f"  spot checks  {t.get('sampled', 0)} drawn: {t.get('agreed', 0)} agreed, "
                f"{t.get('disagreed', 0)} disagreed, {t.get('unresolved', 0)} unresolved; "
                f"{t.get('extra_calls', 0)} extra calls; {t.get('untrusted', 0)} providers "
                "marked untrusted"
            )
        )
    if st.generation:
        g = st.generation
        lines.append(
            Text(
                f"  generation   {g.get('generations', 0)} replies streamed, "
                f"{g.get('tokens', 0):,} tokens, {g.get('cancelled', 0)} cancelled; "
                f"{g.get('sessions', 0)} sessions open"
            )
        )
    if st.limits_hit:
        hits = ", ".join(f"{reason} {n}" for reason, n in sorted(st.limits_hit.items()))
        lines.append(Text("  limits hit   ") + peer_text(hits))
    for m in st.models:
        tasks = joined_text([peer_text(t) for t in m.tasks])
        served = peer_text(m.name) + " " + peer_text(m.model_id)
        lines.append(Text("  serving      ") + served + Text("  tasks ") + tasks)
        if m.allow is not None:
            allowed = joined_text([peer_text(p) for p in m.allow], empty="this peer only")
            lines.append(Text("               only for ") + allowed)
        if m.batching is not None:
            b = m.batching
            lines.append(
                Text(
                    f"               batching up to {b.get('max_batch', 0):.0f} rows, "
                    f"{b.get('max_delay_ms', 0):g} ms: {b.get('batches', 0):.0f} batches, "
                    f"{b.get('rows_per_batch', 0):.1f} rows per batch"
                )
            )
    return Text("\n").join(lines)


def join_text(join: JoinState, updated_at: object = None) -> Text:
    """``joined``, or how long the peer has been alone and when it asks again."""
    if join.state == "joined":
        return Text("joined")
    parts = [join.state]
    if join.alone_since is not None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(join.alone_since))
        parts.append(f"since {since}")
    if isinstance(updated_at, int | float) and join.alone_since is not None:
        parts[-1] += f" ({max(0.0, updated_at - join.alone_since):.0f} s)"
    if join.state == "alone":
        parts.append("retrying")
    parts.append(f"{join.attempts} attempts")
    if join.next_attempt_in is not None:
        parts.append(f"next in {join.next_attempt_in:.0f} s")
    return Text(", ".join(parts), style="bold yellow")
