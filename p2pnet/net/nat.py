"""NAT traversal: am I reachable (AutoNAT), a relayed address if not (circuit relay v2),
and a direct connection when possible (DCUtR hole punching).

Every peer runs ``NatTraversal`` inside its host:

- AutoNAT: after joining, the peer asks the peers it is connected to (its bootstrap
  peers, never anyone else) to dial it back at its listen addresses and at the
  addresses they observed it at (identify). A dial-back that succeeds proves the peer
  PUBLIC at that address (then announced); dial-backs that fail say PRIVATE.
- Relay: a bootstrap peer runs the relay service (circuit relay v2 "hop") with the
  limits of ``RelayServiceLimits``. Unless configured public, a peer reserves a slot
  on its bootstrap peers at once and announces
  ``<relay-addr>/p2p/<relay>/p2p-circuit/p2p/<self>`` first; a PUBLIC verdict drops
  the reservations.
- Dialling: ``connect`` dials a peer's direct addresses and, if it has circuit
  addresses, its relays too (the relay after a short head start for the direct
  dial): the first connection that works is used.
- DCUtR: while a connection is relayed, the peer that was dialled through the relay
  starts a hole punch (looked at every 0.25 s; a plain dial first, then TCP
  simultaneous open, three attempts at most); py-libp2p opens new streams on a
  direct connection when there is one, and closes the relayed one a minute after
  the upgrade.

Workarounds for py-libp2p 0.8.1 are here, each with a comment naming what it
works around.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import libp2p.network.swarm as _swarm_module
import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.connection_types import ConnectionType
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID, AutoNATService
from libp2p.host.autonat.pb.autonat_pb2 import Message as AutoNatMessage
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import MAX_HOLE_PUNCH_ATTEMPTS, DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from p2pnet.core.address import transport_part, with_peer_id
from p2pnet.net.nat_config import (
    DEFAULT_NAT,
    NatConfig,
    Reachability,
    RelayServiceLimits,
    is_circuit_addr,
)

if TYPE_CHECKING:
    # py-libp2p pulls in trio-typing, whose stubs mypy reads instead of trio's own types.
    from trio_typing import TaskStatus

__all__ = ["NatTraversal"]

log = logging.getLogger(__name__)

# Longest an AutoNAT server spends dialling a peer back (all its addresses at once).
DIAL_BACK_TIMEOUT = 3.0
# Longest an AutoNAT client waits for the answer (the server's dial-back included).
AUTONAT_TIMEOUT = DIAL_BACK_TIMEOUT + 3.0
# Longest a plain direct dial may take before hole punching starts.
UNILATERAL_TIMEOUT = 1.0
# Dial-backs one peer may ask of us per minute.
AUTONAT_REQUESTS_PER_MINUTE = 4
# At most this many connected peers are asked for a dial-back.
MAX_AUTONAT_SERVERS = 4


def _relay_limits(limits: RelayServiceLimits) -> RelayLimits:
    """``limits`` as py-libp2p's relay takes them."""
    return RelayLimits(
        duration=limits.circuit_duration,
        data=limits.circuit_bytes,
        max_circuit_conns=limits.circuits_per_peer,
        max_reservations=limits.max_reservations,
        reservation_ttl=limits.reservation_ttl,
    )


class _AutoNatService(AutoNATService):
    """py-libp2p's AutoNAT with a dial-back that proves something.

    py-libp2p 0.8.1 dials back with ``host.connect()``, which returns at once when a
    connection to the peer exists; and the asking peer is always connected (it asked
    over that connection), so every answer was OK: a peer behind a firewall was told it
    is public. This dial-back opens a new TCP connection to the address and completes
    the security handshake with the peer ID asked for, then closes it (registering it
    in the swarm would, with one connection per peer, replace the asker's connection).
    """

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        reached: list[bytes] = []

        async def attempt(raw: bytes, done: trio.CancelScope) -> None:
            try:
                await _dial_back(self.host, peer_id, multiaddr.Multiaddr(raw))
            except Exception as exc:  # transports raise many unrelated types
                log.debug("AutoNAT dial-back to %s at %r failed: %r", peer_id, raw, exc)
                return
            reached.append(bytes(raw))
            done.cancel()

        # All addresses at once, the first that answers wins: a NAT that drops
        # unsolicited packets makes a dial-back hang until its timeout.
        with trio.move_on_after(DIAL_BACK_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for raw in addrs[:8]:
                    nursery.start_soon(attempt, raw, nursery.cancel_scope)
        return reached[0] if reached else None


class _DCUtR(DCUtRProtocol):
    """py-libp2p's DCUtR, driven from one end of a relayed connection only.

    py-libp2p 0.8.1's auto-drive loop starts a hole punch from both ends of every
    relayed connection. Two sessions at once make each side dial the other's address
    both as initiator and as responder; the simultaneous-open connections then merge
    with mismatched roles and both Noise handshakes fail ("handshake failed when
    upgrading to secure connection"). The spec has the peer that was dialled through
    the relay (the inbound side) start DCUtR; this loop does only that, and looks
    every DRIVE_INTERVAL seconds instead of every 2 s.
    """

    DRIVE_INTERVAL = 0.25

    def __init__(self, host: IHost, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        # Peers a hole punch is being driven towards (plain dial included).
        self._driving: set[ID] = set()

    async def _auto_drive_loop(self) -> None:
        while True:
            await trio.sleep(self.DRIVE_INTERVAL)
            network: Any = self.host.get_network()
            for peer_id, conns in list(network.connections.items()):
                if (
                    peer_id in self._driving
                    or peer_id in self._in_progress
                    or peer_id in self._direct_connections
                    or self._hole_punch_attempts.get(peer_id, 0) >= MAX_HOLE_PUNCH_ATTEMPTS
                ):
                    continue
                live = [c for c in conns if not getattr(c, "is_closed", False)]
                if not live or any(_conn_path(c) == "direct" for c in live):
                    continue
                if not any(
                    str(getattr(c, "_direction", "")).lower().endswith("inbound") for c in live
                ):
                    continue
                if self._nursery is not None:
                    # Marked until the attempt is over, so that no tick starts another.
                    self._driving.add(peer_id)
                    self._nursery.start_soon(self._drive, peer_id)

    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        """A plain direct dial before hole punching (spec step 0).

        py-libp2p waits for it the whole hole-punch dial timeout, and a peer behind a
        NAT that drops unsolicited packets makes it wait all of it before every punch;
        cut at that, a slow dial (a loaded machine, a long path) is lost. Here the dials
        go on in the background (up to the dial timeout) and hole punching starts after
        UNILATERAL_TIMEOUT; whichever gives a direct connection first wins.
        """
        try:
            addrs = [a for a in self.host.get_peerstore().addrs(peer_id) if not is_circuit_addr(a)]
        except Exception:  # PeerStoreError for an unknown peer
            return False
        if addrs and self._nursery is not None:
            for addr in addrs:
                self._nursery.start_soon(self._dial_peer, peer_id, addr)
            with trio.move_on_after(UNILATERAL_TIMEOUT):
                while not await self._verify_direct_connection(peer_id):
                    await trio.sleep(0.05)
        return await self._verify_direct_connection(peer_id)

    async def _drive(self, peer_id: ID) -> None:
        try:
            await self.initiate_hole_punch(peer_id)
        except Exception as exc:  # a failed hole punch leaves the relayed connection
            log.debug("hole punch to %s failed: %r", peer_id, exc)
        finally:
            self._driving.discard(peer_id)


async def _dial_back(host: IHost, peer_id: ID, addr: multiaddr.Multiaddr) -> None:
    network: Any = host.get_network()
    if is_circuit_addr(addr):
        raise ValueError("relayed addresses are not dialled back")
    transport = network.transport_manager.transport_for_dialing(addr)
    if transport is None:
        raise ValueError(f"no transport for {addr}")
    raw_conn = await transport.dial(addr)
    try:
        psk = getattr(network, "psk", None)
        if psk is not None:
            # The swarm module's function, so that a replacement of the private
            # network layer (p2pnet.net.pnet) applies to dial-backs too.
            raw_conn = _swarm_module.new_protected_conn(raw_conn, psk)  # type: ignore[attr-defined]
        secured = await network.upgrader.upgrade_security(raw_conn, True, peer_id)
        await secured.close()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                await raw_conn.close()
            except Exception as exc:  # already closed
                log.debug("closing dial-back connection: %r", exc)


class NatTraversal:
    """Reachability, relay reservations, relayed dials and hole punching for one host.

    Start it with ``await nursery.start(nat.run)`` once the host listens.
    """

    def __init__(self, raw: IHost, config: NatConfig = DEFAULT_NAT) -> None:
        self._raw = raw
        self.config = config
        self.reachability = (
            Reachability.UNKNOWN
            if config.reachability == "auto"
            else Reachability(config.reachability)
        )
        # Addresses an AutoNAT dial-back reached us at (transport part only).
        self.public_addrs: list[str] = []
        # Relays we hold a reservation on -> their transport addresses.
        self.relays: dict[str, list[str]] = {}
        limits = _relay_limits(config.relay_limits)
        self._protocol = CircuitV2Protocol(raw, limits=limits, allow_hop=config.relay_service)
        # STOP only: with CLIENT set, py-libp2p's transport makes a reservation on the
        # relay before every relayed dial (the dialling side needs none).
        self._transport = CircuitV2Transport(
            raw, self._protocol, RelayConfig(roles=RelayRole.STOP, limits=limits)
        )
        self._autonat = _AutoNatService(cast(BasicHost, raw), serve=False, confirmations=1)
        self._dcutr: DCUtRProtocol | None = None
        self._nursery: trio.Nursery | None = None
        # Set when the reachability check started by join() has an answer.
        self.checked = trio.Event()
        # Peers to reserve relay slots on (the bootstrap peers given to join()).
        self.relay_candidates: list[str] = []
        # Asking peer -> when it asked for dial-backs (trio time), for the rate limit.
        self._autonat_asked: dict[str, list[float]] = {}
        # What identify tells other peers our addresses are: the announced ones, so that
        # peers that learn us from a DHT node reach us through our relay. Not through
        # py-libp2p's addrs_factory: BasicHost.get_addrs() then strips "the" /p2p/ part
        # of each address by the first peer ID in it, which turns a relayed address
        # into the relay's own. The instance's get_addrs() is replaced instead.
        own = str(raw.get_id())
        raw_any: Any = raw
        raw_any.get_addrs = lambda: [
            multiaddr.Multiaddr(with_peer_id(a, own)) for a in self.announce_addrs()
        ]

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the relay (stop side, and hop if configured), AutoNAT and DCUtR."""

        async def autonat_handler(stream: Any) -> None:
            # py-libp2p's AutoNAT server answers every request: at most
            # AUTONAT_REQUESTS_PER_MINUTE dial-backs per asking peer.
            asker = str(stream.muxed_conn.peer_id)
            now = trio.current_time()
            recent = [t for t in self._autonat_asked.get(asker, []) if now - t < 60.0]
            if len(recent) >= AUTONAT_REQUESTS_PER_MINUTE:
                log.info("AutoNAT request from %s over its rate limit: refused", asker)
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    try:
                        await stream.reset()
                    except Exception as exc:  # already gone
                        log.debug("resetting AutoNAT stream: %r", exc)
                return
            self._autonat_asked[asker] = [*recent, now]
            if len(self._autonat_asked) > 1024:
                self._autonat_asked = {
                    k: v for k, v in self._autonat_asked.items() if now - v[-1] < 60.0
                }
            try:
                await self._autonat.handle_stream(stream)
            except Exception:  # py-libp2p lets a handler's exception end the host
                log.exception("AutoNAT request from %s failed", stream.muxed_conn.peer_id)

        self._raw.set_stream_handler(AUTONAT_PROTOCOL_ID, autonat_handler)
        async with trio.open_nursery() as nursery, background_trio_service(self._protocol):
            self._nursery = nursery
            if self.config.hole_punching:
                self._dcutr = _DCUtR(self._raw, dial_timeout=self.config.hole_punch_timeout)
                await nursery.start(_run_service, self._dcutr)
            task_status.started()
            await trio.sleep_forever()

    # -- addresses -----------------------------------------------------------------

    def circuit_addrs(self) -> list[str]:
        """``<relay>/p2p/<relay-id>/p2p-circuit`` for each relay we hold a slot on."""
        return [
            f"{addr}/p2p/{relay}/p2p-circuit"
            for relay, addrs in self.relays.items()
            for addr in addrs
        ]

    def announce_addrs(self) -> list[str]:
        """Transport addresses (no /p2p/<self>) others should dial us at, best first.

        PUBLIC: the addresses an AutoNAT dial-back reached, then the listen addresses
        (for peers on the same LAN). PRIVATE:
        relayed addresses first, then the listen addresses (for peers on the same LAN).
        Addresses only observed by others (identify) are not announced unless a
        dial-back confirmed them: behind a NAT they name a port mapping that belongs to
        one outbound connection.
        """
        listen = [str(a) for a in self._raw.get_transport_addrs()]
        direct = list(dict.fromkeys(self.public_addrs + listen))
        if self.reachability is Reachability.PUBLIC:
            return direct
        return list(dict.fromkeys(self.circuit_addrs() + direct))

    # -- reachability and reservations ------------------------------------------------

    def _dial_back_candidates(self) -> list[multiaddr.Multiaddr]:
        """Listen addresses, addresses others observed us at, and the observed IP with
        each listen port (NATs usually keep the port of a mapping)."""
        listen = [a for a in self._raw.get_transport_addrs() if not is_circuit_addr(a)]
        out = {str(a): a for a in listen}
        manager = getattr(self._raw, "_observed_addr_manager", None)
        observed: list[multiaddr.Multiaddr] = []
        if manager is not None:
            try:
                observed = [a for a in manager.addrs(min_observers=1) if not is_circuit_addr(a)]
            except Exception as exc:  # internal API of py-libp2p
                log.debug("reading observed addresses failed: %r", exc)
        for obs in observed:
            out.setdefault(str(obs), obs)
            ip = _ip_of(obs)
            if ip is None:
                continue
            for addr in listen:
                port = _tcp_port(addr)
                if port is not None:
                    predicted = multiaddr.Multiaddr(f"/{ip[0]}/{ip[1]}/tcp/{port}")
                    out.setdefault(str(predicted), predicted)
        return list(out.values())

    async def check_reachability(
        self, servers: Sequence[str], timeout: float = AUTONAT_TIMEOUT
    ) -> Reachability:
        """Ask up to MAX_AUTONAT_SERVERS of ``servers`` (connected peers) to dial us back.

        One successful dial-back makes us PUBLIC (it had to open a new connection
        and authenticate as us); dial-backs that all fail make us PRIVATE; no answer
        leaves the verdict as it was. A fixed ``reachability`` in the config wins.
        """
        if self.config.reachability != "auto":
            return self.reachability
        addrs = self._dial_back_candidates()
        log.debug("asking %s to dial us back at %s", list(servers), [str(a) for a in addrs])
        candidates = [a.to_bytes() for a in addrs]
        reached: list[str] = []
        failures = 0

        async def ask(server: str) -> None:
            nonlocal failures
            try:
                status, addr = await self._autonat.query_server(
                    ID.from_base58(server), candidates, timeout
                )
            except Exception as exc:  # no AutoNAT there, timeout, lost connection
                log.debug("AutoNAT query to %s failed: %r", server, exc)
                return
            if status == AutoNatMessage.OK and addr is not None:
                reached.append(str(multiaddr.Multiaddr(addr)))
            elif status in (AutoNatMessage.E_DIAL_ERROR, AutoNatMessage.E_DIAL_REFUSED):
                failures += 1

        async with trio.open_nursery() as nursery:
            for server in list(dict.fromkeys(servers))[:MAX_AUTONAT_SERVERS]:
                nursery.start_soon(ask, server)
        if reached:
            self.reachability = Reachability.PUBLIC
            self.public_addrs = list(dict.fromkeys(reached))
            self._drop_reservations()
        elif failures:
            self.reachability = Reachability.PRIVATE
            self.public_addrs = []
        log.info("reachability: %s %s", self.reachability.value, self.public_addrs)
        return self.reachability

    async def reserve(self, relay: str) -> bool:
        """Reserve a slot on ``relay`` (a connected peer); False if it refuses or is no
        relay. py-libp2p renews the reservation before it expires."""
        if self._nursery is None:
            raise RuntimeError("NatTraversal is not running")
        relay_id = ID.from_base58(relay)
        try:
            stream = await self._raw.new_stream(relay_id, [HOP_PROTOCOL])
        except Exception as exc:  # no relay service there
            log.info("peer %s is not a relay: %s", relay, exc)
            return False
        try:
            ok = await self._transport.reserve(stream, relay_id, self._nursery)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await stream.close()
                except Exception as exc:
                    log.debug("closing reservation stream: %r", exc)
        if ok:
            self.relays[relay] = self._relay_transport_addrs(relay_id)
            log.info("reserved a relay slot on %s", relay)
            self._addrs_changed()
        return ok

    def _relay_transport_addrs(self, relay_id: ID) -> list[str]:
        """The relay's addresses as we reach it: the one our connection uses first."""
        addrs: list[str] = []
        for conn in self._raw.get_network().get_connections(relay_id):
            actual = getattr(conn, "_actual_transport_addresses", None) or []
            addrs.extend(str(a) for a in actual if not is_circuit_addr(a))
        try:
            addrs.extend(
                str(a) for a in self._raw.get_peerstore().addrs(relay_id) if not is_circuit_addr(a)
            )
        except Exception:  # PeerStoreError for an unknown peer
            pass
        return list(dict.fromkeys(transport_part(a) for a in addrs if "/ip" in a))[:2]

    def _addrs_changed(self) -> None:
        """Tell connected peers our new addresses (identify push), in the background."""
        push = getattr(self._raw, "_push_identify_to_all_peers", None)
        if self._nursery is not None and callable(push):
            self._nursery.start_soon(push)

    def _drop_reservations(self) -> None:
        """Stop announcing relayed addresses and renewing their reservations (they
        expire at the relay)."""
        for relay in self.relays:
            # py-libp2p's transport renews every reservation in this dict.
            self._transport._reservations.pop(ID.from_base58(relay), None)
        if self.relays:
            self.relays.clear()
            self._addrs_changed()

    async def join(self, peers: Sequence[str], *, reserve: bool = True) -> None:
        """After connecting to ``peers`` (bootstrap peers): unless configured public (or
        ``reserve`` is False), reserve a relay slot on each of them at once (a few ms);
        then find out in the background whether we are reachable (AutoNAT: up to
        AUTONAT_TIMEOUT behind a NAT that drops unsolicited packets). A PUBLIC verdict
        drops the reservations."""
        if self._nursery is None:
            raise RuntimeError("NatTraversal is not running")
        self.relay_candidates = list(dict.fromkeys(peers))
        if reserve:
            await self.reserve_relays()
        self.checked = trio.Event()

        async def check() -> None:
            try:
                await self.check_reachability(peers)
            finally:
                self.checked.set()

        self._nursery.start_soon(check)

    async def reserve_relays(self) -> None:
        """Reserve a slot on each relay candidate (the bootstrap peers given to ``join``)
        we hold none on yet, unless we are (or are configured) public."""
        if self.reachability is Reachability.PUBLIC:
            return
        async with trio.open_nursery() as nursery:
            for peer in self.relay_candidates:
                if peer not in self.relays:
                    nursery.start_soon(self.reserve, peer)

    # -- dialling ------------------------------------------------------------------

    def path(self, peer_id: str) -> Literal["direct", "relayed"] | None:
        """How we are connected to ``peer_id``: "direct" if any connection is, else
        "relayed", or None when not connected."""
        conns = self._raw.get_network().get_connections(ID.from_base58(peer_id))
        kinds = {_conn_path(c) for c in conns if not getattr(c, "is_closed", False)}
        if not kinds:
            return None
        return "direct" if "direct" in kinds else "relayed"

    async def connect(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Connect to ``peer_id`` through whichever of ``addrs`` works first: direct
        addresses at once, relayed ones after ``relay_head_start`` seconds or as soon as
        the direct dial failed.

        Raises:
            Exception: the last dial error, when no address worked.
        """
        pid = ID.from_base58(peer_id)
        direct = [multiaddr.Multiaddr(a) for a in addrs if not is_circuit_addr(a)]
        relayed = [
            multiaddr.Multiaddr(with_peer_id(a, peer_id)) for a in addrs if is_circuit_addr(a)
        ]
        if self.path(peer_id) is not None:
            return
        if not relayed:
            await self._raw.connect(PeerInfo(pid, direct))
            return
        errors: list[BaseException] = []
        direct_done = trio.Event()

        async def via_direct(scope: trio.CancelScope) -> None:
            try:
                if direct:
                    await self._raw.connect(PeerInfo(pid, direct))
                    scope.cancel()
            except Exception as exc:  # swarm and transports raise many types
                errors.append(exc)
            finally:
                direct_done.set()

        async def via_relay(scope: trio.CancelScope) -> None:
            with trio.move_on_after(self.config.relay_head_start):
                await direct_done.wait()
            for addr in relayed:
                try:
                    await self._dial_relayed(addr, pid)
                    scope.cancel()
                    return
                except Exception as exc:
                    errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(via_direct, nursery.cancel_scope)
            nursery.start_soon(via_relay, nursery.cancel_scope)
        if self.path(peer_id) is None:
            raise errors[-1] if errors else ConnectionError("no address worked")

    async def _dial_relayed(self, addr: multiaddr.Multiaddr, peer_id: ID) -> None:
        # py-libp2p's host.connect() and swarm skip /p2p-circuit addresses: relayed
        # dials go through the circuit transport, which registers the connection.
        conn = await self._transport.dial(addr)
        # The dialling side's connection is left without transport addresses (the
        # generic upgrade cannot derive them), so DCUtR and path() would not see it as
        # relayed: tag it as the listening side already does.
        setter = getattr(conn, "set_transport_info", None)
        if callable(setter):
            setter([addr], ConnectionType.RELAYED)

    async def wait_direct(self, peer_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a direct connection to ``peer_id``."""
        with trio.move_on_after(timeout):
            while self.path(peer_id) != "direct":
                await trio.sleep(0.05)
            return True
        return False


async def _run_service(
    service: DCUtRProtocol, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    async with background_trio_service(service):
        await service.event_started.wait()
        task_status.started()
        await trio.sleep_forever()


def _conn_path(conn: Any) -> str:
    """ "relayed" or "direct". A connection py-libp2p has not typed yet (a relayed one
    right after its upgrade) counts as relayed."""
    actual = getattr(conn, "_actual_transport_addresses", None) or []
    if any(is_circuit_addr(a) for a in actual):
        return "relayed"
    try:
        kind = conn.get_connection_type()
    except Exception:  # connection classes without a type
        kind = None
    if kind == ConnectionType.RELAYED:
        return "relayed"
    return "direct" if kind == ConnectionType.DIRECT or actual else "relayed"


def _ip_of(addr: multiaddr.Multiaddr) -> tuple[str, str] | None:
    for proto in ("ip4", "ip6"):
        try:
            value = addr.value_for_protocol(proto)
        except Exception:
            continue
        if value:
            return proto, str(value)
    return None


def _tcp_port(addr: multiaddr.Multiaddr) -> int | None:
    try:
        return int(addr.value_for_protocol("tcp"))
    except Exception:
        return None
