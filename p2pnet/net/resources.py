"""Limits on what other peers may hold here: inbound streams and the bytes of requests in
progress, per peer and in total, and how long a stream may stall.

Modelled on go-libp2p's resource manager, smaller: go-libp2p accounts streams and memory
in a DAG of scopes (system, transient, service, protocol, peer, connection, stream) and
refuses what would take a scope over its limit; it has no notion of honest or bad peers.
p2pnet keeps two scopes, the system (this host) and the peer; p2pnet keeps one connection
per peer (``open_host``), so the peer scope is also the connection scope.

    ResourceLimits      the limits, with their defaults (docs/networking.md, "Resource limits")
    ResourceLedger      pure accounting: admits or refuses a stream or bytes, with a reason
    Admission           the ledger's decision
    LimitedStream       an inbound stream under the limits: memory accounted, stalls timed out
    ResourceLimitedHost a StreamHost whose handlers serve only streams the ledger admits

``ResourceLedger`` does no I/O and reads no clock; the host and stream wrappers act on its
decisions (a refused stream is reset at once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from p2pnet.errors import ConnectionLostError
from p2pnet.net.interfaces import ByteStream, ByteStreamHandler, HostWrapper, StreamHost

__all__ = [
    "DEFAULT_RESOURCES",
    "Admission",
    "LimitedStream",
    "ResourceLedger",
    "ResourceLimitedHost",
    "ResourceLimits",
    "ResourceStats",
]

log = logging.getLogger(__name__)

# At most one warning per this many seconds about refused or timed-out streams; the rest
# are logged at debug level (a flood must not flood the log too).
WARNING_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """What other peers may hold on this host; docs/networking.md explains each default.

    inbound_streams: inbound streams open at once, all peers together (go-libp2p's
        system scope). More are reset at once.
    inbound_streams_per_peer: inbound streams one peer may hold open at once (go-libp2p's
        peer and connection scopes: p2pnet keeps one connection per peer). Above the
        invoke client's pool (8 idle streams) plus a model's queue (2 running, 64 waiting).
    memory: bytes of requests in progress (received since the stream's last reply), all
        peers together.
    memory_per_peer: the same, for one peer. At least one largest invoke message (256 MiB,
        ``WireLimits.max_message_size``) must fit.
    stall_timeout: seconds a stream may go without a byte while a request is in progress
        (bytes received since the last reply): a slow-loris holding part of a frame is
        reset after this long.
    idle_timeout: seconds a stream may wait for the first byte of its next request; it
        is then ended (read returns b""). Above the clients' pooled stream lifetime
        (240 s), so that they close their idle streams first; the protocols' own idle
        timeouts (300 s, 60 s for the DHT) apply too.
    """

    inbound_streams: int = 4096
    inbound_streams_per_peer: int = 128
    memory: int = 1 << 30
    memory_per_peer: int = 512 << 20
    stall_timeout: float = 30.0
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.inbound_streams_per_peer <= self.inbound_streams:
            raise ValueError("inbound_streams_per_peer must be in 1..inbound_streams")
        if not 0 < self.memory_per_peer <= self.memory:
            raise ValueError("memory_per_peer must be in 1..memory")
        if self.stall_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("stall_timeout and idle_timeout must be positive")


DEFAULT_RESOURCES = ResourceLimits()


@dataclass(frozen=True, slots=True)
class Admission:
    """The ledger's decision: ``admitted``, or refused because ``scope`` ("system" or
    "peer") is full, as ``reason`` says."""

    admitted: bool
    scope: str = ""
    reason: str = ""


ADMITTED = Admission(True)


@dataclass(slots=True)
class _Usage:
    streams: int = 0
    memory: int = 0


class ResourceLedger:
    """Inbound streams and request bytes held, per peer and in total; pure.

    Every admitted stream and byte must be released once (``release_stream``,
    ``release_memory``); a peer holding nothing is forgotten.
    """

    def __init__(self, limits: ResourceLimits = DEFAULT_RESOURCES) -> None:
        self.limits = limits
        self._total = _Usage()
        self._peers: dict[str, _Usage] = {}

    @property
    def streams(self) -> int:
        """Inbound streams held, all peers together."""
        return self._total.streams

    @property
    def memory(self) -> int:
        """Request bytes held, all peers together."""
        return self._total.memory

    def peer_streams(self, peer_id: str) -> int:
        """Inbound streams ``peer_id`` holds."""
        usage = self._peers.get(peer_id)
        return usage.streams if usage is not None else 0

    def peer_memory(self, peer_id: str) -> int:
        """Request bytes ``peer_id`` holds."""
        usage = self._peers.get(peer_id)
        return usage.memory if usage is not None else 0

    @property
    def peers(self) -> int:
        """Peers holding anything."""
        return len(self._peers)

    def admit_stream(self, peer_id: str) -> Admission:
        """Count one more inbound stream of ``peer_id``, or say which limit refuses it."""
        limits = self.limits
        held = self.peer_streams(peer_id)
        if held >= limits.inbound_streams_per_peer:
            return Admission(
                False,
                "peer",
                f"peer {peer_id} holds {held} inbound streams, the most one peer may "
                f"(inbound_streams_per_peer={limits.inbound_streams_per_peer})",
            )
        if self._total.streams >= limits.inbound_streams:
            return Admission(
                False,
                "system",
                f"{self._total.streams} inbound streams are open, the most this host "
                f"takes (inbound_streams={limits.inbound_streams})",
            )
        self._usage(peer_id).streams += 1
        self._total.streams += 1
        return ADMITTED

    def release_stream(self, peer_id: str) -> None:
        """Forget one admitted stream of ``peer_id``."""
        usage = self._peers.get(peer_id)
        if usage is None or usage.streams <= 0:
            raise ValueError(f"peer {peer_id} holds no admitted stream")
        usage.streams -= 1
        self._total.streams -= 1
        self._forget_if_idle(peer_id, usage)

    def reserve_memory(self, peer_id: str, size: int) -> Admission:
        """Count ``size`` more request bytes of ``peer_id``, or say which limit refuses them
        (nothing is counted then)."""
        limits = self.limits
        held = self.peer_memory(peer_id)
        if held + size > limits.memory_per_peer:
            return Admission(
                False,
                "peer",
                f"peer {peer_id} would hold {held + size} bytes of requests in progress, "
                f"more than one peer may (memory_per_peer={limits.memory_per_peer})",
            )
        if self._total.memory + size > limits.memory:
            return Admission(
                False,
                "system",
                f"requests in progress would hold {self._total.memory + size} bytes, more "
                f"than this host takes (memory={limits.memory})",
            )
        self._usage(peer_id).memory += size
        self._total.memory += size
        return ADMITTED

    def release_memory(self, peer_id: str, size: int) -> None:
        """Forget ``size`` reserved request bytes of ``peer_id``."""
        usage = self._peers.get(peer_id)
        if usage is None or not 0 <= size <= usage.memory:
            raise ValueError(f"peer {peer_id} holds fewer than {size} reserved bytes")
        usage.memory -= size
        self._total.memory -= size
        self._forget_if_idle(peer_id, usage)

    def _usage(self, peer_id: str) -> _Usage:
        usage = self._peers.get(peer_id)
        if usage is None:
            usage = self._peers[peer_id] = _Usage()
        return usage

    def _forget_if_idle(self, peer_id: str, usage: _Usage) -> None:
        if usage.streams == 0 and usage.memory == 0:
            del self._peers[peer_id]


@dataclass
class ResourceStats:
    """What the limits did, for status output and tests."""

    refused_streams: dict[str, int] = field(default_factory=dict)  # by scope
    refused_memory: dict[str, int] = field(default_factory=dict)  # by scope
    stalled_streams: int = 0
    idle_streams: int = 0

    def hits(self) -> dict[str, int]:
        """Every limit hit so far, by reason ("streams_peer", "memory_system", "stalled",
        "idle"...), leaving out those never hit: what ``p2pnet status`` shows."""
        hits = {f"streams_{scope}": n for scope, n in self.refused_streams.items()}
        hits |= {f"memory_{scope}": n for scope, n in self.refused_memory.items()}
        hits |= {"stalled": self.stalled_streams, "idle": self.idle_streams}
        return {reason: n for reason, n in hits.items() if n}


class _RateLimitedWarning:
    """Logs the first event as a warning, then at most one per ``WARNING_INTERVAL`` s
    (with the count since the last), everything at debug level."""

    def __init__(self) -> None:
        self._next = 0.0
        self._since = 0

    def __call__(self, message: str) -> None:
        now = trio.current_time()
        self._since += 1
        if now >= self._next:
            more = f" ({self._since - 1} more since the last warning)" if self._since > 1 else ""
            log.warning("%s%s", message, more)
            self._next = now + WARNING_INTERVAL
            self._since = 0
        else:
            log.debug("%s", message)


class LimitedStream:
    """An inbound stream under the ledger: bytes received since its last reply are
    reserved (the stream is reset when a limit refuses them), a request in progress that
    stalls for ``stall_timeout`` s is reset, and a wait for the next request longer than
    ``idle_timeout`` s ends the stream (read returns b"").

    A reply (any write) ends the request in progress: its bytes are released.
    """

    def __init__(
        self,
        stream: ByteStream,
        ledger: ResourceLedger,
        stats: ResourceStats,
        warn: _RateLimitedWarning,
    ) -> None:
        self._stream = stream
        self._ledger = ledger
        self._stats = stats
        self._warn = warn
        self._held = 0  # bytes received since the last write, reserved in the ledger
        self._in_progress = False
        self._ended = ""  # why this side ended the stream: "" while it has not

    @property
    def peer_id(self) -> str:
        return self._stream.peer_id

    async def read(self) -> bytes:
        """As ``ByteStream.read``, within the limits.

        Raises:
            ConnectionLostError: the stream broke, or was reset here for stalling or for
                going over a memory limit.
        """
        if self._ended == "closed":
            return b""
        if self._ended:
            raise ConnectionLostError(self._ended)
        limits = self._ledger.limits
        timeout = limits.stall_timeout if self._in_progress else limits.idle_timeout
        data: bytes | None = None
        with trio.move_on_after(timeout):
            data = await self._stream.read()
        if data is not None:
            if data:
                await self._reserve(len(data))
            return data
        if self._in_progress:
            self._stats.stalled_streams += 1
            self._warn(
                f"resetting a stream from {self.peer_id}: part of a request and nothing "
                f"more for {timeout:g} s (stall_timeout)"
            )
            await self._end(
                f"peer {self.peer_id} sent part of a request, then nothing for {timeout:g} s"
            )
            raise ConnectionLostError(self._ended)
        self._stats.idle_streams += 1
        log.debug("ending a stream from %s idle for %g s", self.peer_id, timeout)
        await self._end("closed")
        return b""

    async def _reserve(self, size: int) -> None:
        """Count ``size`` received bytes against the request in progress.

        Raises:
            ConnectionLostError: a limit refused them; the stream was reset.
        """
        decision = self._ledger.reserve_memory(self.peer_id, size)
        if not decision.admitted:
            scope = decision.scope
            self._stats.refused_memory[scope] = self._stats.refused_memory.get(scope, 0) + 1
            self._warn(f"resetting a stream from {self.peer_id}: {decision.reason}")
            await self._end(f"stream from peer {self.peer_id} reset: {decision.reason}")
            raise ConnectionLostError(self._ended)
        self._held += size
        self._in_progress = True

    async def write(self, data: bytes) -> None:
        """As ``ByteStream.write``; the request answered no longer counts."""
        self.release()
        await self._stream.write(data)

    async def close(self) -> None:
        await self._stream.close()

    async def reset(self) -> None:
        self.release()
        await self._stream.reset()

    def request_done(self) -> None:
        """The request received was whole and has no reply (``RequestBoundaries``)."""
        self.release()

    def release(self) -> None:
        """Release the bytes held for the request in progress."""
        if self._held:
            self._ledger.release_memory(self.peer_id, self._held)
            self._held = 0
        self._in_progress = False

    async def _end(self, why: str) -> None:
        """Close the stream (``why`` == "closed") or reset it, saying ``why``."""
        self._ended = why
        self.release()
        if why == "closed":
            await self._stream.close()
        else:
            await self._stream.reset()


class ResourceLimitedHost(HostWrapper):
    """``host``, except that every handler set on it serves only streams the ledger
    admits, through a ``LimitedStream``; a refused stream is reset at once.

    Args:
        host: the host to serve on.
        limits: the limits (``PeerConfig.resources``).
    """

    def __init__(self, host: StreamHost, limits: ResourceLimits = DEFAULT_RESOURCES) -> None:
        super().__init__(host)
        self.ledger = ResourceLedger(limits)
        self.stats = ResourceStats()
        self._warn = _RateLimitedWarning()

    def limit(self, protocol: str, handler: ByteStreamHandler) -> ByteStreamHandler:
        """``handler`` for ``protocol``, serving only admitted streams, under the limits."""
        ledger, stats, warn = self.ledger, self.stats, self._warn

        async def limited(stream: ByteStream) -> None:
            peer_id = stream.peer_id
            decision = ledger.admit_stream(peer_id)
            if not decision.admitted:
                stats.refused_streams[decision.scope] = (
                    stats.refused_streams.get(decision.scope, 0) + 1
                )
                warn(f"refusing a {protocol} stream from {peer_id}: {decision.reason}")
                await stream.reset()
                return
            limited_stream = LimitedStream(stream, ledger, stats, warn)
            try:
                await handler(limited_stream)
            finally:
                limited_stream.release()
                ledger.release_stream(peer_id)

        return limited

    def set_stream_handler(self, protocol: str, handler: ByteStreamHandler) -> None:
        self._host.set_stream_handler(protocol, self.limit(protocol, handler))


if TYPE_CHECKING:

    def _wrappers_conform(host: ResourceLimitedHost, stream: LimitedStream) -> None:
        """Never called: mypy checks these assignments."""
        hosts: list[StreamHost] = [host]
        streams: list[ByteStream] = [stream]
        del hosts, streams
