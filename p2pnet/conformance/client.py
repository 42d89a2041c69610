"""``run_checks``: the conformance checks of a serving peer, run as a client over any
``StreamHost`` (a libp2p host, or the in-memory network in tests).

Every check opens its own stream, so one that leaves a stream broken costs no other.
A protocol the peer does not speak has its checks skipped with that reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import trio

from p2pnet.conformance import checks as c
from p2pnet.conformance.golden import load_vectors
from p2pnet.core.address import PeerAddress, transport_part
from p2pnet.core.describe import DescribeReader, DescribeRequest, encode_describe_message
from p2pnet.core.generation import GenerationParams, Prompt
from p2pnet.core.kad.wire import KadMessage, KadMessageReader, KadPeer, MessageType
from p2pnet.core.kad.wire import encode_kad_message as encode_kad
from p2pnet.core.messages import (
    Cancel,
    Chunk,
    Forward,
    Generate,
    Hop,
    Invoke,
    MessageReader,
    encode_message,
)
from p2pnet.core.peer_id import peer_id_from_public_key
from p2pnet.core.records import CapabilityRecord
from p2pnet.errors import (
    ConnectionLostError,
    PayloadTooLargeError,
    PeerUnreachableError,
    RemoteProtocolError,
)
from p2pnet.net.channels import MessageSource, read_message
from p2pnet.net.interfaces import ByteStream, StreamHost

__all__ = ["DESCRIBE", "INVOKE", "KAD", "run_checks"]

INVOKE = "/p2pnet/invoke/1.0.0"
DESCRIBE = "/p2pnet/describe/1.0.0"
KAD = "/p2pnet/kad/1.0.0"
_PROTOCOLS = {"invoke": INVOKE, "describe": DESCRIBE, "kad": KAD}
_VECTOR_FILES = {"invoke": "invoke_v1", "describe": "describe_v1", "kad": "kad_v1"}


def _reader(protocol: str) -> MessageSource[Any]:
    if protocol == "invoke":
        return MessageReader()
    if protocol == "describe":
        return DescribeReader()
    return KadMessageReader()


class _Runner:
    def __init__(
        self, host: StreamHost, peer: PeerAddress, timeout: float, now: Callable[[], float]
    ) -> None:
        self.host = host
        self.peer = peer
        self.timeout = timeout
        self.now = now
        self.unspoken: dict[str, str] = {}  # protocol -> why it could not be opened

    async def open(self, protocol: str) -> ByteStream | None:
        if protocol in self.unspoken:
            return None
        try:
            return await self.host.open_stream(self.peer, _PROTOCOLS[protocol])
        except PeerUnreachableError as exc:
            self.unspoken[protocol] = exc.message
            return None

    async def send(
        self, stream: ByteStream, reader: MessageSource[Any], data: bytes, *, end: bool = False
    ) -> c.Exchange:
        """Write ``data`` if any (then close this side if ``end``) and read one message."""
        try:
            if data:
                await stream.write(data)
        except ConnectionLostError:
            pass  # the peer may have ended the stream already: the read says how
        if end:
            await stream.close()
        with trio.move_on_after(self.timeout):
            try:
                message = await read_message(stream, reader)
            except ConnectionLostError:
                return c.Exchange(ending="reset")
            except (RemoteProtocolError, PayloadTooLargeError) as exc:
                return c.Exchange(unreadable=exc.message)
            if message is None:
                return c.Exchange(ending="closed")
            return c.Exchange(reply=message)
        return c.Exchange(ending="timeout")

    async def run_case(self, case: c.Case) -> c.Verdict:
        protocol = case.check.protocol
        stream = await self.open(protocol)
        if stream is None:
            return self.skip(case.check)
        try:
            reader = _reader(protocol)
            first = await self.send(stream, reader, case.request)
            after = None
            rule = case.expect.get("after", "any")
            if rule == "usable" and first.reply is not None:
                after = await self.send(stream, reader, case.follow_up)
            elif rule == "ends":
                # The next request, and this side's end: a conforming peer answers neither.
                after = await self.send(stream, _reader(protocol), case.follow_up, end=True)
            return c.judge_case(case, c.Observed(first, after))
        finally:
            await stream.reset()

    async def one(self, protocol: str, *requests: bytes) -> c.Exchange | None:
        """Send ``requests`` on a new stream, reading a message after the last only."""
        stream = await self.open(protocol)
        if stream is None:
            return None
        try:
            for request in requests[:-1]:
                await stream.write(request)
            return await self.send(stream, _reader(protocol), requests[-1])
        except ConnectionLostError:
            return c.Exchange(ending="reset")
        finally:
            await stream.reset()

    def skip(self, check: c.Check) -> c.Verdict:
        why = self.unspoken.get(check.protocol, "")
        return c.Verdict(
            check, c.Outcome.SKIP, f"the peer does not speak {_PROTOCOLS[check.protocol]}: {why}"
        )


async def run_checks(
    host: StreamHost,
    peer: PeerAddress,
    *,
    timeout: float = 5.0,
    now: Callable[[], float] = time.time,
) -> list[c.Verdict]:
    """Every check of a serving peer (docs/protocol.md), in order: describe, invoke, kad,
    then whether each protocol still answers. ``timeout``: the longest wait for one reply,
    and for a stream that must end; ``now``: the wall clock records are verified at.

    Raises:
        PeerUnreachableError: the peer speaks none of the three protocols (or cannot be
            reached at all).
    """
    runner = _Runner(host, peer, timeout, now)
    table = load_vectors("checks_v1")
    vectors = {p: load_vectors(name) for p, name in _VECTOR_FILES.items()}
    verdicts: list[c.Verdict] = []

    def run(protocol: str) -> list[c.Case]:
        return c.cases(protocol, table, vectors[protocol])

    # describe: the data-driven cases, then what the peer serves
    for case in run("describe"):
        verdicts.append(await runner.run_case(case))
    records = await _records(runner, verdicts)
    for case in run("invoke"):
        verdicts.append(await runner.run_case(case))
    await _served_models(runner, records, verdicts)
    for case in run("kad"):
        verdicts.append(await runner.run_case(case))
    await _add_provider(runner, verdicts)
    if len(runner.unspoken) == len(_PROTOCOLS):
        raise PeerUnreachableError(
            f"peer {peer.peer_id} answers none of {', '.join(_PROTOCOLS.values())}: "
            + "; ".join(dict.fromkeys(runner.unspoken.values())),
            peer=peer.peer_id,
        )
    for protocol in _PROTOCOLS:
        check = c.still_serving(protocol)
        if protocol in runner.unspoken:
            verdicts.append(runner.skip(check))
            continue
        got = await runner.one(protocol, _fresh_request(protocol, runner.host.peer_id))
        alive = got is not None and got.reply is not None
        outcome = c.Outcome.PASS if alive else c.Outcome.FAIL
        verdicts.append(c.Verdict(check, outcome, got.seen() if got else ""))
    return verdicts


def _fresh_request(protocol: str, own_peer_id: str) -> bytes:
    """A valid request unlike any a case sends, so that what a peer does with a case's
    request (a broken peer in the tests answers one of them wrongly) does not decide
    whether it still serves."""
    if protocol == "invoke":
        unknown = "bafkreidmdvwo34tw5i75osdkeex5mkzs7o46zksn5jyfivegonyztxje5u"  # of "conformance"
        return b"".join(encode_message(Invoke(9, unknown, {}, 5000)).frames())
    if protocol == "describe":
        return encode_describe_message(DescribeRequest((), ("conformance",)))
    key = c.provider_key(own_peer_id.encode())
    return encode_kad(KadMessage(MessageType.FIND_NODE, key))


async def _records(runner: _Runner, verdicts: list[c.Verdict]) -> list[CapabilityRecord]:
    got = await runner.one("describe", encode_describe_message(DescribeRequest()))
    if got is None:
        verdicts.append(runner.skip(c.RECORDS_VERIFY))
        return []
    envelopes = getattr(got.reply, "records", ())
    verdict, records = c.judge_records(
        c.RECORDS_VERIFY, envelopes, runner.peer.peer_id, runner.now()
    )
    if got.reply is None:
        verdict = c.Verdict(c.RECORDS_VERIFY, c.Outcome.FAIL, f"no records: {got.seen()}")
    verdicts.append(verdict)
    return records


async def _served_models(
    runner: _Runner, records: list[CapabilityRecord], verdicts: list[c.Verdict]
) -> None:
    plain = [r for r in records if r.generation is None]
    generative = [r for r in records if r.generation is not None]
    serves_none = "the peer describes no model it serves"
    if not records:
        for check in (c.DESCRIBE_MODEL, c.INVOKE_CALL, c.INVOKE_INPUT, c.INVOKE_REUSE,
                      c.INVOKE_FORWARD, c.GENERATE, c.GENERATE_CANCEL):  # fmt: skip
            verdicts.append(c.Verdict(check, c.Outcome.SKIP, serves_none))
        return
    model = records[0].model_id
    got = await runner.one("describe", encode_describe_message(DescribeRequest((model,))))
    if got is None:
        verdicts.append(runner.skip(c.DESCRIBE_MODEL))
    else:
        verdicts.append(c.judge_describe_model(c.DESCRIBE_MODEL, model, got, runner.now()))
    if not plain:
        for check in (c.INVOKE_CALL, c.INVOKE_INPUT):
            verdicts.append(c.Verdict(check, c.Outcome.SKIP, "the peer serves no model but "
                                      "generative ones"))  # fmt: skip
        for check in (c.INVOKE_REUSE, c.INVOKE_FORWARD):
            verdicts.append(c.Verdict(check, c.Outcome.SKIP, "the peer serves no model but "
                                      "generative ones"))  # fmt: skip
    else:
        record = plain[0]
        request = Invoke(41, record.model_id, c.inputs_for(record.schema), 30_000)
        got = await runner.one("invoke", *encode_message(request).frames())
        if got is None:
            verdicts.append(runner.skip(c.INVOKE_CALL))
        else:
            verdicts.append(c.judge_call(c.INVOKE_CALL, request, record.schema, got))
        empty = Invoke(42, record.model_id, {}, 30_000)
        got = await runner.one("invoke", *encode_message(empty).frames())
        if got is None:
            verdicts.append(runner.skip(c.INVOKE_INPUT))
        else:
            reply = got.reply
            ok = (
                getattr(reply, "code", None) == "invalid_input"
                and getattr(reply, "request_id", None) == 42
            )
            detail = got.seen()
            verdicts.append(
                c.Verdict(c.INVOKE_INPUT, c.Outcome.PASS if ok else c.Outcome.FAIL, detail)
            )
        verdicts.append(await _reuse(runner, record))
        verdicts.append(await _forward(runner, record))
    if generative:
        verdicts.append(await _generate(runner, generative[0]))
        verdicts.append(await _cancel(runner, generative[0]))
    else:
        for check in (c.GENERATE, c.GENERATE_CANCEL):
            verdicts.append(c.Verdict(check, c.Outcome.SKIP, "the peer serves no generative "
                                      "model"))  # fmt: skip


async def _reuse(runner: _Runner, record: CapabilityRecord) -> c.Verdict:
    """Two Invokes on one stream, the second sent once the first's reply is read."""
    requests = [
        Invoke(request_id, record.model_id, c.inputs_for(record.schema), 30_000)
        for request_id in (44, 45)
    ]
    stream = await runner.open("invoke")
    if stream is None:
        return runner.skip(c.INVOKE_REUSE)
    replies: list[c.Exchange] = []
    try:
        reader = MessageReader()
        for request in requests:
            got = await runner.send(stream, reader, b"".join(encode_message(request).frames()))
            replies.append(got)
            if got.reply is None:
                break
    finally:
        await stream.reset()
    return c.judge_reuse(c.INVOKE_REUSE, requests, record.schema, replies)


async def _forward(runner: _Runner, record: CapabilityRecord) -> c.Verdict:
    """A plain Invoke, then a one-hop Forward of the same model and inputs."""
    inputs = c.inputs_for(record.schema)
    plain = await runner.one(
        "invoke", *encode_message(Invoke(46, record.model_id, inputs, 30_000)).frames()
    )
    step = "conformance"
    hop = Hop(
        step,
        record.model_id,
        ((runner.peer.peer_id, ()),),
        {name: f"input.{name}" for name in inputs},
        tuple(f"{step}.{spec.name}" for spec in record.schema.outputs),
    )
    tensors = {f"input.{name}": value for name, value in inputs.items()}
    request = Forward(47, (hop,), tensors, 30_000)
    got = await runner.one("invoke", *encode_message(request).frames())
    if plain is None or got is None:
        return runner.skip(c.INVOKE_FORWARD)
    return c.judge_forward(c.INVOKE_FORWARD, request, plain, got)


async def _generate(runner: _Runner, record: CapabilityRecord) -> c.Verdict:
    """A Generate of a few tokens: Chunks with its id, then Done."""
    request = Generate(
        43, record.model_id, Prompt(messages=(("user", "Hello"),)), GenerationParams(4), 30_000
    )
    stream = await runner.open("invoke")
    if stream is None:
        return runner.skip(c.GENERATE)
    replies: list[c.Exchange] = []
    try:
        reader = MessageReader()
        await stream.write(b"".join(encode_message(request).frames()))
        for _ in range(4 * request.params.max_tokens + 2):  # Chunks, Done, and some slack
            got = await runner.send(stream, reader, b"")
            replies.append(got)
            if not isinstance(got.reply, Chunk):
                break
    finally:
        await stream.reset()
    return c.judge_generation(c.GENERATE, request.request_id, replies)


async def _cancel(runner: _Runner, record: CapabilityRecord) -> c.Verdict:
    """A Generate asking for a long reply, and a Cancel once its first Chunk is read."""
    ask = "Tell a long story about the sea, with many details."
    request = Generate(
        48, record.model_id, Prompt(messages=(("user", ask),)), GenerationParams(64), 30_000
    )
    stream = await runner.open("invoke")
    if stream is None:
        return runner.skip(c.GENERATE_CANCEL)
    replies: list[c.Exchange] = []
    try:
        reader = MessageReader()
        await stream.write(b"".join(encode_message(request).frames()))
        cancel = b"".join(encode_message(Cancel(request.request_id)).frames())
        for _ in range(4 * request.params.max_tokens + 2):  # Chunks, Done, and some slack
            got = await runner.send(stream, reader, b"")
            replies.append(got)
            if not isinstance(got.reply, Chunk):
                break
            if len(replies) == 1:
                try:
                    await stream.write(cancel)
                except ConnectionLostError:
                    pass  # the peer ended the stream: the next read says how
    finally:
        await stream.reset()
    return c.judge_cancel(c.GENERATE_CANCEL, request.request_id, request.params.max_tokens, replies)


async def _add_provider(runner: _Runner, verdicts: list[c.Verdict]) -> None:
    if "kad" in runner.unspoken:
        verdicts.extend(runner.skip(check) for check in (c.ADD_PROVIDER, c.ADD_PROVIDER_OTHER))
        return
    me = runner.host.peer_id
    addrs = tuple(transport_part(a) for a in runner.host.addrs)
    other = peer_id_from_public_key(os.urandom(32))
    for check, named, peer in (
        (c.ADD_PROVIDER, me, KadPeer(me, addrs)),
        (c.ADD_PROVIDER_OTHER, other, KadPeer(other, addrs)),
    ):
        key = c.provider_key(os.urandom(16))
        add = encode_kad(KadMessage(MessageType.ADD_PROVIDER, key, provider_peers=(peer,)))
        ask = encode_kad(KadMessage(MessageType.GET_PROVIDERS, key))
        got = await runner.one("kad", add, ask)
        if got is None:
            verdicts.append(runner.skip(check))
        else:
            verdicts.append(c.judge_add_provider(check, named, got, kept=check is c.ADD_PROVIDER))
