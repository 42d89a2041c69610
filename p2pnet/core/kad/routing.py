"""The Kademlia routing table: 256 k-buckets that decide, and leave the pinging to the caller.

Call ``update`` for every peer we heard from directly (it answered us or asked us
something), never for peers we were only told about. In a full bucket the table
does not evict on its own: it returns ``PingOldest``, keeps the newcomer pending,
and waits for ``on_ping_result``. A live oldest peer stays (long-lived peers are the
reliable ones); a dead one is replaced by the newcomer. Only one ping per bucket
is outstanding; newcomers arriving meanwhile are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from p2pnet.core.kad.keys import KEY_BITS, Key, PeerInfo, key_of

__all__ = [
    "Added",
    "Evicted",
    "Ignored",
    "PeerEntry",
    "PingDecision",
    "PingOldest",
    "Refreshed",
    "RoutingTable",
    "UpdateDecision",
]


@dataclass(frozen=True, slots=True)
class Added:
    """The peer is now in the table."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class Refreshed:
    """The peer was already in the table; it is now its bucket's most recently seen."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class PingOldest:
    """The bucket is full: ping ``oldest`` and report with ``on_ping_result``.

    ``candidate`` waits until then and takes ``oldest``'s place if the ping fails.
    """

    candidate: PeerInfo
    oldest: PeerInfo


@dataclass(frozen=True, slots=True)
class Evicted:
    """``evicted`` failed its ping and was replaced by ``added``."""

    evicted: PeerInfo
    added: PeerInfo


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing changed; ``reason`` says why (for logs)."""

    peer: PeerInfo
    reason: str


UpdateDecision = Added | Refreshed | PingOldest | Ignored
PingDecision = Refreshed | Evicted | Ignored


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """A snapshot of one table entry."""

    peer: PeerInfo
    last_seen: float
    failures: int


@dataclass(slots=True)
class _Entry:
    peer: PeerInfo
    last_seen: float
    failures: int = 0


@dataclass(slots=True)
class _Pending:
    candidate: PeerInfo
    candidate_seen: float
    oldest: PeerInfo
    since: float


class _Bucket:
    """Entries in least-recently-seen-first order (dict order), and at most one pending ping."""

    __slots__ = ("entries", "pending")

    def __init__(self) -> None:
        self.entries: dict[bytes, _Entry] = {}
        self.pending: _Pending | None = None

    def oldest(self) -> _Entry:
        return next(iter(self.entries.values()))

    def touch(self, entry: _Entry, now: float) -> None:
        """Mark ``entry`` as just seen: move it to the end."""
        del self.entries[entry.peer.key]
        self.entries[entry.peer.key] = entry
        entry.last_seen = now
        entry.failures = 0


class RoutingTable:
    """The k-buckets of the peer whose binary peer ID is ``local_key``.

    k: bucket size, the replication parameter (20 in the spec).
    max_failures: consecutive failed requests after which a peer is dropped.
    ping_timeout: seconds after which an unanswered ``PingOldest`` is abandoned, so a
        lost ping result cannot block its bucket forever.
    """

    def __init__(
        self,
        local_key: bytes,
        *,
        k: int = 20,
        max_failures: int = 3,
        ping_timeout: float = 60.0,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, got {max_failures}")
        self.local_key = local_key
        self.local_kad_key = key_of(local_key)
        self.k = k
        self.max_failures = max_failures
        self.ping_timeout = ping_timeout
        self._buckets: dict[int, _Bucket] = {}  # only non-empty buckets
        self._refreshed_at: list[float | None] = [None] * KEY_BITS

    def update(self, peer: PeerInfo, now: float) -> UpdateDecision:
        """Record that ``peer`` was heard from directly at ``now``.

        Returns what happened; only ``PingOldest`` asks the caller to act.
        """
        d = self.local_kad_key ^ peer.kad_key
        if d == 0:
            return Ignored(peer, "the local peer is never in its own table")
        index = d.bit_length() - 1
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        entry = bucket.entries.get(peer.key)
        if entry is not None:
            entry.peer = _merge(entry.peer, peer)
            bucket.touch(entry, now)
            if bucket.pending is not None and bucket.pending.oldest.key == peer.key:
                bucket.pending = None  # the oldest proved alive; the candidate loses
            return Refreshed(entry.peer)
        if len(bucket.entries) < self.k:
            bucket.entries[peer.key] = _Entry(peer, now)
            return Added(peer)
        pending = bucket.pending
        if pending is not None and now - pending.since < self.ping_timeout:
            if pending.candidate.key == peer.key:
                pending.candidate = _merge(pending.candidate, peer)
                pending.candidate_seen = now
                return Ignored(peer, "already waiting for the ping of its bucket's oldest peer")
            return Ignored(peer, f"bucket {index} is full and already pinging its oldest peer")
        oldest = bucket.oldest().peer
        bucket.pending = _Pending(peer, now, oldest, now)
        return PingOldest(peer, oldest)

    def on_ping_result(self, oldest: PeerInfo, alive: bool, now: float) -> PingDecision:
        """Apply the result of the ping a ``PingOldest`` asked for.

        Alive: ``oldest`` stays and the candidate is dropped. Dead: ``oldest`` is
        evicted and the candidate takes its place.
        """
        bucket = self._bucket_of(oldest)
        pending = bucket.pending if bucket is not None else None
        if bucket is None or pending is None or pending.oldest.key != oldest.key:
            return Ignored(oldest, "no ping of this peer is pending (resolved meanwhile)")
        bucket.pending = None
        entry = bucket.entries[oldest.key]
        if alive:
            bucket.touch(entry, now)
            return Refreshed(entry.peer)
        del bucket.entries[oldest.key]
        bucket.entries[pending.candidate.key] = _Entry(pending.candidate, pending.candidate_seen)
        return Evicted(entry.peer, pending.candidate)

    def record_failure(self, peer: PeerInfo, now: float) -> bool:
        """Count a failed request to ``peer``; True if that dropped it.

        The ``max_failures``-th consecutive failure drops the peer; any ``update``
        resets the count. A pending candidate that fails is forgotten.
        """
        bucket = self._bucket_of(peer)
        if bucket is None:
            return False
        entry = bucket.entries.get(peer.key)
        if entry is None:
            if bucket.pending is not None and bucket.pending.candidate.key == peer.key:
                bucket.pending = None
            return False
        entry.failures += 1
        if entry.failures < self.max_failures:
            return False
        self.remove(peer)
        return True

    def remove(self, peer: PeerInfo) -> bool:
        """Drop ``peer``; True if it was in the table.

        A candidate waiting on the bucket's ping takes the freed slot.
        """
        bucket = self._bucket_of(peer)
        if bucket is None or bucket.entries.pop(peer.key, None) is None:
            return False
        pending, bucket.pending = bucket.pending, None
        if pending is not None:
            bucket.entries[pending.candidate.key] = _Entry(
                pending.candidate, pending.candidate_seen
            )
        if not bucket.entries:
            del self._buckets[self._index_of(peer.kad_key)]
        return True

    def closest(self, target: Key, count: int | None = None) -> list[PeerInfo]:
        """Up to ``count`` (default k) peers closest to ``target``, closest first.

        Visits buckets in increasing order of distance to ``target``, so only the
        first few buckets are sorted.
        """
        count = self.k if count is None else count
        out: list[PeerInfo] = []
        for index in self._buckets_by_closeness(self.local_kad_key ^ target):
            peers = [e.peer for e in self._buckets[index].entries.values()]
            peers.sort(key=lambda p: p.kad_key ^ target)
            out.extend(peers)
            if len(out) >= count:
                break
        return out[:count]

    def stale_buckets(self, now: float, refresh_interval: float) -> list[int]:
        """Buckets to refresh: not refreshed for ``refresh_interval`` seconds.

        Covers every bucket from the closest non-empty one out to bucket 255: closer
        buckets cannot be filled, as we know no peer that close. Refresh one with a
        lookup for ``random_preimage_in_bucket``, then call ``mark_refreshed``. A
        periodic lookup of our own key finds the peers closer than that.
        """
        if not self._buckets:
            return []
        return [
            i
            for i in range(min(self._buckets), KEY_BITS)
            if (last := self._refreshed_at[i]) is None or now - last >= refresh_interval
        ]

    def mark_refreshed(self, index: int, now: float) -> None:
        """Record that a lookup for a key in bucket ``index`` completed at ``now``."""
        if not 0 <= index < KEY_BITS:
            raise ValueError(f"bucket index must be in 0..{KEY_BITS - 1}, got {index}")
        self._refreshed_at[index] = now

    def get(self, peer_key: bytes) -> PeerEntry | None:
        """The entry of the peer whose binary peer ID is ``peer_key``, if in the table."""
        kad_key = key_of(peer_key)
        if kad_key == self.local_kad_key:
            return None
        bucket = self._buckets.get(self._index_of(kad_key))
        entry = bucket.entries.get(peer_key) if bucket is not None else None
        if entry is None:
            return None
        return PeerEntry(entry.peer, entry.last_seen, entry.failures)

    def bucket(self, index: int) -> list[PeerInfo]:
        """The peers of bucket ``index``, least recently seen first."""
        bucket = self._buckets.get(index)
        return [] if bucket is None else [e.peer for e in bucket.entries.values()]

    def pending_ping(self, index: int) -> PingOldest | None:
        """The ping bucket ``index`` is waiting for, if any."""
        bucket = self._buckets.get(index)
        if bucket is None or bucket.pending is None:
            return None
        return PingOldest(bucket.pending.candidate, bucket.pending.oldest)

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, PeerInfo):
            return False
        bucket = self._bucket_of(peer)
        return bucket is not None and peer.key in bucket.entries

    def __iter__(self) -> Iterator[PeerInfo]:
        for index in sorted(self._buckets):
            for entry in self._buckets[index].entries.values():
                yield entry.peer

    def __len__(self) -> int:
        return sum(len(b.entries) for b in self._buckets.values())

    def _index_of(self, kad_key: Key) -> int:
        return (self.local_kad_key ^ kad_key).bit_length() - 1

    def _bucket_of(self, peer: PeerInfo) -> _Bucket | None:
        if peer.kad_key == self.local_kad_key:
            return None
        return self._buckets.get(self._index_of(peer.kad_key))

    def _buckets_by_closeness(self, d: int) -> list[int]:
        """Non-empty bucket indices, ordered so every peer of a bucket is closer to the
        target than every peer of the buckets after it (``d`` = local XOR target).

        A peer in bucket j is at distance ``d ^ x`` with ``x`` of bit length j + 1.
        Bucket msb(d) clears d's top bit, so it comes first; then buckets below it that
        clear a set bit of d (higher bits first), then those that set a clear bit
        (lower bits first); last the buckets above msb(d), nearest first.
        """
        top = d.bit_length() - 1
        indices = sorted(self._buckets)
        below = [j for j in indices if j < top]
        return (
            ([top] if top in self._buckets else [])
            + [j for j in reversed(below) if d >> j & 1]
            + [j for j in below if not d >> j & 1]
            + [j for j in indices if j > top]
        )


def _merge(known: PeerInfo, fresh: PeerInfo) -> PeerInfo:
    """``fresh``, keeping the known addresses when it brings none."""
    if fresh.addrs or not known.addrs:
        return fresh
    return PeerInfo(fresh.peer_id, fresh.key, known.addrs)
