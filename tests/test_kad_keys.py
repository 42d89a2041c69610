"""The kad keyspace: golden keys, and the XOR metric and bucket math as properties."""

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.core.kad.keys import (
    KEY_BITS,
    Key,
    PeerInfo,
    bucket_index,
    closest_peers,
    common_prefix_length,
    distance,
    key_for_model,
    key_for_task,
    key_from_digest,
    key_of,
    key_to_bytes,
    random_preimage_in_bucket,
    sort_by_distance,
)
from p2pnet.errors import InvalidModelIdError, UsageError

MODEL = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
keys = st.integers(0, (1 << KEY_BITS) - 1).map(Key)


def test_key_is_sha256_of_the_bytes_big_endian() -> None:
    digest = hashlib.sha256(b"/p2pnet/task/emotion").digest()
    assert key_of(b"/p2pnet/task/emotion") == int.from_bytes(digest, "big")
    assert key_to_bytes(key_of(b"")).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert key_from_digest(digest) == key_of(b"/p2pnet/task/emotion")
    with pytest.raises(ValueError):
        key_from_digest(b"short")


def test_model_and_task_keys_are_the_documented_bytes() -> None:
    # multihashes, as go/js kad-dht require of provider keys
    hello = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"  # CID of b"hello"
    assert key_for_model(hello) == b"\x12\x20" + hashlib.sha256(b"hello").digest()
    assert key_for_model(MODEL.upper()) == key_for_model(MODEL)  # canonical text
    assert key_for_task("emotion") == b"\x12\x20" + hashlib.sha256(b"/p2pnet/task/emotion").digest()
    assert (
        key_for_task("résumé")
        == b"\x12\x20" + hashlib.sha256("/p2pnet/task/résumé".encode()).digest()
    )
    with pytest.raises(InvalidModelIdError):
        key_for_model("not-a-cid")
    with pytest.raises(UsageError):
        key_for_task("")


def test_peer_info_position_is_the_hash_of_its_binary_peer_id() -> None:
    peer = PeerInfo("12D3KooW...", b"\x00\x24peer", ("/ip4/127.0.0.1/tcp/1",))
    assert peer.kad_key == key_of(b"\x00\x24peer")
    assert peer == PeerInfo("12D3KooW...", b"\x00\x24peer", ("/ip4/127.0.0.1/tcp/1",))


@given(keys, keys, keys)
def test_xor_is_a_metric(a: Key, b: Key, c: Key) -> None:
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@given(keys, keys)
def test_xor_is_unidirectional(a: Key, b: Key) -> None:
    # Exactly one key lies at a given distance from a: lookups for it converge.
    assert Key(a ^ distance(a, b)) == b


@given(keys, keys)
def test_bucket_index_is_the_distance_magnitude(local: Key, other: Key) -> None:
    if local == other:
        with pytest.raises(ValueError):
            bucket_index(local, other)
        assert common_prefix_length(local, other) == KEY_BITS
        return
    index = bucket_index(local, other)
    assert 1 << index <= distance(local, other) < 1 << (index + 1)
    assert index + common_prefix_length(local, other) == KEY_BITS - 1
    assert bucket_index(other, local) == index


@given(keys, st.lists(st.binary(min_size=1, max_size=8), max_size=30, unique=True))
def test_ordering_helpers_agree(target: Key, raw: list[bytes]) -> None:
    peers = [PeerInfo(r.hex(), r) for r in raw]
    ordered = sort_by_distance(target, peers)
    dists = [distance(p.kad_key, target) for p in ordered]
    assert dists == sorted(dists)
    assert closest_peers(target, peers, 5) == ordered[:5]


@pytest.mark.parametrize("index", [255, 254, 250])
def test_random_preimage_lands_in_the_bucket(index: int) -> None:
    rng = random.Random(index)
    local = key_of(b"local")
    preimage = random_preimage_in_bucket(local, index, rng)
    assert preimage is not None
    assert bucket_index(local, key_of(preimage)) == index


@settings(max_examples=50, deadline=None)
@given(keys, st.integers(246, 255), st.integers(0, 1 << 32))
def test_preimages_of_far_buckets_come_from_the_pool_without_a_search(
    local: Key, index: int, seed: int
) -> None:
    rng = random.Random(seed)
    """With no attempt to search allowed, the far buckets (down to 246: the pool holds
    ~64 preimages in each) still get a preimage, and different draws differ."""
    drawn = {random_preimage_in_bucket(local, index, rng, max_attempts=0) for _ in range(8)}
    assert None not in drawn
    assert all(bucket_index(local, key_of(p)) == index for p in drawn if p is not None)
    assert len(drawn) > 1


def test_random_preimage_gives_up_on_unreachable_buckets() -> None:
    assert random_preimage_in_bucket(key_of(b"x"), 3, random.Random(1), max_attempts=50) is None
    with pytest.raises(ValueError):
        random_preimage_in_bucket(key_of(b"x"), 256, random.Random(1))
