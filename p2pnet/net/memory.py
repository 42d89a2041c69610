"""An in-memory network with the interface of the libp2p host, for tests and simulations.

::

    async with MemoryNetwork(latency=0.02, seed=1) as network:   # or nursery.start(network.run)
        a, b = network.add_host(), network.add_host()
        b.set_stream_handler("/echo/1.0.0", echo)
        stream = await a.open_stream(PeerAddress(b.peer_id), "/echo/1.0.0")

``MemoryHost`` and ``MemoryStream`` satisfy ``StreamHost`` and ``ByteStream``
(``p2pnet.net.interfaces``), so the DHT node and the invoke server and client run on
them unchanged. Thousands of peers fit in one trio process: a host is a few hundred
bytes and no task, a stream two small objects and no task; only a running stream
handler is a task. Under ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock``) simulated time runs as fast as the CPU allows; a real clock works too.

Timing model (``latency(src, dst)`` is one way, in seconds; a callable may be random):

- a write is delivered ``latency`` after it is made, never before an earlier write on
  the same stream direction (in-order, reliable, like TCP); a read returns every due
  byte, up to 1 MiB, so writes may coalesce as on a real connection;
- opening a stream costs ``open_rtts`` round trips (protocol negotiation), plus
  ``connect_rtts`` more when the two hosts have no connection yet; the handler starts
  when the opener's ``open_stream`` returns;
- ``close`` ends the sending direction only; the peer reads b"" once the data before
  it has arrived; this side can still read (as py-libp2p's Yamux streams);
- ``reset`` reaches the peer ``latency`` later; from then on the peer's reads and writes
  raise ``ConnectionLostError`` and its unread data is discarded (as py-libp2p). Streams
  have no flow control: a writer never blocks, whatever the reader does.

Faults (streams never lose bytes; a crashed or cut-off peer is the fault model):

- ``host.crash()``: its streams break at once on its side, and reach the other side as
  a reset ``latency`` later; its running handlers are cancelled; opening a stream to it
  raises ``PeerUnreachableError`` after one round trip ("connection refused");
  ``host.restart()`` brings it back with the same peer ID, address and handlers.
- ``network.partition(a_ids, b_ids)``: nothing crosses between the two sides until
  ``network.heal()``: opens across the cut raise ``PeerUnreachableError`` after
  ``dial_timeout``; open streams stall (reads wait, writes are buffered, resets held)
  and carry on after the heal, as TCP does across a short outage.

NATs (``network.set_nat(peer_id, "cone" | "symmetric")``), as p2pnet traverses them
(docs/networking.md, "NAT traversal"), modelled rather than run: a host behind a NAT
can open streams to anyone, and anyone it is connected to can open streams back; a
host with no connection to it reaches it only through the relay it holds a
reservation on (``network.reserve(peer_id, relay_id)``), every message then crossing
the relay (latency to the relay plus from it), and after ``holepunch_s`` the pair is
direct if neither side is behind a symmetric NAT (and a ``holepunch_success`` draw
succeeds). Without a reservation the open fails after ``dial_timeout``, as a dial to a
NAT that drops unsolicited packets does.

Addresses are ``/memory/<n>/p2p/<peer-id>`` (``n`` = the host's index). The ``multiaddr``
package parses them and ``parse_peer_address`` round-trips them, and no py-libp2p
transport can dial ``/memory``: an address that leaks from a simulation into a real
host fails to dial instead of reaching any socket.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Final

import trio

from p2pnet.core.address import transport_part
from p2pnet.core.peer_id import peer_id_from_public_key, public_key_from_peer_id
from p2pnet.errors import ConnectionLostError, PeerUnreachableError
from p2pnet.net.interfaces import ByteStreamHandler

if TYPE_CHECKING:
    # py-libp2p pulls in trio-typing, whose trio-stubs mypy reads instead of trio's own
    # annotations; there, nursery.start() is typed against trio_typing's TaskStatus.
    from trio_typing import TaskStatus

    from p2pnet.core.address import PeerAddress

__all__ = [
    "NAT_KINDS",
    "Latency",
    "MemoryHost",
    "MemoryNetwork",
    "MemoryStream",
    "NatStats",
    "Transmit",
]

log = logging.getLogger(__name__)

Latency = Callable[[str, str], float]
"""One-way delay in seconds from the first peer ID to the second."""

Transmit = Callable[[str, str, int], float]
"""Seconds it takes to send a number of bytes from the first peer ID to the second."""

# As host.READ_SIZE (not imported from there: host.py loads py-libp2p).
READ_SIZE: Final = 1 << 20
NAT_KINDS: Final = ("public", "cone", "symmetric")


@dataclass
class NatStats:
    """What the NAT model did: connections set up through a relay, of those the ones
    hole punching made direct and the ones it could not, and opens that failed because
    the NATed host held no relay reservation."""

    relayed: int = 0
    punched: int = 0
    punch_failed: int = 0
    unreachable: int = 0


class MemoryNetwork:
    """Hosts that reach each other through memory, with simulated latency and faults.

    It must be running while streams are opened, because stream handlers run as tasks
    in its nursery: ``async with network:`` or ``await nursery.start(network.run)``.
    Leaving it cancels every running handler.

    Args:
        latency: one-way delay in seconds, fixed or ``latency(src_peer_id, dst_peer_id)``
            (called once per write, close, reset and stream open; may be random).
        seed: seeds the generated peer IDs, so a scenario is reproducible.
        open_rtts: round trips an open costs (protocol negotiation).
        connect_rtts: extra round trips for the first open between two hosts (dial,
            security and muxer handshakes); 0 by default.
        dial_timeout: seconds an open across a partition waits before it fails.
        transmit: ``transmit(src, dst, size)``: extra seconds a write of ``size`` bytes
            takes (size / bandwidth); none by default. There is no queueing: writes on
            different streams do not wait for each other.
        holepunch_s: seconds from a relayed connection to a direct one (NATs, above).
        holepunch_success: probability that hole punching between two hosts, neither
            behind a symmetric NAT, succeeds.
        time_grain: seconds; when above 0, every arrival (data, close, reset) and every
            open's handshake ends on the next multiple of it. Events that fall in the
            same grain then share one wake-up of the scheduler instead of one each:
            a large simulation spends much of its CPU on those wake-ups. 0 (the
            default): exact times.

    ``messages_sent`` and ``bytes_sent`` count the writes of data on every stream.
    """

    def __init__(
        self,
        *,
        latency: Latency | float = 0.0,
        seed: int = 0,
        open_rtts: float = 1.0,
        connect_rtts: float = 0.0,
        dial_timeout: float = 10.0,
        transmit: Transmit | None = None,
        holepunch_s: float = 1.3,
        holepunch_success: float = 1.0,
        time_grain: float = 0.0,
    ) -> None:
        self._fixed_latency: float | None = None
        self._latency: Latency | None = None
        if callable(latency):
            self._latency = latency
        else:
            self._fixed_latency = _delay("latency", latency)
        self.open_rtts = _delay("open_rtts", open_rtts)
        self.connect_rtts = _delay("connect_rtts", connect_rtts)
        self.dial_timeout = _delay("dial_timeout", dial_timeout)
        self.transmit = transmit
        self.holepunch_s = _delay("holepunch_s", holepunch_s)
        if not 0.0 <= holepunch_success <= 1.0:
            raise ValueError(f"holepunch_success must be in 0..1, got {holepunch_success}")
        self.holepunch_success = holepunch_success
        grain = _delay("time_grain", time_grain)
        # Arrivals are k / per_second, the same float for the same k.
        self._grains_per_second = 1.0 / grain if grain else 0.0
        self.nat_stats = NatStats()
        self._nat: dict[str, str] = {}  # peer ID -> cone | symmetric (others are public)
        self._reservations: dict[str, str] = {}  # NATed peer ID -> its relay's
        self._relayed: dict[frozenset[str], str] = {}  # pair -> the relay between them
        self.streams_opened = 0
        self.messages_sent = 0  # writes of data, on every stream
        self.bytes_sent = 0
        self._rng = random.Random(seed)
        self._hosts: dict[str, MemoryHost] = {}
        self._partitions: list[tuple[frozenset[str], frozenset[str]]] = []
        self._stalled: set[MemoryStream] = set()  # readers waiting for a heal
        # Readers waiting for data due later: (time, tie-breaker, stream), woken by one
        # timer task. One trio deadline per due time instead of one per waiting reader:
        # a deadline wakes its task by raising Cancelled, which is the costly part.
        self._timers: list[tuple[float, int, MemoryStream]] = []
        self._timer_ids = itertools.count()
        self._timer_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None

    # --- running ----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; reports started once streams can be opened."""
        self._check_not_running()
        try:
            async with trio.open_nursery() as nursery:
                self._start(nursery)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._stop()

    async def __aenter__(self) -> MemoryNetwork:
        self._check_not_running()
        manager = trio.open_nursery()
        self._start(await manager.__aenter__())
        self._nursery_manager = manager
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        manager, nursery = self._nursery_manager, self._nursery
        assert manager is not None and nursery is not None
        self._nursery_manager = None
        self._stop()
        nursery.cancel_scope.cancel()
        # The block's own exception is not handed to the nursery, which would wrap it in
        # an ExceptionGroup: it propagates as itself once the handlers have stopped.
        # Only a Cancelled is handed over: it may be the nursery's own to absorb.
        if isinstance(exc, trio.Cancelled):
            await manager.__aexit__(exc_type, exc, tb)
        else:
            await manager.__aexit__(None, None, None)

    def _check_not_running(self) -> None:
        if self._nursery is not None:
            raise RuntimeError("this MemoryNetwork is already running")

    def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        nursery.start_soon(self._run_timers)

    def _stop(self) -> None:
        self._nursery = self._timer_scope = None
        self._timers.clear()

    async def _run_timers(self) -> None:
        timers = self._timers
        while True:
            now = trio.current_time()
            while timers and timers[0][0] <= now:
                heapq.heappop(timers)[2]._wake()
            with trio.CancelScope(deadline=timers[0][0] if timers else math.inf) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()

    def _on_grain(self, when: float) -> float:
        """``when``, or with a ``time_grain`` the next multiple of it."""
        per_second = self._grains_per_second
        return math.ceil(when * per_second) / per_second if per_second else when

    async def _sleep(self, seconds: float) -> None:
        await trio.sleep_until(self._on_grain(trio.current_time() + seconds))

    def _wake_at(self, when: float, endpoint: MemoryStream) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_ids), endpoint))
        scope = self._timer_scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    # --- hosts ------------------------------------------------------------------------

    def add_host(self, peer_id: str | None = None) -> MemoryHost:
        """A new host, with a fresh peer ID drawn from the seed unless ``peer_id`` is given.

        A generated peer ID is that of a random 32-byte "public key": a valid peer ID
        with no private key behind it. To sign records, pass the peer ID of a real
        identity (``p2pnet.net.identity.peer_id_of``).

        Raises:
            InvalidAddressError: ``peer_id`` is not an Ed25519 peer ID.
            ValueError: a host with that peer ID is already on the network.
        """
        if peer_id is None:
            peer_id = peer_id_from_public_key(self._rng.randbytes(32))
            while peer_id in self._hosts:  # only if the caller added this one by hand
                peer_id = peer_id_from_public_key(self._rng.randbytes(32))
        else:
            public_key_from_peer_id(peer_id)
            if peer_id in self._hosts:
                raise ValueError(f"peer {peer_id} is already on this memory network")
        host = MemoryHost(self, peer_id, len(self._hosts))
        self._hosts[peer_id] = host
        return host

    @property
    def hosts(self) -> Mapping[str, MemoryHost]:
        """Every host ever added, crashed or not, by peer ID (read-only)."""
        return MappingProxyType(self._hosts)

    def one_way_latency(self, src: str, dst: str) -> float:
        """The delay of one message from peer ``src`` to peer ``dst``, in seconds (through
        their relay while their connection is relayed)."""
        if self._relayed and (relay := self._relayed.get(frozenset((src, dst)))):
            return self._direct_latency(src, relay) + self._direct_latency(relay, dst)
        return self._direct_latency(src, dst)

    def _direct_latency(self, src: str, dst: str) -> float:
        if self._latency is None:
            assert self._fixed_latency is not None
            return self._fixed_latency
        return _delay("latency", self._latency(src, dst))

    # --- NATs -------------------------------------------------------------------------

    def set_nat(self, peer_id: str, kind: str) -> None:
        """Put ``peer_id`` behind a NAT of ``kind`` (one of NAT_KINDS; public: none)."""
        if kind not in NAT_KINDS:
            raise ValueError(f"NAT kind must be one of {', '.join(NAT_KINDS)}, not {kind!r}")
        if kind == "public":
            self._nat.pop(peer_id, None)
        else:
            self._nat[peer_id] = kind

    def nat_of(self, peer_id: str) -> str:
        return self._nat.get(peer_id, "public")

    def reserve(self, peer_id: str, relay_id: str) -> None:
        """``peer_id`` holds a reservation on relay ``relay_id``: peers not connected to
        it reach it through that relay."""
        if relay_id in self._nat:
            raise ValueError(f"relay {relay_id} is behind a NAT itself")
        self._reservations[peer_id] = relay_id

    def is_relayed(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._relayed

    async def _through_nat(self, src: MemoryHost, dst: MemoryHost, peer: PeerAddress) -> None:
        """``src`` has no connection to NATed ``dst``: go through ``dst``'s relay (and
        schedule hole punching), or fail as an unanswered dial."""
        relay_id = self._reservations.get(dst.peer_id)
        relay = self._hosts.get(relay_id) if relay_id else None
        if relay is None or not relay._alive:
            self.nat_stats.unreachable += 1
            await trio.sleep(self.dial_timeout)
            raise PeerUnreachableError(
                f"cannot connect to peer {peer}: no answer within {self.dial_timeout:g} s "
                "(simulated NAT: the peer holds no relay reservation)"
            )
        pair = frozenset((src.peer_id, dst.peer_id))
        self._relayed[pair] = relay.peer_id
        self.nat_stats.relayed += 1
        punchable = "symmetric" not in (self.nat_of(src.peer_id), self.nat_of(dst.peer_id))
        ok = punchable and (
            self.holepunch_success >= 1 or self._rng.random() < self.holepunch_success
        )
        self._nursery_or_raise().start_soon(self._hole_punch, pair, relay.peer_id, ok)

    async def _hole_punch(self, pair: frozenset[str], relay_id: str, ok: bool) -> None:
        await trio.sleep(self.holepunch_s)
        if self._relayed.get(pair) != relay_id:
            return  # reconnected meanwhile
        if ok:
            del self._relayed[pair]
            self.nat_stats.punched += 1
        else:
            self.nat_stats.punch_failed += 1

    # --- partitions -------------------------------------------------------------------

    def partition(self, a_ids: Iterable[str], b_ids: Iterable[str]) -> None:
        """Cut every path between a host in ``a_ids`` and a host in ``b_ids``, until heal().

        Partitions add up: two calls cut both sets of paths.

        Raises:
            ValueError: a peer ID on both sides.
        """
        a, b = frozenset(a_ids), frozenset(b_ids)
        if a & b:
            raise ValueError(f"peer {next(iter(a & b))} is on both sides of the partition")
        self._partitions.append((a, b))

    def heal(self) -> None:
        """Remove every partition; stalled streams carry on."""
        self._partitions.clear()
        stalled, self._stalled = self._stalled, set()
        for endpoint in stalled:
            endpoint._wake()

    def _blocked(self, x: str, y: str) -> bool:
        for a, b in self._partitions:
            if (x in a and y in b) or (x in b and y in a):
                return True
        return False

    # --- streams ----------------------------------------------------------------------

    async def _open(self, src: MemoryHost, peer: PeerAddress, protocol: str) -> MemoryStream:
        self._nursery_or_raise()
        if not src._alive:
            await trio.lowlevel.checkpoint()
            raise PeerUnreachableError(
                f"cannot connect to peer {peer}: this host {src.peer_id} has crashed "
                "(simulated); restart() it first"
            )
        dst = self._hosts.get(peer.peer_id)
        if (
            dst is None
            or dst is src
            or (peer.addrs and all(transport_part(a) != dst.transport_addr for a in peer.addrs))
        ):
            await trio.lowlevel.checkpoint()
            if dst is None:
                why = "no such host on the network"
            elif dst is src:
                why = "that is this host itself"
            else:
                why = f"no host listens at {', '.join(peer.addrs)}"
            raise PeerUnreachableError(
                f"cannot connect to peer {peer}: {why}; check that it is running "
                "and that the address is right"
            )
        if self._partitions and self._blocked(src.peer_id, dst.peer_id):
            await trio.sleep(self.dial_timeout)
            raise PeerUnreachableError(
                f"cannot connect to peer {peer}: no answer within {self.dial_timeout:g} s "
                "(simulated partition); check that it is running and that the address is right"
            )
        connected = src._connected_to(dst.peer_id)
        if self._nat and not connected and dst.peer_id in self._nat and dst._alive:
            await self._through_nat(src, dst, peer)
        rtt = self.one_way_latency(src.peer_id, dst.peer_id) + self.one_way_latency(
            dst.peer_id, src.peer_id
        )
        if not dst._alive:
            await self._sleep(rtt)
            raise PeerUnreachableError(
                f"cannot connect to peer {peer}: connection refused (the peer is down); "
                "check that it is running and that the address is right"
            )
        await self._sleep(rtt * (self.open_rtts + (0 if connected else self.connect_rtts)))
        # Anything may have happened during the handshake.
        nursery = self._nursery_or_raise()
        if not src._alive or not dst._alive or self._blocked(src.peer_id, dst.peer_id):
            raise PeerUnreachableError(
                f"cannot connect to peer {peer}: the connection broke while opening a "
                f"{protocol} stream"
            )
        src._connect(dst)
        handler = dst._handlers.get(protocol) if dst._handlers else None
        if handler is None:
            raise PeerUnreachableError(
                f"cannot open a {protocol} stream to peer {peer}: protocol not supported: "
                f"{protocol}"
            )
        mine = MemoryStream(src, dst.peer_id, protocol)
        theirs = MemoryStream(dst, src.peer_id, protocol)
        mine._other, theirs._other = theirs, mine
        src._add_stream(mine)
        dst._add_stream(theirs)
        self.streams_opened += 1
        nursery.start_soon(self._serve, dst, protocol, handler, theirs)
        return mine

    async def _serve(
        self, host: MemoryHost, protocol: str, handler: ByteStreamHandler, stream: MemoryStream
    ) -> None:
        """Run one handler, guarded as the real Host guards it, cancelled if its host crashes."""
        if not host._alive:
            return
        with trio.CancelScope() as scope:
            if host._scopes is None:
                host._scopes = set()
            host._scopes.add(scope)
            try:
                await handler(stream)
            except Exception:
                log.exception("handler for %s failed on a stream from %s", protocol, stream.peer_id)
                await stream.reset()
            finally:
                if host._scopes is not None:
                    host._scopes.discard(scope)
                    if not host._scopes:
                        host._scopes = None

    def _nursery_or_raise(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError(
                "the MemoryNetwork is not running: use `async with network:` or "
                "`await nursery.start(network.run)`"
            )
        return self._nursery


class MemoryHost:
    """One peer on a MemoryNetwork: the ``StreamHost`` interface, plus crash and restart.

    Created by ``MemoryNetwork.add_host``. Costs a few hundred bytes and no task until
    streams are opened.
    """

    # fmt: off
    __slots__ = ("_alive", "_connections", "_handlers", "_index", "_network", "_scopes",
                 "_streams", "_transport_addr", "peer_id")
    # fmt: on

    def __init__(self, network: MemoryNetwork, peer_id: str, index: int) -> None:
        self._network = network
        self.peer_id = peer_id
        self._index = index
        self._transport_addr = f"/memory/{index}"
        self._alive = True
        # Each None until first needed, to keep an idle host small.
        self._handlers: dict[str, ByteStreamHandler] | None = None
        # Peer IDs connected to this incarnation, sorted: connections() is asked for on
        # every request a DHT node answers or gets answered, and a host of a large swarm
        # has hundreds of connections (a set of them cost more memory and a sort each time).
        self._connections: list[str] | None = None
        self._streams: set[MemoryStream] | None = None  # this side of streams not yet finished
        self._scopes: set[trio.CancelScope] | None = None  # running handlers

    def __repr__(self) -> str:
        state = "" if self._alive else " crashed"
        return f"<MemoryHost {self._index} {self.peer_id}{state}>"

    @property
    def addrs(self) -> list[str]:
        """``/memory/<n>/p2p/<peer-id>``: parseable, never dialled by a real host."""
        return [f"{self.transport_addr}/p2p/{self.peer_id}"]

    @property
    def transport_addr(self) -> str:
        """``/memory/<n>``: the address without the peer ID."""
        return self._transport_addr

    @property
    def network(self) -> MemoryNetwork:
        """The network this host is on (more hosts can join it)."""
        return self._network

    @property
    def alive(self) -> bool:
        """False between crash() and restart()."""
        return self._alive

    def set_stream_handler(self, protocol: str, handler: ByteStreamHandler) -> None:
        """Serve ``protocol`` with ``handler``, one task per inbound stream.

        Whatever the handler raises is logged and the stream reset, as on the real Host.
        """
        if self._handlers is None:
            self._handlers = {}
        self._handlers[protocol] = handler

    def remove_stream_handler(self, protocol: str) -> None:
        """Stop serving ``protocol``: opens for it fail as "protocol not supported"."""
        if self._handlers is not None:
            self._handlers.pop(protocol, None)

    async def open_stream(self, peer: PeerAddress, protocol: str) -> MemoryStream:
        """Open a stream to ``peer`` speaking ``protocol``.

        ``peer.addrs`` may be empty (the network knows every host); if given, one must
        be the peer's ``/memory/<n>`` address.

        Raises:
            PeerUnreachableError: no such peer, it is down or across a partition (see
                the module docstring for when each is raised), or it does not speak
                ``protocol``.
            RuntimeError: the network is not running.
        """
        return await self._network._open(self, peer, protocol)

    def connection_count(self, peer_id: str) -> int:
        """1 if a stream was opened between this host and ``peer_id`` since either last
        crashed, else 0."""
        return int(self._connected_to(peer_id))

    def supports(self, peer_id: str, protocol: str) -> bool | None:
        """Whether ``peer_id`` has a handler for ``protocol`` (identify, instantly);
        None for a peer this host has no connection to."""
        if not self._connected_to(peer_id):
            return None
        handlers = self._network._hosts[peer_id]._handlers
        return handlers is not None and protocol in handlers

    def peer_addrs(self, peer_id: str) -> list[str]:
        """The ``/memory/<n>`` address of ``peer_id`` if connected to it, else []."""
        if not self._connected_to(peer_id):
            return []
        return [self._network._hosts[peer_id].transport_addr]

    def connections(self) -> list[tuple[str, str]]:
        """(peer ID, ``/memory/<n>`` address) of every host connected to this one."""
        hosts = self._network._hosts
        return [(p, hosts[p]._transport_addr) for p in self._connections or ()]

    def seen_at(self, peer_id: str) -> list[str]:
        """``[/memory/<n>]`` of ``peer_id`` if connected to it, else []."""
        return self.peer_addrs(peer_id)

    def path(self, peer_id: str) -> str | None:
        """ "relayed" while the NAT model routes ``peer_id`` through a relay, else "direct";
        None without a connection."""
        if not self.connection_count(peer_id):
            return None
        return "relayed" if self._network.is_relayed(self.peer_id, peer_id) else "direct"

    @property
    def reachability(self) -> str:
        """ "private" behind a modelled NAT, else "public"."""
        return "public" if self._network.nat_of(self.peer_id) == "public" else "private"

    def crash(self) -> None:
        """Stop as a killed process would; see the module docstring. No-op if crashed."""
        if not self._alive:
            return
        self._alive = False
        network = self._network
        streams, self._streams = self._streams or set(), None
        for endpoint in streams:
            endpoint._break("this host crashed (simulated)")
            other = endpoint._other
            other._host._discard_stream(other)
            other._receive_reset(
                network.one_way_latency(self.peer_id, other._host.peer_id),
                "the connection to the peer was lost",
            )
        scopes, self._scopes = self._scopes or set(), None
        for scope in scopes:
            scope.cancel()
        connections, self._connections = self._connections or [], None
        for peer_id in connections:
            network._hosts[peer_id]._disconnect(self.peer_id)

    def restart(self) -> None:
        """Crash if running, then come back with the same peer ID, address and handlers."""
        self.crash()
        self._alive = True

    def _connected_to(self, peer_id: str) -> bool:
        connections = self._connections
        if connections is None:
            return False
        i = bisect.bisect_left(connections, peer_id)
        return i < len(connections) and connections[i] == peer_id

    def _connect(self, other: MemoryHost) -> None:
        for a, b in ((self, other), (other, self)):
            if a._connections is None:
                a._connections = [b.peer_id]
            elif not a._connected_to(b.peer_id):
                bisect.insort(a._connections, b.peer_id)

    def _disconnect(self, peer_id: str) -> None:
        connections = self._connections
        if connections is not None and self._connected_to(peer_id):
            del connections[bisect.bisect_left(connections, peer_id)]
            if not connections:
                self._connections = None

    def _add_stream(self, endpoint: MemoryStream) -> None:
        if self._streams is None:
            self._streams = set()
        self._streams.add(endpoint)

    def _discard_stream(self, endpoint: MemoryStream) -> None:
        if self._streams is not None:
            self._streams.discard(endpoint)
            if not self._streams:
                self._streams = None


class MemoryStream:
    """One end of a stream between two MemoryHosts: the ``ByteStream`` interface.

    Each end holds what it has been sent, stamped with the time it arrives; reading
    waits for the stamp. No task runs per stream.
    """

    # fmt: off
    __slots__ = ("_broken", "_fin_at", "_host", "_inbox", "_last_sent_at", "_other", "_rst_at",
                 "_rst_reason", "_waiters", "_write_closed", "peer_id", "protocol")
    # fmt: on

    def __init__(self, host: MemoryHost, peer_id: str, protocol: str) -> None:
        self._host = host
        self.peer_id = peer_id
        self.protocol = protocol
        self._other = self  # set by MemoryNetwork._open to the other end
        self._inbox: deque[tuple[float, bytes]] | None = None  # (arrival time, data)
        self._fin_at: float | None = None  # when the peer's close arrives
        self._rst_at: float | None = None  # when the peer's reset arrives
        self._rst_reason = ""
        self._last_sent_at = -math.inf  # keeps this direction in order
        self._write_closed = False
        self._broken: str | None = None  # why this end is unusable, once it is
        self._waiters: list[trio.lowlevel.Task] | None = None  # tasks parked in read()

    def __repr__(self) -> str:
        return f"<MemoryStream {self.protocol} {self._host.peer_id} -> {self.peer_id}>"

    async def read(self) -> bytes:
        """Every byte that has arrived (at most 1 MiB), waiting for some; b"" at end of stream.

        Raises:
            ConnectionLostError: the stream was reset (by either side), or a host crashed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        network = self._host._network
        while True:
            if self._broken is not None:
                raise ConnectionLostError(
                    f"stream to peer {self.peer_id} broke while reading: {self._broken}"
                )
            now = trio.current_time()
            wake_at = math.inf
            if network._partitions and network._blocked(self.peer_id, self._host.peer_id):
                network._stalled.add(self)
            else:
                if self._rst_at is not None:
                    if self._rst_at <= now:
                        self._break(self._rst_reason)
                        continue
                    wake_at = self._rst_at
                inbox = self._inbox
                if inbox:
                    arrives = inbox[0][0]
                    if arrives <= now:
                        data = self._take(inbox, now)
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        return data
                    wake_at = min(wake_at, arrives)
                elif self._fin_at is not None:
                    if self._fin_at <= now:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        return b""
                    wake_at = min(wake_at, self._fin_at)
            await self._park(wake_at)

    async def write(self, data: bytes) -> None:
        """Send ``data``; it arrives ``latency`` later, after everything sent before it.

        Raises:
            ConnectionLostError: this side closed or reset the stream, the peer's reset
                has arrived, or a host crashed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        network = self._host._network
        if (
            self._broken is None
            and self._rst_at is not None
            and self._rst_at <= trio.current_time()
            and not network._blocked(self.peer_id, self._host.peer_id)
        ):
            self._break(self._rst_reason)
        if self._broken is not None:
            raise ConnectionLostError(
                f"stream to peer {self.peer_id} broke while writing: {self._broken}"
            )
        if self._write_closed:
            raise ConnectionLostError(
                f"stream to peer {self.peer_id} broke while writing: this side closed it "
                "for writing"
            )
        other = self._other
        if data and other._broken is None:  # a reset end drops what it is sent
            if type(data) is not bytes:
                data = bytes(data)  # the caller may reuse its buffer
            network.messages_sent += 1
            network.bytes_sent += len(data)
            arrives = self._arrival(network, len(data))
            if other._inbox is None:
                other._inbox = deque()
            other._inbox.append((arrives, data))
            other._wake()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def close(self) -> None:
        """End the sending direction; the peer reads b"" after the data before it.

        Never raises; a cancelled caller's close still takes effect.
        """
        if self._broken is None and not self._write_closed:
            self._write_closed = True
            other = self._other
            other._fin_at = self._arrival(self._host._network)
            other._wake()
            if other._write_closed:
                self._detach()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def reset(self) -> None:
        """Abort both directions, telling the peer. Never raises; works when cancelled."""
        if self._broken is None:
            self._break("this side reset the stream")
            other = self._other
            other._receive_reset(
                self._host._network.one_way_latency(self._host.peer_id, self.peer_id),
                "the peer reset the stream",
            )
            self._detach()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _arrival(self, network: MemoryNetwork, size: int = 0) -> float:
        """When something sent now arrives at the other end: never before earlier sends."""
        src, dst = self._host.peer_id, self.peer_id
        arrives = trio.current_time() + network.one_way_latency(src, dst)
        if size and network.transmit is not None:
            relay = network._relayed.get(frozenset((src, dst))) if network._relayed else None
            if relay is None:
                arrives += _delay("transmit", network.transmit(src, dst, size))
            else:  # the slower of the two legs
                arrives += _delay(
                    "transmit",
                    max(network.transmit(src, relay, size), network.transmit(relay, dst, size)),
                )
        self._last_sent_at = arrives = max(network._on_grain(arrives), self._last_sent_at)
        return arrives

    def _take(self, inbox: deque[tuple[float, bytes]], now: float) -> bytes:
        arrived, data = inbox.popleft()
        if len(data) > READ_SIZE:
            inbox.appendleft((arrived, data[READ_SIZE:]))
            return data[:READ_SIZE]
        parts = [data]
        size = len(data)
        while inbox and inbox[0][0] <= now and size + len(inbox[0][1]) <= READ_SIZE:
            data = inbox.popleft()[1]
            parts.append(data)
            size += len(data)
        if not inbox:
            self._inbox = None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _receive_reset(self, delay: float, reason: str) -> None:
        """The other end reset (or its host crashed): it arrives here ``delay`` from now."""
        if self._broken is None and self._rst_at is None:
            self._rst_at = self._host._network._on_grain(trio.current_time() + delay)
            self._rst_reason = reason
            self._wake()

    def _break(self, reason: str) -> None:
        self._broken = reason
        self._inbox = None
        self._wake()

    def _detach(self) -> None:
        """The stream is finished: host crashes no longer concern it."""
        self._host._discard_stream(self)
        self._other._host._discard_stream(self._other)

    async def _park(self, wake_at: float) -> None:
        """Wait until _wake() is called, or until ``wake_at``; cancellable."""
        task = trio.lowlevel.current_task()
        if self._waiters is None:
            self._waiters = [task]
        else:
            self._waiters.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            if self._waiters is not None and task in self._waiters:
                self._waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        network = self._host._network
        if wake_at == math.inf:
            await trio.lowlevel.wait_task_rescheduled(abort)
        elif network._nursery is not None:
            network._wake_at(wake_at, self)
            await trio.lowlevel.wait_task_rescheduled(abort)
        else:  # the network stopped: no timer task
            with trio.move_on_at(wake_at):
                await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake(self) -> None:
        """Let every task parked in read() look again; a spurious wake-up is harmless."""
        waiters, self._waiters = self._waiters, None
        if waiters is not None:
            for task in waiters:
                trio.lowlevel.reschedule(task)


def _delay(name: str, value: float) -> float:
    value = float(value)
    if not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
    return value
