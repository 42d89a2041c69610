"""The calling side of ``/p2pnet/invoke/1.0.0``: the remote implementation of ``Invoker``.

Opening a libp2p stream costs ~10 ms of CPU in py-libp2p, a round trip on an open
one ~1 ms, so the client keeps finished streams per peer and reuses them
(``p2pnet.net.channels.StreamPool``): one stream carries one call at a time,
concurrent calls use more streams.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import numpy.typing as npt
import trio

from p2pnet.core.address import PeerAddress
from p2pnet.core.callstats import CallRecord, CallStats, call_task, tensor_bytes
from p2pnet.core.generation import GenerationParams, GenerationSummary, Prompt
from p2pnet.core.messages import (
    Cancel,
    Chunk,
    CloseSession,
    Done,
    EncodedMessage,
    ErrorReply,
    Forward,
    ForwardResult,
    Generate,
    Invoke,
    Message,
    MessageReader,
    Result,
    WireLimits,
    encode_message,
    generation_tensors,
)
from p2pnet.core.records import CapabilityRecord
from p2pnet.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    NetworkError,
    P2PNetError,
    PayloadTooLargeError,
    RemoteProtocolError,
    ReplyTooLargeError,
    error_from_wire,
)
from p2pnet.invoke.protocol import INVOKE_PROTOCOL, read_message, write_message
from p2pnet.net.channels import Channel, StreamPool
from p2pnet.net.interfaces import StreamHost

__all__ = ["CallObserver", "CallerAccounts", "ClientStats", "GenerationStream", "InvokeClient"]

log = logging.getLogger(__name__)

_ReplyT = TypeVar("_ReplyT", Result, ForwardResult, Done)
_T = TypeVar("_T")


CallObserver = Callable[[str, bool, float, str], None]
"""``observe(kind, ok, seconds, error code)`` after each call: kind "invoke" or "forward"."""


@dataclass(slots=True)
class ClientStats:
    """Counters of the calls a client made (invoke and forward; streamed generations are
    not counted here), for status output and metrics; each call is also recorded in the
    client's ``calls`` (by model, its latency and bytes: ``CallStats``).

    calls: calls made, whatever their outcome.
    errors: calls that ended in an error, by its code.
    seconds: the time all calls took, in seconds.
    """

    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class CallerAccounts(Protocol):
    """What the client asks of a caller's accounting (``p2pnet.accounting.Accountant``)."""

    def acknowledgement_for(self, provider: str) -> bytes | None:
        """The signed acknowledgement to send ``provider`` with the next call, if due."""
        ...

    def asked_to_settle(self, provider: str) -> None:
        """``provider`` asks for an acknowledgement of what this peer owes it now."""
        ...

    def accept(
        self,
        provider: str,
        model_id: str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        envelope: bytes,
        *,
        wall_s: float,
        record: CapabilityRecord | None = None,
    ) -> object:
        """Check and store ``provider``'s receipt for the call; raise if it does not
        commit to it."""
        ...


class InvokeClient:
    """Calls models on other peers through ``host``: the remote side of ``Invoker``.

    Args:
        host: the local libp2p host.
        limits: sizes accepted in replies and used for requests.
        max_idle_streams: finished streams kept per peer for reuse.
        observe: told the outcome and duration of every call (simulations record them).
        accounts: checks and stores the receipt of each result, and sends the
            acknowledgements due; None: receipts are not looked at.
        calls: where each call made is recorded (the peer's, shared with its server);
            None: one of its own.
        clock: the wall clock (unix seconds) the recorded calls are dated by.
    """

    def __init__(
        self,
        host: StreamHost,
        *,
        limits: WireLimits = WireLimits(),
        max_idle_streams: int = 8,
        observe: CallObserver | None = None,
        accounts: CallerAccounts | None = None,
        calls: CallStats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self.calls = calls if calls is not None else CallStats(clock())
        self._accounts = accounts
        self._pool: StreamPool[MessageReader] = StreamPool(
            host, INVOKE_PROTOCOL, lambda: MessageReader(limits), max_idle=max_idle_streams
        )
        self._ids = itertools.count(1)
        self._observe = observe
        self.stats = ClientStats()

    async def invoke(
        self,
        peer: PeerAddress,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        timeout: float = 30.0,
        record: CapabilityRecord | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run ``model_id`` on ``peer`` with ``inputs``; return its named outputs.

        ``timeout`` (seconds) covers everything: dialling, sending, queueing and
        running on the peer, receiving. The peer is told the time left when the
        request leaves. ``record``: the record the call is made under, if known; the
        provider's receipt is checked against it (its hash and price).

        Every error about the peer (all but the inputs that cannot be sent) has
        ``peer`` set to it.

        Raises:
            InvalidInputError, PayloadTooLargeError: the inputs cannot be sent (before
                anything is sent), or the peer rejected them.
            UnknownModelError, InvalidModelIdError: the peer does not serve that model.
            ModelExecutionError, InternalPeerError, PeerBusyError: the peer failed.
            PeerUnreachableError: no connection to the peer.
            ConnectionLostError: the connection broke during the call.
            DeadlineExceededError: no reply within ``timeout``.
            ReplyTooLargeError: the reply is over ``limits`` (the peer's fault).
            RemoteProtocolError, LocalProtocolError: one side broke the protocol.
            ReceiptError: the provider's receipt does not verify or does not commit to
                the call (the outputs are not returned).
        """
        request_id = next(self._ids)
        accounts = self._accounts
        ack = accounts.acknowledgement_for(peer.peer_id) if accounts is not None else None

        def request(deadline_ms: int) -> Invoke:
            return Invoke(request_id, model_id, inputs, deadline_ms, ack)

        async def call() -> dict[str, npt.NDArray[Any]]:
            started = trio.current_time()
            reply = await self._call(peer, request, timeout, f"model {model_id}")
            result = self._reply(reply, Result, request_id, peer.peer_id)
            outputs = dict(result.outputs)
            if accounts is not None and result.receipt is not None:
                accounts.accept(
                    peer.peer_id,
                    model_id,
                    inputs,
                    outputs,
                    result.receipt,
                    wall_s=trio.current_time() - started,
                    record=record,
                )
            if accounts is not None and result.settle:
                accounts.asked_to_settle(peer.peer_id)
            return outputs

        name = record.name if record is not None else ""
        return await self._observed("invoke", call(), peer, model_id, name, inputs)

    async def forward(
        self, peer: PeerAddress, message: Forward, *, timeout: float = 30.0
    ) -> ForwardResult:
        """Send a forwarded pipeline to ``peer``, which runs its first hop and passes the
        rest on; returns what the last hop kept, with the trace of who ran what. The
        request ID and deadline are this call's, not ``message``'s.

        Raises:
            As ``invoke``; errors of later hops arrive as the error of their step.
        """
        request_id = next(self._ids)

        def request(deadline_ms: int) -> Forward:
            return Forward(request_id, message.hops, message.tensors, deadline_ms)

        accounts = self._accounts

        async def call() -> ForwardResult:
            started = trio.current_time()
            reply = await self._call(peer, request, timeout, f"step {message.hops[0].step!r}")
            result = self._reply(reply, ForwardResult, request_id, peer.peer_id)
            if accounts is not None and result.receipts:
                # The first receipt is the first hop's, to us: for what we sent and got.
                accounts.accept(
                    peer.peer_id,
                    message.hops[0].model_id,
                    message.tensors,
                    result.outputs,
                    result.receipts[0],
                    wall_s=trio.current_time() - started,
                )
            return result

        return await self._observed(
            "forward", call(), peer, message.hops[0].model_id, "", message.tensors
        )

    def generate(
        self,
        peer: PeerAddress,
        model_id: str,
        prompt: Prompt,
        params: GenerationParams | None = None,
        *,
        session: str | None = None,
        keep: bool = False,
        timeout: float = 60.0,
        record: CapabilityRecord | None = None,
    ) -> GenerationStream:
        """A streamed generation by ``model_id`` on ``peer``: iterate it for the reply's
        chunks (see GenerationStream); nothing is sent before the first iteration.

        ``session``: continue that session of ours on the peer; ``keep``: keep this
        conversation's cache there in a new session. ``timeout`` covers the whole reply.
        ``record``: the provider's record, if known; its receipt is checked against it,
        as ``invoke`` does.
        """
        request_id = next(self._ids)
        accounts = self._accounts
        ack = accounts.acknowledgement_for(peer.peer_id) if accounts is not None else None
        chosen = params or GenerationParams()
        return GenerationStream(
            self,
            peer,
            lambda deadline_ms: Generate(
                request_id, model_id, prompt, chosen, deadline_ms, session, keep, ack
            ),
            timeout,
            record,
        )

    async def close_session(
        self, peer: PeerAddress, model_id: str, session: str, *, timeout: float = 10.0
    ) -> None:
        """Drop our session ``session`` of ``model_id`` on ``peer``.

        Raises:
            UnknownSessionError: the peer holds no such session of ours (expired).
            As ``invoke`` for the network and the peer.
        """
        request_id = next(self._ids)
        reply = await self._call(
            peer,
            lambda _: CloseSession(request_id, model_id, session),
            timeout,
            f"closing session {session!r}",
        )
        self._reply(reply, Done, request_id, peer.peer_id)

    async def _observed(
        self,
        kind: str,
        call: Awaitable[_T],
        peer: PeerAddress,
        model_id: str,
        name: str,
        inputs: Mapping[str, Any],
    ) -> _T:
        """``await call``, counting it in ``stats`` and ``calls`` and telling ``observe``
        how it went (a cancelled call is none of them)."""
        started = trio.current_time()
        try:
            result = await call
        except P2PNetError as exc:
            seconds = trio.current_time() - started
            self._count(kind, seconds, exc.code)
            self._record(peer, model_id, name, exc.code, seconds, inputs, None)
            raise
        seconds = trio.current_time() - started
        self._count(kind, seconds, "")
        outputs = result.outputs if isinstance(result, ForwardResult) else result
        self._record(peer, model_id, name, "", seconds, inputs, cast("Mapping[str, Any]", outputs))
        return result

    def _count(self, kind: str, seconds: float, code: str) -> None:
        self.stats.calls += 1
        self.stats.seconds += seconds
        if code:
            self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        if self._observe is not None:
            self._observe(kind, not code, seconds, code)

    def _record(
        self,
        peer: PeerAddress,
        model_id: str,
        name: str,
        code: str,
        seconds: float,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any] | None,
    ) -> None:
        # Bytes are counted for results only (a failed call may have sent nothing).
        sent = tensor_bytes(inputs) if outputs is not None else 0
        received = tensor_bytes(outputs) if outputs is not None else 0
        self.calls.record(
            CallRecord(
                self._clock(),
                "made",
                model_id,
                name,
                call_task.get(),
                peer.peer_id,
                code,
                seconds,
                received,
                sent,
            )
        )

    async def _call(
        self, peer: PeerAddress, request: Callable[[int], Message], timeout: float, what: str
    ) -> Message:
        """Send ``request(deadline_ms)`` on a pooled stream to ``peer``; return the reply
        (an ErrorReply included: the stream stays usable after one).

        ``timeout`` (seconds) covers everything: dialling, sending, queueing and
        running on the peer, receiving. The peer is told the time left when the
        request leaves.
        """
        deadline = trio.current_time() + timeout
        # Encode up front: inputs that cannot be sent fail here, before any I/O. The
        # request carries the milliseconds left when it leaves: on a pooled stream that
        # is nearly always the same whole number, and these bytes go as they are.
        first_ms = max(1, math.ceil(timeout * 1000))
        first = encode_message(request(first_ms), self._limits)

        async def exchange(channel: Channel[MessageReader]) -> Message:
            remaining_ms = max(1, math.ceil((deadline - trio.current_time()) * 1000))
            if remaining_ms == first_ms:
                return await self._exchange(channel, first)
            encoded = encode_message(request(remaining_ms), self._limits)
            return await self._exchange(channel, encoded)

        with trio.move_on_at(deadline):
            try:
                return await self._pool.request(peer, exchange)
            except (NetworkError, RemoteProtocolError) as exc:
                if exc.peer is None:
                    exc.peer = peer.peer_id  # what broke is this peer, or the way to it
                raise
        raise DeadlineExceededError(
            f"no reply from peer {peer.peer_id} for {what} within {timeout:g} s",
            peer=peer.peer_id,
        )

    def _reply(
        self, reply: Message, expected: type[_ReplyT], request_id: int, peer_id: str
    ) -> _ReplyT:
        if isinstance(reply, ErrorReply):
            raise error_from_wire(reply.code, reply.message, peer_id)
        if not isinstance(reply, expected) or reply.request_id != request_id:
            raise RemoteProtocolError(
                f"peer {peer_id} answered request {request_id} with "
                f"{type(reply).__name__} {reply.request_id}",
                peer=peer_id,
            )
        return reply

    async def _exchange(self, channel: Channel[MessageReader], request: EncodedMessage) -> Message:
        """Send ``request`` and return the reply; a stream that cannot carry another call
        is marked out of step."""
        if not request.streamed:
            await write_message(channel.stream, request)
            reply = await self._read_reply(channel)
            if isinstance(reply, ErrorReply) and reply.request_id == 0:
                channel.in_step = False  # a message error: the peer ends the stream
            return reply
        # A large request: read while writing, so that a peer rejecting it early (too
        # large, unknown model) is heard at once instead of after the whole upload.
        sent = False
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                nonlocal sent
                try:
                    await write_message(channel.stream, request)
                    sent = True
                except ConnectionLostError:
                    pass  # the reader sees the same break, or the peer's reason for it

            nursery.start_soon(send)
            reply = await self._read_reply(channel)
            nursery.cancel_scope.cancel()
        channel.in_step = sent and not (isinstance(reply, ErrorReply) and reply.request_id == 0)
        return reply

    async def _read_reply(self, channel: Channel[MessageReader]) -> Message:
        try:
            reply = await read_message(channel.stream, channel.reader)
        except PayloadTooLargeError as exc:
            # Our request fitted the limits (it was encoded under them); a reply that does
            # not is the peer's fault, not the caller's.
            raise ReplyTooLargeError(
                f"peer {channel.stream.peer_id} sent a reply over the size limit: {exc.message}",
                peer=channel.stream.peer_id,
            ) from None
        if reply is None:
            raise ConnectionLostError(
                f"peer {channel.stream.peer_id} closed the stream without replying"
            )
        return reply

    async def aclose(self) -> None:
        """Close every idle stream."""
        await self._pool.aclose()


class GenerationStream:
    """The chunks of one streamed generation, as the provider produces them.

    ``async for chunk in stream`` yields each Chunk (text and token IDs); when the
    iteration ends, ``summary`` says how the reply ended. ``cancel()`` asks the provider
    to stop (it stops within one token; the iteration then ends with finish
    "cancelled"). Leaving early without cancelling (``aclose``, or the ``async with``
    block) resets the stream, which stops the provider too.

    Errors arrive from the iteration, as ``InvokeClient.invoke`` raises them; an error
    after some chunks leaves those chunks valid. With accounts, the provider's receipt
    is checked when the reply ends: one that does not commit to the call raises
    ReceiptError from the last step of the iteration.
    """

    def __init__(
        self,
        client: InvokeClient,
        peer: PeerAddress,
        request: Callable[[int], Generate],
        timeout: float,
        record: CapabilityRecord | None = None,
    ) -> None:
        self._client = client
        self.peer = peer
        self._request = request
        # Read once: every chunk is matched against it.
        self.request_id = request(1).request_id
        self._record = record
        self._tokens: list[int] = []
        self._timeout = timeout
        self._deadline: float | None = None
        self._channel: Channel[MessageReader] | None = None
        self._finished = False
        self._chunks = 0
        self.summary: GenerationSummary | None = None
        self.started_at: float | None = None
        self.first_chunk_at: float | None = None

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> Chunk:
        if self._finished:
            raise StopAsyncIteration
        if self._channel is None:
            await self._start()
        assert self._channel is not None and self._deadline is not None
        with trio.move_on_at(self._deadline):
            try:
                message = await self._client._read_reply(self._channel)
            except ConnectionLostError:
                if self._chunks or not self._channel.reused:
                    await self._abandon()
                    raise
                # A pooled stream the peer closed while it was idle: ask again on the
                # next one (as StreamPool.request does), a new one once none is left.
                await self._channel.stream.reset()
                self._channel = None
                return await self.__anext__()
            except BaseException as exc:
                await self._abandon()
                if isinstance(exc, NetworkError | RemoteProtocolError) and exc.peer is None:
                    exc.peer = self.peer.peer_id
                raise
            return await self._take(message)
        await self._abandon()
        raise DeadlineExceededError(
            f"the generation on peer {self.peer.peer_id} did not finish within {self._timeout:g} s",
            peer=self.peer.peer_id,
        )

    async def _take(self, message: Message) -> Chunk:
        request_id = self.request_id
        if isinstance(message, Chunk) and message.request_id == request_id:
            self._chunks += 1
            self._tokens.extend(message.tokens)
            if self.first_chunk_at is None:
                self.first_chunk_at = trio.current_time()
            return message
        if isinstance(message, Done) and message.request_id == request_id:
            self.summary = message.summary
            await self._finish()
            self._account(message)
            raise StopAsyncIteration
        if isinstance(message, ErrorReply) and message.request_id in (request_id, 0):
            if message.request_id == 0:  # the peer rejected the stream: it ends here
                await self._abandon()
            else:
                await self._finish()
            raise error_from_wire(message.code, message.message, self.peer.peer_id)
        await self._abandon()
        raise RemoteProtocolError(
            f"peer {self.peer.peer_id} answered generation {request_id} with "
            f"{type(message).__name__} {message.request_id}",
            peer=self.peer.peer_id,
        )

    def _account(self, done: Done) -> None:
        """Check and keep the provider's receipt for the reply, and note a request to
        settle.

        Raises:
            ReceiptError: the receipt does not verify or does not commit to this call
                (the request as sent and every token received).
        """
        accounts = self._client._accounts
        if accounts is None:
            return
        provider = self.peer.peer_id
        if done.receipt is not None:
            request = self._request(1)
            inputs, outputs = generation_tensors(request, self._tokens)
            started = self.started_at if self.started_at is not None else trio.current_time()
            accounts.accept(
                provider,
                request.model_id,
                inputs,
                outputs,
                done.receipt,
                wall_s=trio.current_time() - started,
                record=self._record,
            )
        if done.settle:
            accounts.asked_to_settle(provider)

    async def _start(self) -> None:
        if self._deadline is None:  # not again when a closed pooled stream is replaced
            self._deadline = trio.current_time() + self._timeout
            self.started_at = trio.current_time()
        pool = self._client._pool
        encode_message(self._request(1), self._client._limits)  # unsendable: fail first
        with trio.move_on_at(self._deadline):
            while True:
                channel = await pool.checkout(self.peer)
                remaining_ms = max(1, math.ceil((self._deadline - trio.current_time()) * 1000))
                encoded = encode_message(self._request(remaining_ms), self._client._limits)
                try:
                    await write_message(channel.stream, encoded)
                except ConnectionLostError as exc:
                    await channel.stream.reset()
                    if channel.reused:
                        continue  # the peer closed it while idle: a new stream
                    exc.peer = self.peer.peer_id
                    raise
                except BaseException:
                    await channel.stream.reset()
                    raise
                self._channel = channel
                return
        raise DeadlineExceededError(
            f"no stream to peer {self.peer.peer_id} within {self._timeout:g} s",
            peer=self.peer.peer_id,
        )

    async def cancel(self) -> None:
        """Ask the provider to stop; the iteration goes on to its Done (finish
        "cancelled", or how it ended if it ended first)."""
        if self._channel is None or self._finished:
            self._finished = True
            return
        try:
            await write_message(
                self._channel.stream,
                encode_message(Cancel(self.request_id), self._client._limits),
            )
        except ConnectionLostError:
            await self._abandon()

    async def text(self) -> str:
        """The rest of the reply's text, once it has all arrived."""
        return "".join([chunk.text async for chunk in self])

    async def aclose(self) -> None:
        """Stop listening: if the reply has not ended, the stream is reset (the provider
        stops generating)."""
        if not self._finished:
            await self._abandon()

    async def _finish(self) -> None:
        self._finished = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await self._client._pool.checkin(channel)

    async def _abandon(self) -> None:
        self._finished = True
        channel, self._channel = self._channel, None
        if channel is not None:
            with trio.CancelScope(shield=True):
                await channel.stream.reset()
