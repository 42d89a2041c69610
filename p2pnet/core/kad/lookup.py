"""The iterative lookup for the peers closest to a key, as a state machine with no I/O.

The driver loops: send a request to each peer ``next_queries(now)`` returns, report
each answer with ``on_success`` or ``on_failure``, call ``next_queries`` again when
an answer arrives or at ``next_timeout()``; stop when ``is_finished``. At most
``alpha`` requests are in flight; a request unanswered after ``rpc_timeout`` counts
as failed, and a late answer to it is ignored.

The lookup finishes, as in the spec, once the k closest peers it knows of that have
not failed have all answered, or when no peer is left to ask or the query budget is
spent. Only the k closest live peers are ever asked, so a lookup does not wander.

With ``region_bits`` set, the lookup also asks every live peer it learns of that
shares at least that many leading bits with the target (the key's region,
``p2pnet.core.kad.region``), up to ``max_region`` peers: sybils ground next to a key
can hold its k closest slots but cannot hide the honest peers of its region.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from p2pnet.core.kad.keys import KEY_BITS, Key, PeerInfo, key_of

__all__ = ["ClosestPeersLookup", "LookupStats"]


class _State(enum.Enum):
    NOT_CONTACTED = enum.auto()
    WAITING = enum.auto()
    SUCCEEDED = enum.auto()
    FAILED = enum.auto()


@dataclass(slots=True)
class _Candidate:
    peer: PeerInfo
    depth: int
    state: _State = _State.NOT_CONTACTED
    sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class LookupStats:
    """Counters of one lookup.

    queries: requests sent. successes, failures: answers and failures reported;
    timeouts: the failures that were timeouts. hops: the largest depth of a peer
    discovered, where seeds have depth 0 and a peer first learned from the answer of
    a peer at depth d has depth d + 1: the longest chain of answers the lookup used.
    """

    queries: int
    successes: int
    failures: int
    timeouts: int
    hops: int


class ClosestPeersLookup:
    """Find the ``k`` peers closest to ``target`` (key bytes, as sent on the wire).

    seeds: the closest peers we know, usually ``table.closest(key_of(target))``.
    local_key: our own binary peer ID; peers with it are never queried or returned.
    max_queries: budget of requests; the lookup stops asking once it is spent.
    started_at: the ``now`` it was created at, for a deadline on the whole lookup.
    """

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[PeerInfo],
        *,
        now: float,
        k: int = 20,
        alpha: int = 3,
        rpc_timeout: float = 10.0,
        max_queries: int = 200,
        local_key: bytes | None = None,
        region_bits: int | None = None,
        max_region: int = 100,
    ) -> None:
        if k < 1 or alpha < 1 or max_queries < 1:
            raise ValueError("k, alpha and max_queries must be at least 1")
        if region_bits is not None and not 0 <= region_bits <= KEY_BITS:
            raise ValueError(f"region_bits must be in 0..{KEY_BITS}, got {region_bits}")
        self.target = target
        self.target_key: Key = key_of(target)
        self.k = k
        self.alpha = alpha
        self.rpc_timeout = rpc_timeout
        self.max_queries = max_queries
        self.started_at = now
        self._local_key = local_key
        # Distances below this are in the region: a peer at distance d shares
        # 256 - d.bit_length() leading bits with the target.
        self._region_below = 0 if region_bits is None else 1 << (KEY_BITS - region_bits)
        self.max_region = max(k, max_region)
        self._candidates: dict[bytes, _Candidate] = {}
        self._order: list[tuple[int, bytes]] = []  # (distance, peer key), sorted
        self._in_flight: dict[bytes, _Candidate] = {}
        self._finished = False
        self._queries = self._successes = self._failures = self._timeouts = self._hops = 0
        for peer in seeds:
            self._discover(peer, depth=0)

    @property
    def is_finished(self) -> bool:
        return self._finished

    @property
    def in_flight(self) -> int:
        """Requests sent and neither answered, failed nor timed out."""
        return len(self._in_flight)

    @property
    def stats(self) -> LookupStats:
        return LookupStats(
            self._queries, self._successes, self._failures, self._timeouts, self._hops
        )

    def next_queries(self, now: float) -> list[PeerInfo]:
        """Peers to send a request to now, marked as in flight (may be empty).

        Also expires requests older than ``rpc_timeout`` and decides termination:
        when it returns an empty list with nothing in flight, ``is_finished`` is True.
        """
        if self._finished:
            return []
        self._expire(now)
        out: list[PeerInfo] = []
        live = 0
        for dist, peer_key in self._order:
            candidate = self._candidates[peer_key]
            if candidate.state is _State.FAILED:
                continue
            live += 1
            if not self._within(live, dist):
                break
            if candidate.state is _State.NOT_CONTACTED:
                if len(self._in_flight) >= self.alpha or self._queries >= self.max_queries:
                    break
                candidate.state = _State.WAITING
                candidate.sent_at = now
                self._in_flight[peer_key] = candidate
                self._queries += 1
                out.append(candidate.peer)
        if not out and not self._in_flight:
            self._finished = True
        return out

    def next_timeout(self) -> float | None:
        """When the oldest request in flight times out, or None if none is in flight."""
        if not self._in_flight:
            return None
        return min(c.sent_at for c in self._in_flight.values()) + self.rpc_timeout

    def on_success(self, peer: PeerInfo, closer: Iterable[PeerInfo], now: float) -> bool:
        """Record ``peer``'s answer, with the closer peers it named (the first k count).

        Returns False, changing nothing, when no request to ``peer`` is in flight
        (unknown peer, already reported, timed out, or the lookup is finished).
        """
        candidate = self._waiting(peer)
        if candidate is None:
            return False
        candidate.state = _State.SUCCEEDED
        del self._in_flight[peer.key]
        self._successes += 1
        for found in itertools.islice(closer, self.k):  # bounds what one answer can add
            self._discover(found, candidate.depth + 1)
        return True

    def on_failure(self, peer: PeerInfo, now: float) -> bool:
        """Record that the request to ``peer`` failed; False if none was in flight."""
        candidate = self._waiting(peer)
        if candidate is None:
            return False
        candidate.state = _State.FAILED
        del self._in_flight[peer.key]
        self._failures += 1
        return True

    def stop(self) -> None:
        """Finish now (e.g. a value lookup has its answer); later reports are ignored."""
        self._finished = True

    def result(self) -> list[PeerInfo]:
        """The ``k`` closest peers that answered, closest first, and after them those of
        the region that answered (up to ``max_region`` in all)."""
        out: list[PeerInfo] = []
        for dist, peer_key in self._order:
            candidate = self._candidates[peer_key]
            if candidate.state is _State.SUCCEEDED:
                if not self._within(len(out) + 1, dist):
                    break
                out.append(candidate.peer)
        return out

    def _within(self, rank: int, dist: int) -> bool:
        """Whether the ``rank``-th closest live peer, at ``dist``, is to be asked."""
        return rank <= self.k or (dist < self._region_below and rank <= self.max_region)

    def _discover(self, peer: PeerInfo, depth: int) -> None:
        if peer.key in self._candidates or peer.key == self._local_key:
            return
        self._candidates[peer.key] = _Candidate(peer, depth)
        bisect.insort(self._order, (peer.kad_key ^ self.target_key, peer.key))
        self._hops = max(self._hops, depth)

    def _waiting(self, peer: PeerInfo) -> _Candidate | None:
        return None if self._finished else self._in_flight.get(peer.key)

    def _expire(self, now: float) -> None:
        expired = [c for c in self._in_flight.values() if now - c.sent_at >= self.rpc_timeout]
        for candidate in expired:
            candidate.state = _State.FAILED
            del self._in_flight[candidate.peer.key]
            self._failures += 1
            self._timeouts += 1
