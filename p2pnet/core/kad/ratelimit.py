"""A per-peer token bucket, so one peer cannot make a DHT node do unbounded work."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class RateLimiter:
    """Each peer may make ``burst`` requests at once and ``rate`` per second after that.

    Memory is bounded: at most ``max_peers`` peers are tracked, the least recently
    active forgotten first. A forgotten peer starts again with a full bucket, which
    it would have had anyway once idle for ``burst / rate`` seconds.
    """

    def __init__(self, rate: float, burst: float, *, max_peers: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise ValueError("rate must be positive, burst and max_peers at least 1")
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently active first

    def allow(self, peer_id: str, now: float) -> bool:
        """Take one token from ``peer_id``'s bucket at ``now``; False if it has none."""
        bucket = self._buckets.get(peer_id)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[peer_id] = bucket
            if len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer_id)
            elapsed = max(0.0, now - bucket.updated_at)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated_at = max(now, bucket.updated_at)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def forget_idle(self, now: float) -> int:
        """Forget peers whose bucket has refilled (nothing is lost); returns how many."""
        full_after = self.burst / self.rate
        dropped = 0
        while self._buckets:
            peer_id, bucket = next(iter(self._buckets.items()))
            if now - bucket.updated_at < full_after:
                break  # later entries were active more recently
            del self._buckets[peer_id]
            dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._buckets)
