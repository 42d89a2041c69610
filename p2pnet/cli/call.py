"""``p2pnet call``: call a model on a given peer, or found by task or ID, and print its
outputs."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt
import trio
from rich.text import Text

from p2pnet.cli.options import (
    Command,
    DiscoveryOptions,
    ParentParsers,
    Subparsers,
    accounting_config,
    add_input_option,
    finish_checks,
    load_identity,
)
from p2pnet.cli.render import out, outputs_table, peer_text, tensor_json
from p2pnet.core.model_id import parse_model_id
from p2pnet.errors import UsageError
from p2pnet.inputs import parse_input
from p2pnet.ledger import default_ledger_path
from p2pnet.peer import Peer

__all__ = ["CallOptions", "add_call_parser", "call_model"]


@dataclass(frozen=True, slots=True)
class CallOptions:
    """The options of ``p2pnet call``: ``target`` is ADDRESS MODEL_ID (or nothing, to find
    the model by --task or --model), ``inputs`` the NAME=VALUE texts."""

    discovery: DiscoveryOptions
    target: tuple[str, ...]
    inputs: tuple[str, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CallOptions:
        return cls(DiscoveryOptions.from_args(args), tuple(args.target), tuple(args.input))


def add_call_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "call",
        parents=[parents.common, parents.discovery],
        help="call a model on a given peer, or found by task or ID, and print its outputs",
    )
    p.add_argument(
        "target",
        nargs="*",
        metavar="ADDRESS MODEL_ID",
        help="the peer (/ip4/.../tcp/PORT/p2p/12D3...) and the model ID (bafkrei...)",
    )
    add_input_option(
        p, "an input: NAME=@file.npy, NAME=JSON, NAME:DTYPE=JSON or NAME=text (repeatable)"
    )
    p.set_defaults(handler=Command(CallOptions.from_args, call_model))


def call_model(options: CallOptions) -> int:
    """Call the model and print its outputs (a table, or JSON)."""
    started = time.perf_counter()
    served_by, outputs = trio.run(_call, options)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if options.discovery.json:
        print(json.dumps({name: tensor_json(arr) for name, arr in outputs.items()}))
        return 0
    out.print(outputs_table(served_by + f" ({elapsed_ms:.0f} ms)", outputs))
    return 0


async def _call(options: CallOptions) -> tuple[Text, dict[str, npt.NDArray[Any]]]:
    """(who served the call, as terminal-safe text; the outputs)."""
    discovery = options.discovery
    inputs = dict(parse_input(spec) for spec in options.inputs)
    join = discovery.swarm.resolve()
    identity, _, _ = load_identity(discovery.identity)
    if options.target:
        if len(options.target) != 2 or discovery.task is not None or discovery.model is not None:
            raise UsageError("give ADDRESS MODEL_ID, or --task/--model with --bootstrap")
        address, model_id = options.target[0], parse_model_id(options.target[1])
        ledger = default_ledger_path(identity.peer_id)
        async with Peer(
            identity,
            ledger=ledger,
            accounting=accounting_config(),
            listen=discovery.listen,
            swarm_key=join.swarm_key,
        ) as peer:
            outputs = await peer.invoke(address, model_id, inputs, timeout=discovery.timeout)
        return peer_text(f"{model_id} on {address.rsplit('/', 1)[-1]}"), outputs
    task, model = discovery.target(join)
    async with discovery.joining_peer(identity, join) as peer:
        offer, outputs = await peer.call_with_offer(
            inputs,
            task=task,
            model=model,
            timeout=discovery.timeout,
            max_price=discovery.max_price,
        )
        await finish_checks(peer)
    record = offer.record  # from another peer
    served_by = peer_text(record.name) + " " + peer_text(record.model_id)
    return served_by + " on " + peer_text(record.peer_id), outputs
