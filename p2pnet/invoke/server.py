"""The serving side of ``/p2pnet/invoke/1.0.0``: answer Invoke messages with model outputs.

One inbound stream carries any number of calls, one after another. A bad call
gets an error reply and the stream stays usable; bytes that break the framing
get an error reply and the stream is closed. Nothing a caller sends can stop the
server from serving others: the reader's limits (``WireLimits``) bound what a head
can make it build, heads of ``offload_head_bytes`` or more are decoded in a worker
thread instead of on the event loop, and error replies are cut to
``MAX_ERROR_MESSAGE_CHARS``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

import trio

from p2pnet.accounting import Admission, Issued
from p2pnet.core.address import PeerAddress
from p2pnet.core.callstats import OTHER, CallRecord, CallStats, tensor_bytes
from p2pnet.core.generation import MAX_CHUNK_TOKENS, GenerationSummary, coalesce_pieces
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
from p2pnet.errors import (
    ConnectionLostError,
    P2PNetError,
    PayloadTooLargeError,
    ProtocolError,
    RemoteProtocolError,
    UnknownSessionError,
    wire_code_for,
)
from p2pnet.invoke.local import LocalInvoker
from p2pnet.invoke.protocol import write_message
from p2pnet.net.interfaces import ByteStream
from p2pnet.runtime.served import RunShare, caller_priority, run_share

__all__ = ["MAX_ERROR_MESSAGE_CHARS", "InvokeServer", "ProviderAccounts", "ServerStats"]

log = logging.getLogger(__name__)

_R = TypeVar("_R")
# What a call without accounts gets: no receipt, nothing to settle.
NOT_ISSUED: Final = Issued(None, settle=False)

# Error messages may quote what the caller sent (names, shapes); never echo more.
MAX_ERROR_MESSAGE_CHARS: Final = 1024


@dataclass
class ServerStats:
    """Counters a running server keeps, for status output and tests; each call is also
    recorded in ``calls`` (by model, its latency and bytes: ``CallStats``).

    calls: calls answered (invoke, forward and streamed generations).
    errors: error replies by wire code, those to bytes that broke the protocol and to
        acknowledgements refused included (they are not calls of a model).
    """

    streams: int = 0
    calls: int = 0
    generations: int = 0
    tokens: int = 0
    cancelled: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class ProviderAccounts(Protocol):
    """What the server asks of a provider's accounting (``p2pnet.accounting.Accountant``)."""

    def admit(self, caller: str, model_id: str, inputs: Mapping[str, Any]) -> Admission:
        """Let the call in (what it holds of ``caller``'s credit, its priority), or
        raise CreditExceededError if ``caller`` may not call now."""
        ...

    def release(self, caller: str, held: int) -> None:
        """Let go of what ``admit`` held for a call that ended without a result."""
        ...

    def issue(
        self,
        caller: str,
        model_id: str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        run_s: float,
        held: int = 0,
    ) -> Issued:
        """The signed, stored receipt of a call, and whether the caller is asked to
        settle; releases what ``admit`` ``held``."""
        ...

    def take_acknowledgement(self, caller: str, envelope: bytes) -> None:
        """Keep ``caller``'s signed acknowledgement of what it owes."""
        ...


class InvokeServer:
    """Answers any peer that opens an invoke stream, running calls through ``local``.

    Args:
        local: runs the models this peer serves (and forwarded pipelines' hops), with
            their access lists.
        limits: sizes accepted from callers and used for replies.
        idle_timeout: seconds a stream may wait for its next message before it is closed.
        drain_timeout: seconds to read and drop what a caller still sends after bytes
            that broke the protocol, so that it sees the error reply.
        offload_head_bytes: message heads of this many bytes or more are decoded in a
            worker thread (a 4 MiB head of string tensors takes ~20 ms to decode).
        accounts: admits callers by credit and signs a usage receipt for each result;
            None: results carry no receipt.
        calls: where each call answered is recorded (the peer's, shared with its
            client); None: one of its own.
        clock: the wall clock (unix seconds) the recorded calls are dated by.
    """

    def __init__(
        self,
        local: LocalInvoker,
        *,
        limits: WireLimits = WireLimits(),
        idle_timeout: float = 300.0,
        drain_timeout: float = 2.0,
        offload_head_bytes: int = 64 << 10,
        accounts: ProviderAccounts | None = None,
        calls: CallStats | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.local = local
        self.accounts = accounts
        self._clock = clock
        self.calls = calls if calls is not None else CallStats(clock())
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self.offload_head_bytes = offload_head_bytes
        self.stats = ServerStats()
        self._here = PeerAddress(local.peer_id)

    async def handle_stream(self, stream: ByteStream) -> None:
        """Answer calls on ``stream`` until the caller closes it or breaks the protocol."""
        self.stats.streams += 1
        reader = MessageReader(self.limits)
        # What was read while a generation ran: the next request, the end of the
        # stream (None), or why reading failed.
        read_ahead: list[Message | P2PNetError | None] = []
        while True:
            try:
                if read_ahead:
                    ahead = read_ahead.pop()
                    if isinstance(ahead, P2PNetError):
                        raise ahead
                    if ahead is None:  # the caller closed its side during a generation
                        await stream.close()
                        return
                    message: Message | None = ahead
                else:
                    message = await self._read_request(stream, reader, self.idle_timeout)
                if message is None:  # closed by the caller, or idle too long
                    return
            except (ProtocolError, PayloadTooLargeError) as exc:
                self.stats.count_error(wire_code_for(exc))
                log.info("invoke stream from %s broke the protocol: %s", stream.peer_id, exc)
                await self._reject_stream(stream, exc)
                return
            except ConnectionLostError as exc:
                log.debug("invoke stream from %s: %s", stream.peer_id, exc)
                await stream.reset()
                return
            if isinstance(message, Cancel):
                continue  # its generation has ended already
            if isinstance(message, Generate):
                if not await self._generate(stream, reader, message, read_ahead):
                    await stream.reset()
                    return
                continue
            reply = await self.answer(message, stream.peer_id)
            try:
                await write_message(stream, self._encode_reply(reply))
            except ConnectionLostError as exc:
                log.debug("caller %s went away before its reply: %s", stream.peer_id, exc)
                await stream.reset()
                return

    async def _generate(
        self,
        stream: ByteStream,
        reader: MessageReader,
        request: Generate,
        read_ahead: list[Message | P2PNetError | None],
    ) -> bool:
        """Stream the reply to ``request``: Chunk messages, then Done or ErrorReply.

        While it runs, the stream is read for the caller's Cancel; what else is read
        (the next request, the end of the stream, an error) is put in ``read_ahead``.
        The stream breaking, or bytes that break the protocol, cancel the generation.
        False if the reply could not be written (the caller went away).
        """
        cancel = trio.Event()
        watched = trio.Event()
        caller = stream.peer_id
        # Reading stops after the next request: reads are never cancelled half-way.
        idle = self.idle_timeout + request.deadline_ms / 1000

        async def watch() -> None:
            try:
                while True:
                    message = await self._read_request(stream, reader, idle, close_at_end=False)
                    if isinstance(message, Cancel):
                        if message.request_id == request.request_id:
                            cancel.set()
                        continue
                    read_ahead.append(message)
                    return
            except P2PNetError as exc:  # broken stream or protocol: nobody is listening
                read_ahead.append(exc)
                cancel.set()
            finally:
                watched.set()

        produced: list[int] = []
        writer = _ChunkWriter(stream, request.request_id, self.limits, cancel)

        async def emit(text: str, tokens: list[int]) -> None:
            self.stats.tokens += len(tokens)
            produced.extend(tokens)
            # Returns at once, without yielding: the next step starts first, and the
            # chunk is written while it runs.
            writer.send(text, tokens)

        self.stats.calls += 1
        self.stats.generations += 1
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            nursery.start_soon(writer.run)
            try:
                try:
                    model = self.local.generative(request.model_id, caller)
                    if self.accounts is not None and request.ack is not None:
                        self._take_acknowledgement(self.accounts, caller, request.ack)

                    async def run(priority: int) -> GenerationSummary:
                        # Under load, decoding steps are admitted by the caller's standing.
                        token = caller_priority.set(priority)
                        try:
                            return await model.generate(
                                request.prompt,
                                request.params,
                                emit,
                                caller=caller,
                                session=request.session,
                                keep=request.keep,
                                cancelled=cancel.is_set,
                                timeout=min(request.deadline_ms / 1000, self.local.max_deadline),
                            )
                        finally:
                            caller_priority.reset(token)

                    summary, issued = await self._accounted(
                        caller,
                        request.model_id,
                        generation_tensors(request, ())[0],
                        run,
                        lambda _: generation_tensors(request, produced)[1],
                    )
                    if summary.finish == "cancelled":
                        self.stats.cancelled += 1
                    reply: Done | ErrorReply = Done(
                        request.request_id, summary, issued.envelope, issued.settle
                    )
                except ConnectionLostError:
                    raise
                except P2PNetError as exc:
                    log.debug("generation %d from %s failed: %s", request.request_id, caller, exc)
                    reply = self._error_reply(request.request_id, exc)
                except Exception as exc:
                    log.exception("generation %d from %s hit a bug", request.request_id, caller)
                    reply = ErrorReply(
                        request.request_id, "internal", _bounded(f"internal error: {exc!r}")
                    )
                self._record(
                    request.model_id,
                    caller,
                    reply.code if isinstance(reply, ErrorReply) else "",
                    trio.current_time() - started,
                )
                await writer.finish(reply)
            except ConnectionLostError as exc:
                log.debug("caller %s went away during a generation: %s", caller, exc)
                nursery.cancel_scope.cancel()
                return False
            await watched.wait()
        return True

    async def answer(
        self, message: Message, caller: str
    ) -> Result | ForwardResult | Done | ErrorReply:
        """The reply to one message from ``caller``: a Result (ForwardResult for a
        Forward, Done for a CloseSession) or an ErrorReply."""
        if isinstance(message, CloseSession):
            return self._close_session(message, caller)
        if not isinstance(message, Invoke | Forward):
            return self._error_reply(
                message.request_id,
                RemoteProtocolError(f"expected an invoke message, got {type(message).__name__}"),
            )
        self.stats.calls += 1
        started = trio.current_time()
        reply = await self._answer_call(message, caller)
        seconds = trio.current_time() - started
        if isinstance(message, Forward):
            model_id, inputs = message.hops[0].model_id, message.tensors
        else:
            model_id, inputs = message.model_id, message.inputs
        if isinstance(reply, ErrorReply):  # bytes are counted for results only
            self._record(model_id, caller, reply.code, seconds)
        else:
            received, sent = tensor_bytes(inputs), tensor_bytes(reply.outputs)
            self._record(model_id, caller, "", seconds, received, sent)
        return reply

    def _record(
        self,
        model_id: str,
        caller: str,
        code: str,
        seconds: float,
        received: int = 0,
        sent: int = 0,
    ) -> None:
        # Calls of models not served here are counted under "other": callers choose
        # those IDs, and must not fill the labels.
        model = self.local.models.get(model_id)
        self.calls.record(
            CallRecord(
                self._clock(),
                "served",
                model_id,
                model.info.name if model is not None else "",
                None,
                caller,
                code,
                seconds,
                received,
                sent,
            ),
            counted_as=None if model is not None else OTHER,
        )

    async def _answer_call(
        self, message: Invoke | Forward, caller: str
    ) -> Result | ForwardResult | ErrorReply:
        timeout = message.deadline_ms / 1000
        try:
            if isinstance(message, Forward):
                return await self._forward(message, caller, timeout)
            if self.accounts is not None and message.ack is not None:
                self._take_acknowledgement(self.accounts, caller, message.ack)

            async def run(priority: int) -> dict[str, Any]:
                # Under load, the model admits waiting calls by their callers' standing.
                token = caller_priority.set(priority)
                try:
                    return await self.local.invoke(
                        self._here, message.model_id, message.inputs, timeout=timeout, caller=caller
                    )
                finally:
                    caller_priority.reset(token)

            outputs, issued = await self._accounted(
                caller, message.model_id, message.inputs, run, lambda outputs: outputs
            )
            return Result(message.request_id, outputs, issued.envelope, issued.settle)
        except P2PNetError as exc:
            log.debug("call %d from %s failed: %s", message.request_id, caller, exc)
            return self._error_reply(message.request_id, exc)
        except Exception as exc:
            log.exception("call %d from %s hit a bug", message.request_id, caller)
            return ErrorReply(message.request_id, "internal", _bounded(f"internal error: {exc!r}"))

    def _close_session(self, message: CloseSession, caller: str) -> Done | ErrorReply:
        try:
            model = self.local.generative(message.model_id, caller)
            if not model.sessions.close(message.session, caller):
                raise UnknownSessionError(f"no session {message.session!r} of yours here")
        except P2PNetError as exc:
            return self._error_reply(message.request_id, exc)
        return Done(message.request_id, GenerationSummary("closed", 0, 0, 0, message.session))

    async def _forward(self, message: Forward, caller: str, timeout: float) -> ForwardResult:
        """Run a forwarded pipeline's first hop here and pass the rest on; with accounts,
        the reply carries this hop's receipt to ``caller`` before the later hops' (each
        issued to the peer that forwarded to it)."""

        async def run(priority: int) -> ForwardResult:
            return await self.local.forward(self._here, message, timeout=timeout, caller=caller)

        result, issued = await self._accounted(
            caller, message.hops[0].model_id, message.tensors, run, lambda r: r.outputs
        )
        if issued.envelope is None:
            return result
        return dataclasses.replace(result, receipts=(issued.envelope, *result.receipts))

    async def _accounted(
        self,
        caller: str,
        model_id: str,
        inputs: Mapping[str, Any],
        run: Callable[[int], Awaitable[_R]],
        outputs_of: Callable[[_R], Mapping[str, Any]],
    ) -> tuple[_R, Issued]:
        """``run(priority)`` for ``caller``, accounted: admitted by its credit before,
        its receipt issued after (what admission held is released if the run fails).
        Without accounts, priority 0 and no receipt."""
        accounts = self.accounts
        if accounts is None:
            return await run(0), NOT_ISSUED
        admission = accounts.admit(caller, model_id, inputs)
        started = trio.current_time()
        share = RunShare()
        token = run_share.set(share)
        try:
            result = await run(admission.priority)
        except BaseException:
            accounts.release(caller, admission.held)
            raise
        finally:
            run_share.reset(token)
        # A batched model tells this call's share of its batch's run; others, its time.
        run_s = trio.current_time() - started if share.seconds is None else share.seconds
        issued = accounts.issue(caller, model_id, inputs, outputs_of(result), run_s, admission.held)
        return result, issued

    def _take_acknowledgement(
        self, accounts: ProviderAccounts, caller: str, envelope: bytes
    ) -> None:
        """Keep ``caller``'s acknowledgement; one that does not verify is logged and
        dropped: the call it came with is still answered (the caller is then treated as
        one that has not acknowledged)."""
        try:
            accounts.take_acknowledgement(caller, envelope)
        except P2PNetError as exc:
            self.stats.count_error(exc.code)
            log.info("acknowledgement from %s refused: %s", caller, exc)

    async def _read_request(
        self,
        stream: ByteStream,
        reader: MessageReader,
        idle_timeout: float,
        *,
        close_at_end: bool = True,
    ) -> Message | None:
        """As ``p2pnet.net.channels.read_request``, but a head of ``offload_head_bytes``
        or more is decoded in a worker thread, so that other callers are served while
        it is decoded (decoding releases the GIL every few milliseconds). At the end of
        the stream, or after ``idle_timeout`` seconds without a request, the stream is
        closed unless ``close_at_end`` is false (a reply is still being written).

        Raises:
            As read_request.
        """
        message: Message | None = None
        with trio.move_on_after(idle_timeout) as idle:
            while True:
                if reader.ready_head_size >= self.offload_head_bytes > 0:
                    message = await trio.to_thread.run_sync(reader.next_message)
                else:
                    message = reader.next_message()
                if message is not None:
                    return message
                data = await stream.read()
                if not data:
                    if reader.at_message_boundary:
                        break
                    raise ConnectionLostError(
                        f"peer {stream.peer_id} closed the stream in the middle of a message"
                    )
                reader.receive_data(data)
        if idle.cancelled_caught:
            log.debug("closing a stream from %s idle for %.0f s", stream.peer_id, idle_timeout)
        if close_at_end:  # else a reply is still being written: the caller closes later
            await stream.close()
        return None

    def _error_reply(self, request_id: int, exc: P2PNetError) -> ErrorReply:
        code = wire_code_for(exc)
        self.stats.count_error(code)
        return ErrorReply(request_id, code, _bounded(exc.message))

    def _encode_reply(self, reply: Result | ForwardResult | Done | ErrorReply) -> EncodedMessage:
        try:
            return encode_message(reply, self.limits)
        except P2PNetError as exc:
            return encode_message(
                self._error_reply(
                    reply.request_id,
                    type(exc)(f"the model's outputs cannot be sent: {exc.message}"),
                ),
                self.limits,
            )

    async def _reject_stream(self, stream: ByteStream, exc: P2PNetError) -> None:
        """Tell the caller why, then end the stream: its framing can no longer be trusted.

        The caller may still be sending; its data is read and dropped for up to
        ``drain_timeout`` seconds so that it sees our error instead of a reset.
        """
        reply = ErrorReply(0, wire_code_for(exc), _bounded(exc.message))
        try:
            await write_message(stream, encode_message(reply, self.limits))
            with trio.move_on_after(self.drain_timeout):
                while await stream.read():
                    pass
        except ConnectionLostError:
            pass
        await stream.reset()


class _ChunkWriter:
    """Writes a generation's chunks while the model computes the next token: ``send``
    queues a piece and returns; ``run`` (a task) writes what is queued, the pieces that
    piled up during a write as one Chunk (at most ``MAX_CHUNK_TOKENS`` tokens); ``finish``
    writes the last message after every chunk. A write that fails sets ``cancel``, so
    the generation stops, and ``send``/``finish`` then raise ConnectionLostError."""

    def __init__(
        self, stream: ByteStream, request_id: int, limits: WireLimits, cancel: trio.Event
    ) -> None:
        self._stream = stream
        self._request_id = request_id
        self._limits = limits
        self._cancel = cancel
        self._send, self._receive = trio.open_memory_channel[tuple[str, list[int]]](math.inf)
        self._done = trio.Event()
        self._broken: ConnectionLostError | None = None

    def send(self, text: str, tokens: list[int]) -> None:
        """Queue a piece of the reply.

        Raises:
            ConnectionLostError: an earlier write failed (the caller is gone).
        """
        if self._broken is not None:
            raise self._broken
        self._send.send_nowait((text, tokens))

    async def run(self) -> None:
        try:
            async for first in self._receive:
                pieces = [first]
                while True:
                    try:
                        pieces.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                for text, tokens in coalesce_pieces(pieces, MAX_CHUNK_TOKENS):
                    chunk = Chunk(self._request_id, text, tokens)
                    await write_message(self._stream, encode_message(chunk, self._limits))
        except ConnectionLostError as exc:
            self._broken = exc
            self._cancel.set()
        finally:
            self._done.set()

    async def finish(self, last: Done | ErrorReply) -> None:
        """Write ``last`` once every queued chunk is written.

        Raises:
            ConnectionLostError: a write failed.
        """
        self._send.close()
        await self._done.wait()
        if self._broken is not None:
            raise self._broken
        await write_message(self._stream, encode_message(last, self._limits))


def _bounded(message: str) -> str:
    if len(message) <= MAX_ERROR_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_ERROR_MESSAGE_CHARS]}… ({len(message)} characters)"
