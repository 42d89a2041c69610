"""Discovery: publish our capability records, find others' by model or task, call with failover.

Publishing: each served model gets a signed CapabilityRecord (re-signed before it
expires) served on ``/p2pnet/describe/1.0.0``, and this peer is announced in the DHT
as a provider of the model's key and of each of its task keys.

Finding: one DHT provider lookup for the key, then one describe round trip per
provider (concurrently), keeping only records that verify, at most
``max_offers_per_provider`` per provider. The describe phase ends
``describe_timeout`` seconds after it began (or at the find's deadline); providers
that did not answer by then, or failed, are named in ``Search.unanswered``. Offers are
ranked by latency measured from this side and recent failures
(``p2pnet.core.ranking``).

Calling: ``call`` starts calling once the first provider has described itself and the
others had ``describe_grace`` seconds more. The offers are tried in rank order, those
in backoff after a failure last (``p2pnet.core.failover``); each attempt gets a share
of the time left (half, unless it is the last), so one stalled provider cannot take
the whole budget. Every provider-side failure moves on to the next provider: no reply
in time, a broken or oversized reply, outputs that do not fit the provider's signed
schema, busy, unreachable, a lost connection, the peer's or its model's error. The
caller's own faults (inputs that do not fit) end the call at once. When every
provider failed, the most telling error is raised, naming each provider tried.

Spot checks (given ``checks``, ``p2pnet.trust.SpotChecker``): providers marked untrusted
are not described, so they are never offered; after a call (or an orchestrated
pipeline's step, through ``answered``) answered, the checks are told, and may re-run it
elsewhere in the background.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import trio

from p2pnet.core.address import PeerAddress, transport_part
from p2pnet.core.callstats import calling_task
from p2pnet.core.failover import (
    DEFAULT_ATTEMPT_FLOOR,
    DEFAULT_ATTEMPT_SHARE,
    attempt_order,
    attempt_timeout,
    failure_report,
    is_provider_failure,
    output_mismatch,
)
from p2pnet.core.identity import Identity
from p2pnet.core.kad.keys import PeerInfo, key_for_model, key_for_task
from p2pnet.core.kad.lookup import LookupStats
from p2pnet.core.model_id import parse_model_id
from p2pnet.core.model_info import card_to_dict
from p2pnet.core.pricing import (
    Price,
    Usage,
    cost_key,
    price_to_wire,
    rank_by_cost_and_latency,
    within_max_price,
)
from p2pnet.core.ranking import ProviderStatsTable
from p2pnet.core.records import CapabilityRecord, sign_record
from p2pnet.core.schema import ModelSchema, check_inputs
from p2pnet.core.seen import SeenRecords
from p2pnet.dht.node import DhtNode
from p2pnet.discovery.describe import DescribeClient, RejectedRecord
from p2pnet.errors import (
    DeadlineExceededError,
    InvalidInputError,
    OutputSchemaError,
    P2PNetError,
    UnknownModelError,
    UsageError,
)
from p2pnet.invoke.local import Invokers
from p2pnet.runtime.catalogue import ModelCatalogue

# A find without inputs ranks by the per-call part of prices only.
NO_USAGE: Final = Usage(0, 0, 0.0)

__all__ = [
    "DEFAULT_FINDER_POLICY",
    "CallChecks",
    "FinderPolicy",
    "ModelFinder",
    "Offer",
    "RecordPublisher",
    "Search",
]

log = logging.getLogger(__name__)

# What a call searched for: task, model, max price, and its inputs' size (bit length).
_OfferKey = tuple[str | None, str | None, Price | None, int]
# Recent searches whose offers calls reuse (FinderPolicy.offer_ttl).
_MAX_RECENT_SEARCHES: Final = 256


class RecordPublisher:
    """Signed records of the models in ``catalogue``, kept fresh.

    Args:
        catalogue: what this peer serves, under which tasks.
        identity: the peer's key (and peer ID), which signs its records.
        addrs: returns the peer's current full multiaddrs (what records carry).
        ttl: seconds a record is valid; it is re-signed once less than half remains.
        clock: wall clock (unix seconds), for expiry.
    """

    def __init__(
        self,
        catalogue: ModelCatalogue,
        identity: Identity,
        addrs: Callable[[], Sequence[str]],
        *,
        ttl: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalogue = catalogue
        self._identity = identity
        self._addrs = addrs
        self._ttl = ttl
        self._clock = clock
        self._signed: dict[str, tuple[CapabilityRecord, bytes]] = {}
        self._seq = 0

    def record(self, model_id: str) -> CapabilityRecord:
        """The current signed record of ``model_id`` (re-signed where due)."""
        return self._record(model_id)[0]

    def latest(self, model_id: str) -> CapabilityRecord:
        """The record of ``model_id`` last signed (signed now if none was): what a call
        is served under. Cheaper than ``record``, which checks the addresses first."""
        signed = self._signed.get(model_id)
        return signed[0] if signed is not None else self._record(model_id)[0]

    def records(self) -> list[CapabilityRecord]:
        """The current records of every served model."""
        return [self._record(info.model_id)[0] for info, _ in self._catalogue.entries()]

    def envelopes(self) -> list[bytes]:
        """Signed envelopes of every published model, re-signed where due."""
        return [self._record(info.model_id)[1] for info, _ in self._catalogue.entries()]

    def _record(self, model_id: str) -> tuple[CapabilityRecord, bytes]:
        now = self._clock()
        signed = self._signed.get(model_id)
        tasks = self._catalogue.tasks(model_id)
        price = self._catalogue.price(model_id)
        # Only our own /p2p/<id> goes: a relayed address keeps /p2p/<relay>/p2p-circuit.
        addrs = tuple(transport_part(a) for a in self._addrs())
        if (
            signed is not None
            and signed[0].expires_at - now > self._ttl / 2
            and signed[0].addrs == addrs
            and signed[0].tasks == tasks
            and signed[0].price == price
        ):
            return signed
        info = self._catalogue.models[model_id].info
        # seq: milliseconds since the epoch, so a restarted peer never reuses one.
        self._seq = max(self._seq + 1, int(now * 1000))
        try:
            record = CapabilityRecord(
                model_id=model_id,
                peer_id=self._identity.peer_id,
                schema=info.schema,
                tasks=tasks,
                name=info.name[:128],
                version=info.version,
                runtime=info.runtime,
                addrs=addrs,
                seq=self._seq,
                expires_at=int(now + self._ttl),
                price=price,
                generation=info.generation,
            )
        except ValueError as exc:
            raise UsageError(f"cannot publish model {info.name}: {exc}") from None
        signed = (record, sign_record(record, self._identity.signing_key))
        self._signed[model_id] = signed
        return signed


class CallChecks(Protocol):
    """What the finder asks of spot checks (``p2pnet.trust.SpotChecker``)."""

    def is_untrusted(self, peer_id: str) -> bool:
        """Whether ``peer_id`` is marked untrusted (it is then not offered)."""
        ...

    def consider(
        self,
        offer: Offer,
        offers: Sequence[Offer],
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
    ) -> bool:
        """Told that ``offer`` answered ``inputs`` with ``outputs`` (``offers``: all
        found for the call); returns at once."""
        ...


@dataclass(frozen=True, slots=True)
class Search:
    """What one ``ModelFinder.search`` found and what it took.

    offers: verified offers, best first.
    providers: how many providers the DHT lookup named.
    rejected: records providers sent that failed verification.
    lookup: the DHT lookup's cost (None if it did not finish in time).
    complete: False when the time ran out before every provider was asked.
    unanswered: peer IDs of the providers the lookup named that did not describe
        themselves in time, or failed to (in the lookup's order).
    over_price: offers left out for a price over the search's ``max_price``.
    untrusted: peer IDs of the providers the lookup named that this peer marked
        untrusted after a spot check (not described, not offered).
    """

    offers: list[Offer]
    providers: int
    rejected: tuple[RejectedRecord, ...]
    lookup: LookupStats | None
    complete: bool
    unanswered: tuple[str, ...] = ()
    over_price: int = 0
    untrusted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Offer:
    """A verified record of a provider, with how fast it answered the describe request."""

    record: CapabilityRecord
    address: PeerAddress
    rtt: float

    def to_dict(self) -> dict[str, Any]:
        r = self.record
        return {
            "model_id": r.model_id,
            "name": r.name,
            "peer_id": r.peer_id,
            "tasks": list(r.tasks),
            "addrs": list(r.addrs),
            "runtime": r.runtime,
            "rtt_ms": round(self.rtt * 1000, 3),
            "price": price_to_wire(r.price),
            **r.schema.to_dict(),
            **({"generation": card_to_dict(r.generation)} if r.generation else {}),
        }


@dataclass(frozen=True, slots=True)
class FinderPolicy:
    """How much one provider may take of a find or a call (docs/security.md).

    max_offers_per_provider: offers kept from one provider per query (the first it
        sent); one provider cannot fill a find.
    describe_timeout: seconds the describe phase of a find lasts at most; providers
        that have not answered by then are named in ``Search.unanswered``.
    describe_grace: seconds ``call`` waits for further providers to describe
        themselves once the first has.
    attempt_share: share of the time left an attempt gets when it is not the last
        planned (``p2pnet.core.failover.attempt_timeout``).
    attempt_floor: seconds an attempt gets at least (when that much is left).
    offer_ttl: seconds ``call`` reuses the offers its last search found for the same
        task or model (and max price, and inputs of about that size) instead of searching
        again (0: a search for every call). A call in which a provider failed, and
        providers marked untrusted since, send the next call to a new search.
    """

    max_offers_per_provider: int = 4
    describe_timeout: float = 3.0
    describe_grace: float = 0.5
    attempt_share: float = DEFAULT_ATTEMPT_SHARE
    attempt_floor: float = DEFAULT_ATTEMPT_FLOOR
    offer_ttl: float = 10.0

    def __post_init__(self) -> None:
        if self.max_offers_per_provider < 1:
            raise ValueError("max_offers_per_provider must be at least 1")
        if not (self.describe_timeout > 0 and self.describe_grace >= 0):
            raise ValueError("describe_timeout must be positive and describe_grace >= 0")
        if self.offer_ttl < 0:
            raise ValueError("offer_ttl must be >= 0")
        # Checks attempt_share and attempt_floor.
        attempt_timeout(1.0, 2, share=self.attempt_share, floor=self.attempt_floor)


DEFAULT_FINDER_POLICY: Final = FinderPolicy()


class ModelFinder:
    """Finds models through the DHT and calls them, failing over between providers.

    Args:
        dht: the DHT node that finds providers.
        describer: fetches and verifies providers' records.
        invokers: runs a model on this peer or calls another.
        publisher: this peer's own records (this peer may be one of the providers).
        policy: how much one provider may take of a find or a call (``FinderPolicy``).
        checks: spot checks: skip untrusted providers, check a sample of calls (None:
            none).
    """

    def __init__(
        self,
        dht: DhtNode,
        describer: DescribeClient,
        invokers: Invokers,
        publisher: RecordPublisher,
        policy: FinderPolicy = DEFAULT_FINDER_POLICY,
        checks: CallChecks | None = None,
    ) -> None:
        self._local_peer_id = invokers.local.peer_id
        self._checks = checks
        self._dht = dht
        self._describer = describer
        self._invokers = invokers
        self._publisher = publisher
        self.policy = policy
        self.stats = ProviderStatsTable()
        # Verified records providers sent: what the gateways list without a search.
        self.seen = SeenRecords()
        # The offers of recent calls' searches, by what was searched: (found at, offers).
        self._recent: OrderedDict[_OfferKey, tuple[float, list[Offer]]] = OrderedDict()

    async def find(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        count: int = 20,
        timeout: float = 10.0,
        max_price: Price | None = None,
    ) -> list[Offer]:
        """Verified offers for ``task`` or ``model``, best first (see module docstring);
        with ``max_price``, only those whose price is at most it in every part.

        Raises:
            UsageError: neither or both of task and model given.
            InvalidModelIdError: ``model`` is not a model ID.
        """
        found = await self.search(
            task=task, model=model, count=count, timeout=timeout, max_price=max_price
        )
        return found.offers

    async def search(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        count: int = 20,
        timeout: float = 10.0,
        max_price: Price | None = None,
    ) -> Search:
        """``find``, with what it took: providers named, records refused, lookup cost,
        providers that did not describe themselves in time, offers over ``max_price``.

        Raises:
            As ``find``.
        """
        return await self._search(task, model, count, timeout, grace=None, max_price=max_price)

    async def _search(
        self,
        task: str | None,
        model: str | None,
        count: int,
        timeout: float,
        grace: float | None,
        max_price: Price | None = None,
        usage: Usage = NO_USAGE,
    ) -> Search:
        """``search``; with ``grace``, the describe phase ends ``grace`` seconds after the
        first provider described itself. Offers are ranked by the ranking's order and,
        among healthy providers about as fast as the fastest, by what ``usage`` would
        cost at their price (``p2pnet.core.pricing.rank_by_cost_and_latency``)."""
        if (task is None) == (model is None):
            raise UsageError("find needs exactly one of task= or model=")
        models: tuple[str, ...] = ()
        tasks: tuple[str, ...] = ()
        if model is not None:
            models = (parse_model_id(model),)
            key = key_for_model(models[0])
        else:
            assert task is not None
            tasks = (task,)
            key = key_for_task(task)
        offers: list[Offer] = []
        rejected: list[RejectedRecord] = []
        answered: set[str] = set()
        lookup = None
        cut_short = False
        untrusted: tuple[str, ...] = ()
        with trio.move_on_after(timeout) as scope:
            # The lookup gets half the time: providers it found by then are described,
            # even if peers on its path never answered.
            lookup = await self._dht.find_providers(key, count, timeout=timeout / 2)
            checks = self._checks
            if checks is not None:
                untrusted = tuple(
                    dict.fromkeys(
                        p.peer_id for p in lookup.providers if checks.is_untrusted(p.peer_id)
                    )
                )
            to_ask = [p for p in lookup.providers if p.peer_id not in untrusted]
            phase_ends = trio.current_time() + self.policy.describe_timeout
            with trio.move_on_at(phase_ends) as phase:
                first_answer = trio.Event()
                pending = len(to_ask)

                async def ask(provider: PeerInfo, nursery: trio.Nursery) -> None:
                    nonlocal pending
                    try:
                        found = await self._describe(provider, models, tasks, phase_ends)
                        if found is not None:
                            answered.add(provider.peer_id)
                            offers.extend(found[0])
                            rejected.extend(found[1])
                            first_answer.set()
                    finally:
                        pending -= 1
                        if pending == 0:
                            nursery.cancel_scope.cancel()  # the grace watch, if any

                async def end_phase_after_grace(grace: float) -> None:
                    await first_answer.wait()
                    phase.deadline = min(phase.deadline, trio.current_time() + grace)

                if to_ask:
                    async with trio.open_nursery() as nursery:
                        if grace is not None:
                            nursery.start_soon(end_phase_after_grace, grace)
                        for provider in to_ask:
                            nursery.start_soon(ask, provider, nursery)
            cut_short = phase.cancelled_caught
        affordable = [o for o in offers if within_max_price(o.record.price, max_price)]
        over_price = len(offers) - len(affordable)
        offers = affordable
        prices: dict[str, Price] = {}
        for o in offers:  # a provider of several matching models competes at its cheapest
            held = prices.get(o.record.peer_id)
            if held is None or cost_key(o.record.price, usage) < cost_key(held, usage):
                prices[o.record.peer_id] = o.record.price
        scores = self.stats.rank(
            dict.fromkeys(o.record.peer_id for o in offers), trio.current_time()
        )
        ranked = {
            s.peer_id: i for i, s in enumerate(rank_by_cost_and_latency(scores, prices, usage))
        }
        providers = lookup.providers if lookup is not None else ()
        unanswered = tuple(
            dict.fromkeys(
                p.peer_id
                for p in providers
                if p.peer_id not in answered and p.peer_id not in untrusted
            )
        )
        if unanswered:
            log.info(
                "%d of %d providers did not describe themselves in time: %s",
                len(unanswered),
                len(providers),
                ", ".join(unanswered),
            )
        return Search(
            offers=sorted(offers, key=lambda o: ranked[o.record.peer_id]),
            providers=len(providers),
            rejected=tuple(rejected),
            lookup=lookup.stats if lookup is not None else None,
            complete=not (scope.cancelled_caught or cut_short),
            unanswered=unanswered,
            over_price=over_price,
            untrusted=untrusted,
        )

    async def _describe(
        self,
        provider: PeerInfo,
        models: tuple[str, ...],
        tasks: tuple[str, ...],
        phase_ends: float,
    ) -> tuple[list[Offer], tuple[RejectedRecord, ...]] | None:
        """The provider's offers and refused records; None if it failed to answer."""
        address = PeerAddress(provider.peer_id, provider.addrs)
        if provider.peer_id == self._local_peer_id:
            return [
                Offer(r, address, 0.0)
                for r in self._publisher.records()
                if (not models or r.model_id in models) and (not tasks or set(tasks) & set(r.tasks))
            ], ()
        try:
            result = await self._describer.describe(
                address,
                models=models,
                tasks=tasks,
                timeout=max(phase_ends - trio.current_time(), 0.0),
            )
        except P2PNetError as exc:
            log.info("provider %s did not describe itself: %s", provider.peer_id, exc)
            if not isinstance(exc, DeadlineExceededError):
                self.stats.record_failure(provider.peer_id, trio.current_time())
            return None
        for rejected in result.rejected:
            log.warning(
                "provider %s sent a record that fails a check: %s", provider.peer_id, rejected.error
            )
        if result.new_stream:
            # On a reused stream the reply may have been sent before the request.
            self.stats.record_latency(provider.peer_id, result.rtt)
        records = result.records
        self.seen.add(records[: self.policy.max_offers_per_provider])
        if len(records) > self.policy.max_offers_per_provider:
            log.warning(
                "provider %s offered %d records for one query; keeping the first %d",
                provider.peer_id,
                len(records),
                self.policy.max_offers_per_provider,
            )
            records = records[: self.policy.max_offers_per_provider]
        addrs = tuple(dict.fromkeys(provider.addrs + tuple(a for r in records for a in r.addrs)))
        address = PeerAddress(provider.peer_id, addrs)
        return [Offer(r, address, result.rtt) for r in records], result.rejected

    async def call(
        self,
        inputs: Mapping[str, Any],
        *,
        task: str | None = None,
        model: str | None = None,
        timeout: float = 30.0,
        max_price: Price | None = None,
    ) -> tuple[Offer, dict[str, npt.NDArray[Any]]]:
        """Find providers, then call the best; after a failure on the provider's side,
        try the next (see the module docstring). With ``max_price``, only providers whose
        price is at most it in every part are called; among those about as fast as the
        fastest, the cheapest for these inputs first.

        Finding takes at most half of ``timeout``, and calling starts
        ``describe_grace`` seconds after the first provider described itself.

        Returns the offer that answered and the outputs.

        Raises:
            UnknownModelError: no provider found.
            InvalidInputError: the inputs do not fit the offered model (nothing is sent).
            As ``call_offers`` when every provider fails.
        """
        deadline = trio.current_time() + timeout
        size = sum(np.asarray(value).nbytes for value in inputs.values())  # an estimate
        key: _OfferKey = (task, model, max_price, size.bit_length())
        recent = self._recent_offers(key)
        if recent:
            try:
                return await self._call_and_keep(key, task, recent, inputs, deadline, found=False)
            except P2PNetError as exc:
                if not exc.attempts:
                    raise  # the caller's fault, or no time: the offers are as they were
                # Every provider of the last search failed: search again, while time is
                # left (those that failed are now in backoff: ranked last).
                self._recent.pop(key, None)
                if deadline - trio.current_time() <= 0:
                    raise
                log.info("the recent offers of %s failed (%s); searching again", key[:2], exc)
                timeout = deadline - trio.current_time()
        search = await self._search(
            task,
            model,
            20,
            timeout / 2,
            grace=self.policy.describe_grace,
            max_price=max_price,
            usage=Usage(size, size, 0.0),
        )
        if not search.offers:
            wanted = f"task {task!r}" if task is not None else f"model {model}"
            if search.over_price:
                raise UnknownModelError(
                    f"{search.over_price} offer(s) of {wanted} found, none at or under the "
                    f"max price {max_price}"
                )
            silent = (
                f" ({len(search.unanswered)} providers did not describe themselves in time: "
                + ", ".join(search.unanswered)
                + ")"
                if search.unanswered
                else ""
            )
            if search.untrusted:
                silent += (
                    f" ({len(search.untrusted)} provider(s) skipped: marked untrusted after "
                    "a spot check; 'p2pnet trust' lists why)"
                )
            raise UnknownModelError(
                f"no peer in the swarm offers {wanted}{silent}; check the bootstrap peers"
            )
        return await self._call_and_keep(key, task, search.offers, inputs, deadline, found=True)

    async def _call_and_keep(
        self,
        key: _OfferKey,
        task: str | None,
        offers: list[Offer],
        inputs: Mapping[str, Any],
        deadline: float,
        *,
        found: bool,
    ) -> tuple[Offer, dict[str, npt.NDArray[Any]]]:
        """Call ``offers`` (recorded as made for ``task``), tell the spot checks, and keep
        them for the next calls of ``key`` while the first answers: offers just ``found``
        by a search are remembered from now; remembered ones keep the time they were
        found. A provider that failed sends the next call to a new search."""
        with calling_task(task):
            offer, outputs = await self.call_offers(offers, inputs, deadline - trio.current_time())
        if offer is not offers[0]:
            self._recent.pop(key, None)
        elif found:
            self._remember_offers(key, offers)
        self.answered(offer, offers, inputs, outputs)
        return offer, outputs

    def _recent_offers(self, key: _OfferKey) -> list[Offer]:
        """The offers a recent search for ``key`` found, if still fresh and none of their
        providers has been marked untrusted since; else [] (the entry dropped)."""
        entry = self._recent.get(key)
        if entry is None:
            return []
        found_at, offers = entry
        checks = self._checks
        fresh = trio.current_time() - found_at < self.policy.offer_ttl
        if not fresh or (checks and any(checks.is_untrusted(o.record.peer_id) for o in offers)):
            del self._recent[key]
            return []
        return offers

    def _remember_offers(self, key: _OfferKey, offers: list[Offer]) -> None:
        if self.policy.offer_ttl <= 0:
            return
        self._recent[key] = (trio.current_time(), list(offers))
        self._recent.move_to_end(key)
        while len(self._recent) > _MAX_RECENT_SEARCHES:
            self._recent.popitem(last=False)

    def answered(
        self,
        offer: Offer,
        offers: Sequence[Offer],
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
    ) -> bool:
        """Tell the spot checks, if any, that ``offer`` answered ``inputs`` with
        ``outputs`` (``offers``: the providers found for the call, who may re-run it);
        True if a check of it started. ``call`` does it for its calls, a pipeline for
        each step it runs orchestrated. Returns at once."""
        if self._checks is None:
            return False
        return self._checks.consider(offer, offers, inputs, outputs)

    async def call_offers(
        self,
        offers: Sequence[Offer],
        inputs: Mapping[str, Any],
        timeout: float,
        failures: list[tuple[Offer, P2PNetError]] | None = None,
    ) -> tuple[Offer, dict[str, npt.NDArray[Any]]]:
        """Call the offers until one answers with outputs that fit its record's signed
        schema: in their order, those in backoff after a recent failure last, each
        attempt with a share of the time left (``p2pnet.core.failover``). Each failure on
        the provider's side is appended to ``failures`` and moves on to the next.

        Raises:
            InvalidInputError: ``inputs`` do not fit the offered model's schema (at
                once, nothing sent), or every provider refused them.
            PayloadTooLargeError, LocalProtocolError: the caller's fault, at once.
            The most telling provider error when every attempt failed
            (``p2pnet.core.failover.failure_report``: its ``peer`` is the provider,
            ``attempts`` lists every provider tried); DeadlineExceededError when the
            time ran out before any attempt.
        """
        deadline = trio.current_time() + timeout
        order = attempt_order(
            [o.record.peer_id for o in offers], self.stats, trio.current_time(), self.stats.policy
        )
        attempts: list[tuple[str, P2PNetError]] = []
        fits: dict[ModelSchema, InvalidInputError | None] = {}
        for planned, index in enumerate(order):
            offer = offers[index]
            peer_id = offer.record.peer_id
            schema = offer.record.schema
            if schema not in fits:
                fits[schema] = _input_mismatch(schema, inputs)
            unfit = fits[schema]
            if unfit is not None:
                if all(offers[i].record.schema == schema for i in order[planned:]):
                    raise unfit  # the caller's fault under every record left
                attempts.append((peer_id, unfit))
                continue
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            budget = attempt_timeout(
                remaining,
                len(order) - planned,
                share=self.policy.attempt_share,
                floor=self.policy.attempt_floor,
            )
            started = trio.current_time()
            try:
                outputs = await self._invokers.to(peer_id).invoke(
                    offer.address,
                    offer.record.model_id,
                    inputs,
                    timeout=budget,
                    record=offer.record,
                )
                mismatch = output_mismatch(schema, outputs, inputs)
                if mismatch is not None:
                    raise OutputSchemaError(
                        f"peer {peer_id} returned outputs of model {offer.record.model_id} "
                        f"that do not fit its signed record: {mismatch}",
                        peer=peer_id,
                    )
            except P2PNetError as exc:
                # Inputs that fit the provider's own signed schema and that it refuses
                # as invalid are its fault, not the caller's.
                refused = isinstance(exc, InvalidInputError) and exc.peer is not None
                if not (is_provider_failure(exc) or refused):
                    raise
                if exc.peer is None:
                    exc.peer = peer_id
                log.info("provider %s failed, trying the next: %s", peer_id, exc)
                self.stats.record_failure(peer_id, trio.current_time())
                if failures is not None:
                    failures.append((offer, exc))
                attempts.append((peer_id, exc))
                continue
            now = trio.current_time()
            self.stats.record_success(peer_id, now - started, now)
            return offer, outputs
        if not attempts:
            raise DeadlineExceededError(f"no provider answered within {timeout:g} s")
        raise failure_report(attempts)


def _input_mismatch(schema: ModelSchema, inputs: Mapping[str, Any]) -> InvalidInputError | None:
    """The error inputs that do not fit ``schema`` get, or None if they fit."""
    try:
        check_inputs(schema, inputs)
    except InvalidInputError as exc:
        return exc
    return None
