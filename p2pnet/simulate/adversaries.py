"""Misbehaving peers, built from the outside of the code they attack: a host wrapper
(droppers and corruptors touch only the bytes of the DHT streams they serve), the DHT
node's declared ``intercept`` hook (sybils lie about one key), the peer's
``describe_records`` hook (forgers serve forged records).

    MisbehavingHost    a StreamHost whose DHT streams drop or scramble every answer
    SybilAnswers       a sybil's answers for the key it surrounds
    forged_records     the records a forger serves about its victims
    grind_peer_ids     peer IDs near a key, as an attacker grinds them
    adaptive_sybil_placement
                       how many sybils, how near, to stay under the density detector
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Final

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pnet.core.kad.keys import key_of
from p2pnet.core.kad.region import density_verdict
from p2pnet.core.kad.wire import KadMessage, KadPeer, MessageType
from p2pnet.core.peer_id import ED25519_KEY_PREFIX, peer_id_from_public_key
from p2pnet.core.records import CapabilityRecord, encode_record, sign_record
from p2pnet.dht.node import KAD_PROTOCOL, KadOverride
from p2pnet.errors import ConnectionLostError
from p2pnet.net.interfaces import ByteStream, ByteStreamHandler, HostWrapper, StreamHost

__all__ = [
    "MisbehavingHost",
    "SybilAnswers",
    "SybilPlacement",
    "adaptive_sybil_placement",
    "forged_envelope",
    "grind_peer_ids",
    "tampered_envelope",
]

IDENTITY_MULTIHASH_PREFIX: Final = b"\x00\x24" + ED25519_KEY_PREFIX  # identity, 36 bytes


class _ScramblingStream:
    """A stream whose writes arrive scrambled: the first two bytes (the length prefix of
    a kad frame) kept, every other byte flipped."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self.peer_id = stream.peer_id

    async def read(self) -> bytes:
        return await self._stream.read()

    async def write(self, data: bytes) -> None:
        await self._stream.write(data[:2] + bytes(b ^ 0xA5 for b in data[2:]))

    async def close(self) -> None:
        await self._stream.close()

    async def reset(self) -> None:
        await self._stream.reset()


async def _drop_everything(stream: ByteStream) -> None:
    """Read requests and never answer: callers wait for their RPC timeout."""
    try:
        while await stream.read():
            pass
    except ConnectionLostError:
        pass
    await stream.reset()


class MisbehavingHost(HostWrapper):
    """``host``, except that the DHT streams it serves are a dropper's (nothing is ever
    answered) or a corruptor's (every answer scrambled)."""

    def __init__(self, host: StreamHost, behaviour: str) -> None:
        if behaviour not in ("dropper", "corruptor"):
            raise ValueError(f"unknown behaviour {behaviour!r}: dropper or corruptor")
        super().__init__(host)
        self._behaviour = behaviour

    def set_stream_handler(self, protocol: str, handler: ByteStreamHandler) -> None:
        if protocol == KAD_PROTOCOL:
            if self._behaviour == "dropper":
                handler = _drop_everything
            else:
                honest = handler

                async def scrambled(stream: ByteStream) -> None:
                    await honest(_ScramblingStream(stream))

                handler = scrambled
        self._host.set_stream_handler(protocol, handler)


class SybilAnswers:
    """A sybil's ``intercept`` hook: for ``target``, announcements are swallowed and
    lookups answered with no provider and only fellow sybils as closer peers; other
    keys are answered honestly. ``fellows`` is filled once every sybil exists."""

    def __init__(self, target: bytes, k: int) -> None:
        self.target = target
        self.k = k
        self.fellows: tuple[KadPeer, ...] = ()

    def __call__(self, request: KadMessage, sender: str) -> KadOverride | None:
        if request.key != self.target:
            return None
        if request.type is MessageType.ADD_PROVIDER:
            return KadOverride(None)
        if request.type in (MessageType.FIND_NODE, MessageType.GET_PROVIDERS):
            closer = tuple(p for p in self.fellows if p.peer_id != sender)[: self.k]
            return KadOverride(KadMessage(request.type, request.key, closer_peers=closer))
        return None


def forged_envelope(claim: CapabilityRecord, forger: Ed25519PrivateKey) -> bytes:
    """``claim`` (naming a victim) signed with the forger's own key."""
    payload = encode_record(claim)
    public = forger.public_key().public_bytes_raw()
    return bytes(msgpack.packb([payload, public, forger.sign(payload)], use_bin_type=True))


def tampered_envelope(record: CapabilityRecord, key: Ed25519PrivateKey) -> bytes:
    """The forger's own record with one bit of its signature flipped."""
    own = sign_record(record, key)
    return own[:-1] + bytes([own[-1] ^ 1])


def grind_peer_ids(target: bytes, count: int, bits: int, rng: random.Random) -> list[str]:
    """``count`` peer IDs whose DHT position shares at least ``bits`` leading bits with
    ``target``'s: random 32-byte "public keys" (no private key) tried until one fits,
    2**bits tries each on average. This is what an attacker does to surround a key."""
    goal = key_of(target) >> (256 - bits) if bits else 0
    found: list[str] = []
    while len(found) < count:
        public = rng.randbytes(32)
        position = int.from_bytes(hashlib.sha256(IDENTITY_MULTIHASH_PREFIX + public).digest())
        if bits == 0 or position >> (256 - bits) == goal:
            peer_id = peer_id_from_public_key(public)
            if peer_id not in found:
                found.append(peer_id)
    return found


@dataclass(frozen=True, slots=True)
class SybilPlacement:
    """Where an adaptive attacker puts its sybils: ``count`` of them sharing ``bits``
    leading bits with the key; by its own sampling they hold ``slots`` of the key's k
    closest on average and the detector catches ``caught`` of the lookups."""

    count: int
    bits: int
    slots: float
    caught: float


def adaptive_sybil_placement(
    network_size: int,
    most: int,
    *,
    k: int,
    threshold: float,
    rng: random.Random,
    trials: int = 200,
) -> SybilPlacement:
    """How many sybils (at most ``most``) an attacker who knows the
    network size and the density detector grinds to share ``bits`` leading bits with a
    key, to hold as many of the key's k closest slots as it can while the detector,
    judging against the true size, calls at most half of the lookups suspicious: it
    stays just under the threshold. Found by sampling: the k closest honest peers'
    prefix lengths to a random key, ``trials`` times, against sybils ``bits`` +
    Geometric(1/2) deep."""

    def prefix_length(bits: int) -> int:
        extra = rng.getrandbits(32)
        return bits + (32 - extra.bit_length())

    honest = [
        sorted((prefix_length(0) for _ in range(network_size)), reverse=True)[:k]
        for _ in range(trials)
    ]

    def outcome(count: int, bits: int) -> tuple[float, float]:
        """(share of lookups caught, mean slots of the k closest held)."""
        caught = held = 0
        for sample in honest:
            ranked = sorted(
                [(cpl, rng.random(), False) for cpl in sample]
                + [(prefix_length(bits), rng.random(), True) for _ in range(count)],
                reverse=True,
            )[:k]
            held += sum(1 for _, _, sybil in ranked if sybil)
            caught += density_verdict(
                float(network_size), [cpl for cpl, _, _ in ranked], k=k, threshold=threshold
            ).suspicious
        return caught / trials, held / trials

    best = SybilPlacement(0, 0, 0.0, 0.0)
    low = max(0, network_size.bit_length() - 3)
    for bits in range(low, network_size.bit_length() + 7):
        lo, hi = 0, most  # the most sybils at these bits the detector lets through
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if outcome(mid, bits)[0] <= 0.5:
                lo = mid
            else:
                hi = mid - 1
        if lo:
            caught, held = outcome(lo, bits)
            if held > best.slots:
                best = SybilPlacement(lo, bits, held, caught)
    return best
