"""The libp2p host as p2pnet sees it: open streams to peers, serve protocols, nothing more.

This module and its siblings in ``p2pnet.net`` are the only code that touches
py-libp2p. Its exceptions are translated here into p2pnet errors, and every
workaround for its behaviour is here, each with a comment naming what it works
around.
"""

from __future__ import annotations

import logging
import os
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import libp2p.stream_muxer.yamux.yamux as _yamux
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import MultiError
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH as _NOISE_MAX_PLAINTEXT

from p2pnet.core.address import PeerAddress, with_peer_id
from p2pnet.core.connections import DEFAULT_CONNECTION_LIMITS, ConnectionLimits
from p2pnet.core.identity import Identity
from p2pnet.errors import (
    ConfigError,
    ConnectionLostError,
    InvalidAddressError,
    PeerUnreachableError,
)
from p2pnet.net.connmgr import ConnectionTrimmer
from p2pnet.net.dial_fixes import install_dial_fixes
from p2pnet.net.logs import inherit_libp2p_log_level
from p2pnet.net.multistream import install_pipelined_select
from p2pnet.net.nat import NatTraversal
from p2pnet.net.nat_config import NatConfig, is_circuit_addr
from p2pnet.net.notifees import install_quiet_notify
from p2pnet.net.pnet import (
    PnetHandshakeError,
    install_pnet_hook,
    protect_relayed_dials,
    psk_for,
    recent_failure,
)
from p2pnet.net.swarm_key import SwarmKey
from p2pnet.net.tcp_reads import install_read_patches
from p2pnet.net.yamux_calls import install_call_patches
from p2pnet.net.yamux_window import install_receive_window_cap, install_window_wakeup

__all__ = ["Host", "Stream", "StreamHandler", "open_host", "tune_libp2p"]

log = logging.getLogger(__name__)

# py-libp2p reads at most this much per call; larger reads do not return more.
READ_SIZE = 1 << 20
# Longest a close or reset may take before the stream is given up on.
CLOSE_TIMEOUT = 1.0
# Longest closing every connection may take when a host stops.
HOST_CLOSE_TIMEOUT = 5.0


class Stream:
    """A bidirectional byte stream to one peer, speaking one protocol.

    ``last_active``: when data last went either way with each peer (trio time), for the
    connection trimmer; this stream records its own in it.
    """

    def __init__(
        self, raw: INetStream, peer_id: str, last_active: dict[str, float] | None = None
    ) -> None:
        self._raw = raw
        self.peer_id = peer_id
        self._last_active = last_active
        if last_active is not None:
            last_active[peer_id] = trio.current_time()

    async def read(self) -> bytes:
        """Some bytes (at most READ_SIZE), or b"" at a clean end of stream.

        Raises:
            ConnectionLostError: the stream was reset or the connection broke.
        """
        try:
            data = await self._raw.read(READ_SIZE)
        except StreamEOF:
            # py-libp2p raises at end of stream instead of returning b"".
            return b""
        except (StreamError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLostError(
                f"stream to peer {self.peer_id} broke while reading: {exc or type(exc).__name__}"
            ) from None
        if self._last_active is not None:
            self._last_active[self.peer_id] = trio.current_time()
        return data

    async def write(self, data: bytes) -> None:
        """Send ``data``.

        Raises:
            ConnectionLostError: the stream was closed, reset, or the connection broke.
        """
        try:
            # Shielded: py-libp2p writes each Yamux frame as one Noise message straight
            # to the TCP socket, and a cancellation part-way through a socket write
            # leaves half a message on the wire, which breaks the whole connection
            # (every later stream on it fails in multistream-select). A write is at
            # most one chunk (WireLimits.chunk_size), so the shield is short.
            with trio.CancelScope(shield=True):
                await self._raw.write(data)
        except (StreamError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionLostError(
                f"stream to peer {self.peer_id} broke while writing: {exc or type(exc).__name__}"
            ) from None
        if self._last_active is not None:
            self._last_active[self.peer_id] = trio.current_time()

    async def close(self) -> None:
        """Close both directions; never raises (a broken stream is already closed).

        Works even in a cancelled scope: the closing frame is written shielded (see
        write) and given at most CLOSE_TIMEOUT seconds.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._raw.close()
            except Exception as exc:  # closing a broken stream fails in transport-specific ways
                log.debug("closing stream to %s: %r", self.peer_id, exc)

    async def reset(self) -> None:
        """Abort the stream, telling the peer; never raises. Works when cancelled, as close."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._raw.reset()
            except Exception as exc:  # as in close()
                log.debug("resetting stream to %s: %r", self.peer_id, exc)


StreamHandler = Callable[[Stream], Awaitable[None]]


class Host:
    """A running libp2p host: its identity, its addresses, its streams."""

    def __init__(
        self,
        raw: IHost,
        identity: Identity,
        swarm_key: SwarmKey | None = None,
        psk: str | None = None,
    ) -> None:
        self._raw = raw
        self.peer_id = identity.peer_id
        self.swarm_key = swarm_key
        self._psk = psk  # what py-libp2p got: p2pnet.net.pnet keeps handshake failures in it
        # NAT traversal (reachability, relays, hole punching), when open_host got a config.
        self.nat: NatTraversal | None = None
        # When data last went either way with each peer (its streams record it), and
        # what keeps the connections within limits, when open_host got limits.
        self.last_active: dict[str, float] = {}
        self.trimmer: ConnectionTrimmer | None = None
        # (peer ID, remote address) of each connection, worked out once: the DHT asks for
        # them on every request served and every answer received, and with a hundred
        # connections turning each py-libp2p peer ID and multiaddr into text again cost
        # more CPU than the request itself.
        self._described: weakref.WeakKeyDictionary[Any, tuple[str, str]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs others can dial, ``/p2p/<peer-id>`` included; with NAT
        traversal, the announced ones (relayed addresses of a private peer first)."""
        if self.nat is not None:
            return [with_peer_id(a, self.peer_id) for a in self.nat.announce_addrs()]
        return [str(a) for a in self._raw.get_addrs()]

    @property
    def reachability(self) -> str:
        """ "public", "private" or "unknown" (no NAT traversal, or nobody answered yet)."""
        return self.nat.reachability.value if self.nat is not None else "unknown"

    def path(self, peer_id: str) -> str | None:
        """How this host is connected to ``peer_id``: "direct", "relayed", or None."""
        if self.nat is not None:
            return self.nat.path(peer_id)
        return "direct" if self.connection_count(peer_id) else None

    def protect_peer(self, peer_id: str) -> None:
        """Never close the connection to ``peer_id`` to stay within the connection
        limits (a bootstrap peer, a relay)."""
        if self.trimmer is not None:
            self.trimmer.protect(peer_id)

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol`` with ``handler``, one call per inbound stream.

        The handler is guarded: whatever it raises is logged and the stream reset,
        because py-libp2p lets a handler's exception escape into the host's nursery
        and take the whole host down.
        """

        async def guarded(raw: INetStream) -> None:
            stream = Stream(raw, str(raw.muxed_conn.peer_id), self.last_active)
            try:
                await handler(stream)
            except Exception:
                log.exception("handler for %s failed on a stream from %s", protocol, stream.peer_id)
                await stream.reset()

        self._raw.set_stream_handler(TProtocol(protocol), guarded)

    def remove_stream_handler(self, protocol: str) -> None:
        """Stop serving ``protocol``; identify sent from now on no longer lists it."""
        self._raw.remove_stream_handler(TProtocol(protocol))

    async def open_stream(self, peer: PeerAddress, protocol: str) -> Stream:
        """Open a stream to ``peer`` speaking ``protocol``, dialling it first if needed.

        Raises:
            PeerUnreachableError: no connection could be made, or the peer does not
                speak ``protocol``.
        """
        peer_id = ID.from_base58(peer.peer_id)
        if peer.addrs and self.swarm_key is not None:
            peer = _without_quic(peer)
        if peer.addrs:
            addrs = [multiaddr.Multiaddr(a) for a in peer.addrs]
            # py-libp2p's swarm keeps a "negative cache" of peers whose dial failed and
            # refuses to dial them again for a while, even at new addresses: clear it
            # when the caller gives us addresses.
            self._raw.get_network().unblock_peer(peer_id)  # type: ignore[attr-defined]
            try:
                if self.nat is not None and any(is_circuit_addr(a) for a in addrs):
                    # py-libp2p's connect() skips relayed addresses: NatTraversal dials
                    # them, racing the direct ones.
                    await self.nat.connect(peer.peer_id, peer.addrs)
                else:
                    await self._raw.connect(PeerInfo(peer_id, addrs))
            except trio.Cancelled:
                raise
            except Exception as exc:  # swarm and transport raise many unrelated types
                raise PeerUnreachableError(
                    f"cannot connect to peer {peer}: {self._dial_failure(exc, peer)}"
                ) from None
        try:
            raw = await self._raw.new_stream(peer_id, [TProtocol(protocol)])
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise PeerUnreachableError(
                f"cannot open a {protocol} stream to peer {peer}: {_reason(exc)}"
            ) from None
        return Stream(raw, peer.peer_id, self.last_active)

    def _dial_failure(self, exc: BaseException, peer: PeerAddress) -> str:
        """Why a dial failed, saying so when a private network is the likely cause."""
        chain = _chain(exc)
        pnet = next((e for e in chain if isinstance(e, PnetHandshakeError)), None)
        if pnet is not None:
            return str(pnet)
        # py-libp2p's dial error keeps only "failed after 3 attempts"; the private network
        # layer remembers why its handshakes failed.
        for addr in peer.addrs:
            try:
                ma = multiaddr.Multiaddr(addr)
                ip = ma.value_for_protocol("ip6" if "/ip6/" in addr else "ip4")
                failure = recent_failure(self._psk, str(ip), int(ma.value_for_protocol("tcp")))
            except Exception:  # not an ip/tcp address
                continue
            if failure is not None:
                return failure
        # Without a swarm key, py-libp2p reads a private network's random nonce as
        # multistream-select's length prefix and tries to allocate that many bytes: the
        # handshake fails with a MemoryError rather than a security error.
        if any(
            "security" in str(e) or "multiselect" in str(e).lower() or isinstance(e, MemoryError)
            for e in chain
        ):
            if self.swarm_key is None:
                return (
                    f"the handshake failed ({_reason(exc)}); the other side may be in a "
                    "private network (give its swarm key with --swarm-key or --swarm)"
                )
            return (
                f"the handshake failed ({_reason(exc)}); the other side may be in a private "
                f"network with a different swarm key (this peer's: {self.swarm_key.fingerprint})"
            )
        return f"{_reason(exc)}; check that it is running and that the address is right"

    def peer_addrs(self, peer_id: str) -> list[str]:
        """Transport addresses known for ``peer_id`` (from dialling it or from identify)."""
        try:
            addrs = self._raw.get_peerstore().addrs(ID.from_base58(peer_id))
        except Exception:  # py-libp2p raises PeerStoreError for an unknown peer
            return []
        return [str(a) for a in addrs]

    def supports(self, peer_id: str, protocol: str) -> bool | None:
        """Whether ``peer_id`` serves ``protocol``, from its identify message; None before
        identify has told us anything."""
        try:
            protocols = self._raw.get_peerstore().get_protocols(ID.from_base58(peer_id))
        except Exception:  # py-libp2p raises PeerStoreError for an unknown peer
            return None
        return (protocol in protocols) if protocols else None

    def connection_count(self, peer_id: str) -> int:
        """Open connections to ``peer_id``."""
        network = self._raw.get_network()
        conns = network.get_connections(ID.from_base58(peer_id))
        return sum(1 for c in conns if not c.is_closed)

    def connections(self) -> list[tuple[str, str]]:
        """(peer ID, remote transport address) of every open connection; a relayed
        connection's address holds ``/p2p-circuit``."""
        conns = self._raw.get_network().get_connections()
        return sorted(self._describe(conn) for conn in conns if not conn.is_closed)

    def seen_at(self, peer_id: str) -> list[str]:
        """The remote transport addresses of the open connections to ``peer_id``."""
        try:
            conns = self._raw.get_network().get_connections(ID.from_base58(peer_id))
        except Exception:  # not a peer ID py-libp2p can parse: no connection to it
            return []
        return [self._describe(conn)[1] for conn in conns if not conn.is_closed]

    def _describe(self, conn: Any) -> tuple[str, str]:
        described = self._described.get(conn)
        if described is None:
            try:
                addrs = [str(a) for a in conn.get_transport_addresses()]
            except Exception:  # a transport that does not know its addresses
                addrs = []
            described = (str(conn.muxed_conn.peer_id), addrs[0] if addrs else "")
            self._described[conn] = described
        return described


def tune_libp2p() -> None:
    """Apply p2pnet's settings of py-libp2p module globals; idempotent.

    ``open_host`` calls it before it builds a host, so importing p2pnet changes
    nothing in py-libp2p: only opening a p2pnet host does (for every host in the
    process, since these are module globals). Measured in docs/benchmarks.md ("Invoke").
    """
    # Yamux sends data frames of 65536 bytes (its 12-byte header included), but one Noise
    # message carries at most 65519 bytes of plaintext, so every full frame went out as
    # two Noise messages, and each costs a trip through py-libp2p's locks and the
    # scheduler. Frames of four Noise messages' worth (262076 bytes) stay within Yamux's
    # initial 256 KiB window, which is the only bound go- and js-yamux put on a received
    # frame (rust-yamux accepts up to 1 MiB). py-libp2p reads the constant at each write;
    # only what we send changes.
    _yamux.MAX_MESSAGE_SIZE = 4 * _NOISE_MAX_PLAINTEXT
    # py-libp2p's PY_YAMUX_RELEASE_ON_READ (on by default) sends a WINDOW_UPDATE frame
    # after every read: one extra frame per small message and per 64 KiB of bulk data.
    # Off, credit goes back per half window, as go-yamux does. Read at call time; a
    # value set by the user wins.
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    # py-libp2p's own psk layer is not the spec's cipher: p2pnet.net.pnet replaces it.
    install_pnet_hook()
    # py-libp2p's Yamux writer polls every 10 ms for window: p2pnet.net.yamux_window.
    install_window_wakeup()
    # py-libp2p's Yamux reader can offer more window than the 16 MiB frame limit it
    # enforces, and js-yamux sends frames as large as the window: a js peer sending us
    # bulk data broke the connection. p2pnet.net.yamux_window caps what is offered.
    install_receive_window_cap()
    # Per-read WINDOW_UPDATE frames, per-frame debug strings, a socket write per Noise
    # message: p2pnet.net.yamux_calls.
    install_call_patches()
    # py-libp2p trusts closed connections and dials a peer's oldest address only:
    # p2pnet.net.dial_fixes.
    install_dial_fixes()
    # py-libp2p starts a task per notifee for every stream opened and closed, for
    # notifees that do nothing with streams: p2pnet.net.notifees.
    install_quiet_notify()
    # py-libp2p's dialer waits a round trip between multistream-select's header and
    # protocol: p2pnet.net.multistream sends both at once.
    install_pipelined_select()
    # py-libp2p reads each frame in pieces, a socket read and two lock trips each, and
    # reads a closed connection 100 more times: p2pnet.net.tcp_reads serves the pieces
    # from one receive and gives up at the end of the stream.
    install_read_patches()


def _check_tcp_ports_free(addrs: Sequence[multiaddr.Multiaddr]) -> None:
    """Fail if a fixed TCP listen port is taken.

    py-libp2p sets SO_REUSEPORT on its listeners (for hole punching), so a second
    peer on a taken port starts without error and the kernel splits incoming
    connections between the two. A probe bind without SO_REUSEPORT still fails on a
    taken port, which turns that into a clear error.

    The probe sets SO_REUSEADDR, as the listener does: a port whose only sockets are
    connections in TIME_WAIT (for 60 s after a peer that stopped closed them) is free
    to listen on again, and a peer restarting on its port gets it back. Without it the
    probe failed there, and a restarted peer could not take its own port for a minute.
    """
    for addr in addrs:
        protocols = [p.name for p in addr.protocols()]
        if "tcp" not in protocols or int(addr.value_for_protocol("tcp")) == 0:
            continue
        family = socket.AF_INET6 if "ip6" in protocols else socket.AF_INET
        host = addr.value_for_protocol("ip6" if family == socket.AF_INET6 else "ip4")
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(addr.value_for_protocol("tcp"))))
            except OSError as exc:
                raise ConfigError(f"cannot listen on {addr}: {exc.strerror or exc}") from None


def _sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only non-group exception inside nested groups, or None if there are several."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts, and the members of exception groups, in order.

    py-libp2p's ``MultiError`` (a failed dial to every address) is no exception group: it
    keeps its members in ``errors``, with no cause, so they are followed too; without
    them a dial's real failure (the handshake's) was lost behind "Failed to connect
    after 3 attempts".
    """
    out: list[BaseException] = []
    todo = [exc]
    while todo and len(out) < 64:
        e = todo.pop(0)
        if any(e is seen for seen in out):
            continue
        out.append(e)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        if isinstance(e, MultiError):
            todo.extend(m for m in e.errors if isinstance(m, BaseException))
        todo.extend(c for c in (e.__cause__, e.__context__) if c is not None)
    return out


def _check_no_quic(addrs: Sequence[multiaddr.Multiaddr]) -> None:
    """Refuse QUIC listen addresses on a private-network host.

    py-libp2p 0.8.1 does not apply the pre-shared key to QUIC connections (a peer
    without the key connects), and the spec's QUIC protector (pnet/QUIC.md) is not
    implemented there.
    """
    for addr in addrs:
        if any(p.name.startswith("quic") for p in addr.protocols()):
            raise ConfigError(
                f"cannot listen on {addr} with a swarm key: py-libp2p does not apply the "
                "private network key to QUIC, so anyone could connect; use TCP addresses"
            )


def _without_quic(peer: PeerAddress) -> PeerAddress:
    """``peer`` without its QUIC addresses, which a private-network host must not dial.

    Raises:
        ConfigError: QUIC addresses only.
    """
    kept = tuple(a for a in peer.addrs if "/quic" not in a)
    if not kept:
        raise ConfigError(
            f"cannot dial {peer} with a swarm key: py-libp2p does not apply the private "
            "network key to QUIC; give a TCP address of the peer"
        )
    return PeerAddress(peer.peer_id, kept)


def _reason(exc: BaseException) -> str:
    """The innermost message of an exception chain, which says what actually failed."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text


@asynccontextmanager
async def open_host(
    identity: Identity,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    *,
    dial_timeout: float = 10.0,
    swarm_key: SwarmKey | None = None,
    nat: NatConfig | None = None,
    connections: ConnectionLimits | None = DEFAULT_CONNECTION_LIMITS,
) -> AsyncIterator[Host]:
    """Run a libp2p host (TCP, Noise, Yamux) listening on ``listen`` until the block exits.

    mDNS, UPnP and bootstrap discovery stay off: nothing is dialled or announced that
    the caller did not ask for. With ``swarm_key``, every connection carries the
    private network layer (p2pnet.net.pnet): only peers with the same key connect.
    With ``connections``, idle connections are closed when there are too many
    (``ConnectionTrimmer``; None: never).

    Raises:
        InvalidAddressError: a listen address that is not a multiaddr.
        ConfigError: the host cannot listen (address in use, not local, QUIC with a
            swarm key, ...).
    """
    try:
        listen_addrs = [multiaddr.Multiaddr(a) for a in listen]
    except Exception as exc:
        raise InvalidAddressError(f"bad listen address in {list(listen)}: {exc}") from None
    if swarm_key is not None:
        _check_no_quic(listen_addrs)
    _check_tcp_ports_free(listen_addrs)
    tune_libp2p()
    inherit_libp2p_log_level()
    psk = psk_for(swarm_key) if swarm_key is not None else None
    raw = new_host(
        key_pair=create_new_key_pair(identity.seed),
        enable_mDNS=False,
        enable_upnp=False,
        # With the default of 3 connections per peer, py-libp2p's swarm waits a fixed
        # 250 ms ("happy eyeballs") on every dial for a second connection; one
        # connection per peer removes the wait. Yamux multiplexes all our streams on it.
        connection_config=ConnectionConfig(max_connections_per_peer=1, dial_timeout=dial_timeout),
        # py-libp2p's own psk layer is not the spec's cipher: p2pnet.net.pnet replaces it.
        psk=psk,
    )
    if psk is not None:
        protect_relayed_dials(raw.get_network(), psk)
    try:
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(raw.run(listen_addrs))
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {list(listen)}: {exc.strerror or exc}"
                ) from None
            # py-libp2p's AutoConnector dials peers from the peerstore (any address any
            # peer ever told us about) whenever there are fewer than 50 connections.
            # p2pnet dials only what it is asked to: stop it before anything connects.
            await raw.get_network().auto_connector.stop()  # type: ignore[attr-defined]
            # Its ConnectionPruner runs (debounced to once a second) after every new
            # connection, and each run copies the tag entry of every peer the swarm ever
            # tagged before it looks at the count: 5% of the CPU of 200 peers at 5
            # discoveries a second. p2pnet's ConnectionTrimmer bounds the connections
            # (``connections``; None: no limit), so py-libp2p's pruner is stopped too.
            await raw.get_network().connection_pruner.stop()  # type: ignore[attr-defined]
            traversal = None
            if nat is not None:
                traversal = NatTraversal(raw, nat)
                services = await stack.enter_async_context(trio.open_nursery())
                stack.callback(services.cancel_scope.cancel)
                await services.start(traversal.run)
            host = Host(raw, identity, swarm_key, psk)
            host.nat = traversal
            if connections is not None:
                host.trimmer = ConnectionTrimmer(raw.get_network(), connections, host.last_active)
                trimming = await stack.enter_async_context(trio.open_nursery())
                stack.callback(trimming.cancel_scope.cancel)
                await trimming.start(host.trimmer.run)
            try:
                yield host
            finally:
                # Leaving host.run() stops the swarm by cancelling it, and its clean-up
                # then closes each connection inside the cancelled scope: the first
                # await raises, and the sockets stay open, so peers never learn that we
                # left (their calls to us hang until their deadline). Swarm.close()
                # first, shielded, closes every connection for real.
                with trio.CancelScope(shield=True), trio.move_on_after(HOST_CLOSE_TIMEOUT):
                    await raw.get_network().close()
    except BaseExceptionGroup as group:
        # py-libp2p's host.run() wraps whatever the block raises in one exception group
        # per nursery it runs; hand a lone error back to the caller as itself.
        leaf = _sole_leaf(group)
        if leaf is None:
            raise
        raise leaf from None
