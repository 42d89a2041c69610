"""Which open connections a peer closes when it holds too many (pure, ``now`` passed in).

A peer that joins a swarm, answers lookups and calls providers ends up connected to
many peers, and each connection costs memory and a share of the CPU (Yamux, Noise,
keep-alives). ``ConnectionLimits`` bounds them with two water marks, as go-libp2p's
connection manager does: above ``high_water`` open connections, the idle ones are
closed, least recently used first, down to ``low_water``. A connection in use is never
closed: one with open streams, one active within ``grace_period`` seconds (which also
covers a connection just opened, before its first stream), and one to a protected
peer (bootstrap peers, relays). The bound is soft: when too many are in use, they all
stay open.

    ConnectionLimits   the water marks, the grace period and how often to check
    ConnectionFacts    what the policy needs to know of one peer's connection
    connections_to_close   decision: the peers whose connections to close now
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_CONNECTION_LIMITS",
    "ConnectionFacts",
    "ConnectionLimits",
    "connections_to_close",
]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections a peer keeps open (docs/networking.md, "Connections").

    low_water: trimming closes idle connections down to this many.
    high_water: trimming starts above this many open connections.
    grace_period: seconds after a connection's last activity (or its opening) during
        which it is not closed.
    check_interval: seconds between two checks of the count.

    The defaults suit a desktop peer: they keep what a join, a few lookups and the
    calls of a session need (a join dials a few dozen peers, a call one to three)
    without letting a long-running peer that answered thousands of lookups hold a
    connection to each; they stay well below py-libp2p's own limit of 300 (above which
    it refuses inbound connections), and a closed connection costs one dial (~20-40
    ms) if the peer is needed again. 20 s is longer than a lookup or a call takes, so a
    connection between two requests of one task is kept.

    Raises:
        ValueError: ``low_water`` above ``high_water``, a negative water mark, a
            negative grace period or a check interval that is not positive.
    """

    low_water: int = 64
    high_water: int = 96
    grace_period: float = 20.0
    check_interval: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.low_water <= self.high_water:
            raise ValueError(
                f"connection water marks must satisfy 0 <= low <= high, got low "
                f"{self.low_water}, high {self.high_water}"
            )
        if self.grace_period < 0:
            raise ValueError(f"grace_period must be >= 0, got {self.grace_period}")
        if self.check_interval <= 0:
            raise ValueError(f"check_interval must be positive, got {self.check_interval}")


DEFAULT_CONNECTION_LIMITS: Final = ConnectionLimits()


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    """One peer's connection as the policy sees it.

    peer_id: the remote peer.
    last_active: when data last went either way on one of its streams, or when it
        opened if later (the caller's clock).
    open_streams: streams open on it now (idle pooled streams count: closing the
        connection would break them).
    protected: never closed by trimming (a bootstrap peer, a relay).
    """

    peer_id: str
    last_active: float
    open_streams: int = 0
    protected: bool = False


def connections_to_close(
    connections: Sequence[ConnectionFacts], limits: ConnectionLimits, now: float
) -> list[str]:
    """The peers whose connections to close at ``now``: nothing while at most
    ``high_water`` are open; above it, idle ones (no open stream, not protected, no
    activity for ``grace_period`` seconds), least recently active first, until
    ``low_water`` would remain open or no idle one is left."""
    if len(connections) <= limits.high_water:
        return []
    idle = [
        c
        for c in connections
        if not c.protected and c.open_streams == 0 and now - c.last_active >= limits.grace_period
    ]
    idle.sort(key=lambda c: (c.last_active, c.peer_id))
    excess = len(connections) - limits.low_water
    return [c.peer_id for c in idle[:excess]]
