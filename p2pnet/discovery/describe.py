"""``/p2pnet/describe/1.0.0``: fetch a peer's signed capability records (docs/protocol.md).

Discovery is one DHT provider lookup (by model key or task key) and then at most one
round trip per provider on this protocol. The caller opens a stream, sends a
DescribeRequest (optional model and task filters), and reads one reply: the
matching signed envelopes, or an error. A stream carries any number of requests,
one after another.

The server sends its records as they are; the client verifies every one
(signature, key, expiry with its own wall clock), and also refuses a record of any
peer but the one it asked, a record it did not ask for, and a second record for
the same model. Refused records are reported with their error, never returned.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgpack
import trio

from p2pnet.core.address import PeerAddress
from p2pnet.core.describe import (
    DEFAULT_DESCRIBE_LIMITS,
    DescribeErrorReply,
    DescribeLimits,
    DescribeReader,
    DescribeRequest,
    RecordsReply,
    encode_describe_message,
    fit_records_reply,
)
from p2pnet.core.model_id import parse_model_id
from p2pnet.core.records import (
    MAX_TASK_LENGTH,
    CapabilityRecord,
    decode_record,
    supersedes,
    verify_record,
)
from p2pnet.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    InternalPeerError,
    InvalidRecordError,
    MalformedRecordError,
    NetworkError,
    P2PNetError,
    PayloadTooLargeError,
    ProtocolError,
    RemoteProtocolError,
    StaleRecordError,
    UsageError,
    error_from_wire,
    wire_code_for,
)
from p2pnet.net.channels import Channel, StreamPool, read_message, read_request
from p2pnet.net.interfaces import ByteStream, StreamHost

__all__ = [
    "DESCRIBE_PROTOCOL",
    "DescribeClient",
    "DescribeResult",
    "DescribeServer",
    "DescribeServerStats",
    "RejectedRecord",
]

log = logging.getLogger(__name__)

DESCRIBE_PROTOCOL: Final = "/p2pnet/describe/1.0.0"
# Error messages are for a person; a longer one says nothing more.
_MAX_ERROR_MESSAGE: Final = 1000
# Verifying a record costs ~180 us of CPU (Ed25519 verify ~110, the small-order key check
# ~45, decoding ~25): a full reply of 256 records would hold the trio loop for ~45 ms, so
# replies with more than this many records are verified in a worker thread.
_VERIFY_INLINE_MAX: Final = 16
_TASK: Final = re.compile(r"[a-z0-9][a-z0-9-]*")  # as p2pnet.core.records checks record tags


# --- server --------------------------------------------------------------------------------


@dataclass
class DescribeServerStats:
    """Counters a running server keeps, for status output and tests.

    left_out: records that matched a request but did not fit its reply.
    """

    streams: int = 0
    requests: int = 0
    records_sent: int = 0
    left_out: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class DescribeServer:
    """Answers describe requests with the envelopes ``records_provider`` returns.

    ``records_provider`` is called once per request and returns this peer's signed
    envelopes (sign_record), in the order to send them. The server decodes each
    envelope once (cached by its bytes) to filter by model and task; it checks no
    signature and no expiry: keeping the records fresh is the provider's job, and
    every caller verifies. An envelope that does not decode is never sent.

    When the matching records do not fit one reply (``limits.max_records``, or
    ``limits.max_frame_size``), the reply holds the first ones that fit, and
    ``stats.left_out`` counts the rest: callers get them by asking for fewer models.

    Args:
        records_provider: this peer's current envelopes.
        limits: sizes accepted in requests and used for replies.
        idle_timeout: seconds a stream may wait for its next request before it is closed.
        drain_timeout: seconds to read and drop what a caller still sends after a
            request that broke the protocol, so that it sees the error reply.
        permits: ``permits(model_id, caller_peer_id)`` says whether the caller may call
            the model (p2pnet.core.access); records of models it may not are left out of
            the reply. None: every record goes to everyone.
    """

    def __init__(
        self,
        records_provider: Callable[[], Sequence[bytes]],
        *,
        limits: DescribeLimits = DEFAULT_DESCRIBE_LIMITS,
        idle_timeout: float = 300.0,
        drain_timeout: float = 2.0,
        permits: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.records_provider = records_provider
        self.permits = permits
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self.stats = DescribeServerStats()
        # envelope -> its record (None: does not decode); holds the last provided set only.
        self._decoded: dict[bytes, CapabilityRecord | None] = {}

    async def handle_stream(self, stream: ByteStream) -> None:
        """Answer requests on ``stream`` until the caller closes it or breaks the protocol.

        Never raises: a request that breaks the protocol gets an error reply, then the
        stream is closed; a broken stream is reset.
        """
        self.stats.streams += 1
        reader = DescribeReader(self.limits)
        while True:
            try:
                message = await read_request(stream, reader, self.idle_timeout)
                if message is None:  # closed by the caller, or idle too long
                    return
                if not isinstance(message, DescribeRequest):
                    raise RemoteProtocolError(
                        f"expected a describe request, got a {type(message).__name__}"
                    )
            except (ProtocolError, PayloadTooLargeError) as exc:
                log.info("describe stream from %s broke the protocol: %s", stream.peer_id, exc)
                await self._reject_stream(stream, exc)
                return
            except ConnectionLostError as exc:
                log.debug("describe stream from %s: %s", stream.peer_id, exc)
                await stream.reset()
                return
            try:
                await stream.write(self._reply_frame(message, stream.peer_id))
            except ConnectionLostError as exc:
                log.debug("caller %s went away before its reply: %s", stream.peer_id, exc)
                await stream.reset()
                return

    def answer(self, request: DescribeRequest, caller: str | None = None) -> RecordsReply:
        """The reply to ``request`` from ``caller``: this peer's matching records that
        the caller may use (see ``permits``; an unnamed caller is on no access list),
        as many as fit one reply.

        Raises:
            Whatever ``records_provider`` raises.
        """
        self.stats.requests += 1
        matching = [
            envelope
            for envelope, record in self._decode_all(self.records_provider())
            if request.matches(record)
            and (self.permits is None or self.permits(record.model_id, caller or ""))
        ]
        reply, left_out = fit_records_reply(matching, self.limits)
        if left_out:
            self.stats.left_out += left_out
            log.warning(
                "%d of %d matching records did not fit a describe reply (limits: %d records, "
                "%d bytes); callers must ask for fewer models to get them",
                left_out,
                len(matching),
                self.limits.max_records,
                self.limits.max_frame_size,
            )
        self.stats.records_sent += len(reply.records)
        return reply

    def _reply_frame(self, request: DescribeRequest, caller: str) -> bytes:
        try:
            return encode_describe_message(self.answer(request, caller), self.limits)
        except Exception as exc:
            log.exception("answering a describe request failed")
            error = InternalPeerError(f"this peer failed to list its records: {exc!r}")
            return self._error_frame(error)

    def _decode_all(self, envelopes: Sequence[bytes]) -> list[tuple[bytes, CapabilityRecord]]:
        decoded: dict[bytes, CapabilityRecord | None] = {}
        out = []
        for envelope in envelopes:
            if envelope in decoded:
                record = decoded[envelope]
            elif envelope in self._decoded:
                record = decoded[envelope] = self._decoded[envelope]
            else:
                record = decoded[envelope] = _decode_own(envelope)
            if record is not None:
                out.append((envelope, record))
        self._decoded = decoded
        return out

    def _error_frame(self, exc: P2PNetError) -> bytes:
        code = wire_code_for(exc)
        self.stats.count_error(code)
        reply = DescribeErrorReply(code, exc.message[:_MAX_ERROR_MESSAGE])
        return encode_describe_message(reply, self.limits)

    async def _reject_stream(self, stream: ByteStream, exc: P2PNetError) -> None:
        """Tell the caller why, then end the stream: its framing can no longer be trusted.

        What the caller still sends is read and dropped for up to ``drain_timeout``
        seconds, so that it reads our error instead of a reset.
        """
        try:
            await stream.write(self._error_frame(exc))
            await stream.close()
            with trio.move_on_after(self.drain_timeout):
                while await stream.read():
                    pass
                return  # the caller closed its side too: the stream is done
        except ConnectionLostError:
            pass
        await stream.reset()


def _decode_own(envelope: bytes) -> CapabilityRecord | None:
    """The record in one of this peer's envelopes, or None (logged) if it does not decode."""
    try:
        parts = msgpack.unpackb(envelope, use_list=False)
        if not isinstance(parts, tuple) or len(parts) != 3 or not isinstance(parts[0], bytes):
            raise MalformedRecordError("not an envelope: [payload, public key, signature]")
        return decode_record(parts[0])
    except MalformedRecordError as exc:
        log.warning("not serving a capability record that does not decode: %s", exc)
    except Exception as exc:  # msgpack raises many types for malformed input
        log.warning("not serving a capability record that is not msgpack: %r", exc)
    return None


# --- client --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """An envelope a peer sent that must not be used, and why."""

    envelope: bytes
    error: InvalidRecordError


@dataclass(frozen=True, slots=True)
class DescribeResult:
    """What a peer describes of itself, verified.

    peer_id: the peer asked; every record in ``records`` is its own.
    records: verified records that match the request, in the order the peer sent them;
        at most one per model.
    envelopes: ``envelopes[i]`` is the signed envelope of ``records[i]``, to pass on.
    rejected: envelopes that failed a check, with the error saying which.
    rtt: seconds from sending the request to receiving the whole reply, and on a new
        stream at least the time opening it took (trio clock; verification not
        included). Opening a stream is a round trip of protocol negotiation (plus the
        dial when there was no connection) that no peer can answer ahead of, so a peer
        that writes its reply before our request arrives still shows its real round
        trip.
    new_stream: the request went on a newly opened stream. On a reused stream a peer
        could have sent its reply before the request: ranking takes latency samples
        only from new streams.
    """

    peer_id: str
    records: tuple[CapabilityRecord, ...]
    envelopes: tuple[bytes, ...]
    rejected: tuple[RejectedRecord, ...]
    rtt: float
    new_stream: bool = True


class DescribeClient:
    """Fetches and verifies other peers' capability records through ``host``.

    Args:
        host: the local host (libp2p, or the in-memory network).
        limits: sizes accepted in replies and used for requests.
        clock: wall clock in unix seconds, to check record expiry against.
        max_idle_streams: finished streams kept per peer for reuse (0: a new stream
            for every request).
    """

    def __init__(
        self,
        host: StreamHost,
        *,
        limits: DescribeLimits = DEFAULT_DESCRIBE_LIMITS,
        clock: Callable[[], float] = time.time,
        max_idle_streams: int = 2,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._pool: StreamPool[DescribeReader] = StreamPool(
            host, DESCRIBE_PROTOCOL, lambda: DescribeReader(limits), max_idle=max_idle_streams
        )

    async def describe(
        self,
        peer: PeerAddress,
        *,
        models: Sequence[str] = (),
        tasks: Sequence[str] = (),
        timeout: float = 10.0,
    ) -> DescribeResult:
        """The verified records of ``peer`` for ``models`` and ``tasks`` (empty: all).

        A record matches when ``models`` is empty or names its model, and ``tasks``
        is empty or shares a tag with it. ``timeout`` (seconds) covers dialling,
        the round trip and verification.

        Raises:
            InvalidModelIdError: an entry of ``models`` is not a model ID.
            UsageError: an entry of ``tasks`` is not a task tag.
            PayloadTooLargeError: more filters than ``limits.max_filters`` (before
                anything is sent), or the peer refused the request as too large.
            Errors about the peer have ``peer`` set to it.
            PeerUnreachableError: no connection to the peer.
            ConnectionLostError: the connection broke, or the peer closed the stream
                without replying.
            DeadlineExceededError: no reply within ``timeout``.
            RemoteProtocolError: the reply breaks the protocol, or is over the size limit.
            LocalProtocolError, InternalPeerError, PeerBusyError: the peer's error reply.
        """
        request = DescribeRequest(
            tuple(parse_model_id(m) for m in models), tuple(_check_task(t) for t in tasks)
        )
        frame = encode_describe_message(request, self._limits)  # fails here, before any I/O

        # A peer that writes its reply as soon as a stream opens, before our request
        # arrives, must not look closer than it is: on a new stream, the round trip is
        # at least the time the stream took to open (a round trip of protocol
        # negotiation that no peer can answer ahead of, and the dial if there was no
        # connection yet).
        start = trio.current_time()

        async def exchange(
            channel: Channel[DescribeReader],
        ) -> tuple[RecordsReply | DescribeErrorReply, float, bool]:
            sent = trio.current_time()
            opening = sent - start
            await channel.stream.write(frame)
            try:
                reply = await read_message(channel.stream, channel.reader)
            except PayloadTooLargeError as exc:
                raise RemoteProtocolError(
                    f"peer {peer.peer_id} sent a describe reply over the size limit: {exc.message}",
                    peer=peer.peer_id,
                ) from None
            rtt = trio.current_time() - sent
            if not channel.reused:
                rtt = max(rtt, opening)
            if reply is None:
                raise ConnectionLostError(
                    f"peer {peer.peer_id} closed the describe stream without replying"
                )
            if isinstance(reply, DescribeErrorReply):
                channel.in_step = False  # a peer that failed to answer is not asked again
            elif not isinstance(reply, RecordsReply):
                raise RemoteProtocolError(
                    f"peer {peer.peer_id} answered a describe request with a {type(reply).__name__}"
                )
            return reply, rtt, not channel.reused

        with trio.move_on_after(timeout):
            try:
                reply, rtt, new_stream = await self._pool.request(peer, exchange)
            except (NetworkError, RemoteProtocolError) as exc:
                if exc.peer is None:
                    exc.peer = peer.peer_id
                raise
            if isinstance(reply, DescribeErrorReply):
                raise error_from_wire(reply.code, reply.message, peer.peer_id)
            if len(reply.records) <= _VERIFY_INLINE_MAX:
                return self._verify(peer.peer_id, request, reply.records, rtt, new_stream)
            return await trio.to_thread.run_sync(
                self._verify, peer.peer_id, request, reply.records, rtt, new_stream
            )
        raise DeadlineExceededError(
            f"no describe reply from peer {peer.peer_id} within {timeout:g} s",
            peer=peer.peer_id,
        )

    def _verify(
        self,
        peer_id: str,
        request: DescribeRequest,
        envelopes: Sequence[bytes],
        rtt: float,
        new_stream: bool = True,
    ) -> DescribeResult:
        now = self._clock()
        kept: dict[str, tuple[CapabilityRecord, bytes]] = {}  # model ID -> record, envelope
        rejected: list[RejectedRecord] = []
        for envelope in envelopes:
            try:
                record = verify_record(envelope, now=now)
                if record.peer_id != peer_id:
                    raise InvalidRecordError(
                        f"peer {peer_id} sent a record of another peer, {record.peer_id}, "
                        f"for model {record.model_id}; a peer describes only itself"
                    )
                if not request.matches(record):
                    raise InvalidRecordError(
                        f"peer {peer_id} sent its record for model {record.model_id} "
                        f"(tasks {', '.join(record.tasks) or 'none'}), which was not asked for"
                    )
                held = kept.get(record.model_id)
                if held is not None:
                    if not supersedes(record, held[0]):  # raises StaleRecordError if older
                        raise StaleRecordError(
                            f"peer {peer_id} sent its record for model {record.model_id} twice"
                        )
                    rejected.append(
                        RejectedRecord(
                            held[1],
                            StaleRecordError(
                                f"the record of peer {peer_id} for model {record.model_id} "
                                f"with seq {held[0].seq} is superseded by seq {record.seq} "
                                "in the same reply"
                            ),
                        )
                    )
                    del kept[record.model_id]  # keep the reply's order for the survivor
                kept[record.model_id] = (record, envelope)
            except InvalidRecordError as exc:
                rejected.append(RejectedRecord(envelope, exc))
        if rejected:
            log.info(
                "peer %s sent %d records that must not be used; first: %s",
                peer_id,
                len(rejected),
                rejected[0].error,
            )
        return DescribeResult(
            peer_id=peer_id,
            records=tuple(record for record, _ in kept.values()),
            envelopes=tuple(envelope for _, envelope in kept.values()),
            rejected=tuple(rejected),
            rtt=rtt,
            new_stream=new_stream,
        )

    async def aclose(self) -> None:
        """Close every idle stream."""
        await self._pool.aclose()


def _check_task(tag: str) -> str:
    """``tag`` if it is a task tag, as records have them.

    Raises:
        UsageError: it is not.
    """
    if not isinstance(tag, str) or len(tag) > MAX_TASK_LENGTH or not _TASK.fullmatch(tag):
        raise UsageError(
            f"{tag!r:.80} is not a task tag: lower case letters, digits and '-', starting "
            f"with a letter or digit, at most {MAX_TASK_LENGTH} characters "
            "(like 'sentiment-analysis')"
        )
    return tag
