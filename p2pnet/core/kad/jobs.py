"""Which of our own provider records (or values) are due to be announced again.

Remote stores forget a record ``ttl`` seconds after they received it, so we announce
each of ours every ``interval`` seconds, with ``interval`` < ``ttl``. The defaults
announce more than twice per TTL, so a record survives one failed round.
"""

from __future__ import annotations

from typing import Final

from p2pnet.core.kad.store import DEFAULT_PROVIDER_TTL

__all__ = ["DEFAULT_REPUBLISH_INTERVAL", "RepublishSchedule"]

DEFAULT_REPUBLISH_INTERVAL: Final = 11 * 3600.0


class RepublishSchedule:
    """Our own keys and when each is next due for (re)publishing.

    ``add`` a key to have it due at once; after announcing it call ``published``,
    which makes it due again ``interval`` seconds later, or ``failed``, which makes it
    due again ``retry_delay`` seconds later.
    """

    def __init__(
        self,
        interval: float = DEFAULT_REPUBLISH_INTERVAL,
        ttl: float = DEFAULT_PROVIDER_TTL,
        *,
        retry_delay: float = 60.0,
    ) -> None:
        if not 0 < interval < ttl:
            raise ValueError(
                f"republish interval ({interval} s) must be positive and below the "
                f"record TTL ({ttl} s), or records expire between announcements"
            )
        if not 0 < retry_delay <= interval:
            raise ValueError(f"retry_delay must be in (0, interval], got {retry_delay}")
        self.interval = interval
        self.ttl = ttl
        self.retry_delay = retry_delay
        self._due_at: dict[bytes, float] = {}

    def add(self, key: bytes, now: float) -> None:
        """Start publishing ``key`` (or announce it again soon): it is due at ``now``."""
        self._due_at[key] = now

    def remove(self, key: bytes) -> None:
        """Stop publishing ``key`` (e.g. we no longer serve the model)."""
        self._due_at.pop(key, None)

    def published(self, key: bytes, now: float) -> None:
        """``key`` was announced at ``now``; it is due again at ``now + interval``."""
        if key in self._due_at:
            self._due_at[key] = now + self.interval

    def failed(self, key: bytes, now: float) -> None:
        """Announcing ``key`` failed at ``now``; it is due again at ``now + retry_delay``."""
        if key in self._due_at:
            self._due_at[key] = now + self.retry_delay

    def due(self, now: float) -> list[bytes]:
        """Keys due at ``now``, the longest overdue first."""
        due = sorted((at, key) for key, at in self._due_at.items() if at <= now)
        return [key for _, key in due]

    def next_due(self) -> float | None:
        """When the next key falls due (maybe already past), or None with no keys."""
        return min(self._due_at.values(), default=None)

    def __contains__(self, key: object) -> bool:
        return key in self._due_at

    def __len__(self) -> int:
        return len(self._due_at)
