"""Keeping a libp2p host's open connections within bounds: the I/O around
``p2pnet.core.connections`` (which decides).

``ConnectionTrimmer.run`` checks every ``check_interval`` seconds how many
connections the host holds; above the high water mark it closes the idle ones the
policy names. Activity comes from the host's own streams (``Host`` records when data
last went either way with each peer); a connection not yet seen active counts from
when the trimmer first saw it, so a new connection gets its grace period too.

py-libp2p 0.8 has a pruner of its own (``libp2p.network.connection_pruner``, water
marks 100 / 300 by default, run on each new connection), which p2pnet leaves at its
defaults, above ours: it takes any open stream as activity (the clients' pooled idle
streams keep a connection forever) and measures its grace period from the
connection's opening, on the wall clock.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

import trio
from libp2p.abc import INetwork
from libp2p.peer.id import ID

from p2pnet.core.connections import ConnectionFacts, ConnectionLimits, connections_to_close

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["ConnectionTrimmer"]

log = logging.getLogger(__name__)

# Longest closing one connection may take.
CLOSE_TIMEOUT = 2.0


class ConnectionTrimmer:
    """Closes a host's idle connections when it holds more than the high water mark.

    ``network``: the host's py-libp2p network (its swarm). ``last_active``: when data
    last went either way with each peer (trio time), kept by the host's streams.
    Peers given to ``protect`` are never disconnected.
    """

    def __init__(
        self,
        network: INetwork,
        limits: ConnectionLimits,
        last_active: MutableMapping[str, float],
    ) -> None:
        self.network = network
        self.limits = limits
        self._last_active = last_active
        self._first_seen: dict[str, float] = {}
        self._protected: set[str] = set()
        self.closed = 0  # connections closed by trimming since the start

    def protect(self, peer_id: str) -> None:
        """Never close the connection to ``peer_id`` (a bootstrap peer, a relay)."""
        self._protected.add(peer_id)

    def unprotect(self, peer_id: str) -> None:
        """Let the connection to ``peer_id`` be trimmed again when idle."""
        self._protected.discard(peer_id)

    def facts(self, now: float) -> list[ConnectionFacts]:
        """What the policy needs to know of each peer connected now (one entry per peer;
        its streams summed over its connections)."""
        streams: dict[str, int] = {}
        for conn in self.network.get_connections():
            if conn.is_closed:
                continue
            peer_id = str(conn.muxed_conn.peer_id)
            streams[peer_id] = streams.get(peer_id, 0) + len(conn.get_streams())
        for gone in self._first_seen.keys() - streams.keys():
            del self._first_seen[gone]
        for gone in self._last_active.keys() - streams.keys():  # bounded by the peers connected
            del self._last_active[gone]
        out = []
        for peer_id, count in streams.items():
            seen = self._first_seen.setdefault(peer_id, now)
            out.append(
                ConnectionFacts(
                    peer_id,
                    max(seen, self._last_active.get(peer_id, seen)),
                    count,
                    peer_id in self._protected,
                )
            )
        return out

    async def trim(self) -> list[str]:
        """Close the connections the policy names now; returns their peers."""
        now = trio.current_time()
        chosen = connections_to_close(self.facts(now), self.limits, now)
        if not chosen:
            return []
        log.debug("closing %d idle connections (limits %s)", len(chosen), self.limits)
        for peer_id in chosen:
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await self.network.close_peer(ID.from_base58(peer_id))
                except Exception as exc:  # closing a broken connection fails in many ways
                    log.debug("closing the connection to %s: %r", peer_id, exc)
            self._first_seen.pop(peer_id, None)
        self.closed += len(chosen)
        return chosen

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Trim every ``check_interval`` seconds, forever."""
        task_status.started()
        while True:
            await trio.sleep(self.limits.check_interval)
            await self.trim()
