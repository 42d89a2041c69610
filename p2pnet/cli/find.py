"""``p2pnet find``: find models in the swarm by task or ID: providers, schemas, latency."""

from __future__ import annotations

import json

import trio
from rich.markup import escape

from p2pnet.cli.options import (
    Command,
    DiscoveryOptions,
    ParentParsers,
    Subparsers,
    load_identity,
)
from p2pnet.cli.render import err, out
from p2pnet.discovery.service import Offer

__all__ = ["add_find_parser", "find_models"]


def add_find_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "find",
        parents=[parents.common, parents.discovery],
        help="find models in the swarm by task or ID: providers, schemas, latency",
    )
    p.set_defaults(handler=Command(DiscoveryOptions.from_args, find_models))


def find_models(options: DiscoveryOptions) -> int:
    """Print the offers found, best first; exit status 1 if there are none."""
    offers = trio.run(_find, options)
    if options.json:
        print(json.dumps([offer.to_dict() for offer in offers], indent=2))
        return 0 if offers else 1
    if not offers:
        err.print("no peer offers it")
        return 1
    out.print(f"{len(offers)} offer(s), best first")
    for offer in offers:
        r = offer.record
        # The record comes from another peer: its text is printed as text, not markup.
        out.print(f"\n[bold]{escape(r.name)}[/]  {r.model_id}  {offer.rtt * 1000:.1f} ms")
        out.print(f"  tasks    {', '.join(r.tasks) or '-'}", markup=False)
        out.print(f"  peer     {r.peer_id}", markup=False)
        for addr in r.addrs:
            out.print(f"  address  {addr}/p2p/{r.peer_id}", markup=False)
        out.print(f"  inputs   {', '.join(t.describe() for t in r.schema.inputs)}", markup=False)
        out.print(f"  outputs  {', '.join(t.describe() for t in r.schema.outputs)}", markup=False)
    return 0


async def _find(options: DiscoveryOptions) -> list[Offer]:
    join = options.swarm.resolve()
    task, model = options.target(join)
    identity, _, _ = load_identity(options.identity)
    async with options.joining_peer(identity, join) as peer:
        return await peer.find(task=task, model=model, timeout=options.timeout)
