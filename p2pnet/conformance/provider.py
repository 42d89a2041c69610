"""``--as-provider``: a serving peer that judges what a client under test sends it.

``ClientObserver`` is pure: it is handed the bytes each invoke and describe stream
carries, both ways, decodes them with readers of its own and keeps the first breach of
each client rule (``checks.CLIENT_CHECKS``). ``ObservingHost`` wraps the host of a real
peer so that every inbound invoke and describe stream is shown to the observer; the
peer serves the client as usual. ``write_identity_model`` writes the small model such a
peer serves when given none.
"""

from __future__ import annotations

from pathlib import Path

from p2pnet.conformance.checks import CLIENT_CHECKS, Outcome, Verdict
from p2pnet.core.describe import DescribeReader, DescribeRequest
from p2pnet.core.messages import (
    Cancel,
    CloseSession,
    Done,
    ErrorReply,
    Forward,
    ForwardResult,
    Generate,
    Invoke,
    MessageReader,
    Result,
)
from p2pnet.errors import P2PNetError
from p2pnet.net.interfaces import ByteStream, ByteStreamHandler, HostWrapper, StreamHost

__all__ = [
    "DEADLINE_CAP_MS",
    "ClientObserver",
    "ObservingHost",
    "write_identity_model",
]

INVOKE = "/p2pnet/invoke/1.0.0"
DESCRIBE = "/p2pnet/describe/1.0.0"
DEADLINE_CAP_MS = 3_600_000  # the longest deadline_ms a caller should send (Constants)
_REQUESTS = (Invoke, Forward, Generate, Cancel, CloseSession)
_REPLY_ENDS = (Result, ErrorReply, Done, ForwardResult)


class ClientObserver:
    """The client rules, judged on every stream a client opened to this peer."""

    def __init__(self) -> None:
        self.breaches: dict[str, str] = {}  # check name -> the first breach seen
        self.requests = {"invoke": 0, "describe": 0}

    def breach(self, check: str, detail: str) -> None:
        self.breaches.setdefault(check, detail)

    def invoke_stream(self) -> InvokeStreamObserver:
        return InvokeStreamObserver(self)

    def describe_stream(self) -> DescribeStreamObserver:
        return DescribeStreamObserver(self)

    def verdicts(self) -> list[Verdict]:
        """A verdict per client check: fail with its first breach, skip when the client
        sent nothing on that protocol, pass otherwise."""
        verdicts = []
        for name, check in CLIENT_CHECKS.items():
            if name in self.breaches:
                verdicts.append(Verdict(check, Outcome.FAIL, self.breaches[name]))
            elif self.requests[check.protocol] == 0:
                why = f"the client sent no {check.protocol} request"
                verdicts.append(Verdict(check, Outcome.SKIP, why))
            else:
                seen = f"{self.requests[check.protocol]} request(s)"
                verdicts.append(Verdict(check, Outcome.PASS, seen))
        return verdicts


class InvokeStreamObserver:
    """One invoke stream: what the client sent (``received``) and the replies (``sent``)."""

    def __init__(self, observer: ClientObserver) -> None:
        self._observer = observer
        self._requests = MessageReader()
        self._replies = MessageReader()
        self._broken = False
        self._awaiting_reply: int | None = None  # the id of a request not yet answered

    def received(self, data: bytes) -> None:
        if self._broken or not data:
            return
        o = self._observer
        try:
            self._requests.receive_data(data)
            while (message := self._requests.next_message()) is not None:
                o.requests["invoke"] += 1
                if not isinstance(message, _REQUESTS):
                    kind = type(message).__name__
                    o.breach("client-invoke-requests", f"the client sent a {kind}")
                    continue
                request_id = message.request_id
                if not isinstance(message, Cancel):
                    if self._awaiting_reply is not None:
                        o.breach(
                            "client-invoke-one-at-a-time",
                            f"request {request_id} sent before the reply to "
                            f"{self._awaiting_reply} ended",
                        )
                    self._awaiting_reply = request_id
                if request_id == 0:
                    o.breach("client-invoke-id-nonzero", "a request with id 0")
                deadline = getattr(message, "deadline_ms", 0)
                if deadline > DEADLINE_CAP_MS:
                    o.breach("client-invoke-deadline", f"deadline_ms {deadline}")
        except P2PNetError as exc:
            self._broken = True
            o.breach("client-invoke-decodes", f"{exc.code}: {exc.message}")

    def sent(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._replies.receive_data(data)
            while (message := self._replies.next_message()) is not None:
                if isinstance(message, _REPLY_ENDS):
                    self._awaiting_reply = None
        except P2PNetError:
            self._broken = True  # our own replies: nothing to judge the client by


class DescribeStreamObserver:
    def __init__(self, observer: ClientObserver) -> None:
        self._observer = observer
        self._reader = DescribeReader()
        self._broken = False

    def received(self, data: bytes) -> None:
        if self._broken or not data:
            return
        o = self._observer
        try:
            self._reader.receive_data(data)
            while (message := self._reader.next_message()) is not None:
                o.requests["describe"] += 1
                if not isinstance(message, DescribeRequest):
                    kind = type(message).__name__
                    o.breach("client-describe-decodes", f"the client sent a {kind}")
                elif not message.models and not message.tasks:
                    o.breach("client-describe-filter", "a request with both filters empty")
        except P2PNetError as exc:
            self._broken = True
            o.breach("client-describe-decodes", f"{exc.code}: {exc.message}")

    def sent(self, data: bytes) -> None:
        del data  # describe replies need no watching


class _ObservedStream:
    """A server's stream whose traffic, both ways, is shown to an observer."""

    def __init__(
        self, stream: ByteStream, observer: InvokeStreamObserver | DescribeStreamObserver
    ) -> None:
        self._stream = stream
        self._observer = observer

    @property
    def peer_id(self) -> str:
        return self._stream.peer_id

    async def read(self) -> bytes:
        data = await self._stream.read()
        self._observer.received(data)
        return data

    async def write(self, data: bytes) -> None:
        self._observer.sent(data)
        await self._stream.write(data)

    async def close(self) -> None:
        await self._stream.close()

    async def reset(self) -> None:
        await self._stream.reset()


class ObservingHost(HostWrapper):
    """A host whose inbound invoke and describe streams ``observer`` watches."""

    def __init__(self, host: StreamHost, observer: ClientObserver) -> None:
        super().__init__(host)
        self.observer = observer

    def set_stream_handler(self, protocol: str, handler: ByteStreamHandler) -> None:
        if protocol == INVOKE:
            make = self.observer.invoke_stream
        elif protocol == DESCRIBE:
            make = self.observer.describe_stream  # type: ignore[assignment]
        else:
            super().set_stream_handler(protocol, handler)
            return

        async def observed(stream: ByteStream) -> None:
            await handler(_ObservedStream(stream, make()))

        super().set_stream_handler(protocol, observed)


def write_identity_model(path: Path) -> Path:
    """Write an ONNX model ``y = x`` (float32 [n]) to ``path``: what ``--as-provider``
    serves when given no model. Loads onnx."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "conformance-identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
