"""Peer addresses and identities (core): splitting /p2p/ off and back, relayed addresses,
key files in libp2p's protobuf."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from p2pnet.core.address import (
    PeerAddress,
    parse_peer_address,
    split_peer_id,
    transport_part,
    with_peer_id,
)
from p2pnet.core.identity import Identity
from p2pnet.errors import InvalidAddressError

TARGET = "12D3KooWGzBkWBrGkEEVpFH6sGzDQTnS8Y6XqDo3JVBjFpcH9dJf"
RELAY = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
RELAYED = f"/ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{TARGET}"


def test_a_relayed_address_round_trips() -> None:
    address = parse_peer_address(RELAYED)
    assert address == PeerAddress(TARGET, (f"/ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit",))
    assert str(address) == RELAYED
    assert address.full_addrs == [RELAYED]
    assert split_peer_id(RELAYED) == (address.addrs[0], TARGET)
    assert with_peer_id(address.addrs[0], TARGET) == RELAYED


def test_only_the_trailing_peer_id_is_split_off() -> None:
    circuit = f"/ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit"
    assert split_peer_id(circuit) == (circuit, None)
    assert transport_part(circuit) == circuit
    assert transport_part(f"/ip4/127.0.0.1/tcp/1/p2p/{TARGET}") == "/ip4/127.0.0.1/tcp/1"
    assert with_peer_id(f"/ip4/127.0.0.1/tcp/1/p2p/{TARGET}", TARGET).count("/p2p/") == 1
    assert PeerAddress.of(TARGET, [RELAYED, f"/memory/3/p2p/{TARGET}", "/memory/3"]).addrs == (
        f"/ip4/192.0.2.7/tcp/4001/p2p/{RELAY}/p2p-circuit",
        "/memory/3",
    )


def test_bare_peer_ids_and_bad_addresses() -> None:
    assert parse_peer_address(f" {TARGET} ") == PeerAddress(TARGET)
    assert str(PeerAddress(TARGET)) == TARGET
    with pytest.raises(InvalidAddressError, match="no /p2p/<peer-id> part"):
        parse_peer_address("/ip4/127.0.0.1/tcp/4001")
    with pytest.raises(InvalidAddressError, match="not a valid multiaddr"):
        parse_peer_address("/ip4/999.0.0.1/tcp/4001/p2p/" + TARGET)
    with pytest.raises(InvalidAddressError, match=r"neither a multiaddr nor a peer ID|neither"):
        parse_peer_address("not-a-peer")


def test_identity_file_bytes_match_py_libp2p_both_ways() -> None:
    seed = bytes(range(32))
    ours = Identity.from_seed(seed)
    theirs = create_new_key_pair(seed)
    assert ours.to_protobuf() == theirs.private_key.serialize()
    assert ours.peer_id == str(ID.from_pubkey(theirs.public_key))
    assert Identity.from_protobuf(theirs.private_key.serialize()).seed == seed
    assert deserialize_private_key(ours.to_protobuf()).to_bytes() == seed
    # go-libp2p writes the seed and the public key
    go_format = b"\x08\x01\x12\x40" + seed + ours.public_key
    assert Identity.from_protobuf(go_format).peer_id == ours.peer_id
    with pytest.raises(ValueError, match="public half"):
        Identity.from_protobuf(b"\x08\x01\x12\x40" + seed + bytes(32))
    with pytest.raises(ValueError, match="secp256k1"):
        Identity.from_protobuf(b"\x08\x02\x12\x20" + seed)
    assert seed.hex() not in repr(ours)


@given(st.binary(max_size=80))
def test_random_key_bytes_raise_value_error_only(data: bytes) -> None:
    try:
        Identity.from_protobuf(data)
    except ValueError:
        pass
