"""The Kademlia routing table: 256 k-buckets that decide, and leave the pinging to the caller.

Call ``update`` for every peer we heard from directly (it answered us or asked us
something), never for peers we were only told about. In a full bucket the table
does not evict on its own: it returns ``PingOldest``, keeps the newcomer pending,
and waits for ``on_ping_result``. A live oldest peer stays (long-lived peers are the
reliable ones); a dead one is replaced by the newcomer. Only one ping per bucket
is outstanding; newcomers arriving meanwhile are ignored. No ping is asked for while
the oldest peer was heard from within ``known_alive_for`` and has not failed since
(BEP 5's "good" node: heard from within 15 minutes): every peer of the bucket is then
known to be alive, and the newcomer is ignored.

Given ``group_of`` (``p2pnet.core.kad.diversity``), the table also keeps IP groups
apart: a peer whose group already has ``limits.per_bucket`` peers in its bucket, or
``limits.per_table`` in the table, is ignored, and so is a waiting candidate that would
break a limit when its slot frees up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from p2pnet.core.kad.diversity import DiversityLimits, GroupCounts, GroupOf
from p2pnet.core.kad.keys import KEY_BITS, Key, PeerInfo, key_of

__all__ = [
    "Added",
    "Dropped",
    "Evicted",
    "Ignored",
    "PeerEntry",
    "PingDecision",
    "PingOldest",
    "Refreshed",
    "RoutingTable",
    "UpdateDecision",
]


# BEP 5 (BitTorrent's Kademlia): a node is "good" if it was heard from within 15 minutes.
KNOWN_ALIVE_FOR: Final = 15 * 60.0


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
class Dropped:
    """``dropped`` failed its ping and left the table; ``candidate`` did not take its
    place, as its IP group reached a limit meanwhile (``reason``)."""

    dropped: PeerInfo
    candidate: PeerInfo
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing changed; ``reason`` says why (for logs). ``group``: the IP group whose
    limit kept the peer out, or None if it was something else."""

    peer: PeerInfo
    reason: str
    group: str | None = None


UpdateDecision = Added | Refreshed | PingOldest | Ignored
PingDecision = Refreshed | Evicted | Dropped | Ignored


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
    groups: frozenset[str] = frozenset()  # the IP groups it is counted in


@dataclass(slots=True)
class _Pending:
    candidate: PeerInfo
    candidate_seen: float
    oldest: PeerInfo
    since: float


class _Bucket:
    """Entries in least-recently-seen-first order (dict order), at most one pending ping,
    and how many entries each IP group has."""

    __slots__ = ("entries", "groups", "pending")

    def __init__(self) -> None:
        self.entries: dict[bytes, _Entry] = {}
        self.pending: _Pending | None = None
        self.groups = GroupCounts()

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
    known_alive_for: seconds a peer heard from counts as alive: a full bucket whose
        oldest peer was heard from more recently (and has not failed since) ignores a
        newcomer without a ping. 0: ping whenever a full bucket meets a newcomer.
    group_of: the IP groups of a peer; with it, ``limits`` caps each group per bucket
        and per table. Without it, nothing is limited.
    """

    def __init__(
        self,
        local_key: bytes,
        *,
        k: int = 20,
        max_failures: int = 3,
        ping_timeout: float = 60.0,
        known_alive_for: float = KNOWN_ALIVE_FOR,
        group_of: GroupOf | None = None,
        limits: DiversityLimits = DiversityLimits(),
    ) -> None:
        if known_alive_for < 0:
            raise ValueError(f"known_alive_for must be >= 0, got {known_alive_for}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, got {max_failures}")
        self.local_key = local_key
        self.local_kad_key = key_of(local_key)
        self.k = k
        self.max_failures = max_failures
        self.ping_timeout = ping_timeout
        self.known_alive_for = known_alive_for
        self.group_of = group_of
        self.limits = limits
        self._buckets: dict[int, _Bucket] = {}  # only non-empty buckets
        self._groups = GroupCounts()  # entries of each IP group in the whole table
        # Bucket index -> when it was last refreshed; only buckets ever refreshed (a list
        # of 256 slots is 2 KB per table, for ~15 buckets that are ever refreshed).
        self._refreshed_at: dict[int, float] = {}

    def update(self, peer: PeerInfo, now: float) -> UpdateDecision:
        """Record that ``peer`` was heard from directly at ``now``.

        Returns what happened; only ``PingOldest`` asks the caller to act. A peer new to
        the table whose IP group is at its limit is ``Ignored``, with the ``group``.
        """
        d = self.local_kad_key ^ peer.kad_key
        if d == 0:
            return Ignored(peer, "the local peer is never in its own table")
        index = d.bit_length() - 1
        bucket = self._buckets.get(index)
        entry = bucket.entries.get(peer.key) if bucket is not None else None
        if bucket is not None and entry is not None:
            self._refresh(bucket, index, entry, peer, now)
            if bucket.pending is not None and bucket.pending.oldest.key == peer.key:
                bucket.pending = None  # the oldest proved alive; the candidate loses
            return Refreshed(entry.peer)
        groups = self._groups_of(peer)
        refusal = self._refusal(peer, groups, index, bucket)
        if refusal is not None:
            return refusal
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        if len(bucket.entries) < self.k:
            self._insert(bucket, _Entry(peer, now, groups=groups))
            return Added(peer)
        pending = bucket.pending
        if pending is not None and now - pending.since < self.ping_timeout:
            if pending.candidate.key == peer.key:
                pending.candidate = _merge(pending.candidate, peer)
                pending.candidate_seen = now
                return Ignored(peer, "already waiting for the ping of its bucket's oldest peer")
            return Ignored(peer, f"bucket {index} is full and already pinging its oldest peer")
        entry = bucket.oldest()
        if entry.failures == 0 and now - entry.last_seen < self.known_alive_for:
            return Ignored(
                peer, f"bucket {index} is full and its oldest peer was heard from recently"
            )
        oldest = entry.peer
        bucket.pending = _Pending(peer, now, oldest, now)
        return PingOldest(peer, oldest)

    def on_ping_result(self, oldest: PeerInfo, alive: bool, now: float) -> PingDecision:
        """Apply the result of the ping a ``PingOldest`` asked for.

        Alive: ``oldest`` stays and the candidate is dropped. Dead: ``oldest`` is
        evicted and the candidate takes its place (``Evicted``), unless its IP group
        reached a limit meanwhile (``Dropped``: the slot stays free).
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
        self._take_out(bucket, entry)
        refusal = self._take_candidate(bucket, pending)
        if refusal is not None:
            if not bucket.entries:
                del self._buckets[self._index_of(oldest.kad_key)]
            return Dropped(entry.peer, pending.candidate, refusal.reason)
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

        A candidate waiting on the bucket's ping takes the freed slot, if its IP group
        stays within the limits.
        """
        bucket = self._bucket_of(peer)
        entry = bucket.entries.get(peer.key) if bucket is not None else None
        if bucket is None or entry is None:
            return False
        self._take_out(bucket, entry)
        pending, bucket.pending = bucket.pending, None
        if pending is not None:
            self._take_candidate(bucket, pending)
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
            if (last := self._refreshed_at.get(i)) is None or now - last >= refresh_interval
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

    def group_count(self, group: str, index: int | None = None) -> int:
        """Peers of IP group ``group`` in the table, or in bucket ``index``."""
        if index is None:
            return self._groups.get(group)
        bucket = self._buckets.get(index)
        return 0 if bucket is None else bucket.groups.get(group)

    def _groups_of(self, peer: PeerInfo) -> frozenset[str]:
        return frozenset() if self.group_of is None else self.group_of(peer)

    def _refusal(
        self,
        peer: PeerInfo,
        groups: frozenset[str],
        index: int,
        bucket: _Bucket | None,
        *,
        leaving: frozenset[str] = frozenset(),
    ) -> Ignored | None:
        """Why ``peer`` (of ``groups``) may not join bucket ``index``, or None if it may.
        ``leaving``: the groups of an entry it replaces in that bucket."""
        if not groups:
            return None
        limits = self.limits
        for group in sorted(groups):
            freed = group in leaving
            in_table = self._groups.get(group) - freed
            if in_table >= limits.per_table:
                return Ignored(
                    peer, f"IP group {group} already has {in_table} peers in the table", group
                )
            in_bucket = (bucket.groups.get(group) if bucket is not None else 0) - freed
            if in_bucket >= limits.per_bucket:
                return Ignored(
                    peer,
                    f"IP group {group} already has {in_bucket} peers in bucket {index}",
                    group,
                )
        return None

    def _insert(self, bucket: _Bucket, entry: _Entry) -> None:
        bucket.entries[entry.peer.key] = entry
        bucket.groups.add(entry.groups)
        self._groups.add(entry.groups)

    def _take_out(self, bucket: _Bucket, entry: _Entry) -> None:
        del bucket.entries[entry.peer.key]
        bucket.groups.discard(entry.groups)
        self._groups.discard(entry.groups)

    def _take_candidate(self, bucket: _Bucket, pending: _Pending) -> Ignored | None:
        """Put the candidate that waited on ``bucket``'s ping into the slot just freed,
        unless its IP group reached a limit meanwhile (then why not)."""
        candidate = pending.candidate
        groups = self._groups_of(candidate)
        refusal = self._refusal(candidate, groups, self._index_of(candidate.kad_key), bucket)
        if refusal is None:
            self._insert(bucket, _Entry(candidate, pending.candidate_seen, groups=groups))
        return refusal

    def _refresh(
        self, bucket: _Bucket, index: int, entry: _Entry, peer: PeerInfo, now: float
    ) -> None:
        """``entry`` was heard from again as ``peer``: it becomes the most recently seen,
        with ``peer``'s addresses unless they would move it into an IP group at its limit
        (then it keeps the addresses it has)."""
        merged = _merge(entry.peer, peer)
        if merged.addrs != entry.peer.addrs and self.group_of is not None:
            groups = self.group_of(merged)
            if groups != entry.groups:
                if self._refusal(merged, groups, index, bucket, leaving=entry.groups) is not None:
                    merged = PeerInfo(merged.peer_id, merged.key, entry.peer.addrs)
                else:
                    bucket.groups.discard(entry.groups)
                    self._groups.discard(entry.groups)
                    entry.groups = groups
                    bucket.groups.add(groups)
                    self._groups.add(groups)
        entry.peer = merged
        bucket.touch(entry, now)

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
