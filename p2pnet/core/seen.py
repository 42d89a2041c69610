"""The verified capability records a peer has been sent lately: what its gateways list as
the network's models and tasks (MCP tools, OpenAI-style ``/v1/models``) without a search.
Bounded: the least recently seen are forgotten first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from p2pnet.core.records import CapabilityRecord

__all__ = ["DEFAULT_SEEN_CAPACITY", "SeenRecords"]

# Records kept: one per (provider, model); about 1 KiB each.
DEFAULT_SEEN_CAPACITY = 1024


class SeenRecords:
    """Verified records by (provider, model), the newest ``seq`` of each kept."""

    def __init__(self, capacity: int = DEFAULT_SEEN_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._records: OrderedDict[tuple[str, str], CapabilityRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, records: Iterable[CapabilityRecord]) -> None:
        """Remember ``records`` (already verified) as the most recently seen; an older
        ``seq`` than the one kept is ignored."""
        for record in records:
            key = (record.peer_id, record.model_id)
            kept = self._records.get(key)
            if kept is not None and kept.seq > record.seq:
                self._records.move_to_end(key)
                continue
            self._records[key] = record
            self._records.move_to_end(key)
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)

    def current(self, now: float) -> list[CapabilityRecord]:
        """The records not expired at ``now`` (unix seconds), most recently seen first."""
        return [r for r in reversed(self._records.values()) if now < r.expires_at]
