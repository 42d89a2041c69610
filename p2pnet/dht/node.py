"""A DHT node: drives the sans-IO Kademlia core (``p2pnet.core.kad``) over streams.

It speaks the libp2p kad-dht messages (``p2pnet.core.kad.wire``) on
``/p2pnet/kad/1.0.0`` over any ``StreamHost``: the libp2p host in production, the
in-memory network in tests and simulations. Time comes from trio's clock, so a
``MockClock`` runs the same code in virtual time.

The node answers FIND_NODE, GET_PROVIDERS, ADD_PROVIDER and PING; it looks up the
closest peers to a key, announces and finds providers, refreshes its routing table
and republishes what it provides before it expires.

Addresses are checked (``p2pnet.core.address_filter``): a peer's addresses are stored
(as a provider, or in the routing table) only where it is seen at, so no peer can make
this node send others to a third party; an answer gives a requester only the addresses
of its scope (no private or loopback address to a public requester); and of what a
responder answers, only the addresses of the responder's scope are believed.

IP groups are limited (``DhtDefences.diversity``, ``p2pnet.core.kad.diversity``): the
routing table takes few peers of one /16 (IPv6: /32), and a lookup answer naming more
than a few closer peers of one group counts as a failed one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from p2pnet.core.address import PeerAddress, transport_part
from p2pnet.core.address_filter import (
    AddressScope,
    addrs_for_scope,
    addrs_seen_at,
    scope_seen_at,
)
from p2pnet.core.join import buckets_to_fill
from p2pnet.core.kad.diversity import (
    DiversityLimits,
    GroupOf,
    address_groups,
    reply_too_concentrated,
)
from p2pnet.core.kad.jobs import RepublishSchedule
from p2pnet.core.kad.keys import (
    KEY_BITS,
    PeerInfo,
    bucket_index,
    common_prefix_length,
    key_of,
    random_preimage_in_bucket,
)
from p2pnet.core.kad.lookup import DEFAULT_LOOKUP_PATHS, DisjointLookup, LookupStats
from p2pnet.core.kad.ratelimit import RateLimiter
from p2pnet.core.kad.region import (
    DEFAULT_DENSITY_THRESHOLD,
    DensityVerdict,
    SizeEstimator,
    density_verdict,
    estimate_network_size,
    region_prefix_bits,
)
from p2pnet.core.kad.routing import Ignored, PingOldest, RoutingTable
from p2pnet.core.kad.store import (
    DEFAULT_PROVIDER_TTL,
    DEFAULT_VALUE_TTL,
    ProviderStore,
    RecordValidator,
    ValueStore,
)
from p2pnet.core.kad.wire import (
    CACHED_PEERS,
    KadMessage,
    KadMessageReader,
    KadPeer,
    KadRecord,
    MessageType,
    encode_kad_message,
    peer_id_bytes,
)
from p2pnet.errors import (
    ConnectionLostError,
    InvalidAddressError,
    InvalidRecordError,
    P2PNetError,
    PayloadTooLargeError,
    ProtocolError,
    RemoteProtocolError,
    StoreLimitError,
    UsageError,
)
from p2pnet.net.channels import Channel, StreamPool, read_message, read_request
from p2pnet.net.interfaces import ByteStream, RequestBoundaries, StreamHost

if TYPE_CHECKING:
    # py-libp2p pulls in trio-typing, whose stubs mypy reads instead of trio's own types.
    from trio_typing import TaskStatus

__all__ = [
    "KAD_PROTOCOL",
    "DhtConfig",
    "DhtDefences",
    "DhtNode",
    "DhtStats",
    "JoinAnswers",
    "KadOverride",
    "LookupObserver",
    "LookupResult",
    "RequestInterceptor",
]

log = logging.getLogger(__name__)

KAD_PROTOCOL = "/p2pnet/kad/1.0.0"
# Tries to find a random key in a bucket to refresh: enough for buckets 244..255.
REFRESH_SEARCH_TRIES = 4096


@dataclass(frozen=True, slots=True)
class DhtDefences:
    """How a DHT node resists peers that lie about where a key lives (docs/security.md,
    "Sybils near a key").

    region: store provider records on, and look them up from, every peer of the key's
        region (sharing ``ceil(log2(N / k)) - 1`` leading bits with it, N estimated from
        our routing table), not only the k closest. Always on unless turned off: turned
        on only once an attack is detected, it lets an attacker stay under the detector.
    max_region: at most this many peers are asked or stored to per lookup (bounds what
        a wrong network-size estimate can cost).
    density_threshold: a lookup whose closest peers' prefix lengths diverge from what
        the estimated network size predicts by more than this (KL, nats) is suspicious.
    diversity: IP-group limits (``DiversityLimits``: 2 peers of one /16 or /32 per
        bucket, 3 per table, 3 per lookup answer), None: off. On by default, as in
        go-libp2p-kad-dht's public (WAN) DHT: sybils are cheap to grind but costly to
        spread over many networks. Loopback and private addresses are exempt by
        default, so a swarm on one machine or one LAN is not limited.
    paths: every lookup runs over this many disjoint paths (S/Kademlia; 1: a plain
        lookup): a peer is asked by one path only, so liars on one path do not lead the
        others astray. Each path may send ``DhtConfig.max_queries`` requests. The
        default, 1, is chosen from measured success and cost (docs/security.md,
        "Disjoint lookup paths").

    Raises:
        ValueError: ``paths`` below 1.
    """

    region: bool = True
    max_region: int = 100
    density_threshold: float = DEFAULT_DENSITY_THRESHOLD
    diversity: DiversityLimits | None = DiversityLimits()
    paths: int = DEFAULT_LOOKUP_PATHS

    def __post_init__(self) -> None:
        if self.paths < 1:
            raise ValueError(f"paths must be at least 1, got {self.paths}")


@dataclass(frozen=True, slots=True)
class DhtConfig:
    """Parameters of a DHT node; the defaults follow the kad-dht spec where it has one.

    k: replication parameter (bucket size, lookup width, providers announced to).
    alpha: requests in flight per lookup (per path, with ``defences.paths`` > 1).
    rpc_timeout: seconds one request may take, stream opening included.
    max_queries: requests one lookup may send (per path, with ``defences.paths`` > 1).
    provider_ttl: how long a provider announcement is kept (spec: 24 h... 48 h).
    republish_interval: how often our own announcements are renewed (< provider_ttl).
    refresh_interval: a bucket not looked into for this long gets a random lookup (a
        lookup that ran its course counts for its key's bucket, as in Kademlia).
    join_bucket_fill: after the lookup of its own key, a joining peer looks into each
        bucket holding fewer peers than this, until it holds this many
        (``p2pnet.core.join.buckets_to_fill``); the rest fill with traffic and the
        periodic refresh. None: a full lookup in every bucket, as go-libp2p and
        rust-libp2p bootstrap (about twice the connections; docs/networking.md,
        "Joining").
    maintenance_interval: how often expiry, republishing and refresh run.
    value_ttl: how long a stored value is kept.
    add_provider_rate, add_provider_burst: per-peer rate of ADD_PROVIDER and PUT_VALUE
        we accept.
    client: client mode (as go-libp2p-kad-dht's, for peers others cannot dial, e.g.
        behind a NAT): look up, announce and store through others, but answer no
        request; peers that know it does not serve the DHT protocol keep it out of
        their routing tables.
    seed: seeds the node's random choices (keys to refresh buckets with), for
        reproducible simulations; None: unpredictable.
    defences: region store and lookup, density detection (``DhtDefences``).
    max_idle_streams: finished outbound streams kept per peer for reuse.
    stream_idle_timeout: an inbound stream with no request for this long is closed, as
        go-libp2p-kad-dht does after a minute (each costs a waiting task; a requester
        whose pooled stream was closed retries on a fresh one).
    """

    k: int = 20
    alpha: int = 3
    rpc_timeout: float = 5.0
    max_queries: int = 200
    provider_ttl: float = DEFAULT_PROVIDER_TTL
    value_ttl: float = DEFAULT_VALUE_TTL
    republish_interval: float = 11 * 3600.0
    refresh_interval: float = 10 * 60.0
    join_bucket_fill: int | None = 1
    maintenance_interval: float = 60.0
    add_provider_rate: float = 10.0
    add_provider_burst: float = 100.0
    max_idle_streams: int = 2
    stream_idle_timeout: float = 60.0
    client: bool = False
    seed: int | None = None
    defences: DhtDefences = DhtDefences()


@dataclass(frozen=True, slots=True)
class KadOverride:
    """What to answer a request with instead of the node's own answer (None: nothing)."""

    response: KadMessage | None


RequestInterceptor = Callable[[KadMessage, str], KadOverride | None]
"""``intercept(request, sender)``: a ``KadOverride`` to answer in the node's place, or
None to let the node answer."""


@dataclass(frozen=True, slots=True)
class JoinAnswers:
    """What asking some peers to join through them gave: who ``answered``, who ``failed``
    to (peer ID, why), the peers they ``named``, and whether the join was ``useful``
    (the routing table gained a peer other than those who answered)."""

    answered: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    named: tuple[PeerAddress, ...]
    useful: bool


@dataclass
class LookupResult:
    """What a lookup found and what it cost.

    density: how the closest peers found compare with the estimated network size; None
    when the lookup stopped early (it had what it wanted) or the size is not known yet.
    """

    peers: list[PeerInfo]
    stats: LookupStats
    providers: list[PeerInfo] = field(default_factory=list)
    density: DensityVerdict | None = None


LookupObserver = Callable[[MessageType, bytes, LookupResult], None]
"""``observe(kind, key, result)``: told of every FIND_NODE and GET_PROVIDERS lookup."""


@dataclass(slots=True)
class DhtStats:
    """Counters of a node's own DHT work since it started.

    provides, provide_messages: announcements made and the requests they cost (lookup
    and ADD_PROVIDER). lookups, lookup_messages: provider lookups and their requests.
    density_checked, density_alarms: lookups judged by the density detector, and those
    it called suspicious. network_size: the latest estimate (0 until known).
    diversity_refused: times a peer was kept out of the routing table because its IP
    group was at its limit (a peer that keeps talking to us counts each time).
    diversity_dropped_replies: lookup answers not believed because they named more
    peers of one IP group than ``DiversityLimits.per_reply``.
    """

    provides: int = 0
    provide_messages: int = 0
    lookups: int = 0
    lookup_messages: int = 0
    density_checked: int = 0
    density_alarms: int = 0
    network_size: float = 0.0
    diversity_refused: int = 0
    diversity_dropped_replies: int = 0


class DhtNode:
    """One peer's DHT: routing table, provider store, and the protocol over ``host``."""

    def __init__(
        self,
        host: StreamHost,
        config: DhtConfig = DhtConfig(),
        *,
        validator: RecordValidator | None = None,
        rng: random.Random | None = None,
        nursery: trio.Nursery | None = None,
        intercept: RequestInterceptor | None = None,
        observe_lookup: LookupObserver | None = None,
        group_of: GroupOf | None = None,
    ) -> None:
        """``validator`` decides which PUT_VALUE records are stored; without one every
        PUT_VALUE is dropped (p2pnet keeps no value it cannot check). ``nursery`` runs
        background work (pinging the oldest peer of a full bucket); without one, full
        buckets simply keep their old peers. ``intercept`` may answer requests in the
        node's place (simulated adversaries do); ``observe_lookup`` is told of every lookup.
        ``group_of`` gives a peer's IP groups for ``defences.diversity`` (default: those
        of its addresses, ``address_groups``; simulations give their own)."""
        self.host = host
        self.config = config
        self.local = PeerInfo(host.peer_id, peer_id_bytes(host.peer_id))
        diversity = config.defences.diversity
        self._group_of: GroupOf | None = None
        if diversity is not None:
            self._group_of = group_of or address_groups(diversity.local_addresses)
        self.table = RoutingTable(
            self.local.key,
            k=config.k,
            group_of=self._group_of,
            limits=diversity or DiversityLimits(),
        )
        self.providers = ProviderStore(max_providers_per_key=config.k)
        self.validator = validator
        self.values = ValueStore(validator) if validator is not None else None
        self.republish = RepublishSchedule(config.republish_interval, config.provider_ttl)
        self.rng = rng or random.Random()
        self._add_provider_limiter = RateLimiter(
            config.add_provider_rate, config.add_provider_burst
        )
        self._pool: StreamPool[KadMessageReader] = StreamPool(
            host,
            KAD_PROTOCOL,
            KadMessageReader,
            max_idle=config.max_idle_streams,
            # Ours close before the other side's close them (same timeout for both).
            max_idle_time=config.stream_idle_timeout * 0.8,
        )
        self._nursery = nursery
        self._intercept = intercept
        self._observe_lookup = observe_lookup
        self.stats = DhtStats()
        self._sizes = SizeEstimator()
        self.requests_served = 0
        self.requests_dropped = 0
        # Called when a failure or a failed ping leaves the routing table empty (the peer
        # watches for it to rejoin, instead of polling the table's size).
        self.on_table_empty: Callable[[], None] | None = None

    # --- serving --------------------------------------------------------------------------

    def start(self) -> None:
        """Answer ``/p2pnet/kad/1.0.0`` streams from now on (not in client mode)."""
        if not self.config.client:
            self.host.set_stream_handler(KAD_PROTOCOL, self.handle_stream)

    def become_client(self) -> None:
        """Switch to client mode (we turned out not to be reachable): stop answering;
        peers that identify us from now on leave us out of their routing tables, and
        those that already had us drop us when we stop answering."""
        if not self.config.client:
            self.config = dataclasses.replace(self.config, client=True)
            self.host.remove_stream_handler(KAD_PROTOCOL)

    async def run_maintenance(
        self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Expire, republish and refresh every ``maintenance_interval`` seconds, forever."""
        task_status.started()
        while True:
            await trio.sleep(self.config.maintenance_interval)
            await self.maintain()

    async def maintain(self) -> None:
        """One round of upkeep: drop expired providers, republish what is due, refresh."""
        now = trio.current_time()
        self.providers.expire(now)
        for key in self.republish.due(now):
            if await self._announce(key) > 0:
                self.republish.published(key, trio.current_time())
            else:
                self.republish.failed(key, trio.current_time())
        await self.refresh(now)

    async def refresh(self, now: float, *, everything: bool = False) -> None:
        """Look into buckets not refreshed for ``refresh_interval`` (all, if ``everything``).

        Peers learn of others only by talking to them, so a bucket nobody we talk to
        falls in stays empty unless we look there: each stale far bucket gets a lookup
        for a random key inside it. A random key in a near bucket takes ~2**(256 - index)
        tries to find, so those are refreshed by the lookup of our own key, which walks
        through them anyway.
        """
        interval = 0.0 if everything else self.config.refresh_interval
        stale = self.table.stale_buckets(now, interval)
        if not stale:
            return
        await self.find_closest(self.local.key)
        for index in sorted(stale, reverse=True):
            target = random_preimage_in_bucket(
                key_of(self.local.key), index, self.rng, max_attempts=REFRESH_SEARCH_TRIES
            )
            if target is not None:
                await self.find_closest(target)
            self.table.mark_refreshed(index, trio.current_time())

    async def handle_stream(self, stream: ByteStream) -> None:
        """Answer requests on one inbound stream until the peer closes it or leaves it
        idle for ``stream_idle_timeout`` seconds."""
        reader = KadMessageReader()
        seen_at: tuple[str, ...] | None = None  # the sender's connections, read once
        while True:
            try:
                request = await read_request(stream, reader, self.config.stream_idle_timeout)
            except (ProtocolError, PayloadTooLargeError) as exc:
                log.info("kad stream from %s broke the protocol: %s", stream.peer_id, exc)
                await stream.reset()
                return
            except ConnectionLostError:
                await stream.reset()
                return
            if request is None:  # closed by the peer, or idle too long: read_request closed it
                return
            if seen_at is None:
                seen_at = self._seen_at(stream.peer_id)
            keep_open = await self._reply(stream, request, seen_at)
            # An idle stream waits up to a minute for its next request: it must not hold
            # the last request and response meanwhile (at 10,000 peers, ~100 such
            # streams per peer held ~1,000 peer records each).
            del request
            if not keep_open:
                return

    async def _reply(self, stream: ByteStream, request: KadMessage, seen_at: Sequence[str]) -> bool:
        """Answer one request on ``stream``; False once the stream is done with."""
        self._saw(stream.peer_id, seen_at)
        response = self.answer(request, stream.peer_id, trio.current_time(), seen_at=seen_at)
        if response is None:
            self.requests_dropped += 1
            if request.type is MessageType.ADD_PROVIDER:
                # ADD_PROVIDER has no response: the request is over all the same (else the
                # resource limiter resets the stream as stalled); keep the stream.
                if isinstance(stream, RequestBoundaries):
                    stream.request_done()
                return True
            # The spec has no error reply. Resetting the stream tells the sender at once
            # (as go and js do) instead of leaving it to its timeout.
            await stream.reset()
            return False
        self.requests_served += 1
        try:
            await stream.write(encode_kad_message(response))
        except ConnectionLostError:
            await stream.reset()
            return False
        return True

    def answer(
        self, request: KadMessage, sender: str, now: float, *, seen_at: Sequence[str] = ()
    ) -> KadMessage | None:
        """The response to ``request`` from ``sender``, or None to drop it.

        ``seen_at``: the remote addresses of ``sender``'s connections. Addresses it
        announces are kept only where it is seen at (none, if ``seen_at`` is empty,
        relayed ones apart), and answers give it only the addresses of its scope
        (all, if ``seen_at`` has no IP address).
        """
        if self._intercept is not None:
            override = self._intercept(request, sender)
            if override is not None:
                return override.response
        kind = request.type
        scope = scope_seen_at(seen_at)
        if kind is MessageType.PING:
            return KadMessage(MessageType.PING)
        if kind is MessageType.FIND_NODE:
            return KadMessage(
                MessageType.FIND_NODE,
                request.key,
                closer_peers=self._closer(request.key, sender, scope),
            )
        if kind is MessageType.GET_PROVIDERS:
            providers = [
                KadPeer(p.peer_id, addrs_for_scope(p.addrs, scope))
                for p in self.providers.get(request.key, now)
            ]  # a provider left with no address is still named: its peer ID may be dialled
            return KadMessage(
                MessageType.GET_PROVIDERS,
                request.key,
                closer_peers=self._closer(request.key, sender, scope),
                provider_peers=tuple(providers),
            )
        if kind is MessageType.ADD_PROVIDER:
            self._store_providers(request, sender, now, seen_at)
            return None  # ADD_PROVIDER has no response in the spec
        if kind is MessageType.GET_VALUE:
            held = self.values.get(request.key, now) if self.values is not None else None
            record = KadRecord(request.key, held.value) if held is not None else None
            return KadMessage(
                MessageType.GET_VALUE,
                request.key,
                record,
                self._closer(request.key, sender, scope),
            )
        if kind is MessageType.PUT_VALUE:
            return request if self._store_value(request, sender, now) else None
        log.debug("dropping %s from %s: not supported", kind.name, sender)
        return None

    def _store_providers(
        self, request: KadMessage, sender: str, now: float, seen_at: Sequence[str]
    ) -> None:
        if not self._add_provider_limiter.allow(sender, now):
            log.info("ADD_PROVIDER from %s over its rate limit: dropped", sender)
            return
        for provider in request.provider_peers:
            if provider.peer_id != sender:
                # A peer may only announce itself (spec: "the provider must be the sender").
                log.info(
                    "ADD_PROVIDER from %s names another peer %s: ignored", sender, provider.peer_id
                )
                continue
            # Only the addresses the sender is seen at (or relayed through a relay): it
            # cannot send finders to another host, nor to a private range behind its NAT.
            # (go-libp2p-kad-dht's handleAddProvider, handlers.go, keeps the sender's own
            # record only, as above, and runs its AddressFilter over its addresses.)
            announced = provider.addrs or tuple(self.host.peer_addrs(sender))
            addrs = addrs_seen_at(announced, seen_at)
            if len(addrs) < len(announced):
                log.debug(
                    "ADD_PROVIDER from %s: %d of its %d addresses are not where it is seen "
                    "(%s): dropped",
                    sender,
                    len(announced) - len(addrs),
                    len(announced),
                    ", ".join(seen_at) or "no connection",
                )
            try:
                self.providers.add(
                    request.key, _peer_info(provider.peer_id, addrs), now, self.config.provider_ttl
                )
            except StoreLimitError as exc:
                log.info("ADD_PROVIDER from %s refused: %s", sender, exc)

    def _store_value(self, request: KadMessage, sender: str, now: float) -> bool:
        record = request.record
        if self.values is None or record is None or record.key != request.key:
            log.info("PUT_VALUE from %s dropped: no validator, or no record for its key", sender)
            return False
        if not self._add_provider_limiter.allow(sender, now):
            log.info("PUT_VALUE from %s over its rate limit: dropped", sender)
            return False
        try:
            self.values.put(record.key, record.value, sender, now, self.config.value_ttl)
        except (InvalidRecordError, StoreLimitError) as exc:
            log.info("PUT_VALUE from %s refused: %s", sender, exc)
            return False
        return True

    def _closer(self, key: bytes, requester: str, scope: AddressScope) -> tuple[KadPeer, ...]:
        """The k peers closest to ``key`` but ``requester``, with the addresses of its
        ``scope``; a peer left with none of its addresses is not named."""
        closer = []
        for peer in self.table.closest(key_of(key), self.config.k + 1):
            if peer.peer_id == requester:
                continue
            addrs = addrs_for_scope(peer.addrs, scope)
            if addrs or not peer.addrs:
                closer.append(KadPeer(peer.peer_id, addrs))
        return tuple(closer[: self.config.k])

    def _seen_at(self, peer_id: str) -> tuple[str, ...]:
        """The remote addresses of our connections to ``peer_id``."""
        return tuple(addr for addr in self.host.seen_at(peer_id) if addr)

    def _saw(self, peer_id: str, seen_at: Sequence[str]) -> None:
        """A peer talked to us: it may go into the routing table, if we can dial it back
        where it is seen at and it serves the DHT (a client-mode peer does not)."""
        addrs = addrs_seen_at(self.host.peer_addrs(peer_id), seen_at)
        if not addrs or self.host.supports(peer_id, KAD_PROTOCOL) is False:
            return
        try:
            self._update(_peer_info(peer_id, addrs))
        except InvalidAddressError:
            pass

    def _update(self, peer: PeerInfo) -> None:
        decision = self.table.update(peer, trio.current_time())
        if isinstance(decision, PingOldest):
            self._spawn(self._ping_oldest, decision)
        elif isinstance(decision, Ignored) and decision.group is not None:
            self.stats.diversity_refused += 1
            log.debug("%s kept out of the routing table: %s", peer.peer_id, decision.reason)

    def _too_concentrated(self, responder: PeerInfo, closer: Sequence[PeerInfo]) -> bool:
        """Whether an answer names more closer peers of one IP group than the limits
        allow (then the lookup treats it as failed: none of its peers or providers are
        used)."""
        diversity = self.config.defences.diversity
        if diversity is None or self._group_of is None:
            return False
        group = reply_too_concentrated(closer, self._group_of, diversity.per_reply)
        if group is None:
            return False
        self.stats.diversity_dropped_replies += 1
        log.debug(
            "answer of %s dropped: it names more than %d peers of IP group %s",
            responder.peer_id,
            diversity.per_reply,
            group,
        )
        return True

    async def _ping_oldest(self, decision: PingOldest) -> None:
        alive = await self.ping(decision.oldest)
        self.table.on_ping_result(decision.oldest, alive, trio.current_time())
        if not alive:
            self._tell_if_empty()

    def _tell_if_empty(self) -> None:
        if self.on_table_empty is not None and len(self.table) == 0:
            self.on_table_empty()

    async def close_idle_streams(self) -> None:
        """Close this node's pooled streams idle for longer than it keeps them (each
        request does it too; a node that sends none keeps them until this)."""
        await self._pool.prune()

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Start background upkeep (a ping of a full bucket's oldest peer) in the peer's
        nursery; dropped once that nursery has closed: a lookup of a stopped peer may still
        finish in its caller's task (seen in a pipeline-churn run, where it crashed the
        process), and upkeep of a stopped node is moot."""
        if self._nursery is None:
            return
        try:
            self._nursery.start_soon(fn, *args)
        except RuntimeError:  # trio: the nursery's block has exited
            log.debug("not starting %s: the node's nursery has closed", fn.__name__)

    # --- requests ----------------------------------------------------------------------------

    async def ping(self, peer: PeerInfo) -> bool:
        """True if ``peer`` answers a PING within the RPC timeout."""
        try:
            await self.request(peer, KadMessage(MessageType.PING))
        except (P2PNetError, trio.TooSlowError):
            return False
        return True

    async def bootstrap(self, peers: Sequence[PeerAddress]) -> int:
        """Join through ``peers`` (asked at once, each for up to the RPC timeout), then
        fill the routing table (``fill_after_join``). Returns the number of peers in the
        routing table afterwards.
        """
        await self.join_through(peers, timeout=self.config.rpc_timeout)
        return len(self.table)

    async def join_through(self, peers: Sequence[PeerAddress], *, timeout: float) -> JoinAnswers:
        """Ask ``peers`` concurrently for the peers closest to our own key, each for at
        most ``timeout`` seconds (one that never answers holds the join no longer); if
        any answered, fill the routing table (``fill_after_join``). Says who answered,
        who did not, whom they named, and whether the routing table gained a peer other
        than those who answered.
        """
        before = {p.peer_id for p in self.table}
        answered: list[str] = []
        failed: list[tuple[str, str]] = []
        named: dict[str, PeerAddress] = {}

        async def ask(address: PeerAddress) -> None:
            peer = _peer_info(address.peer_id, address.addrs)
            try:
                with trio.fail_after(timeout):
                    response = await self.request(
                        peer, KadMessage(MessageType.FIND_NODE, self.local.key)
                    )
            except (P2PNetError, trio.TooSlowError) as exc:
                why = str(exc) or f"no answer in {timeout:g} s"
                log.debug("bootstrap peer %s did not answer: %s", address, why)
                failed.append((address.peer_id, why))
                return
            self._update(peer)
            answered.append(address.peer_id)
            response = _in_scope(response, scope_seen_at(self._seen_at(peer.peer_id)))
            for info in self._peer_infos(response.closer_peers):
                named.setdefault(info.peer_id, PeerAddress(info.peer_id, info.addrs))
            log.debug("bootstrap peer %s named %d peers", address, len(response.closer_peers))

        async with trio.open_nursery() as nursery:
            for address in peers:
                if address.peer_id != self.local.peer_id:
                    nursery.start_soon(ask, address)
        if answered or len(self.table):
            await self.fill_after_join()
        gained = {p.peer_id for p in self.table} - before - set(answered)
        return JoinAnswers(tuple(answered), tuple(failed), tuple(named.values()), bool(gained))

    async def fill_after_join(self) -> None:
        """Fill the routing table of a peer that just joined: look up our own key (our
        neighbours learn of us, we of them, and the buckets near us fill), then look
        into each bucket ``buckets_to_fill`` names, stopping as soon as it holds
        ``join_bucket_fill`` peers. Every bucket from the closest non-empty one out then
        counts as refreshed: the periodic refresh looks into them ``refresh_interval``
        later, and lookups meanwhile fill them with the peers that answer.

        With ``join_bucket_fill`` None, every bucket gets a full lookup instead.
        """
        wanted = self.config.join_bucket_fill
        if wanted is None:
            await self.refresh(trio.current_time(), everything=True)
            return
        await self.find_closest(self.local.key)
        local = key_of(self.local.key)
        sizes = {i: len(self.table.bucket(i)) for i in range(KEY_BITS)}
        for index in buckets_to_fill(sizes, wanted=wanted):
            if len(self.table.bucket(index)) >= wanted:  # an earlier lookup filled it
                continue
            target = random_preimage_in_bucket(
                local, index, self.rng, max_attempts=REFRESH_SEARCH_TRIES
            )
            if target is None:
                continue

            def filled(_peer: PeerInfo, _response: KadMessage, index: int = index) -> bool:
                return len(self.table.bucket(index)) >= wanted

            # One request at a time: the peer closest to a key of the bucket nearly
            # always names peers in it, and those asked at once besides would be dials
            # for nothing.
            await self._iterate(target, KadMessage(MessageType.FIND_NODE, target), filled, alpha=1)
        now = trio.current_time()
        for index in self.table.stale_buckets(now, 0.0):
            self.table.mark_refreshed(index, now)

    async def find_closest(self, key: bytes) -> LookupResult:
        """The k peers closest to ``key`` that answered, by an iterative FIND_NODE lookup."""
        lookup, complete = await self._iterate(key, KadMessage(MessageType.FIND_NODE, key))
        result = LookupResult(lookup.result(), lookup.stats)
        self._judge(MessageType.FIND_NODE, key, result, complete)
        return result

    async def provide(self, key: bytes) -> int:
        """Announce this node as a provider of ``key`` to the k closest peers, and keep
        announcing it before it expires. Returns how many peers took the announcement."""
        try:
            self.providers.add(
                key, self._self_info(), trio.current_time(), self.config.provider_ttl
            )
        except StoreLimitError as exc:
            # Our store is full of others' announcements for this key: the peers we
            # announce to keep ours, and finders reach us through them.
            log.info("our own provider record for %r is not kept here: %s", key, exc)
        count = await self._announce(key)
        self.republish.add(key, trio.current_time())
        if count:
            self.republish.published(key, trio.current_time())
        return count

    async def find_providers(
        self, key: bytes, count: int = 20, *, timeout: float = math.inf
    ) -> LookupResult:
        """Providers of ``key``: ours first, then an iterative GET_PROVIDERS lookup that
        stops once ``count`` distinct providers are known, or after ``timeout`` seconds
        with the providers found by then (a lookup slowed by peers that never answer
        still returns what it learnt)."""
        found: dict[str, PeerInfo] = {
            p.peer_id: p for p in self.providers.get(key, trio.current_time())
        }

        def collect(peer: PeerInfo, response: KadMessage) -> bool:
            for provider in self._peer_infos(response.provider_peers, keep_self=True):
                found.setdefault(provider.peer_id, provider)
            return len(found) >= count

        if len(found) >= count:
            return LookupResult([], LookupStats(0, 0, 0, 0, 0), list(found.values())[:count])
        lookup, complete = await self._iterate(
            key,
            KadMessage(MessageType.GET_PROVIDERS, key),
            collect,
            deadline=trio.current_time() + timeout,
        )
        result = LookupResult(lookup.result(), lookup.stats, list(found.values())[:count])
        self.stats.lookups += 1
        self.stats.lookup_messages += lookup.stats.queries
        self._judge(MessageType.GET_PROVIDERS, key, result, complete)
        return result

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Store ``value`` under ``key`` here and on the k closest peers; returns how many
        peers stored it (they echo the request only once it is validated and stored).

        Raises:
            UsageError: this node has no validator.
            InvalidRecordError: ``value`` does not pass our own validator.
        """
        if self.values is None:
            raise UsageError("this DHT node has no validator, so it stores no values")
        self.values.put(key, value, self.local.peer_id, trio.current_time(), self.config.value_ttl)
        request = KadMessage(MessageType.PUT_VALUE, key, KadRecord(key, value))
        stored = 0

        async def put(peer: PeerInfo) -> None:
            nonlocal stored
            try:
                await self.request(peer, request)
                stored += 1
            except (P2PNetError, trio.TooSlowError) as exc:
                log.debug("PUT_VALUE to %s failed: %s", peer.peer_id, exc)

        async with trio.open_nursery() as nursery:
            for peer in (await self.find_closest(key)).peers:
                nursery.start_soon(put, peer)
        return stored

    async def get_value(self, key: bytes, *, quorum: int = 3) -> bytes | None:
        """The best valid value for ``key``: ours if we hold one, else from an iterative
        GET_VALUE lookup that stops once ``quorum`` valid values arrived. Invalid values
        are dropped and logged.

        Raises:
            UsageError: this node has no validator.
        """
        if self.values is None or self.validator is None:
            raise UsageError("this DHT node has no validator, so it reads no values")
        validator = self.validator
        found: list[bytes] = []
        held = self.values.get(key, trio.current_time())
        if held is not None:
            found.append(held.value)

        def collect(peer: PeerInfo, response: KadMessage) -> bool:
            if response.record is not None and response.record.key == key:
                try:
                    validator.validate(key, response.record.value)
                    found.append(response.record.value)
                except InvalidRecordError as exc:
                    log.warning("peer %s sent an invalid value: %s", peer.peer_id, exc)
            return len(found) >= quorum

        if len(found) < quorum:
            await self._iterate(key, KadMessage(MessageType.GET_VALUE, key), collect)
        return found[validator.select(key, found)] if found else None

    async def _announce(self, key: bytes) -> int:
        lookup = await self.find_closest(key)
        closest = lookup.peers
        self.stats.provides += 1
        self.stats.provide_messages += lookup.stats.queries + len(closest)
        request = KadMessage(
            MessageType.ADD_PROVIDER, key, provider_peers=(_kad_peer(self._self_info()),)
        )
        delivered = 0

        async def send(peer: PeerInfo) -> None:
            nonlocal delivered
            try:
                await self._send(peer, request)
                delivered += 1
            except (P2PNetError, trio.TooSlowError) as exc:
                log.debug("ADD_PROVIDER to %s failed: %s", peer.peer_id, exc)

        async with trio.open_nursery() as nursery:
            for peer in closest:
                nursery.start_soon(send, peer)
        return delivered

    def _self_info(self) -> PeerInfo:
        return _peer_info(self.local.peer_id, tuple(transport_part(a) for a in self.host.addrs))

    def _peer_infos(self, peers: Sequence[KadPeer], *, keep_self: bool = False) -> list[PeerInfo]:
        out = []
        for peer in peers:
            if peer.peer_id == self.local.peer_id and not keep_self:
                continue
            try:
                out.append(_peer_info(peer.peer_id, peer.addrs))
            except InvalidAddressError:
                continue
        return out

    def network_size(self) -> float | None:
        """Our estimate of the network's size: the median of the estimates of our last
        lookups that ran their course (``SizeEstimator``), or, until there are 3, the
        estimate of the peers closest to us in our routing table; None while we know
        fewer than 3 peers."""
        size = self._sizes.value() if self._sizes.samples >= 3 else None
        if size is None:
            local = self.local.kad_key
            closest = [p.kad_key for p in self.table.closest(local, self.config.k)]
            size = estimate_network_size(local, closest)
        if size is not None:
            self.stats.network_size = size
        return size

    def _judge(self, kind: MessageType, key: bytes, result: LookupResult, complete: bool) -> None:
        """Run the density detector on a lookup that ran its course, count and report it,
        and add the estimate of the network's size its closest peers give.

        Suspicious lookups add theirs too: leaving them out trapped a peer whose first
        estimate was low (its own neighbourhood's, 25-35% off): against it honest keys
        look dense, so none of its lookups counted and the low estimate stayed. The
        median ignores the few estimates sybils near some key inflate."""
        size = self.stats.network_size
        if complete and result.peers:
            target = key_of(key)
            k = self.config.k
            closest = result.peers[:k]
            if size > 0.0:
                result.density = density_verdict(
                    size,
                    [common_prefix_length(target, p.kad_key) for p in closest],
                    k=k,
                    threshold=self.config.defences.density_threshold,
                )
                self.stats.density_checked += 1
                self.stats.density_alarms += result.density.suspicious
            self._sizes.add(target, [p.kad_key for p in closest])
        if self._observe_lookup is not None:
            self._observe_lookup(kind, key, result)

    async def _iterate(
        self,
        target: bytes,
        request: KadMessage,
        on_response: Callable[[PeerInfo, KadMessage], bool] | None = None,
        *,
        deadline: float = math.inf,
        alpha: int | None = None,
    ) -> tuple[DisjointLookup, bool]:
        """Run one iterative lookup for ``target``, sending ``request`` to each peer asked,
        until it finishes or ``deadline`` (trio time) passes. Returns the lookup and
        whether it ran its course (not stopped by ``on_response`` nor the deadline).
        ``alpha``: requests in flight at once, if not ``config.alpha``.

        With ``defences.region``, the lookup covers the key's region as well as its k
        closest peers, the region's size set by our estimate of the network's. It runs
        over ``defences.paths`` disjoint paths (one: the plain lookup), and
        ``on_response`` sees the answers of every path."""
        config = self.config
        defences = config.defences
        size = self.network_size()
        region_bits = (
            region_prefix_bits(size, config.k) if defences.region and size is not None else None
        )
        stopped = False
        lookup = DisjointLookup(
            target,
            self.table.closest(key_of(target), config.k),
            now=trio.current_time(),
            paths=defences.paths,
            k=config.k,
            alpha=config.alpha if alpha is None else alpha,
            rpc_timeout=config.rpc_timeout,
            max_queries=config.max_queries * defences.paths,
            local_key=self.local.key,
            region_bits=region_bits,
            max_region=defences.max_region,
        )
        done_send, done_receive = trio.open_memory_channel[None](float("inf"))

        async def query(peer: PeerInfo) -> None:
            nonlocal stopped
            try:
                response = await self.request(peer, request)
            except (P2PNetError, trio.TooSlowError) as exc:
                log.debug("%s to %s failed: %s", request.type.name, peer.peer_id, exc)
                lookup.on_failure(peer, trio.current_time())
                if self.table.record_failure(peer, trio.current_time()):
                    self._tell_if_empty()
            else:
                response = _in_scope(response, scope_seen_at(self._seen_at(peer.peer_id)))
                self._update(peer)
                closer = self._peer_infos(response.closer_peers)
                if self._too_concentrated(peer, closer):
                    lookup.on_failure(peer, trio.current_time())
                else:
                    lookup.on_success(peer, closer, trio.current_time())
                    if on_response is not None and on_response(peer, response):
                        stopped = True
                        lookup.stop()
            done_send.send_nowait(None)

        async with trio.open_nursery() as nursery:
            while True:
                for peer in lookup.next_queries(trio.current_time()):
                    nursery.start_soon(query, peer)
                if lookup.is_finished:
                    break
                if trio.current_time() >= deadline:
                    stopped = True
                    break
                timeout_at = lookup.next_timeout()
                with trio.move_on_at(min(deadline, math.inf if timeout_at is None else timeout_at)):
                    await done_receive.receive()
            nursery.cancel_scope.cancel()
        target_key = key_of(target)
        if not stopped and target_key != self.local.kad_key:
            # It asked the peers closest to a key of this bucket: as good as a refresh.
            self.table.mark_refreshed(
                bucket_index(self.local.kad_key, target_key), trio.current_time()
            )
        return lookup, not stopped

    async def request(self, peer: PeerInfo, request: KadMessage) -> KadMessage:
        """Send one ``request`` to ``peer`` and return its response of the same type.

        Raises:
            PeerUnreachableError, ConnectionLostError, RemoteProtocolError, trio.TooSlowError.
        """
        response = await self._exchange(peer, request, expect_response=True)
        assert response is not None
        if response.type is not request.type:
            raise RemoteProtocolError(
                f"peer {peer.peer_id} answered {request.type.name} with {response.type.name}"
            )
        return response

    async def _send(self, peer: PeerInfo, message: KadMessage) -> None:
        """Send a message that has no response (ADD_PROVIDER)."""
        await self._exchange(peer, message, expect_response=False)

    async def _exchange(
        self, peer: PeerInfo, message: KadMessage, *, expect_response: bool
    ) -> KadMessage | None:
        frame = encode_kad_message(message)

        async def exchange(channel: Channel[KadMessageReader]) -> KadMessage | None:
            await channel.stream.write(frame)
            if not expect_response:
                return None
            response = await read_message(channel.stream, channel.reader)
            if response is None:
                raise ConnectionLostError(
                    f"peer {peer.peer_id} closed the kad stream without answering"
                )
            return response

        with trio.fail_after(self.config.rpc_timeout):
            return await self._pool.request(PeerAddress(peer.peer_id, peer.addrs), exchange)

    async def aclose(self) -> None:
        """Close idle streams. Nothing is withdrawn: announcements simply expire."""
        await self._pool.aclose()


# PeerInfo of each (peer ID, addresses) seen: every answer names up to k peers, and
# the same peers recur across answers; building one hashes its key. Emptied when it
# holds CACHED_PEERS, as the wire codec's caches are.
_PEER_INFOS: dict[tuple[str, tuple[str, ...]], PeerInfo] = {}


def _peer_info(peer_id: str, addrs: Sequence[str]) -> PeerInfo:
    cache_key = (peer_id, addrs if type(addrs) is tuple else tuple(addrs))
    info = _PEER_INFOS.get(cache_key)
    if info is None:
        info = PeerInfo(peer_id, peer_id_bytes(peer_id), tuple(transport_part(a) for a in addrs))
        if len(_PEER_INFOS) >= CACHED_PEERS:
            _PEER_INFOS.clear()
        _PEER_INFOS[cache_key] = info
    return info


def _in_scope(response: KadMessage, scope: AddressScope) -> KadMessage:
    """``response`` with only the addresses a responder seen in ``scope`` can know of (go-libp2p
    identify filters what a peer tells of itself the same way); a closer peer left with
    none of its addresses is left out, a provider is kept."""
    if scope is AddressScope.OTHER or scope is AddressScope.LOOPBACK:
        return response
    closer = []
    for peer in response.closer_peers:
        addrs = addrs_for_scope(peer.addrs, scope)
        if addrs or not peer.addrs:
            closer.append(dataclasses.replace(peer, addrs=addrs))
    providers = tuple(
        dataclasses.replace(p, addrs=addrs_for_scope(p.addrs, scope))
        for p in response.provider_peers
    )
    return dataclasses.replace(response, closer_peers=tuple(closer), provider_peers=providers)


def _kad_peer(peer: PeerInfo) -> KadPeer:
    return KadPeer(peer.peer_id, peer.addrs)
