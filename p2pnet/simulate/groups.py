"""The IP group of every simulated peer, as its scenario says (pure).

Simulated peers have no real IP addresses (``/memory/<n>``, or all 127.0.0.1 on the
libp2p engine), so the DHT's IP-group limits (``p2pnet.core.kad.diversity``) are given
groups drawn here instead of read from addresses. Honest peers (adversaries among the
initial peers included) are each in one of the 65,536 IPv4 /16s, drawn from the seed,
so a few share one, as on the internet. Sybils are spread over ``sybil_groups``
distinct /16s (0: one each; 1: all in one).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Final

from p2pnet.core.address import transport_part
from p2pnet.core.kad.keys import PeerInfo

__all__ = ["IPV4_GROUPS", "PeerGroups"]

IPV4_GROUPS: Final = 1 << 16  # the /16s of the IPv4 space
_NONE: Final[frozenset[str]] = frozenset()


def _group_name(slash16: int) -> str:
    return f"ip4:{slash16 >> 8}.{slash16 & 0xFF}"  # as p2pnet.core.address_filter.ip_group


class PeerGroups:
    """The group of each simulated peer, and a ``GroupOf`` that finds it from a peer's
    addresses (``place`` tells it where each peer is).

    seed: the run's seed. sybils: the plan's sybil peers, in order. sybil_groups: how
    many /16s the sybils share (0: each its own).
    """

    def __init__(self, seed: int, sybils: Sequence[int], sybil_groups: int) -> None:
        self._seed = seed
        count = sybil_groups or len(sybils)
        pool = random.Random(f"p2pnet sybil groups {seed}").sample(
            range(IPV4_GROUPS), min(count, IPV4_GROUPS)
        )
        self._sybil_group = {s: _group_name(pool[i % len(pool)]) for i, s in enumerate(sybils)}
        self._at: dict[str, frozenset[str]] = {}

    def group(self, peer: int) -> str:
        """The /16 of simulated peer ``peer`` (the same in every process of a run)."""
        sybil = self._sybil_group.get(peer)
        if sybil is not None:
            return sybil
        # A string seed is hashed with SHA-512: the same draw whatever PYTHONHASHSEED is.
        draw = random.Random(f"p2pnet peer group {self._seed} {peer}")
        return _group_name(draw.randrange(IPV4_GROUPS))

    def place(self, peer: int, addrs: Iterable[str]) -> None:
        """Simulated peer ``peer`` is at ``addrs`` (full or transport-only)."""
        groups = frozenset({self.group(peer)})
        for addr in addrs:
            self._at[transport_part(addr)] = groups

    def __call__(self, peer: PeerInfo) -> frozenset[str]:
        """The groups of the peers at ``peer``'s addresses (none for unknown ones)."""
        addrs = peer.addrs
        if len(addrs) == 1:
            return self._at.get(addrs[0], _NONE)
        out: frozenset[str] = _NONE
        for addr in addrs:
            out |= self._at.get(addr, _NONE)
        return out
