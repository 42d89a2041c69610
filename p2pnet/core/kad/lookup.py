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

``DisjointLookup`` runs ``d`` such lookups at once over disjoint paths (S/Kademlia,
Baumgart and Mies 2007): the seeds are dealt among the paths and no peer is asked by
two paths, so a path led astray by lying peers leaves the others untouched.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from p2pnet.core.kad.keys import KEY_BITS, Key, PeerInfo, key_of

__all__ = [
    "DEFAULT_LOOKUP_PATHS",
    "ClosestPeersLookup",
    "DisjointLookup",
    "LookupStats",
    "PathClaims",
]

# Disjoint paths a DHT node's lookups run over, chosen from measured success and cost
# (docs/security.md, "Disjoint lookup paths").
DEFAULT_LOOKUP_PATHS = 1

_MAX_QUERIES = 200  # requests one lookup (one path of a disjoint lookup) may send


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


class PathClaims:
    """What the paths of one ``DisjointLookup`` share: the peers some path has asked
    (``claimed``), which the other paths skip as if they were not there, and how many
    more requests all paths together may send to region peers beyond each path's own
    ``k`` closest (``region_allowance``)."""

    def __init__(self, region_allowance: int) -> None:
        self.claimed: set[bytes] = set()
        self.region_allowance = region_allowance


class ClosestPeersLookup:
    """Find the ``k`` peers closest to ``target`` (key bytes, as sent on the wire).

    seeds: the closest peers we know, usually ``table.closest(key_of(target))``.
    local_key: our own binary peer ID; peers with it are never queried or returned.
    max_queries: budget of requests; the lookup stops asking once it is spent.
    started_at: the ``now`` it was created at, for a deadline on the whole lookup.
    claims: shared with the other paths of a ``DisjointLookup`` (None: a lookup on its
        own): peers they asked are skipped, region requests beyond the k closest are
        drawn from their common allowance.
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
        max_queries: int = _MAX_QUERIES,
        local_key: bytes | None = None,
        region_bits: int | None = None,
        max_region: int = 100,
        claims: PathClaims | None = None,
    ) -> None:
        if k < 1 or alpha < 1 or max_queries < 1:
            raise ValueError("k, alpha and max_queries must be at least 1")
        self.target = target
        self.target_key: Key = key_of(target)
        self.k = k
        self.alpha = alpha
        self.rpc_timeout = rpc_timeout
        self.max_queries = max_queries
        self.started_at = now
        self._local_key = local_key
        self._region_below = _region_below(region_bits)
        self.max_region = max(k, max_region)
        self._claims = claims
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
            if candidate.state is _State.FAILED or self._claimed_elsewhere(candidate):
                continue
            live += 1
            if not self._within(live, dist):
                break
            if candidate.state is _State.NOT_CONTACTED:
                if len(self._in_flight) >= self.alpha or self._queries >= self.max_queries:
                    break
                if not self._claim(peer_key, beyond_k=live > self.k):
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

    def answered(self) -> list[PeerInfo]:
        """Every peer that answered, closest first."""
        return [
            self._candidates[key].peer
            for _, key in self._order
            if self._candidates[key].state is _State.SUCCEEDED
        ]

    def _within(self, rank: int, dist: int) -> bool:
        """Whether the ``rank``-th closest live peer, at ``dist``, is to be asked."""
        return rank <= self.k or (dist < self._region_below and rank <= self.max_region)

    def _claimed_elsewhere(self, candidate: _Candidate) -> bool:
        """Whether another path of our disjoint lookup asked this peer we have not."""
        return (
            self._claims is not None
            and candidate.state is _State.NOT_CONTACTED
            and candidate.peer.key in self._claims.claimed
        )

    def _claim(self, peer_key: bytes, *, beyond_k: bool) -> bool:
        """Take a peer to ask for this path; False if it is a region peer beyond our k
        closest and the paths have spent their region allowance."""
        claims = self._claims
        if claims is None:
            return True
        if beyond_k:
            if claims.region_allowance <= 0:
                return False
            claims.region_allowance -= 1
        claims.claimed.add(peer_key)
        return True

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


class DisjointLookup:
    """Find the ``k`` peers closest to ``target`` over ``paths`` disjoint paths
    (S/Kademlia); driven as ``ClosestPeersLookup`` is.

    The seeds (the ``k`` closest, as ``ClosestPeersLookup`` takes them) are dealt
    round-robin, closest first, among the paths. Each path is an iterative lookup of
    its own, with its own candidates, ``alpha`` requests in flight and termination (its
    k closest live peers answered, or nobody left to ask, or its budget spent); a peer
    is asked by one path only, and a path skips the peers another has asked as if they
    were not there. So a path that reaches a liar is fed only that liar's answers, and
    the others go on without them. The lookup finishes once every path has.

    max_queries: the whole lookup's budget, split evenly among the paths (a path that
        follows liars cannot spend the others' share); default 200 per path, as a
        ``ClosestPeersLookup``'s.
    max_region: region peers beyond each path's k closest are asked up to
        ``max_region - k`` in all, and the result holds at most ``max_region`` peers.

    Raises:
        ValueError: ``paths`` below 1, a budget smaller than one request per path, or
            a bad ``k``, ``alpha`` or ``region_bits``.
    """

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[PeerInfo],
        *,
        now: float,
        paths: int,
        k: int = 20,
        alpha: int = 3,
        rpc_timeout: float = 10.0,
        max_queries: int | None = None,
        local_key: bytes | None = None,
        region_bits: int | None = None,
        max_region: int = 100,
    ) -> None:
        if paths < 1:
            raise ValueError(f"paths must be at least 1, got {paths}")
        budget = _MAX_QUERIES * paths if max_queries is None else max_queries
        if budget < paths:
            raise ValueError(f"max_queries ({budget}) must allow one request per path ({paths})")
        self.target = target
        self.target_key: Key = key_of(target)
        self.k = k
        self.max_queries = budget
        self.max_region = max(k, max_region)
        self.started_at = now
        self._region_below = _region_below(region_bits)
        target_key = self.target_key
        ordered = sorted(
            {p.key: p for p in seeds if p.key != local_key}.values(),
            key=lambda p: p.kad_key ^ target_key,
        )
        # One path is a plain lookup: nothing to share, and the same answers give the
        # same requests and result.
        claims = PathClaims(region_allowance=self.max_region - k) if paths > 1 else None
        self.paths = [
            ClosestPeersLookup(
                target,
                ordered[i::paths],
                now=now,
                k=k,
                alpha=alpha,
                rpc_timeout=rpc_timeout,
                max_queries=budget // paths + (i < budget % paths),
                local_key=local_key,
                region_bits=region_bits,
                max_region=max_region,
                claims=claims,
            )
            for i in range(paths)
        ]

    @property
    def is_finished(self) -> bool:
        return all(path.is_finished for path in self.paths)

    @property
    def in_flight(self) -> int:
        return sum(path.in_flight for path in self.paths)

    @property
    def stats(self) -> LookupStats:
        """The paths' counters summed; ``hops``: the longest path's."""
        each = [path.stats for path in self.paths]
        return LookupStats(
            sum(s.queries for s in each),
            sum(s.successes for s in each),
            sum(s.failures for s in each),
            sum(s.timeouts for s in each),
            max(s.hops for s in each),
        )

    def next_queries(self, now: float) -> list[PeerInfo]:
        """Every path's next requests (see ``ClosestPeersLookup.next_queries``)."""
        return [peer for path in self.paths for peer in path.next_queries(now)]

    def next_timeout(self) -> float | None:
        times = [t for path in self.paths if (t := path.next_timeout()) is not None]
        return min(times, default=None)

    def on_success(self, peer: PeerInfo, closer: Iterable[PeerInfo], now: float) -> bool:
        """Give ``peer``'s answer to the path that asked it; False if none is waiting
        for it."""
        return any(path.on_success(peer, closer, now) for path in self.paths)

    def on_failure(self, peer: PeerInfo, now: float) -> bool:
        return any(path.on_failure(peer, now) for path in self.paths)

    def stop(self) -> None:
        for path in self.paths:
            path.stop()

    def result(self) -> list[PeerInfo]:
        """Of the peers that answered on any path, the ``k`` closest, closest first, and
        after them those of the region (up to ``max_region`` in all)."""
        answered = sorted(
            (peer.kad_key ^ self.target_key, peer.key, peer)
            for path in self.paths
            for peer in path.answered()
        )
        out: list[PeerInfo] = []
        for dist, _, peer in answered:
            rank = len(out) + 1
            if not (rank <= self.k or (dist < self._region_below and rank <= self.max_region)):
                break
            out.append(peer)
        return out


def _region_below(region_bits: int | None) -> int:
    """Distances below this are in the region (0: no region): a peer at distance d
    shares 256 - d.bit_length() leading bits with the target.

    Raises:
        ValueError: ``region_bits`` outside 0..256.
    """
    if region_bits is None:
        return 0
    if not 0 <= region_bits <= KEY_BITS:
        raise ValueError(f"region_bits must be in 0..{KEY_BITS}, got {region_bits}")
    return 1 << (KEY_BITS - region_bits)
