"""The serving side of ``/p2pnet/invoke/1.0.0``: answer Invoke messages with model outputs.

One inbound stream carries any number of calls, one after another. A bad call
gets an error reply and the stream stays usable; bytes that break the framing
get an error reply and the stream is closed. Nothing a caller sends can stop the
server from serving others.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import trio

from p2pnet.access import AccessPolicy
from p2pnet.core.messages import (
    EncodedMessage,
    ErrorReply,
    Forward,
    ForwardResult,
    Invoke,
    Message,
    MessageReader,
    Result,
    TraceEntry,
    WireLimits,
    encode_message,
)
from p2pnet.core.model_id import parse_model_id
from p2pnet.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    InvalidInputError,
    P2PNetError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProtocolError,
    RemoteProtocolError,
    UnknownModelError,
    wire_code_for,
)
from p2pnet.invoke.protocol import write_message
from p2pnet.net.channels import read_request
from p2pnet.net.interfaces import ByteStream
from p2pnet.runtime.served import ServedModel

__all__ = ["InvokeServer", "ServerStats"]

log = logging.getLogger(__name__)

# Sends a Forward on to the first provider of its first hop that answers.
Forwarder = Callable[[Forward], Awaitable[ForwardResult]]


@dataclass
class ServerStats:
    """Counters a running server keeps, for status output and tests."""

    streams: int = 0
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class InvokeServer:
    """Serves ``models`` (model ID -> model) to any peer that opens an invoke stream.

    Args:
        models: the served models; the mapping may change while serving.
        limits: sizes accepted from callers and used for replies.
        max_deadline: cap, in seconds, on the deadline a caller may ask for.
        idle_timeout: seconds a stream may wait for its next message before it is closed.
        local_peer_id: this peer's ID, for the trace of forwarded pipelines.
        forwarder: passes forwarded pipelines on to their next hop; None refuses to
            forward (a pipeline whose last hop is here still runs).
        access: per-model access lists (p2pnet.access); None serves every model to all.
    """

    def __init__(
        self,
        models: Mapping[str, ServedModel],
        *,
        limits: WireLimits = WireLimits(),
        max_deadline: float = 300.0,
        idle_timeout: float = 300.0,
        drain_timeout: float = 2.0,
        local_peer_id: str = "",
        forwarder: Forwarder | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        self.models = models
        self.limits = limits
        self.max_deadline = max_deadline
        self.idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self.local_peer_id = local_peer_id
        self.forwarder = forwarder
        self.access = access
        self.stats = ServerStats()

    async def handle_stream(self, stream: ByteStream) -> None:
        """Answer calls on ``stream`` until the caller closes it or breaks the protocol."""
        self.stats.streams += 1
        reader = MessageReader(self.limits)
        while True:
            try:
                message: Message | None = await read_request(stream, reader, self.idle_timeout)
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
            reply = await self.answer(message, stream.peer_id)
            try:
                await write_message(stream, self._encode_reply(reply))
            except ConnectionLostError as exc:
                log.debug("caller %s went away before its reply: %s", stream.peer_id, exc)
                await stream.reset()
                return

    async def answer(
        self, message: Message, caller: str
    ) -> Result | ForwardResult | ErrorReply:
        """The reply to one message from ``caller``: a Result (ForwardResult for a
        Forward) or an ErrorReply."""
        if not isinstance(message, Invoke | Forward):
            return self._error_reply(
                message.request_id,
                RemoteProtocolError(f"expected an invoke message, got {type(message).__name__}"),
            )
        self.stats.calls += 1
        try:
            if isinstance(message, Forward):
                return await self._forward(message, caller)
            model = self._model(message.model_id, caller)
            timeout = min(message.deadline_ms / 1000, self.max_deadline)
            return Result(message.request_id, await model.run(message.inputs, timeout=timeout))
        except P2PNetError as exc:
            log.debug("call %d from %s failed: %s", message.request_id, caller, exc)
            return self._error_reply(message.request_id, exc)
        except Exception as exc:
            log.exception("call %d from %s hit a bug", message.request_id, caller)
            return ErrorReply(message.request_id, "internal", f"internal error: {exc!r}")

    async def _forward(self, message: Forward, caller: str) -> ForwardResult:
        """Run the first hop here, then hand the rest to the forwarder."""
        hop, *rest = message.hops
        deadline = trio.current_time() + min(message.deadline_ms / 1000, self.max_deadline)
        missing = [t for t in hop.inputs.values() if t not in message.tensors]
        if missing:
            raise InvalidInputError(
                f"step {hop.step!r} takes tensor {missing[0]!r}, which the request does not carry"
            )
        try:
            model = self._model(hop.model_id, caller)
        except PermissionDeniedError as exc:
            raise PermissionDeniedError(f"step {hop.step!r}: {exc.message}") from None
        started = trio.current_time()
        try:
            outputs = await model.run(
                {name: message.tensors[t] for name, t in hop.inputs.items()},
                timeout=deadline - started,
            )
        except P2PNetError as exc:
            raise type(exc)(f"step {hop.step!r}: {exc.message}") from None
        own = TraceEntry(
            hop.step, model.model_id, self.local_peer_id, (trio.current_time() - started) * 1000
        )
        available = {**message.tensors, **{f"{hop.step}.{k}": v for k, v in outputs.items()}}
        unknown = [name for name in hop.keep if name not in available]
        if unknown:
            raise InvalidInputError(
                f"step {hop.step!r} is to pass on {unknown[0]!r}, which no earlier step produced"
            )
        kept = {name: available[name] for name in hop.keep}
        if not rest:
            return ForwardResult(message.request_id, kept, (own,))
        if self.forwarder is None:
            raise UnknownModelError("this peer does not forward pipelines to other peers")
        remaining_ms = math.ceil((deadline - trio.current_time()) * 1000)
        if remaining_ms <= 0:
            raise DeadlineExceededError(
                f"the deadline passed at step {hop.step!r}, before step {rest[0].step!r}"
            )
        downstream = await self.forwarder(
            Forward(message.request_id, tuple(rest), kept, remaining_ms)
        )
        return ForwardResult(message.request_id, downstream.outputs, (own, *downstream.trace))

    def _model(self, model_id: str, caller: str) -> ServedModel:
        model = self.models.get(model_id)
        if model is None:
            canonical = parse_model_id(model_id)  # raises InvalidModelIdError for non-IDs
            model = self.models.get(canonical)
        if model is not None:
            if self.access is not None:
                self.access.check(model.model_id, caller, model.info.name)
            return model
        visible = [
            (mid, m)
            for mid, m in self.models.items()
            if self.access is None or self.access.permits(mid, caller)
        ]
        served = ", ".join(f"{m.info.name} {mid}" for mid, m in visible[:5])
        raise UnknownModelError(
            f"this peer does not serve model {canonical}; it serves: {served or 'nothing'}"
        )

    def _error_reply(self, request_id: int, exc: P2PNetError) -> ErrorReply:
        code = wire_code_for(exc)
        self.stats.count_error(code)
        return ErrorReply(request_id, code, exc.message)

    def _encode_reply(self, reply: Result | ForwardResult | ErrorReply) -> EncodedMessage:
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
        reply = ErrorReply(0, wire_code_for(exc), exc.message)
        try:
            await write_message(stream, encode_message(reply, self.limits))
            with trio.move_on_after(self.drain_timeout):
                while await stream.read():
                    pass
        except ConnectionLostError:
            pass
        await stream.reset()
