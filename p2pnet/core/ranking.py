"""Which provider of a model to try first: decisions from measurements, with no I/O.

A caller measures each provider it talks to (round-trip time of a success, time of a
failure) and asks ``rank`` for the order in which to try them. Time is an argument:
``now`` and every timestamp are seconds on one monotonic clock (trio's, in services).

The order, first to last:

1. Healthy providers: no failure within ``failure_cooldown`` seconds (or a success
   since the last failure). Among them, by expected latency, lowest first. A
   provider never measured is expected to answer in ``unknown_latency`` seconds
   (100 ms by default): it comes after providers measured faster than that and
   before slower ones. So a known-fast provider keeps being used, and a newly
   found one is tried before one known to be slow (exploration without a coin toss).
2. Cooling providers: a failure within the cooldown, fewest recent failures first,
   then the one whose last failure is oldest (closest to recovering), then by
   expected latency. They come last, not never: if every provider failed, the
   caller still has an order to retry in.

Backoff, for callers (``p2pnet.core.failover.attempt_order``): after a failure a
provider is not called again for ``backoff_base * 2**(n-1)`` seconds, n being its
failures within the cooldown, at most ``backoff_cap``; a caller tries it only once
every provider not in backoff has failed. Ranking and backoff are separate: a
provider out of backoff but within its cooldown is tried, last.

Ties keep the order of ``candidates`` (the sort is stable), so the DHT's order
(closest first) decides between equals. A success clears a provider's failures; a
failure older than the cooldown is forgotten. Latency is an exponentially weighted
moving average (EWMA) of successful round trips; a failure is not a latency sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Final

__all__ = [
    "DEFAULT_POLICY",
    "ProviderScore",
    "ProviderStats",
    "ProviderStatsTable",
    "RankingPolicy",
    "rank",
    "score",
]


@dataclass(frozen=True, slots=True)
class RankingPolicy:
    """The knobs of ranking.

    alpha: weight of a new latency sample in the EWMA (1.0 keeps only the last one).
    failure_cooldown: seconds after a failure during which the provider ranks last.
    unknown_latency: latency, in seconds, assumed for a provider never measured.
    max_failures_kept: failure timestamps kept per provider (the count saturates there).
    backoff_base: seconds a provider is not called after its first failure; each
        further failure within the cooldown doubles it.
    backoff_cap: the longest backoff, in seconds.
    """

    alpha: float = 0.3
    failure_cooldown: float = 60.0
    unknown_latency: float = 0.1
    max_failures_kept: int = 8
    backoff_base: float = 1.0
    backoff_cap: float = 60.0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not self.failure_cooldown >= 0.0:
            raise ValueError(f"failure_cooldown must be >= 0, got {self.failure_cooldown}")
        if not 0.0 <= self.unknown_latency < math.inf:
            raise ValueError(f"unknown_latency must be finite and >= 0, got {self.unknown_latency}")
        if self.max_failures_kept < 1:
            raise ValueError("max_failures_kept must be at least 1")
        if not 0.0 <= self.backoff_base <= self.backoff_cap < math.inf:
            raise ValueError(
                "backoff_base and backoff_cap must be finite, with 0 <= base <= cap, got "
                f"{self.backoff_base} and {self.backoff_cap}"
            )


DEFAULT_POLICY: Final = RankingPolicy()


@dataclass(frozen=True, slots=True)
class ProviderStats:
    """What this node measured of one provider. Immutable: updates return a new value.

    latency: EWMA of successful round trips in seconds, None until the first success.
    samples: successful round trips measured.
    failures: times of the failures since the last success, oldest first (at most
        ``max_failures_kept``).
    last_success: time of the last success, or None.
    """

    latency: float | None = None
    samples: int = 0
    failures: tuple[float, ...] = ()
    last_success: float | None = None

    def after_success(
        self, latency: float, now: float, policy: RankingPolicy = DEFAULT_POLICY
    ) -> ProviderStats:
        """These stats after a successful round trip of ``latency`` seconds at ``now``.

        Raises:
            ValueError: ``latency`` is negative or not finite.
        """
        if not 0.0 <= latency < math.inf:
            raise ValueError(f"latency must be finite and >= 0, got {latency}")
        ewma = (
            latency
            if self.latency is None
            else policy.alpha * latency + (1.0 - policy.alpha) * self.latency
        )
        return ProviderStats(ewma, self.samples + 1, (), now)

    def after_latency_sample(
        self, latency: float, policy: RankingPolicy = DEFAULT_POLICY
    ) -> ProviderStats:
        """These stats with one more latency sample that says nothing of failures (a
        peer that answers a describe request may still fail calls).

        Raises:
            ValueError: ``latency`` is negative or not finite.
        """
        sampled = self.after_success(latency, self.last_success or 0.0, policy)
        return replace(sampled, failures=self.failures, last_success=self.last_success)

    def after_failure(self, now: float, policy: RankingPolicy = DEFAULT_POLICY) -> ProviderStats:
        """These stats after a failed attempt at ``now`` (unreachable, timed out, refused)."""
        kept = (*self.failures, now)[-policy.max_failures_kept :]
        return replace(self, failures=kept)

    def recent_failures(self, now: float, policy: RankingPolicy = DEFAULT_POLICY) -> int:
        """Failures within ``failure_cooldown`` seconds before ``now``: those whose cooldown
        ends after ``now`` (``t + cooldown``, computed as ``cooling_until`` computes it: in
        floating point ``now - t < cooldown`` can hold when ``t + cooldown == now``)."""
        return sum(1 for t in self.failures if now < t + policy.failure_cooldown)

    def cooling_until(self, now: float, policy: RankingPolicy = DEFAULT_POLICY) -> float | None:
        """When the provider counts as healthy again, or None if it does now."""
        if not self.recent_failures(now, policy):
            return None
        return self.failures[-1] + policy.failure_cooldown

    def backoff_until(self, now: float, policy: RankingPolicy = DEFAULT_POLICY) -> float | None:
        """Until when callers should not call this provider again, or None if they may
        now: ``backoff_base * 2**(n-1)`` (at most ``backoff_cap``) seconds after its last
        failure, n being its failures within the cooldown."""
        failures = self.recent_failures(now, policy)
        if not failures:
            return None
        backoff = min(policy.backoff_base * 2.0 ** min(failures - 1, 64), policy.backoff_cap)
        until = self.failures[-1] + backoff
        return until if now < until else None


@dataclass(frozen=True, slots=True)
class ProviderScore:
    """One provider's place in a ranking, and why.

    healthy: no failure within the cooldown.
    expected_latency: the measured EWMA, or the policy's ``unknown_latency``.
    measured: whether ``expected_latency`` was measured.
    recent_failures: failures within the cooldown.
    cooling_until: when an unhealthy provider counts as healthy again (None if healthy).
    """

    peer_id: str
    healthy: bool
    expected_latency: float
    measured: bool
    recent_failures: int
    cooling_until: float | None

    def sort_key(self) -> tuple[int, int, float, float]:
        """Healthy first; then fewest failures, oldest failure, lowest latency."""
        if self.healthy:
            return (0, 0, 0.0, self.expected_latency)
        assert self.cooling_until is not None
        return (1, self.recent_failures, self.cooling_until, self.expected_latency)


def score(
    peer_id: str,
    stats: ProviderStats | None,
    now: float,
    policy: RankingPolicy = DEFAULT_POLICY,
) -> ProviderScore:
    """The score of one provider (``stats`` None: never measured)."""
    stats = stats or ProviderStats()
    failures = stats.recent_failures(now, policy)
    return ProviderScore(
        peer_id=peer_id,
        healthy=failures == 0,
        expected_latency=policy.unknown_latency if stats.latency is None else stats.latency,
        measured=stats.latency is not None,
        recent_failures=failures,
        cooling_until=stats.cooling_until(now, policy),
    )


def rank(
    candidates: Iterable[str],
    stats: Mapping[str, ProviderStats],
    now: float,
    policy: RankingPolicy = DEFAULT_POLICY,
) -> list[ProviderScore]:
    """``candidates`` (peer IDs) in the order to try them, each with its score.

    A peer ID given twice is ranked once, at its first place.
    """
    seen: set[str] = set()
    scores = []
    for peer_id in candidates:
        if peer_id not in seen:
            seen.add(peer_id)
            scores.append(score(peer_id, stats.get(peer_id), now, policy))
    scores.sort(key=ProviderScore.sort_key)
    return scores


class ProviderStatsTable(Mapping[str, ProviderStats]):
    """The stats of up to ``max_peers`` providers; the least recently updated go first.

    A mapping peer ID -> ProviderStats, so ``rank(candidates, table, now)`` works.
    """

    def __init__(self, policy: RankingPolicy = DEFAULT_POLICY, max_peers: int = 10_000) -> None:
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        self.policy = policy
        self.max_peers = max_peers
        self._stats: dict[str, ProviderStats] = {}

    def __getitem__(self, peer_id: str) -> ProviderStats:
        return self._stats[peer_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._stats)

    def __len__(self) -> int:
        return len(self._stats)

    def record_success(self, peer_id: str, latency: float, now: float) -> ProviderStats:
        """Note a successful round trip of ``latency`` seconds to ``peer_id`` at ``now``.

        Raises:
            ValueError: ``latency`` is negative or not finite.
        """
        current = self._stats.pop(peer_id, None) or ProviderStats()
        return self._put(peer_id, current.after_success(latency, now, self.policy))

    def record_latency(self, peer_id: str, latency: float) -> ProviderStats:
        """Note a latency sample for ``peer_id`` that leaves its failures as they are.

        Raises:
            ValueError: ``latency`` is negative or not finite.
        """
        current = self._stats.pop(peer_id, None) or ProviderStats()
        return self._put(peer_id, current.after_latency_sample(latency, self.policy))

    def record_failure(self, peer_id: str, now: float) -> ProviderStats:
        """Note a failed attempt on ``peer_id`` at ``now``."""
        current = self._stats.pop(peer_id, None) or ProviderStats()
        return self._put(peer_id, current.after_failure(now, self.policy))

    def backoff_until(self, peer_id: str, now: float) -> float | None:
        """Until when ``peer_id`` should not be called again, or None if it may now."""
        stats = self._stats.get(peer_id)
        return None if stats is None else stats.backoff_until(now, self.policy)

    def forget(self, peer_id: str) -> None:
        """Drop what is known of ``peer_id``."""
        self._stats.pop(peer_id, None)

    def rank(self, candidates: Iterable[str], now: float) -> list[ProviderScore]:
        """``rank(candidates, self, now, self.policy)``."""
        return rank(candidates, self._stats, now, self.policy)

    def _put(self, peer_id: str, stats: ProviderStats) -> ProviderStats:
        self._stats[peer_id] = stats  # (re)inserted last: dicts keep insertion order
        while len(self._stats) > self.max_peers:
            del self._stats[next(iter(self._stats))]
        return stats
