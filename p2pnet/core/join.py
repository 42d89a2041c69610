"""Joining a swarm, and staying in it: whom to ask next and when (pure, ``now`` passed in).

A peer joins by asking a peer it knows for the peers closest to its own key. The one it
asks may not answer (gone, or a dropper that takes requests and never answers), or may
answer with nothing useful (no peer the joining one did not know). ``JoinPlan`` decides
whom to try next: bootstrap peers first, then peers learned since (from answers, or from
the routing table while it had peers), a few at once, each peer with its own exponential
backoff so that one that never answers is asked less and less often.

    JoinPolicy   timeouts, backoff and how many peers one attempt asks at once
    JoinPlan     the state: candidates, their failures, whether the peer has joined
    Attempt      decision: ask these peers now
    Wait         decision: nothing to do before ``until`` (None: nobody to ask at all)
    Joined       decision: joined; nothing to do until the routing table empties
    JoinStatus   what ``p2pnet status`` shows of it
    buckets_to_fill  decision: which buckets a peer that just joined looks into

An answer is *useful* when it added at least one peer other than the responder to the
routing table: then the peer has joined. Answers that were not useful leave the plan to
try the candidates not asked yet; once every candidate was asked and someone answered,
the peer counts as joined (a swarm of two has nobody else to name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from p2pnet.core.address import PeerAddress

__all__ = [
    "DEFAULT_JOINING",
    "Attempt",
    "JoinDecision",
    "JoinPlan",
    "JoinPolicy",
    "JoinStatus",
    "Joined",
    "Wait",
    "buckets_to_fill",
]

# Learned peers kept as candidates: enough to get past a few dead ones.
MAX_LEARNED: Final = 64


@dataclass(frozen=True, slots=True)
class JoinPolicy:
    """How a peer joins, and keeps trying when alone (docs/networking.md, "Joining").

    request_timeout: seconds one peer may take to answer a join request; those asked at
        once are asked concurrently, so a peer that never answers holds a join this long.
    per_attempt: peers asked at once.
    first_backoff: seconds before a peer that did not answer is asked again; doubled at
        each further failure, up to ``max_backoff``.
    check_interval: seconds between checks, while alone and waiting for a backoff to end,
        that others have joined through this peer (a joined peer is told when its routing
        table empties, and starts trying again).
    """

    request_timeout: float = 3.0
    per_attempt: int = 3
    first_backoff: float = 1.0
    max_backoff: float = 60.0
    check_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.request_timeout <= 0 or self.first_backoff <= 0 or self.check_interval <= 0:
            raise ValueError("join timeouts and intervals must be positive")
        if self.max_backoff < self.first_backoff:
            raise ValueError("max_backoff must be at least first_backoff")
        if self.per_attempt < 1:
            raise ValueError("per_attempt must be at least 1")

    def backoff(self, failures: int) -> float:
        """Seconds to wait after a peer's ``failures``-th failure in a row (``failures`` >= 1)."""
        if failures < 1:
            return 0.0
        # 2**60 is far beyond any cap; bounding the exponent keeps the float finite.
        return min(self.max_backoff, self.first_backoff * 2.0 ** min(failures - 1, 60))


DEFAULT_JOINING: Final = JoinPolicy()


@dataclass(frozen=True, slots=True)
class Attempt:
    """Ask these peers now (concurrently), then report each with ``on_answer`` or
    ``on_failure``."""

    peers: tuple[PeerAddress, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    """Nobody to ask before ``until`` (None: no candidate at all; ``add`` or ``learn``
    some)."""

    until: float | None


@dataclass(frozen=True, slots=True)
class Joined:
    """The peer has joined."""


JoinDecision = Attempt | Wait | Joined


@dataclass(frozen=True, slots=True)
class JoinStatus:
    """What the join is doing, for ``PeerStatus``.

    state: "joined", "alone" (nobody answered usefully yet: it keeps trying), or
        "not joining" (no peer to join through was given or learned).
    alone_since: when it last found itself alone (the plan's clock); None when joined.
    attempts: join requests sent since it was last joined (all of them if never).
    next_attempt_at: when it asks again (the plan's clock); None: not planned.
    """

    state: str
    alone_since: float | None
    attempts: int
    next_attempt_at: float | None


@dataclass(slots=True)
class _Candidate:
    address: PeerAddress
    bootstrap: bool
    asked: int = 0  # times asked since the plan last (re)started
    failures: int = 0  # failures in a row
    retry_at: float = 0.0


class JoinPlan:
    """Whom a peer asks to join, and when; it performs nothing.

    Call ``next(now)`` for the decision; after an ``Attempt``, report each peer asked
    with ``on_answer`` or ``on_failure``. ``alone(now)`` starts over (the routing table
    emptied): every candidate may be asked again at once.
    """

    def __init__(
        self, policy: JoinPolicy, local_peer_id: str, now: float, *, joined: bool = False
    ) -> None:
        self.policy = policy
        self._local = local_peer_id
        self._candidates: dict[str, _Candidate] = {}
        self._joined = joined
        self._answered = False  # someone answered since the plan (re)started
        self._alone_since: float | None = None if joined else now
        self._attempts = 0

    @property
    def joined(self) -> bool:
        return self._joined

    def add(self, peers: Iterable[PeerAddress]) -> None:
        """Bootstrap peers: asked before learned ones. A peer already known as a
        learned one becomes a bootstrap peer; this peer itself is left out."""
        for address in peers:
            if address.peer_id == self._local:
                continue
            known = self._candidates.get(address.peer_id)
            if known is None:
                self._candidates[address.peer_id] = _Candidate(address, bootstrap=True)
            else:
                known.bootstrap = True
                known.address = _merged(known.address, address)

    def learn(self, peers: Iterable[PeerAddress]) -> None:
        """Peers learned from answers or the routing table: candidates after the
        bootstrap peers; at most ``MAX_LEARNED`` are kept (the newest)."""
        for address in peers:
            if address.peer_id == self._local or not address.addrs:
                continue
            known = self._candidates.pop(address.peer_id, None)
            if known is None:
                known = _Candidate(address, bootstrap=False)
            elif known.address.addrs != address.addrs:  # (a joined peer relearns the same)
                known.address = _merged(known.address, address)
            self._candidates[address.peer_id] = known  # newest last
        learned = [pid for pid, c in self._candidates.items() if not c.bootstrap]
        for pid in learned[: max(0, len(learned) - MAX_LEARNED)]:
            del self._candidates[pid]

    def next(self, now: float) -> JoinDecision:
        """What to do now. Untried candidates (bootstrap peers first) are asked before
        any is asked again; once all were asked and one answered, the peer has joined."""
        if self._joined:
            return Joined()
        ordered = sorted(self._candidates.values(), key=lambda c: not c.bootstrap)
        fresh = [c for c in ordered if c.asked == 0]
        if fresh:
            return self._attempt(fresh, now)
        if self._answered:
            self._set_joined()
            return Joined()
        due = [c for c in ordered if c.retry_at <= now]
        if due:
            due.sort(key=lambda c: (c.retry_at, not c.bootstrap))
            return self._attempt(due, now)
        if not ordered:
            return Wait(None)
        return Wait(min(c.retry_at for c in ordered))

    def on_answer(self, peer_id: str, useful: bool, now: float) -> None:
        """``peer_id`` answered; ``useful``: its answer added a peer other than itself to
        the routing table (the peer has then joined)."""
        candidate = self._candidates.get(peer_id)
        if candidate is not None:
            candidate.failures = 0
            candidate.retry_at = now
        self._answered = True
        if useful:
            self._set_joined()

    def has_peers(self) -> None:
        """The routing table holds peers that no join of ours brought (others joined
        through this one, e.g. the first peer of a swarm): it has joined."""
        self._answered = True
        self._set_joined()

    def on_failure(self, peer_id: str, now: float) -> None:
        """``peer_id`` did not answer in time, or answered with an error."""
        candidate = self._candidates.get(peer_id)
        if candidate is None:
            return
        candidate.failures += 1
        candidate.retry_at = now + self.policy.backoff(candidate.failures)

    def alone(self, now: float) -> None:
        """The routing table emptied: start over, asking every candidate again (those
        backing off once their backoff ends)."""
        if not self._joined:
            return
        self._joined = False
        self._answered = False
        self._alone_since = now
        self._attempts = 0
        for candidate in self._candidates.values():
            candidate.asked = 0

    def status(self) -> JoinStatus:
        """The plan's state for ``p2pnet status`` (times on the plan's clock)."""
        if self._joined:
            return JoinStatus("joined", None, self._attempts, None)
        if not self._candidates:
            return JoinStatus("not joining", self._alone_since, self._attempts, None)
        fresh = any(c.asked == 0 for c in self._candidates.values())
        at = None if fresh else min(c.retry_at for c in self._candidates.values())
        return JoinStatus("alone", self._alone_since, self._attempts, at)

    def _attempt(self, candidates: list[_Candidate], now: float) -> Attempt:
        chosen = candidates[: self.policy.per_attempt]
        for c in chosen:
            c.asked += 1
            # Until its outcome is reported, it is not asked again.
            c.retry_at = now + self.policy.request_timeout
        self._attempts += len(chosen)
        return Attempt(tuple(c.address for c in chosen))

    def _set_joined(self) -> None:
        self._joined = True
        self._alone_since = None


def _merged(known: PeerAddress, fresh: PeerAddress) -> PeerAddress:
    addrs = tuple(dict.fromkeys((*fresh.addrs, *known.addrs)))
    return PeerAddress(known.peer_id, addrs)


def buckets_to_fill(
    bucket_sizes: Mapping[int, int], *, wanted: int = 1, key_bits: int = 256
) -> list[int]:
    """The buckets a peer looks into right after the lookup of its own key, farthest first.

    ``bucket_sizes``: peers per bucket index (0: the closest to us, ``key_bits - 1``: the
    half of the keyspace farthest from us); missing indices are empty. The lookup of our
    own key fills the buckets near us; of the buckets from the closest non-empty one out
    to the farthest, those holding fewer than ``wanted`` peers get a lookup that stops as
    soon as they hold ``wanted``. Buckets closer than the closest non-empty one stay
    empty: nobody that close is known. The others fill with traffic (peers that talk to
    us, peers that answer our lookups) and with the periodic refresh: a join costs a few
    new connections per empty bucket instead of a full lookup per bucket.
    """
    if wanted < 1:
        raise ValueError(f"wanted must be at least 1, got {wanted}")
    filled = [i for i, size in bucket_sizes.items() if size > 0]
    if not filled:
        return []
    return [i for i in range(key_bits - 1, min(filled) - 1, -1) if bucket_sizes.get(i, 0) < wanted]
