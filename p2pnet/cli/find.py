"""``p2pnet find``: find models in the swarm by task or ID: providers, schemas, latency."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rich.text import Text

from p2pnet.cli.options import (
    Command,
    DiscoveryOptions,
    ParentParsers,
    Subparsers,
    load_identity,
    running_peer_client,
)
from p2pnet.cli.render import SpecLike, err, joined_text, out, peer_text, spec_text

if TYPE_CHECKING:
    from p2pnet.core.schema import Dim

__all__ = ["OfferLike", "add_find_parser", "find_models", "offers_text", "unanswered_text"]


def add_find_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "find",
        parents=[parents.common, parents.discovery],
        help="find models in the swarm by task or ID: providers, schemas, latency",
    )
    p.set_defaults(handler=Command(DiscoveryOptions.from_args, find_models))


def find_models(options: DiscoveryOptions) -> int:
    """Print the offers found, best first, and the providers that did not answer in time
    (with ``-v``, or in ``--json``); exit status 1 if there are none."""
    found = _find_through_running_peer(options)
    if found is None:
        import trio

        found = trio.run(_find, options)
    offers = [_OfferView.of(offer) for offer in found["offers"]]
    unanswered = found["unanswered"]
    if options.json:
        # JSON keeps every value exact: json.dumps escapes control characters itself.
        print(json.dumps(found, indent=2))
        return 0 if offers else 1
    if options.verbose and unanswered:
        err.print(unanswered_text(unanswered))
    if not offers:
        err.print("no peer offers it")
        return 1
    out.print(offers_text(offers))
    return 0


class _Schema(Protocol):
    """What ``offers_text`` shows of a schema (a ModelSchema, or its JSON form)."""

    @property
    def inputs(self) -> Sequence[SpecLike]: ...
    @property
    def outputs(self) -> Sequence[SpecLike]: ...


class _Record(Protocol):
    """What ``offers_text`` shows of a capability record."""

    @property
    def name(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def peer_id(self) -> str: ...
    @property
    def tasks(self) -> Sequence[str]: ...
    @property
    def addrs(self) -> Sequence[str]: ...
    @property
    def schema(self) -> _Schema: ...


class OfferLike(Protocol):
    """An offer as ``offers_text`` shows it: an Offer, or its ``--json`` form read back."""

    @property
    def record(self) -> _Record: ...
    @property
    def rtt(self) -> float: ...


# Views of an offer's JSON form: plain values, as shown (core.schema's types would load
# numpy, which ``p2pnet find`` does not need; tests/test_cli_imports.py).
@dataclass(frozen=True, slots=True)
class _SpecView:
    name: str
    dtype: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True, slots=True)
class _SchemaView:
    inputs: tuple[_SpecView, ...]
    outputs: tuple[_SpecView, ...]


@dataclass(frozen=True, slots=True)
class _RecordView:
    name: str
    model_id: str
    peer_id: str
    tasks: tuple[str, ...]
    addrs: tuple[str, ...]
    schema: _SchemaView


@dataclass(frozen=True, slots=True)
class _OfferView:
    """An offer of ``Offer.to_dict()`` form (this process's, or the running peer's API's),
    with what ``offers_text`` shows of it."""

    record: _RecordView
    rtt: float

    @classmethod
    def of(cls, doc: dict[str, Any]) -> _OfferView:
        def specs(key: str) -> tuple[_SpecView, ...]:
            return tuple(
                _SpecView(str(t["name"]), str(t["dtype"]), tuple(t["shape"])) for t in doc[key]
            )

        record = _RecordView(
            str(doc["name"]),
            str(doc["model_id"]),
            str(doc["peer_id"]),
            tuple(doc["tasks"]),
            tuple(doc["addrs"]),
            _SchemaView(specs("inputs"), specs("outputs")),
        )
        return cls(record, float(doc["rtt_ms"]) / 1000)


def offers_text(offers: Sequence[OfferLike]) -> Text:
    """The offers as ``p2pnet find`` prints them: per offer its name, model ID and describe
    round trip, then its tasks, peer, addresses, inputs and outputs. Everything in a record
    comes from another peer, so all of it is shown as ``terminal_safe`` text."""
    lines = [Text(f"{len(offers)} offer(s), best first")]
    for offer in offers:
        r = offer.record
        lines.append(Text())
        lines.append(
            peer_text(r.name, "bold")
            + "  "
            + peer_text(r.model_id)
            + f"  {offer.rtt * 1000:.1f} ms"
        )
        lines.append(Text("  tasks    ") + joined_text([peer_text(t) for t in r.tasks]))
        lines.append(Text("  peer     ") + peer_text(r.peer_id))
        peer = Text("/p2p/") + peer_text(r.peer_id)
        lines.extend(Text("  address  ") + peer_text(a) + peer for a in r.addrs)
        lines.append(Text("  inputs   ") + joined_text([spec_text(t) for t in r.schema.inputs]))
        lines.append(Text("  outputs  ") + joined_text([spec_text(t) for t in r.schema.outputs]))
    return Text("\n").join(lines)


def unanswered_text(unanswered: Sequence[str]) -> Text:
    """The providers the DHT named that did not describe their models in time."""
    return Text(f"{len(unanswered)} provider(s) did not answer in time: ") + joined_text(
        [peer_text(p) for p in unanswered]
    )


def _find_through_running_peer(options: DiscoveryOptions) -> dict[str, Any] | None:
    """What ``--json`` prints, found by the running peer of the identity
    (``running_peer_client``: no trio, no peer of this command's own); None when there
    is none to use."""
    task, model = options.wanted()  # the caller's mistakes before anything else
    api = running_peer_client(options)
    if api is None:
        return None
    with api:
        reply = api.find(
            task=task, model=model, timeout=options.timeout, max_price=options.max_price
        )
    return {"offers": reply.offers, "unanswered": reply.unanswered}


async def _find(options: DiscoveryOptions) -> dict[str, Any]:
    """What ``--json`` prints: the offers (``Offer.to_dict()``), best first, and the
    providers that did not answer, found by a peer of this command's own."""
    join = options.swarm.resolve()
    task, model = options.target(join)
    identity, _, _ = load_identity(options.identity)
    async with options.joining_peer(identity, join) as peer:
        search = await peer.finder.search(
            task=task, model=model, timeout=options.timeout, max_price=options.max_price
        )
    return {
        "offers": [offer.to_dict() for offer in search.offers],
        "unanswered": list(search.unanswered),
    }
