"""The kad-dht wire format: golden vectors both ways, byte-identity with py-libp2p's
generated protobuf, property tests, and every rejection and leniency path."""

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.kad_dht.pb import kademlia_pb2
from multiaddr import Multiaddr
from multiformats import multibase

from p2pnet.conformance.golden import load_vectors
from p2pnet.core.kad import dht_pb2
from p2pnet.core.kad.wire import (
    DEFAULT_LIMITS,
    MAX_MESSAGE_SIZE,
    ConnectionType,
    KadLimits,
    KadMessage,
    KadMessageReader,
    KadPeer,
    KadRecord,
    MessageType,
    encode_kad_message,
    peer_id_bytes,
    peer_id_text,
)
from p2pnet.core.varint import encode_uvarint
from p2pnet.errors import InvalidAddressError, PayloadTooLargeError, RemoteProtocolError

VECTORS = load_vectors("kad_v1")
PEER_A = "12D3KooW9tJMax94Lrqw7Y5Qw36viGQAS2gTEPQ5Wg1vTk7xPfQs"
PEER_C = "QmZQRHh2qYHVvbN7NKdnxTJMwjmpCLehACvWNSGJaJD6U3"
ADDR_TCP = bytes.fromhex("047f000001060fa1")  # /ip4/127.0.0.1/tcp/4001


def _peer(spec: dict[str, Any]) -> KadPeer:
    return KadPeer(spec["peer_id"], tuple(spec["addrs"]), ConnectionType[spec["connection"]])


def _message(vector: dict[str, Any]) -> KadMessage:
    record = vector.get("record")
    return KadMessage(
        MessageType[vector["type"]],
        bytes.fromhex(vector["key"]),
        None
        if record is None
        else KadRecord(
            bytes.fromhex(record["key"]), bytes.fromhex(record["value"]), record["time_received"]
        ),
        tuple(_peer(p) for p in vector.get("closer_peers", [])),
        tuple(_peer(p) for p in vector.get("provider_peers", [])),
        vector.get("cluster_level", 0),
    )


def _decode_all(data: bytes, step: int = 0, **kwargs: Any) -> list[KadMessage]:
    reader = KadMessageReader(**kwargs)
    out: list[KadMessage] = []
    pieces = [data] if step == 0 else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        reader.receive_data(piece)
        while (message := reader.next_message()) is not None:
            out.append(message)
    assert reader.at_message_boundary
    return out


def _read(data: bytes, **kwargs: Any) -> KadMessage | None:
    reader = KadMessageReader(**kwargs)
    reader.receive_data(data)
    return reader.next_message()


def _frame(body: bytes) -> bytes:
    return encode_uvarint(len(body)) + body


def _body(frame: bytes) -> bytes:
    """The protobuf body of a frame (strips the varint prefix)."""
    i = 0
    while frame[i] & 0x80:
        i += 1
    return frame[i + 1 :]


# --- golden vectors -------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_golden_vector_encodes_exactly(vector: dict[str, Any]) -> None:
    assert encode_kad_message(_message(vector)).hex() == vector["hex"]


@pytest.mark.parametrize("step", [0, 1, 3])
@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_golden_vector_decodes_whole_and_byte_by_byte(vector: dict[str, Any], step: int) -> None:
    (decoded,) = _decode_all(bytes.fromhex(vector["hex"]), step=step)
    assert decoded == _message(vector)


def test_golden_vectors_cover_every_message_type() -> None:
    assert {v["type"] for v in VECTORS["vectors"]} == {t.name for t in MessageType}
    assert VECTORS["max_size"] == MAX_MESSAGE_SIZE


def test_golden_vectors_are_in_the_protocol_doc() -> None:
    """Each vector, in the kad section, under its own heading, alone in a fenced block
    of 64 hex characters per line."""
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    section = doc.split("\n## `/p2pnet/kad/1.0.0`\n", 1)[1].split("\n## ", 1)[0]
    for vector in VECTORS["vectors"]:
        heading = f"\n### `{vector['name']}`\n"
        assert heading in section, vector["name"]
        after = section.split(heading, 1)[1]
        block = after.split("```\n", 2)[1].removesuffix("```\n").removesuffix("\n```")
        lines = block.strip("\n").split("\n")
        assert "".join(lines) == vector["hex"], vector["name"]
        assert all(len(line) == 64 for line in lines[:-1]) and 0 < len(lines[-1]) <= 64


def test_several_messages_back_to_back_on_one_stream() -> None:
    data = b"".join(bytes.fromhex(v["hex"]) for v in VECTORS["vectors"])
    decoded = _decode_all(data, step=7)
    assert decoded == [_message(v) for v in VECTORS["vectors"]]


# --- the same bytes as py-libp2p's generated protobuf ----------------------------------


def _libp2p_message(message: KadMessage) -> kademlia_pb2.Message:
    pb = kademlia_pb2.Message(type=message.type.value, key=message.key)
    pb.clusterLevelRaw = message.cluster_level
    if message.record is not None:
        pb.record.SetInParent()
        pb.record.key = message.record.key
        pb.record.value = message.record.value
        pb.record.timeReceived = message.record.time_received
    for peers, field in (
        (message.closer_peers, pb.closerPeers),
        (message.provider_peers, pb.providerPeers),
    ):
        for peer in peers:
            field.add(
                id=peer_id_bytes(peer.peer_id),
                addrs=[multiaddr_bytes(a) for a in peer.addrs],
                connection=peer.connection.value,
            )
    return pb


def multiaddr_bytes(text: str) -> bytes:
    return bytes(Multiaddr(text).to_bytes())


def _canonical(addr: str) -> str:
    """The text the reader returns for ``addr``: py-multiaddr's text of its bytes."""
    return str(Multiaddr(multiaddr_bytes(addr)))


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_encoding_is_byte_identical_to_py_libp2p(vector: dict[str, Any]) -> None:
    message = _message(vector)
    ours = _body(encode_kad_message(message))
    assert ours == _libp2p_message(message).SerializeToString()
    assert ours == bytes.fromhex(vector["hex"])[len(encode_uvarint(len(ours))) :]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_py_libp2p_parses_what_we_send(vector: dict[str, Any]) -> None:
    message = _message(vector)
    parsed = kademlia_pb2.Message()
    parsed.ParseFromString(_body(encode_kad_message(message)))
    assert parsed == _libp2p_message(message)


def test_py_libp2p_extensions_are_skipped() -> None:
    """py-libp2p adds senderRecord (11), Peer.signedRecord (4), Record.author/signature."""
    message = _message(VECTORS["vectors"][4])  # get-value-response
    pb = _libp2p_message(message)
    pb.senderRecord = b"\x0a\x03env"
    pb.closerPeers[0].signedRecord = b"signed peer record"
    pb.record.author = b"someone"
    pb.record.signature = b"sig"
    (decoded,) = _decode_all(_frame(pb.SerializeToString()))
    assert decoded == message


# --- forward compatibility ------------------------------------------------------------


@pytest.mark.parametrize(
    "unknown",
    [
        bytes.fromhex("a0012a"),  # field 20, varint 42
        bytes.fromhex("5a03616263"),  # field 11, 3 bytes
        bytes.fromhex("fd0701020304"),  # field 127, fixed32
        bytes.fromhex("e1070102030405060708"),  # field 124, fixed64
    ],
    ids=["varint", "bytes", "fixed32", "fixed64"],
)
def test_unknown_fields_are_skipped(unknown: bytes) -> None:
    vector = VECTORS["vectors"][2]  # find-node-response
    body = _body(bytes.fromhex(vector["hex"]))
    (decoded,) = _decode_all(_frame(unknown + body + unknown))
    assert decoded == _message(vector)
    # ... inside a peer and a record too
    peer = dht_pb2.Message.Peer(id=peer_id_bytes(PEER_A), addrs=[ADDR_TCP])
    record = dht_pb2.Record(key=b"k", value=b"v")
    inner = dht_pb2.Message(type=dht_pb2.Message.GET_VALUE)
    raw = (
        inner.SerializeToString()
        + b"\x1a"
        + encode_uvarint(len(record.SerializeToString() + unknown))
        + record.SerializeToString()
        + unknown
        + b"\x42"
        + encode_uvarint(len(peer.SerializeToString() + unknown))
        + peer.SerializeToString()
        + unknown
    )
    (decoded,) = _decode_all(_frame(raw))
    assert decoded == KadMessage(
        MessageType.GET_VALUE,
        record=KadRecord(b"k", b"v"),
        closer_peers=(KadPeer(PEER_A, ("/ip4/127.0.0.1/tcp/4001",)),),
    )


def test_unknown_connection_type_reads_as_not_connected() -> None:
    pb = dht_pb2.Message(type=dht_pb2.Message.FIND_NODE)
    pb.closerPeers.add(id=peer_id_bytes(PEER_A), connection=9)  # type: ignore[arg-type]
    (decoded,) = _decode_all(_frame(pb.SerializeToString()))
    assert decoded.closer_peers == (KadPeer(PEER_A, (), ConnectionType.NOT_CONNECTED),)


def test_empty_body_is_a_put_value_with_nothing_set() -> None:
    """proto3 writes no default values, so an empty body is a valid (useless) message;
    refusing it is the DHT service's job."""
    assert _read(b"\x00") == KadMessage(MessageType.PUT_VALUE)


# --- property tests -------------------------------------------------------------------

multihashes = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda d: b"\x00\x24\x08\x01\x12\x20" + d),
    st.binary(min_size=32, max_size=32).map(lambda d: b"\x12\x20" + d),
    st.binary(min_size=0, max_size=42).map(lambda d: b"\x00" + bytes([len(d)]) + d),
)
peer_ids = multihashes.map(peer_id_text)
ports = st.integers(0, 65535)
addrs = st.one_of(
    st.builds(
        lambda ip, p: f"/ip4/{ipaddress.IPv4Address(ip)}/tcp/{p}", st.integers(0, 2**32 - 1), ports
    ),
    st.builds(
        lambda ip, p: f"/ip4/{ipaddress.IPv4Address(ip)}/udp/{p}/quic-v1",
        st.integers(0, 2**32 - 1),
        ports,
    ),
    st.builds(
        lambda ip, p: _canonical(f"/ip6/{ipaddress.IPv6Address(ip).compressed}/tcp/{p}"),
        # small values too: ::/96 prints as ::a.b.c.d (glibc's inet_ntop, like py-multiaddr)
        st.integers(0, 2**128 - 1) | st.integers(0, 2**40),
        ports,
    ),
    st.builds(lambda p: f"/dns4/localhost/tcp/{p}", ports),
)
kad_peers = st.builds(
    KadPeer,
    peer_ids,
    st.lists(addrs, max_size=4).map(tuple),
    st.sampled_from(ConnectionType),
)
kad_messages = st.builds(
    KadMessage,
    st.sampled_from(MessageType),
    st.binary(max_size=100),
    st.none()
    | st.builds(KadRecord, st.binary(max_size=50), st.binary(max_size=200), st.text(max_size=40)),
    st.lists(kad_peers, max_size=5).map(tuple),
    st.lists(kad_peers, max_size=3).map(tuple),
    st.integers(-(2**31), 2**31 - 1),
)


@settings(max_examples=150, deadline=None)
@given(kad_messages, st.sampled_from([0, 1, 5]))
def test_round_trip(message: KadMessage, step: int) -> None:
    frame = encode_kad_message(message)
    (decoded,) = _decode_all(frame, step=step)
    assert decoded == message
    assert _body(frame) == _libp2p_message(message).SerializeToString()


plain_messages = st.builds(
    KadMessage,
    st.sampled_from(MessageType),
    st.binary(max_size=100),
    st.none(),
    st.lists(kad_peers, max_size=25).map(tuple),
    st.lists(kad_peers, max_size=3).map(tuple),
    st.integers(0, 127),
)


def _outcome(data: bytes, limits: KadLimits) -> tuple[object, ...]:
    reader = KadMessageReader(limits=limits)
    reader.receive_data(data)
    try:
        message = reader.next_message()
    except (RemoteProtocolError, PayloadTooLargeError) as exc:
        return (type(exc), str(exc))
    return (message, reader.dropped_addrs, reader.dropped_peers)


@settings(max_examples=200, deadline=None)
@given(plain_messages, st.data())
def test_plain_messages_read_and_write_as_protobuf_does(
    message: KadMessage, data: st.DataObject
) -> None:
    """The default limits take a path without protobuf for plain messages (no record, a
    small cluster level): the same bytes out, and for any bytes in (mutated too) the same
    message, drop counts or error as the protobuf path (taken for equal limits that are
    not the default object)."""
    protobuf_limits = KadLimits()
    assert protobuf_limits is not DEFAULT_LIMITS
    frame = encode_kad_message(message)
    assert frame == encode_kad_message(message, limits=protobuf_limits)
    assert _outcome(frame, DEFAULT_LIMITS) == (message, 0, 0)
    body = bytearray(_body(frame))
    for _ in range(data.draw(st.integers(0, 3))):
        if body:
            at = data.draw(st.integers(0, len(body) - 1))
            body[at] = data.draw(st.integers(0, 255))
    if body and data.draw(st.booleans()):
        del body[data.draw(st.integers(0, len(body) - 1)) :]
    mutated = encode_uvarint(len(body)) + bytes(body)
    assert _outcome(mutated, DEFAULT_LIMITS) == _outcome(mutated, protobuf_limits)


def test_plain_messages_over_the_limits_are_refused_as_protobuf_refuses_them() -> None:
    key = b"\x12" + encode_uvarint(1025) + b"k" * 1025
    raw_id = peer_id_bytes(PEER_A)
    peer = b"\x0a" + encode_uvarint(len(raw_id)) + raw_id + b"\x18\x01"
    peers = (b"\x42" + encode_uvarint(len(peer)) + peer) * 101
    for body in (key, peers):
        frame = encode_uvarint(len(body)) + body
        assert _outcome(frame, DEFAULT_LIMITS) == _outcome(frame, KadLimits())
    assert _outcome(encode_uvarint(len(key)) + key, DEFAULT_LIMITS)[0] is PayloadTooLargeError
    assert _outcome(encode_uvarint(len(peers)) + peers, DEFAULT_LIMITS)[2] == 1


@settings(max_examples=100, deadline=None)
@given(multihashes)
def test_peer_id_text_is_base58btc(raw: bytes) -> None:
    text = peer_id_text(raw)
    assert text == multibase.get("base58btc").raw_encoder(raw)
    assert peer_id_bytes(text) == raw


PROTOCOL_ERRORS = (RemoteProtocolError, PayloadTooLargeError)


def _feed_expecting_only_protocol_errors(data: bytes, **kwargs: Any) -> None:
    reader = KadMessageReader(**kwargs)
    try:
        reader.receive_data(data)
        while reader.next_message() is not None:
            pass
    except PROTOCOL_ERRORS:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    _feed_expecting_only_protocol_errors(data, max_size=1024)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bodies_raise_only_protocol_errors(body: bytes) -> None:
    """A well-formed frame around random bytes, so the protobuf parser sees them."""
    _feed_expecting_only_protocol_errors(_frame(body))


@settings(max_examples=200)
@given(st.sampled_from(VECTORS["vectors"]), st.data())
def test_truncated_message_waits_for_more_and_is_not_at_a_boundary(
    vector: dict[str, Any], data: st.DataObject
) -> None:
    raw = bytes.fromhex(vector["hex"])
    cut = data.draw(st.integers(1, len(raw) - 1))
    reader = KadMessageReader()
    reader.receive_data(raw[:cut])
    assert reader.next_message() is None
    assert not reader.at_message_boundary


@settings(max_examples=200)
@given(st.sampled_from(VECTORS["vectors"]), st.data())
def test_truncated_body_in_a_complete_frame_raises_only_protocol_errors(
    vector: dict[str, Any], data: st.DataObject
) -> None:
    body = _body(bytes.fromhex(vector["hex"]))
    cut = data.draw(st.integers(0, len(body)))
    _feed_expecting_only_protocol_errors(_frame(body[:cut]))


@settings(max_examples=300)
@given(st.sampled_from(VECTORS["vectors"]), st.data())
def test_corrupted_bytes_never_crash(vector: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray.fromhex(vector["hex"])
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    _feed_expecting_only_protocol_errors(bytes(raw))


# --- what the reader refuses -----------------------------------------------------------


def test_oversized_message_is_refused_from_its_length_prefix_alone() -> None:
    with pytest.raises(PayloadTooLargeError, match="kad message of 4194305 bytes"):
        _read(encode_uvarint(MAX_MESSAGE_SIZE + 1))
    with pytest.raises(PayloadTooLargeError, match="at most 100"):
        _read(encode_uvarint(101), max_size=100)


def test_a_message_of_exactly_max_size_is_read() -> None:
    message = KadMessage(MessageType.PUT_VALUE, record=KadRecord(b"k", b"x" * 100))
    frame = encode_kad_message(message)
    assert _read(frame, max_size=len(_body(frame))) == message


def test_bad_length_prefix() -> None:
    with pytest.raises(RemoteProtocolError, match="not minimally encoded"):
        _read(b"\x80\x00")
    with pytest.raises(RemoteProtocolError, match="longer than 9 bytes"):
        _read(b"\xff" * 10)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x12\x05ab", "not a valid protobuf"),  # key declares 5 bytes, holds 2
        (b"\x08", "not a valid protobuf"),  # varint field without its value
        (b"\x0f", "not a valid protobuf"),  # wire type 7 does not exist
        (b"\x1a\x03\x2a\x01\xff", "not a valid protobuf"),  # timeReceived not UTF-8
        (b"\x08\x06", "unknown kad message type 6"),
        (b"\x42\x00", r"closerPeers\[0\] has an ID that is not a multihash"),  # empty ID
        (b"\x4a\x04\x0a\x02\x12\x20", r"providerPeers\[0\] has an ID"),  # digest missing
        (
            b"\x42\x05\x0a\x03\x00\x02\x01",
            r"not a multihash \(the multihash declares a 2-byte digest but holds 1\): 000201",
        ),  # digest too short
        (b"\x42\x43\x0a\x41" + b"\x00\x3f" + b"\x01" * 63, "not a multihash"),  # 65 bytes
    ],
)
def test_malformed_messages_are_refused_precisely(body: bytes, error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        _read(_frame(body))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (KadMessage(MessageType.GET_VALUE, b"k" * 33), "key of 33 bytes"),
        (KadMessage(MessageType.PUT_VALUE, record=KadRecord(b"k" * 33, b"")), "record key of 33"),
        (KadMessage(MessageType.PUT_VALUE, record=KadRecord(b"k", b"v" * 65)), "value of 65"),
        (KadMessage(MessageType.PUT_VALUE, record=KadRecord(b"k", b"", "t" * 11)), "timeReceived"),
    ],
)
def test_fields_over_the_limits_are_refused(message: KadMessage, error: str) -> None:
    small = KadLimits(max_key_bytes=32, max_value_bytes=64, max_time_received_length=10)
    frame = encode_kad_message(message)  # the default limits let it through
    with pytest.raises(PayloadTooLargeError, match=error):
        _read(frame, limits=small)
    with pytest.raises(PayloadTooLargeError):
        encode_kad_message(message, limits=small)


# --- what the reader drops, and counts -------------------------------------------------


def test_addresses_that_do_not_parse_are_dropped_and_counted() -> None:
    pb = dht_pb2.Message(type=dht_pb2.Message.FIND_NODE)
    pb.closerPeers.add(
        id=peer_id_bytes(PEER_A),
        addrs=[
            b"",  # empty
            b"\x04\x7f",  # ip4 cut short: py-multiaddr would read /ip4/0.0.0.127
            bytes.fromhex("ffff03") + b"\x00",  # protocol code unknown here
            ADDR_TCP + b"\x06",  # trailing partial component
            ADDR_TCP,
        ],
        connection=dht_pb2.Message.CONNECTED,
    )
    reader = KadMessageReader()
    reader.receive_data(_frame(pb.SerializeToString()))
    message = reader.next_message()
    assert message is not None
    assert message.closer_peers == (
        KadPeer(PEER_A, ("/ip4/127.0.0.1/tcp/4001",), ConnectionType.CONNECTED),
    )
    assert (reader.dropped_addrs, reader.dropped_peers) == (4, 0)


def test_peers_and_addresses_past_their_caps_are_dropped_and_counted() -> None:
    limits = KadLimits(
        max_closer_peers=2, max_provider_peers=1, max_addrs_per_peer=2, max_addr_bytes=10
    )
    long_addr = "/ip6/::1/tcp/1"  # 20 bytes, over max_addr_bytes
    peer = KadPeer(
        PEER_A, ("/ip4/127.0.0.1/tcp/1", long_addr, "/ip4/127.0.0.1/tcp/2", "/ip4/127.0.0.1/tcp/3")
    )
    message = KadMessage(
        MessageType.GET_PROVIDERS, b"k", closer_peers=(peer,) * 3, provider_peers=(peer,) * 3
    )
    reader = KadMessageReader(limits=limits)
    reader.receive_data(encode_kad_message(message))
    decoded = reader.next_message()
    assert decoded is not None
    kept = KadPeer(PEER_A, ("/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2"))
    assert decoded.closer_peers == (kept, kept)
    assert decoded.provider_peers == (kept,)
    assert reader.dropped_peers == 1 + 2
    assert reader.dropped_addrs == 3 * 2  # each kept peer: the long one and the third


def test_addresses_come_back_in_canonical_form() -> None:
    message = KadMessage(
        MessageType.FIND_NODE, closer_peers=(KadPeer(PEER_A, ("/ip6/0:0::1/tcp/1",)),)
    )
    (decoded,) = _decode_all(encode_kad_message(message))
    assert decoded.closer_peers[0].addrs == ("/ip6/::1/tcp/1",)


# --- what the encoder refuses ----------------------------------------------------------


def test_encoder_refuses_a_message_over_max_size() -> None:
    message = KadMessage(MessageType.PUT_VALUE, record=KadRecord(b"k", b"x" * 1000))
    with pytest.raises(PayloadTooLargeError, match=r"kad message is \d+ bytes; the limit is 1000"):
        encode_kad_message(message, max_size=1000)


def test_encoder_refuses_what_receivers_would_drop() -> None:
    limits = KadLimits(
        max_closer_peers=1, max_provider_peers=0, max_addrs_per_peer=1, max_addr_bytes=10
    )
    peer = KadPeer(PEER_A)
    with pytest.raises(PayloadTooLargeError, match="closer_peers has 2 peers"):
        encode_kad_message(
            KadMessage(MessageType.FIND_NODE, closer_peers=(peer, peer)), limits=limits
        )
    with pytest.raises(PayloadTooLargeError, match="provider_peers has 1 peers"):
        encode_kad_message(
            KadMessage(MessageType.ADD_PROVIDER, provider_peers=(peer,)), limits=limits
        )
    two_addrs = KadPeer(PEER_A, ("/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2"))
    with pytest.raises(PayloadTooLargeError, match=r"closer_peers\[0\] has 2 addresses"):
        encode_kad_message(
            KadMessage(MessageType.FIND_NODE, closer_peers=(two_addrs,)), limits=limits
        )
    long_addr = KadPeer(PEER_A, ("/ip6/::1/tcp/1",))
    with pytest.raises(PayloadTooLargeError, match="is 20 bytes"):
        encode_kad_message(
            KadMessage(MessageType.FIND_NODE, closer_peers=(long_addr,)), limits=limits
        )


@pytest.mark.parametrize(
    ("peer", "error"),
    [
        (KadPeer("12D3KooW0OIl"), "Invalid character '0'"),
        (KadPeer(""), "not a peer ID"),
        (KadPeer("1" * 129), "1 to 128 characters"),
        (KadPeer("abc"), "not a peer ID"),  # valid base58, not a multihash
        (KadPeer(PEER_A, ("/ip4/1.2.3/tcp/1",)), "not a multiaddr p2pnet can send"),
        (KadPeer(PEER_A, ("ip4/1.2.3.4/tcp/1",)), "not a multiaddr"),
        (KadPeer(PEER_A, ("/foo/1",)), "not a multiaddr"),
    ],
)
def test_encoder_refuses_bad_peer_ids_and_addresses(peer: KadPeer, error: str) -> None:
    with pytest.raises(InvalidAddressError, match=error):
        encode_kad_message(KadMessage(MessageType.FIND_NODE, closer_peers=(peer,)))


def test_cluster_level_must_fit_an_int32() -> None:
    for level in (-(2**31), 2**31 - 1):
        (decoded,) = _decode_all(
            encode_kad_message(KadMessage(MessageType.PING, cluster_level=level))
        )
        assert decoded.cluster_level == level
    with pytest.raises(ValueError, match="int32"):
        encode_kad_message(KadMessage(MessageType.PING, cluster_level=2**31))


def test_peer_id_helpers() -> None:
    assert peer_id_text(peer_id_bytes(PEER_C)) == PEER_C
    assert peer_id_bytes(PEER_C)[:2] == b"\x12\x20"
    with pytest.raises(InvalidAddressError, match="not a binary peer ID: empty"):
        peer_id_text(b"")
    with pytest.raises(InvalidAddressError, match="declares a 32-byte digest but holds 1"):
        peer_id_text(b"\x12\x20\x00")


def test_limits_and_max_size_must_be_sane() -> None:
    with pytest.raises(ValueError):
        KadLimits(max_key_bytes=-1)
    with pytest.raises(ValueError):
        KadMessageReader(max_size=0)
