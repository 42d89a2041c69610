"""The composition root: the services of one peer, built from (host, identity, config) here
and nowhere else, each given its collaborators when it is made.

    PeerConfig        what a peer is told: addresses, limits, DHT, NAT, swarm key, clock
    PeerHooks         what observers and simulated adversaries plug in (declared here, so
                      nothing overrides a production method to watch or perturb it)
    AnnouncedAddresses  the addresses this peer's records carry
    PeerServices      every service of a running peer, and the status it reports

Who builds and calls whom (docs/architecture.md draws it)::

    PeerServices
      catalogue ─── publisher (signed records) ─── describe server
      local invoker (runs served models) ── onward ──> invoke client (other peers)
      invokers = local | remote ── invoke server, finder, forwarded pipelines
      DHT node ── finder (lookup, describe, call with failover)
      trust store ── spot checker (re-runs a sample of the finder's calls) ── finder
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from p2pnet.accounting import (
    DEFAULT_ACCOUNTING,
    Accountant,
    AccountingConfig,
    machine_fingerprint,
)
from p2pnet.core.address import transport_part, with_peer_id
from p2pnet.core.callstats import CallStats
from p2pnet.core.connections import DEFAULT_CONNECTION_LIMITS, ConnectionLimits
from p2pnet.core.generation import DEFAULT_SESSION_LIMITS, SessionLimits
from p2pnet.core.identity import Identity
from p2pnet.core.join import DEFAULT_JOINING, JoinPolicy
from p2pnet.core.kad.diversity import GroupOf
from p2pnet.core.messages import WireLimits
from p2pnet.core.records import CapabilityRecordValidator
from p2pnet.core.spot_check import DEFAULT_SPOT_CHECKS, SpotCheckPolicy
from p2pnet.dht.node import DhtConfig, DhtNode, LookupObserver, RequestInterceptor
from p2pnet.discovery.describe import DESCRIBE_PROTOCOL, DescribeClient, DescribeServer
from p2pnet.discovery.service import (
    DEFAULT_FINDER_POLICY,
    FinderPolicy,
    ModelFinder,
    RecordPublisher,
)
from p2pnet.invoke.client import CallObserver, InvokeClient
from p2pnet.invoke.local import Invokers, LocalInvoker
from p2pnet.invoke.protocol import INVOKE_PROTOCOL
from p2pnet.invoke.server import InvokeServer
from p2pnet.ledger import Ledger
from p2pnet.net.interfaces import StreamHost
from p2pnet.net.loopback import LoopbackHost
from p2pnet.net.nat_config import DEFAULT_NAT, NatConfig
from p2pnet.net.resources import DEFAULT_RESOURCES, ResourceLimitedHost, ResourceLimits
from p2pnet.runtime.batching import BatchedModel
from p2pnet.runtime.catalogue import ModelCatalogue
from p2pnet.runtime.generative import GenerativeModel
from p2pnet.status import ConnectionStatus, PeerStatus, ServedModelStatus
from p2pnet.trust.checker import ReceiptKeeper, SpotChecker
from p2pnet.trust.store import TrustStore

if TYPE_CHECKING:
    from p2pnet.net.swarm_key import SwarmKey

__all__ = ["AnnouncedAddresses", "PeerConfig", "PeerHooks", "PeerServices"]

# Balances a status shows: the largest in size.
STATUS_BALANCES: Final = 20
DEFAULT_LISTEN: Final = ("/ip4/127.0.0.1/tcp/0",)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """What a peer is told; ``p2pnet.Peer`` documents each field as its keyword argument.

    idle_streams: finished streams kept per peer for reuse by the invoke and describe
        clients (None: their own defaults, 8 and 2).
    upkeep: run the DHT's upkeep from the start (False: ``Peer.start_upkeep`` starts it).
    resources: limits on what other peers may hold here (inbound streams, bytes of
        requests in progress, stall and idle timeouts), applied to every protocol the
        services serve; see ``ResourceLimits`` and docs/networking.md.
    finding: how much one provider may take of this peer's finds and calls (offers
        per provider, describe phase, each attempt's share of a call's time).
    ledger: the SQLite file of this peer's receipts and balances; None: no accounting
        (results carry no receipt, receipts received are not looked at).
    accounting: credit policy and acknowledgement rhythm, when there is a ledger.
    trust_store: the SQLite file of this peer's spot-check verdicts and the providers
        it marked untrusted; None: no spot checks.
    spot_checks: rate, tolerances and limits of spot checks, when there is a trust store.
    joining: how the peer joins and, alone, keeps trying (``p2pnet.core.join.JoinPolicy``).
    sessions: what the generative models it serves keep for generation sessions.
    connections: the open connections a libp2p host keeps (None: no limit).
    """

    listen: tuple[str, ...] = DEFAULT_LISTEN
    bootstrap: tuple[str, ...] = ()
    announce: tuple[str, ...] = ()
    limits: WireLimits = WireLimits()
    max_concurrency: int = 2
    threads: int | None = None
    dht: DhtConfig = DhtConfig()
    shutdown_grace: float = 30.0
    forward: bool = True
    nat: NatConfig | None = DEFAULT_NAT
    swarm_key: SwarmKey | None = None
    require_join: bool = False
    clock: Callable[[], float] = time.time
    upkeep: bool = True
    idle_streams: int | None = None
    resources: ResourceLimits = DEFAULT_RESOURCES
    finding: FinderPolicy = DEFAULT_FINDER_POLICY
    ledger: Path | None = None
    accounting: AccountingConfig = DEFAULT_ACCOUNTING
    trust_store: Path | None = None
    spot_checks: SpotCheckPolicy = DEFAULT_SPOT_CHECKS
    joining: JoinPolicy = DEFAULT_JOINING
    sessions: SessionLimits = DEFAULT_SESSION_LIMITS
    connections: ConnectionLimits | None = DEFAULT_CONNECTION_LIMITS


@dataclass(frozen=True, slots=True)
class PeerHooks:
    """Declared points where a program may watch or perturb a peer (simulations do).

    observe_calls: told the outcome and duration of every call this peer makes.
    intercept_kad: may answer DHT requests in the node's place (a lying peer).
    describe_records: given the peer's signed envelopes, returns what its describe
        server sends instead (a forger adds forged ones).
    observe_lookup: told of every DHT lookup and its result (density verdict included).
    dht_groups: the IP groups of a peer, for the DHT's diversity limits, instead of
        those of its addresses (simulations give synthetic addresses their scenario's).
    """

    observe_calls: CallObserver | None = None
    intercept_kad: RequestInterceptor | None = None
    describe_records: Callable[[Sequence[bytes]], Sequence[bytes]] | None = None
    observe_lookup: LookupObserver | None = None
    dht_groups: GroupOf | None = None


class AnnouncedAddresses:
    """The addresses a peer's records carry: its host's, or ``announce`` (with this
    peer's ID appended) followed by the host's relayed addresses."""

    def __init__(self, host: StreamHost, announce: Sequence[str]) -> None:
        self._host = host
        self._announce = tuple(announce)

    def current(self) -> list[str]:
        host = self._host
        if not self._announce:
            return host.addrs
        relayed = [a for a in host.addrs if "/p2p-circuit" in a]
        return [with_peer_id(transport_part(a), host.peer_id) for a in self._announce] + relayed


class PeerServices:
    """Every service of one running peer, built here from (host, identity, config).

    Args:
        host: the running host (libp2p, or a memory host in tests and simulations).
        identity: the peer's key; its peer ID is the host's.
        config: what the peer was told.
        catalogue: the models it serves (filled by ``Peer.serve``, before or after start).
        nursery: where background work of the services runs.
        hooks: observers and simulated adversaries.
    """

    def __init__(
        self,
        host: StreamHost,
        identity: Identity,
        config: PeerConfig,
        catalogue: ModelCatalogue,
        nursery: trio.Nursery,
        hooks: PeerHooks = PeerHooks(),
    ) -> None:
        if host.peer_id != identity.peer_id:
            raise ValueError(f"host {host.peer_id} does not belong to peer {identity.peer_id}")
        idle = config.idle_streams
        self.host = host
        # A peer calls its own models through the same protocols as anyone else's (its
        # generations, its gateway's chats): streams to itself stay in the process.
        looped = LoopbackHost(host, nursery)
        # What the services serve on: every inbound stream under config.resources. The
        # host itself stays as it is for whoever holds the peer (peer.host).
        self.limited_host = ResourceLimitedHost(looped, config.resources)
        self.config = config
        self.catalogue = catalogue
        self.addresses = AnnouncedAddresses(host, config.announce)
        self.publisher = RecordPublisher(
            catalogue, identity, self.addresses.current, clock=config.clock
        )
        self.accountant: Accountant | None = None
        receipts: ReceiptKeeper | None = None
        # This machine's part of the runtime fingerprint receipts carry (and spot checks
        # compare: bitwise when two results ran under the same one).
        keeps_files = config.ledger is not None or config.trust_store is not None
        machine = machine_fingerprint() if keeps_files else ""
        if config.ledger is not None:
            # synchronous=NORMAL: a recorded receipt survives a killed process; FULL (also
            # a power loss) would cost ~0.2 ms per call on each side (docs/incentives.md).
            ledger = Ledger.open(config.ledger, owner=identity.peer_id, synchronous="NORMAL")
            self.accountant = Accountant(
                identity,
                ledger,
                price_of=catalogue.price,
                record_of=self.publisher.latest,
                machine=machine,
                config=config.accounting,
                # Credit forgives debt by trio's clock (virtual in simulations); receipts
                # are dated by the peer's wall clock.
                clock=trio.current_time,
                wall_clock=config.clock,
            )
            receipts = ReceiptKeeper(self.accountant)
        # The calls this peer serves and makes, for metrics and the status page.
        self.call_stats = CallStats(config.clock())
        self.remote = InvokeClient(
            looped,
            limits=config.limits,
            max_idle_streams=8 if idle is None else idle,
            observe=hooks.observe_calls,
            accounts=receipts,
            calls=self.call_stats,
            clock=config.clock,
        )
        self.local = LocalInvoker(
            identity.peer_id,
            catalogue.models,
            access=catalogue.access,
            onward=self.remote if config.forward else None,
        )
        self.invokers = Invokers(self.local, self.remote)
        self.invoke_server = InvokeServer(
            self.local,
            limits=config.limits,
            accounts=self.accountant,
            calls=self.call_stats,
            clock=config.clock,
        )
        records: Callable[[], Sequence[bytes]] = self.publisher.envelopes
        if hooks.describe_records is not None:
            change, own = hooks.describe_records, self.publisher.envelopes

            def records() -> Sequence[bytes]:
                return change(own())

        self.describe_server = DescribeServer(records, permits=catalogue.access.permits)
        self.describer = DescribeClient(
            host, clock=config.clock, max_idle_streams=2 if idle is None else idle
        )
        dht_config = config.dht
        if config.nat is not None and config.nat.reachability == "private":
            # Known to be undialable: a DHT client from the start (see become_client).
            dht_config = dataclasses.replace(dht_config, client=True)
        self.dht = DhtNode(
            self.limited_host,
            dht_config,
            validator=CapabilityRecordValidator(config.clock),
            rng=random.Random(dht_config.seed) if dht_config.seed is not None else None,
            nursery=nursery,
            intercept=hooks.intercept_kad,
            observe_lookup=hooks.observe_lookup,
            group_of=hooks.dht_groups,
        )
        self.trust: TrustStore | None = None
        self.spot_checker: SpotChecker | None = None
        if config.trust_store is not None:
            self.trust = TrustStore.open(config.trust_store, clock=config.clock)
            self.spot_checker = SpotChecker(
                self.invokers,
                catalogue.models,
                self.trust,
                config.spot_checks,
                nursery,
                receipts=receipts,
                machine=machine,
            )
        self.finder = ModelFinder(
            self.dht,
            self.describer,
            self.invokers,
            self.publisher,
            config.finding,
            checks=self.spot_checker,
        )

    def start(self) -> None:
        """Serve the invoke, describe and DHT protocols from now on."""
        serve = self.limited_host.set_stream_handler
        serve(INVOKE_PROTOCOL, self.invoke_server.handle_stream)
        serve(DESCRIBE_PROTOCOL, self.describe_server.handle_stream)
        self.dht.start()

    async def aclose(self) -> None:
        """Close the clients' idle streams (nothing announced is withdrawn)."""
        await self.remote.aclose()
        await self.describer.aclose()
        await self.dht.aclose()
        if self.accountant is not None:
            self.accountant.ledger.close()
        if self.trust is not None:
            self.trust.close()

    def status(self) -> PeerStatus:
        """What the peer is doing now (see ``PeerStatus``)."""
        host, access = self.host, self.catalogue.access
        models = []
        for info, tasks in self.catalogue.entries():
            allowed = access.allowed(info.model_id)
            allow = None if allowed is None else tuple(sorted(allowed))
            served = self.catalogue.models[info.model_id]
            batching = (
                {
                    "max_batch": served.policy.max_batch,
                    "max_delay_ms": served.policy.max_delay_ms,
                    **served.stats.to_dict(),
                }
                if isinstance(served, BatchedModel)
                else None
            )
            models.append(ServedModelStatus(info.model_id, info.name, tasks, allow, batching))
        connections = tuple(
            ConnectionStatus(
                peer_id,
                addr,
                host.path(peer_id) or ("relayed" if "/p2p-circuit" in addr else "direct"),
            )
            for peer_id, addr in host.connections()
        )
        swarm_key = self.config.swarm_key
        return PeerStatus(
            peer_id=host.peer_id,
            listen_addrs=tuple(host.addrs),
            announced_addrs=tuple(self.addresses.current()),
            reachability=host.reachability,
            swarm_key_fingerprint=swarm_key.fingerprint if swarm_key is not None else None,
            models=tuple(models),
            connections=connections,
            routing_table=len(self.dht.table),
            dht_mode="client" if self.dht.config.client else "server",
            calls_served=self.invoke_server.stats.calls,
            call_errors=dict(self.invoke_server.stats.errors),
            calls_made=self.remote.stats.calls,
            call_failures=dict(self.remote.stats.errors),
            call_seconds=self.remote.stats.seconds,
            limits_hit=self.limited_host.stats.hits(),
            trust=self._trust_status(),
            dht=dataclasses.asdict(self.dht.stats),
            generation=self._generation_status(),
            **self._accounts_status(),
        )

    def _generation_status(self) -> dict[str, int]:
        """Streamed generations served and sessions open, for ``status`` (empty: no
        generative model is served)."""
        sessions = [
            len(model.sessions)
            for model in self.catalogue.models.values()
            if isinstance(model, GenerativeModel)
        ]
        if not sessions:
            return {}
        stats = self.invoke_server.stats
        return {
            "generations": stats.generations,
            "tokens": stats.tokens,
            "cancelled": stats.cancelled,
            "sessions": sum(sessions),
        }

    def _trust_status(self) -> dict[str, int]:
        """Spot-check counts and the providers marked, for ``status``."""
        checker, trust = self.spot_checker, self.trust
        if checker is None or trust is None:
            return {}
        stats = checker.stats
        return {
            "sampled": stats.sampled,
            "agreed": stats.agreed,
            "disagreed": stats.disagreed,
            "unresolved": stats.unresolved,
            "extra_calls": stats.extra_calls,
            "marked": stats.marked,
            "untrusted": len(trust.marks()),
        }

    def _accounts_status(self) -> dict[str, Any]:
        """The ledger, receipt counts and largest balances, for ``status``."""
        accountant = self.accountant
        if accountant is None:
            return {}
        stats = accountant.stats
        balances = accountant.ledger.balances()
        largest = sorted(balances.items(), key=lambda item: -abs(item[1]))[:STATUS_BALANCES]
        return {
            "ledger": str(accountant.ledger.path),
            "receipts": {
                "issued": stats.receipts_issued,
                "accepted": stats.receipts_accepted,
                "refused_for_credit": stats.refused_for_credit,
            },
            "balances": dict(largest),
        }
