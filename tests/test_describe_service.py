"""``/p2pnet/describe/1.0.0`` between real libp2p peers on 127.0.0.1, honest and not."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pnet.core.address import PeerAddress, parse_peer_address
from p2pnet.core.describe import (
    DescribeErrorReply,
    DescribeReader,
    DescribeRequest,
    RecordsReply,
    encode_describe_message,
)
from p2pnet.core.framing import encode_frame
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.records import CapabilityRecord, sign_record
from p2pnet.core.varint import encode_uvarint
from p2pnet.discovery import DESCRIBE_PROTOCOL, DescribeClient, DescribeServer
from p2pnet.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    ExpiredRecordError,
    ForgedRecordError,
    InternalPeerError,
    InvalidModelIdError,
    InvalidRecordError,
    LocalProtocolError,
    PayloadTooLargeError,
    PeerUnreachableError,
    RemoteProtocolError,
    StaleRecordError,
    UsageError,
)
from p2pnet.net.host import Host, Stream, open_host
from p2pnet.net.identity import Identity, generate_identity, peer_id_of
from p2pnet.runtime.onnx_model import inspect_model

pytestmark = pytest.mark.network  # real libp2p hosts on 127.0.0.1

TASKS = {
    "iris": ("tabular-classification",),
    "sentiment": ("sentiment-analysis", "text-classification"),
    "digits": ("image-classification",),
}
HOUR = 3600


def signing_key(identity: Identity) -> Ed25519PrivateKey:
    return identity.signing_key


def make_record(
    identity: Identity,
    path: Path,
    tasks: tuple[str, ...],
    *,
    expires_in: float = HOUR,
    seq: int = 1,
) -> CapabilityRecord:
    info = inspect_model(path)
    return CapabilityRecord(
        model_id=info.model_id,
        peer_id=peer_id_of(identity),
        schema=info.schema,
        tasks=tasks,
        name=info.name,
        version="1.0.0",
        runtime="onnxruntime/1.32.0",
        addrs=("/ip4/127.0.0.1/tcp/4001",),
        seq=seq,
        expires_at=int(time.time() + expires_in),
    )


def sign(identity: Identity, record: CapabilityRecord) -> bytes:
    return sign_record(record, signing_key(identity))


@dataclass
class Swarm:
    server_identity: Identity
    server_host: Host
    client_host: Host
    server: DescribeServer
    client: DescribeClient
    envelopes: list[bytes]  # what the server serves; tests change it
    records: dict[str, CapabilityRecord]  # model name -> the honest record

    @property
    def address(self) -> PeerAddress:
        return parse_peer_address(self.server_host.addrs[0])


@pytest.fixture
async def swarm(models: dict[str, Path]) -> AsyncIterator[Swarm]:
    server_identity = generate_identity()
    records = {
        name: make_record(server_identity, models[name], tasks) for name, tasks in TASKS.items()
    }
    envelopes = [sign(server_identity, r) for r in records.values()]
    async with (
        open_host(server_identity) as server_host,
        open_host(generate_identity()) as client_host,
    ):
        server = DescribeServer(lambda: envelopes)
        server_host.set_stream_handler(DESCRIBE_PROTOCOL, server.handle_stream)
        client = DescribeClient(client_host)
        yield Swarm(server_identity, server_host, client_host, server, client, envelopes, records)
        await client.aclose()


async def raw_stream(swarm: Swarm) -> Stream:
    return await swarm.client_host.open_stream(swarm.address, DESCRIBE_PROTOCOL)


async def read_reply(stream: Stream, reader: DescribeReader | None = None) -> object:
    """The next message on ``stream``, or None at its end."""
    reader = reader or DescribeReader()
    while (message := reader.next_message()) is None:
        data = await stream.read()
        if not data:
            return None
        reader.receive_data(data)
    return message


def serve_raw(swarm: Swarm, reply: Callable[[DescribeRequest], Awaitable[bytes | None]]) -> None:
    """Replace the honest server with one that answers each request with ``reply``'s bytes."""

    async def handler(stream: Stream) -> None:
        reader = DescribeReader()
        while (request := await read_reply(stream, reader)) is not None:
            assert isinstance(request, DescribeRequest)
            data = await reply(request)
            if data is not None:
                await stream.write(data)
        await stream.close()

    swarm.server_host.set_stream_handler(DESCRIBE_PROTOCOL, handler)


def records_frame(envelopes: Sequence[bytes]) -> bytes:
    return encode_describe_message(RecordsReply(tuple(envelopes)))


# --- an honest peer --------------------------------------------------------------------------


async def test_fetch_all_records_verified(swarm: Swarm) -> None:
    result = await swarm.client.describe(swarm.address)
    assert result.peer_id == swarm.server_host.peer_id
    assert result.records == tuple(swarm.records.values())
    assert result.envelopes == tuple(swarm.envelopes)
    assert result.rejected == ()
    assert 0 < result.rtt < 5


async def test_filter_by_task(swarm: Swarm) -> None:
    result = await swarm.client.describe(swarm.address, tasks=["text-classification"])
    assert result.records == (swarm.records["sentiment"],)
    result = await swarm.client.describe(
        swarm.address, tasks=["image-classification", "tabular-classification"]
    )
    assert result.records == (swarm.records["iris"], swarm.records["digits"])
    result = await swarm.client.describe(swarm.address, tasks=["translation"])
    assert result.records == () and result.rejected == ()


async def test_filter_by_model_and_by_both(swarm: Swarm) -> None:
    iris = swarm.records["iris"]
    result = await swarm.client.describe(swarm.address, models=[iris.model_id])
    assert result.records == (iris,)
    result = await swarm.client.describe(
        swarm.address, models=[iris.model_id], tasks=["sentiment-analysis"]
    )
    assert result.records == ()


async def test_bad_filters_fail_before_anything_is_sent(swarm: Swarm) -> None:
    with pytest.raises(InvalidModelIdError, match="not a model ID"):
        await swarm.client.describe(swarm.address, models=["iris"])
    with pytest.raises(UsageError, match="'Sentiment' is not a task tag"):
        await swarm.client.describe(swarm.address, tasks=["Sentiment"])
    with pytest.raises(PayloadTooLargeError, match="'tasks' has 65 entries; at most 64"):
        await swarm.client.describe(swarm.address, tasks=[f"t{i}" for i in range(65)])
    assert swarm.server.stats.streams == 0


async def test_repeated_describes_reuse_one_stream(swarm: Swarm) -> None:
    for _ in range(20):
        result = await swarm.client.describe(swarm.address)
        assert len(result.records) == 3
    assert swarm.server.stats.streams == 1 and swarm.server.stats.requests == 20
    assert swarm.client_host.connection_count(swarm.server_host.peer_id) == 1


async def test_concurrent_describes_each_get_their_answer(swarm: Swarm) -> None:
    names = list(TASKS) * 4
    found: dict[int, tuple[CapabilityRecord, ...]] = {}

    async def one(i: int) -> None:
        found[i] = (await swarm.client.describe(swarm.address, tasks=TASKS[names[i]])).records

    async with trio.open_nursery() as nursery:
        for i in range(len(names)):
            nursery.start_soon(one, i)
    assert all(found[i] == (swarm.records[names[i]],) for i in range(len(names)))


async def test_records_that_changed_are_served_fresh(swarm: Swarm) -> None:
    await swarm.client.describe(swarm.address)
    newer = replace(swarm.records["iris"], seq=2)
    swarm.envelopes[0] = sign(swarm.server_identity, newer)
    result = await swarm.client.describe(swarm.address)
    assert result.records[0].seq == 2


async def test_a_stream_the_server_closed_while_idle_is_replaced_transparently(
    swarm: Swarm,
) -> None:
    swarm.server.idle_timeout = 0.2
    await swarm.client.describe(swarm.address)
    (idle,) = swarm.client._pool.idle(swarm.server_host.peer_id)
    assert await idle.stream.read() == b""  # the server closed it after 0.2 s idle
    result = await swarm.client.describe(swarm.address)
    assert len(result.records) == 3
    assert swarm.server.stats.streams == 2


async def test_a_failing_provider_is_an_internal_error_and_the_server_lives(
    swarm: Swarm,
) -> None:
    def broken() -> list[bytes]:
        raise RuntimeError("disk on fire")

    swarm.server.records_provider = broken
    with pytest.raises(
        InternalPeerError, match=r"failed to list its records.*disk on fire"
    ) as info:
        await swarm.client.describe(swarm.address)
    assert info.value.peer == swarm.server_host.peer_id
    swarm.server.records_provider = lambda: swarm.envelopes
    assert len((await swarm.client.describe(swarm.address)).records) == 3


async def test_envelopes_that_do_not_decode_are_not_served(swarm: Swarm) -> None:
    swarm.envelopes.insert(1, b"\x93\xc4\x01x")
    swarm.envelopes.insert(0, b"not msgpack \xc1")
    result = await swarm.client.describe(swarm.address)
    assert len(result.records) == 3 and result.rejected == ()


async def test_unreachable_peer(swarm: Swarm, refused_port: int) -> None:
    port = refused_port  # nobody listens there
    address = PeerAddress(swarm.server_host.peer_id, (f"/ip4/127.0.0.1/tcp/{port}",))
    client = DescribeClient(swarm.client_host)
    with pytest.raises(PeerUnreachableError):
        await client.describe(address)


# --- a dishonest or broken peer: records are dropped and reported, never returned -----------


async def test_forged_record_is_rejected_and_the_rest_kept(swarm: Swarm) -> None:
    forged = bytearray(swarm.envelopes[1])
    forged[-1] ^= 1  # last signature byte
    swarm.envelopes[1] = bytes(forged)
    result = await swarm.client.describe(swarm.address)
    assert result.records == (swarm.records["iris"], swarm.records["digits"])
    (rejected,) = result.rejected
    assert rejected.envelope == bytes(forged)
    assert isinstance(rejected.error, ForgedRecordError)
    assert "does not verify" in str(rejected.error)


async def test_record_with_a_changed_payload_is_forged(swarm: Swarm) -> None:
    honest = swarm.envelopes[0]
    tampered = honest.replace(b"tabular-classification", b"tabular-classificatio0")
    assert tampered != honest
    swarm.envelopes[0] = tampered
    result = await swarm.client.describe(swarm.address)
    assert result.records == (swarm.records["sentiment"], swarm.records["digits"])
    (rejected,) = result.rejected
    assert isinstance(rejected.error, ForgedRecordError)


async def test_expired_record_is_rejected(swarm: Swarm, models: dict[str, Path]) -> None:
    expired = make_record(swarm.server_identity, models["identity"], ("testing",), expires_in=-10)
    swarm.envelopes.append(sign(swarm.server_identity, expired))
    result = await swarm.client.describe(swarm.address)
    assert len(result.records) == 3
    (rejected,) = result.rejected
    assert isinstance(rejected.error, ExpiredRecordError)
    assert "expired at" in str(rejected.error)


async def test_expiry_is_checked_against_the_injected_clock(swarm: Swarm) -> None:
    client = DescribeClient(swarm.client_host, clock=lambda: time.time() + 2 * HOUR)
    result = await client.describe(swarm.address)
    assert result.records == ()
    assert [type(r.error) for r in result.rejected] == [ExpiredRecordError] * 3
    await client.aclose()


async def test_record_of_another_peer_is_rejected(swarm: Swarm, models: dict[str, Path]) -> None:
    other = generate_identity()
    theirs = make_record(other, models["matmul"], ("linear-algebra",))
    swarm.envelopes.append(sign(other, theirs))  # validly signed, by its own peer
    result = await swarm.client.describe(swarm.address)
    assert len(result.records) == 3
    (rejected,) = result.rejected
    assert type(rejected.error) is InvalidRecordError
    assert f"a record of another peer, {peer_id_of(other)}" in str(rejected.error)


async def test_records_not_asked_for_are_rejected(swarm: Swarm) -> None:
    async def everything(request: DescribeRequest) -> bytes:
        return records_frame(swarm.envelopes)  # ignores the filters

    serve_raw(swarm, everything)
    result = await swarm.client.describe(swarm.address, tasks=["sentiment-analysis"])
    assert result.records == (swarm.records["sentiment"],)
    assert len(result.rejected) == 2
    assert all("which was not asked for" in str(r.error) for r in result.rejected)


async def test_a_model_sent_twice_keeps_the_newest_and_reports_the_others(swarm: Swarm) -> None:
    old, new = (sign(swarm.server_identity, replace(swarm.records["iris"], seq=s)) for s in (1, 5))

    async def twice(request: DescribeRequest) -> bytes:
        return records_frame([old, new, new, old])

    serve_raw(swarm, twice)
    result = await swarm.client.describe(swarm.address)
    assert [r.seq for r in result.records] == [5]
    assert result.envelopes == (new,)
    errors = [r.error for r in result.rejected]
    assert all(isinstance(e, StaleRecordError) for e in errors)
    assert "superseded by seq 5" in str(errors[0])
    assert "twice" in str(errors[1])
    assert "older than the one already held" in str(errors[2])


async def test_a_reply_that_breaks_the_protocol(swarm: Swarm) -> None:
    async def garbage(request: DescribeRequest) -> bytes:
        return b"\x03\xc1\xc1\xc1"

    serve_raw(swarm, garbage)
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        await swarm.client.describe(swarm.address)


async def test_a_request_echoed_back_is_not_a_reply(swarm: Swarm) -> None:
    async def echo(request: DescribeRequest) -> bytes:
        return encode_describe_message(request)

    serve_raw(swarm, echo)
    with pytest.raises(RemoteProtocolError, match="answered a describe request with a"):
        await swarm.client.describe(swarm.address)


async def test_a_peer_that_never_answers(swarm: Swarm) -> None:
    async def silent(request: DescribeRequest) -> None:
        await trio.sleep_forever()

    serve_raw(swarm, silent)
    with pytest.raises(DeadlineExceededError, match=r"within 0\.2 s"):
        await swarm.client.describe(swarm.address, timeout=0.2)


async def test_a_peer_that_closes_without_answering(swarm: Swarm) -> None:
    async def handler(stream: Stream) -> None:
        await stream.close()

    swarm.server_host.set_stream_handler(DESCRIBE_PROTOCOL, handler)
    with pytest.raises(ConnectionLostError, match="without replying"):
        await swarm.client.describe(swarm.address)


async def test_a_peer_sending_more_than_its_reply_loses_the_stream(swarm: Swarm) -> None:
    async def chatty(request: DescribeRequest) -> bytes:
        return records_frame(swarm.envelopes) + b"\x05ab"  # one write: one read on our side

    serve_raw(swarm, chatty)
    result = await swarm.client.describe(swarm.address)
    assert len(result.records) == 3
    assert swarm.client._pool.idle(swarm.server_host.peer_id) == []  # reset, not kept


# --- a bad caller: an error reply, then the stream ends; the server keeps serving ----------


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"\x03\xc1\xc1\xc1", LocalProtocolError.code, "not valid msgpack"),
        (b"\x00", LocalProtocolError.code, "empty frame"),
        (encode_uvarint(1 << 30), PayloadTooLargeError.code, "at most 1048576 bytes per frame"),
        (
            encode_describe_message(RecordsReply(())),
            LocalProtocolError.code,
            "expected a describe request, got a RecordsReply",
        ),
        (
            encode_describe_message(DescribeErrorReply("x", "y")),
            LocalProtocolError.code,
            "got a DescribeErrorReply",
        ),
        (
            encode_frame(msgpack.packb({"v": 2, "type": "describe"}), 100),
            LocalProtocolError.code,
            "version 2 is not supported",
        ),
    ],
    ids=["not-msgpack", "empty", "oversized", "records", "error", "version"],
)
async def test_malformed_request_gets_an_error_reply_and_the_server_keeps_serving(
    swarm: Swarm, data: bytes, code: str, message: str
) -> None:
    stream = await raw_stream(swarm)
    await stream.write(data)
    reply = await read_reply(stream)
    assert isinstance(reply, DescribeErrorReply)
    assert reply.code == code and message in reply.message
    assert await stream.read() == b""  # then the server ends the stream
    await stream.close()
    result = await swarm.client.describe(swarm.address)
    assert len(result.records) == 3
    assert swarm.server.stats.errors == {code: 1}


async def test_a_hundred_bad_requests_then_good_ones(swarm: Swarm) -> None:
    bad = [b"\x03abc", b"\x00", encode_uvarint(1 << 40), b"\x02\x92\x01", b"\x01\xc0"]
    for i in range(100):
        stream = await raw_stream(swarm)
        await stream.write(bad[i % len(bad)])
        assert isinstance(await read_reply(stream), DescribeErrorReply)
        await stream.reset()
    assert sum(swarm.server.stats.errors.values()) == 100
    async with open_host(generate_identity()) as other_host:
        result = await DescribeClient(other_host).describe(swarm.address)
    assert len(result.records) == 3


async def test_a_bad_request_after_good_ones_on_the_same_stream(swarm: Swarm) -> None:
    stream = await raw_stream(swarm)
    reader = DescribeReader()
    for _ in range(3):
        await stream.write(encode_describe_message(DescribeRequest()))
        reply = await read_reply(stream, reader)
        assert isinstance(reply, RecordsReply) and len(reply.records) == 3
    await stream.write(b"\x01\xc1")
    reply = await read_reply(stream, reader)
    assert isinstance(reply, DescribeErrorReply) and reply.code == "protocol_error"
    assert await stream.read() == b""


async def test_a_large_reply_is_verified_too(swarm: Swarm, models: dict[str, Path]) -> None:
    # Over 16 records: verified in a worker thread, with the same checks.
    base = swarm.records["iris"]
    many = [replace(base, model_id=model_id_of_bytes(b"%d" % i)) for i in range(40)]
    swarm.envelopes[:] = [sign(swarm.server_identity, r) for r in many]
    forged = bytearray(swarm.envelopes[7])
    forged[-1] ^= 1
    swarm.envelopes[7] = bytes(forged)
    result = await swarm.client.describe(swarm.address)
    assert result.records == tuple(many[:7] + many[8:])
    (rejected,) = result.rejected
    assert isinstance(rejected.error, ForgedRecordError)
