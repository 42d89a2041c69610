"""Discovery: publish our capability records, find others' by model or task, call with failover.

Publishing: each served model gets a signed CapabilityRecord (re-signed before it
expires) served on ``/p2pnet/describe/1.0.0``, and this peer is announced in the DHT
as a provider of the model's key and of each of its task keys.

Finding: one DHT provider lookup for the key, then one describe round trip per
provider (concurrently), keeping only records that verify. Offers are ranked by
measured latency and recent failures (``p2pnet.core.ranking``); a call tries them in
that order and fails over when a provider cannot be reached or gives up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt
import trio

from p2pnet.core.address import PeerAddress, transport_part
from p2pnet.core.identity import Identity
from p2pnet.core.kad.keys import PeerInfo, key_for_model, key_for_task
from p2pnet.core.kad.lookup import LookupStats
from p2pnet.core.model_id import parse_model_id
from p2pnet.core.ranking import ProviderStatsTable
from p2pnet.core.records import CapabilityRecord, sign_record
from p2pnet.dht.node import DhtNode
from p2pnet.discovery.describe import DescribeClient, RejectedRecord
from p2pnet.errors import (
    DeadlineExceededError,
    NetworkError,
    P2PNetError,
    PeerBusyError,
    UnknownModelError,
    UsageError,
)
from p2pnet.invoke.local import Invokers
from p2pnet.runtime.catalogue import ModelCatalogue

__all__ = ["ModelFinder", "Offer", "RecordPublisher", "Search"]

log = logging.getLogger(__name__)


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
        # Only our own /p2p/<id> goes: a relayed address keeps /p2p/<relay>/p2p-circuit.
        addrs = tuple(transport_part(a) for a in self._addrs())
        if (
            signed is not None
            and signed[0].expires_at - now > self._ttl / 2
            and signed[0].addrs == addrs
            and signed[0].tasks == tasks
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
            )
        except ValueError as exc:
            raise UsageError(f"cannot publish model {info.name}: {exc}") from None
        signed = (record, sign_record(record, self._identity.signing_key))
        self._signed[model_id] = signed
        return signed


@dataclass(frozen=True, slots=True)
class Search:
    """What one ``ModelFinder.search`` found and what it took.

    offers: verified offers, best first.
    providers: how many providers the DHT lookup named.
    rejected: records providers sent that failed verification.
    lookup: the DHT lookup's cost (None if it did not finish in time).
    complete: False when the time ran out before every provider was asked.
    """

    offers: list[Offer]
    providers: int
    rejected: tuple[RejectedRecord, ...]
    lookup: LookupStats | None
    complete: bool


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
            **r.schema.to_dict(),
        }


class ModelFinder:
    """Finds models through the DHT and calls them, failing over between providers.

    Args:
        dht: the DHT node that finds providers.
        describer: fetches and verifies providers' records.
        invokers: runs a model on this peer or calls another.
        publisher: this peer's own records (this peer may be one of the providers).
    """

    def __init__(
        self,
        dht: DhtNode,
        describer: DescribeClient,
        invokers: Invokers,
        publisher: RecordPublisher,
    ) -> None:
        self._local_peer_id = invokers.local.peer_id
        self._dht = dht
        self._describer = describer
        self._invokers = invokers
        self._publisher = publisher
        self.stats = ProviderStatsTable()

    async def find(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        count: int = 20,
        timeout: float = 10.0,
    ) -> list[Offer]:
        """Verified offers for ``task`` or ``model``, best first (see module docstring).

        Raises:
            UsageError: neither or both of task and model given.
            InvalidModelIdError: ``model`` is not a model ID.
        """
        return (await self.search(task=task, model=model, count=count, timeout=timeout)).offers

    async def search(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        count: int = 20,
        timeout: float = 10.0,
    ) -> Search:
        """``find``, with what it took: providers named, records refused, lookup cost.

        Raises:
            As ``find``.
        """
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
        lookup = None
        with trio.move_on_after(timeout) as scope:
            # The lookup gets half the time: providers it found by then are described,
            # even if peers on its path never answered.
            lookup = await self._dht.find_providers(key, count, timeout=timeout / 2)

            async def ask(provider: PeerInfo) -> None:
                found, refused = await self._describe(provider, models, tasks, timeout)
                offers.extend(found)
                rejected.extend(refused)

            async with trio.open_nursery() as nursery:
                for provider in lookup.providers:
                    nursery.start_soon(ask, provider)
        ranked = {
            s.peer_id: i
            for i, s in enumerate(
                self.stats.rank(
                    dict.fromkeys(o.record.peer_id for o in offers), trio.current_time()
                )
            )
        }
        return Search(
            offers=sorted(offers, key=lambda o: ranked[o.record.peer_id]),
            providers=len(lookup.providers) if lookup is not None else 0,
            rejected=tuple(rejected),
            lookup=lookup.stats if lookup is not None else None,
            complete=not scope.cancelled_caught,
        )

    async def _describe(
        self, provider: PeerInfo, models: tuple[str, ...], tasks: tuple[str, ...], timeout: float
    ) -> tuple[list[Offer], tuple[RejectedRecord, ...]]:
        address = PeerAddress(provider.peer_id, provider.addrs)
        if provider.peer_id == self._local_peer_id:
            return [
                Offer(r, address, 0.0)
                for r in self._publisher.records()
                if (not models or r.model_id in models) and (not tasks or set(tasks) & set(r.tasks))
            ], ()
        try:
            result = await self._describer.describe(
                address, models=models, tasks=tasks, timeout=timeout
            )
        except P2PNetError as exc:
            log.info("provider %s did not describe itself: %s", provider.peer_id, exc)
            self.stats.record_failure(provider.peer_id, trio.current_time())
            return [], ()
        for rejected in result.rejected:
            log.warning(
                "provider %s sent a record that fails a check: %s", provider.peer_id, rejected.error
            )
        self.stats.record_latency(provider.peer_id, result.rtt)
        addrs = tuple(
            dict.fromkeys(provider.addrs + tuple(a for r in result.records for a in r.addrs))
        )
        address = PeerAddress(provider.peer_id, addrs)
        return [Offer(r, address, result.rtt) for r in result.records], result.rejected

    async def call(
        self,
        inputs: Mapping[str, Any],
        *,
        task: str | None = None,
        model: str | None = None,
        timeout: float = 30.0,
    ) -> tuple[Offer, dict[str, npt.NDArray[Any]]]:
        """Find providers, then call the best; on a failure that another provider may not
        share (unreachable, connection lost, busy, too slow), try the next.

        Returns the offer that answered and the outputs.

        Raises:
            UnknownModelError: no provider found.
            The last provider's error when all fail; errors that are the caller's
            (InvalidInputError...) or the model's (ModelExecutionError) at once.
        """
        deadline = trio.current_time() + timeout
        offers = await self.find(task=task, model=model, timeout=timeout / 2)
        if not offers:
            wanted = f"task {task!r}" if task is not None else f"model {model}"
            raise UnknownModelError(
                f"no peer in the swarm offers {wanted}; check the bootstrap peers"
            )
        return await self.call_offers(offers, inputs, deadline - trio.current_time())

    async def call_offers(
        self,
        offers: Sequence[Offer],
        inputs: Mapping[str, Any],
        timeout: float,
        failures: list[tuple[Offer, P2PNetError]] | None = None,
    ) -> tuple[Offer, dict[str, npt.NDArray[Any]]]:
        """Call the offers in order until one answers, moving on after a failure that
        another provider may not share (unreachable, connection lost, busy, too slow);
        each such failure is appended to ``failures``.

        Raises:
            The last provider's error when all fail; errors that are the caller's
            (InvalidInputError...) or the model's (ModelExecutionError) at once.
        """
        deadline = trio.current_time() + timeout
        last_error: P2PNetError | None = None
        for offer in offers:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            invoker = self._invokers.to(offer.record.peer_id)
            try:
                outputs = await invoker.invoke(
                    offer.address, offer.record.model_id, inputs, timeout=remaining
                )
            except (NetworkError, PeerBusyError, DeadlineExceededError) as exc:
                log.info("provider %s failed, trying the next: %s", offer.record.peer_id, exc)
                self.stats.record_failure(offer.record.peer_id, trio.current_time())
                if failures is not None:
                    failures.append((offer, exc))
                last_error = exc
                continue
            self.stats.record_success(offer.record.peer_id, offer.rtt, trio.current_time())
            return offer, outputs
        raise last_error or DeadlineExceededError(f"no provider answered within {timeout:g} s")
