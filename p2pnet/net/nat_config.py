"""NAT traversal settings and verdicts: plain values, without py-libp2p.

``p2pnet.net.nat`` does the traversal with them; a peer's configuration holds them
without loading py-libp2p.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["DEFAULT_NAT", "NatConfig", "Reachability", "RelayServiceLimits", "is_circuit_addr"]


class Reachability(enum.Enum):
    """Whether other peers can dial this one directly."""

    UNKNOWN = "unknown"
    PUBLIC = "public"
    PRIVATE = "private"


@dataclass(frozen=True, slots=True)
class RelayServiceLimits:
    """What a relay (a bootstrap peer) grants. go-libp2p's defaults allow 2 minutes and
    128 KiB per circuit, enough for hole punching only; model calls need more, so a
    relayed call may last 10 minutes and carry 64 MiB each way together."""

    max_reservations: int = 128
    reservation_ttl: int = 3600
    circuits_per_peer: int = 16
    circuit_duration: int = 600
    circuit_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class NatConfig:
    """NAT traversal settings of a peer.

    Args:
        reachability: "auto" asks connected peers (AutoNAT); "public" or "private"
            skips the question.
        relay_service: serve as a relay for private peers (bootstrap peers do).
        relay_limits: the relay service's limits.
        hole_punching: upgrade relayed connections to direct ones (DCUtR).
        relay_head_start: seconds a direct dial has before a peer's relays are dialled
            as well.
        hole_punch_timeout: seconds one hole-punch dial may take.
    """

    reachability: Literal["auto", "public", "private"] = "auto"
    relay_service: bool = False
    relay_limits: RelayServiceLimits = RelayServiceLimits()
    hole_punching: bool = True
    relay_head_start: float = 0.3
    hole_punch_timeout: int = 3


# Every peer's default: AutoNAT, relay slots when private, hole punching.
DEFAULT_NAT: Final = NatConfig()


def is_circuit_addr(addr: object) -> bool:
    """Whether ``addr`` (text or a Multiaddr) goes through a relay (has /p2p-circuit)."""
    return "/p2p-circuit" in str(addr)
