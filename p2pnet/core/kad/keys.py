"""The Kademlia keyspace of the libp2p kad-dht spec: positions, XOR distance, buckets.

Every key has a position, ``sha256(key bytes)`` read as a 256-bit big-endian int. A
record key's bytes are the ones on the wire (``key_for_model``, ``key_for_task``); a
peer's are its peer ID's multihash bytes (the binary peer ID). Distance is the XOR of
two positions; a peer at distance ``d`` from us belongs in bucket ``d.bit_length() - 1``,
so bucket 255 holds half the keyspace and bucket 0 a single position.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NewType

from multiformats import CID

from p2pnet.core.model_id import parse_model_id
from p2pnet.errors import UsageError

__all__ = [
    "KEY_BITS",
    "PREIMAGE_POOL_SIZE",
    "SHA256_MULTIHASH_PREFIX",
    "TASK_KEY_PREFIX",
    "Key",
    "PeerInfo",
    "bucket_index",
    "closest_peers",
    "common_prefix_length",
    "distance",
    "key_for_model",
    "key_for_task",
    "key_from_digest",
    "key_of",
    "key_to_bytes",
    "random_preimage_in_bucket",
    "sort_by_distance",
]

KEY_BITS: Final = 256
SHA256_MULTIHASH_PREFIX: Final = b"\x12\x20"  # multihash code sha2-256, length 32
TASK_KEY_PREFIX: Final = b"/p2pnet/task/"

Key = NewType("Key", int)
"""A position in the keyspace: sha256 of a key's bytes as an int in 0 .. 2**256 - 1."""


def key_of(preimage: bytes) -> Key:
    """The position of ``preimage`` (record key bytes, or a peer ID's multihash bytes)."""
    return Key(int.from_bytes(hashlib.sha256(preimage).digest(), "big"))


def key_from_digest(digest: bytes) -> Key:
    """The position whose 32 big-endian bytes are ``digest``."""
    if len(digest) != KEY_BITS // 8:
        raise ValueError(f"a key is {KEY_BITS // 8} bytes, got {len(digest)}")
    return Key(int.from_bytes(digest, "big"))


def key_to_bytes(key: Key) -> bytes:
    """The 32 big-endian bytes of ``key`` (the sha256 digest it came from)."""
    return key.to_bytes(KEY_BITS // 8, "big")


def distance(a: Key, b: Key) -> int:
    """XOR distance between two positions."""
    return a ^ b


def common_prefix_length(a: Key, b: Key) -> int:
    """Number of leading bits ``a`` and ``b`` share (256 when equal)."""
    return KEY_BITS - (a ^ b).bit_length()


def bucket_index(local: Key, other: Key) -> int:
    """The k-bucket of ``local``'s table that ``other`` belongs in: 0 (closest) .. 255.

    Raises:
        ValueError: ``other`` is ``local``; a table never holds its own peer.
    """
    d = local ^ other
    if d == 0:
        raise ValueError("a key has no bucket in its own routing table")
    return d.bit_length() - 1


def random_preimage_in_bucket(
    local: Key, index: int, rng: random.Random, *, max_attempts: int = 1 << 16
) -> bytes | None:
    """Random 32 bytes whose position falls in bucket ``index`` of ``local``'s table.

    Used as the target of a bucket refresh lookup. Positions are hashes, so a bucket
    ``i`` is hit with probability ``2**(i - 256)``: the preimage is drawn from a pool of
    ``PREIMAGE_POOL_SIZE`` random preimages sorted by position (made once per process)
    when the pool holds some in the bucket (it holds ``2**(i - 240)`` in bucket ``i`` on
    average); else searched for, and None after ``max_attempts`` misses, the expected
    outcome below bucket ~240.
    """
    if not 0 <= index < KEY_BITS:
        raise ValueError(f"bucket index must be in 0..{KEY_BITS - 1}, got {index}")
    # Bucket i: the positions that share local's bits above i and differ at bit i.
    low = ((local >> index) ^ 1) << index
    positions, preimages = _preimage_pool()
    first = bisect.bisect_left(positions, low)
    found = bisect.bisect_left(positions, low + (1 << index), first) - first
    if found:
        return preimages[first + rng.randrange(found)]
    for _ in range(max_attempts):
        preimage = rng.randbytes(32)
        if (local ^ key_of(preimage)).bit_length() - 1 == index:
            return preimage
    return None


PREIMAGE_POOL_SIZE: Final = 1 << 16


@functools.cache
def _preimage_pool() -> tuple[list[Key], list[bytes]]:
    """``PREIMAGE_POOL_SIZE`` random preimages and their positions, by position: 65,536
    hashes once (~0.1 s) instead of ~2**(256 - i) per refresh of bucket i. The same
    pool in every process: nothing depends on its being secret, and a simulation stays
    a function of its seed."""
    draw = random.Random(PREIMAGE_POOL_SIZE)
    pairs = sorted((key_of(p), p) for p in (draw.randbytes(32) for _ in range(PREIMAGE_POOL_SIZE)))
    return [k for k, _ in pairs], [p for _, p in pairs]


def key_for_model(model_id: str) -> bytes:
    """The DHT key under which providers of ``model_id`` are announced: the multihash of
    the model ID's CID (``12 20`` + the sha2-256 of the model file), as IPFS announces a CID.

    go- and js-libp2p kad-dht nodes accept only multihash keys in ADD_PROVIDER and
    GET_PROVIDERS, so the key is one; it is also what anyone holding the file computes.

    Raises:
        InvalidModelIdError: ``model_id`` is not a model ID.
    """
    return bytes(CID.decode(parse_model_id(model_id)).digest)


def key_for_task(task: str) -> bytes:
    """The DHT key under which peers serving a model for ``task`` are announced.

    The sha2-256 multihash (``12 20`` + digest) of ``b"/p2pnet/task/" + task as UTF-8``:
    a multihash, as other kad-dht implementations require of provider keys, whose
    preimage keeps task keys apart from model keys. The text is used as given (case and
    spaces matter), so callers should use canonical task tags.

    Raises:
        UsageError: ``task`` is empty.
    """
    if not task:
        raise UsageError("a task tag cannot be empty")
    return SHA256_MULTIHASH_PREFIX + hashlib.sha256(TASK_KEY_PREFIX + task.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the DHT knows of a peer: its ID, its key and where to dial it.

    peer_id: the peer ID as text (base58), for logs and the caller's own maps.
    key: the peer ID's multihash bytes (the binary peer ID): its identity here.
    addrs: multiaddrs as text; may be empty when the caller already has a connection.
    kad_key: the peer's position, ``key_of(key)``, computed once.
    """

    peer_id: str
    key: bytes
    addrs: tuple[str, ...] = ()
    kad_key: Key = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kad_key", key_of(self.key))


def sort_by_distance(target: Key, peers: Iterable[PeerInfo]) -> list[PeerInfo]:
    """``peers`` sorted by increasing distance to ``target``."""
    return sorted(peers, key=lambda p: p.kad_key ^ target)


def closest_peers(target: Key, peers: Iterable[PeerInfo], count: int) -> list[PeerInfo]:
    """The ``count`` peers closest to ``target``, closest first."""
    return heapq.nsmallest(count, peers, key=lambda p: p.kad_key ^ target)
