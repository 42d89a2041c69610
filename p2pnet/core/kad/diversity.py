"""IP-group limits on who the DHT listens to, after go-libp2p-kad-dht's diversity filter.

Sybils are cheap to make but hard to spread over the internet: ground peer IDs cost
CPU, while every address outside one's own networks costs a host somewhere else. So
peers are grouped by network (``p2pnet.core.address_filter.ip_group``: the /16 of an
IPv4 address, the /32 of an IPv6 one) and a group may hold at most ``per_bucket`` peers
of a routing table's bucket and ``per_table`` of the whole table (go-libp2p-kad-dht's
WAN DHT: 2 and 3, ``NewRTPeerDiversityFilter(h, 2, 3)`` in dual/dual.go), and a lookup
answer naming more than ``per_reply`` closer peers of one group is not believed (since
2025 go-libp2p-kad-dht checks what lookups are told against 3 per group as well).
Attackers in one /16 then hold at most 3 slots of any honest table and cannot steer a
lookup with answers full of each other.

What a peer's groups are is a function (``GroupOf``): ``address_groups`` for real peers,
a scenario's own for simulated ones (``p2pnet.simulate``). A peer counts in every group
of its addresses; a peer with none (no IP address, relayed only) is not limited.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from p2pnet.core.address_filter import AddressScope, ip_group, scope_of
from p2pnet.core.kad.keys import PeerInfo

__all__ = [
    "LOCAL_ADDRESSES",
    "DiversityLimits",
    "GroupCounts",
    "GroupOf",
    "LocalAddresses",
    "address_groups",
    "reply_too_concentrated",
]

LocalAddresses = Literal["exempt", "grouped"]
LOCAL_ADDRESSES: Final[tuple[LocalAddresses, ...]] = ("exempt", "grouped")

GroupOf = Callable[[PeerInfo], frozenset[str]]
"""``group_of(peer)``: the IP groups ``peer`` counts in; empty: the peer is not limited."""

_LOCAL_SCOPES: Final = frozenset({AddressScope.LOOPBACK, AddressScope.PRIVATE})


@dataclass(frozen=True, slots=True)
class DiversityLimits:
    """How many peers of one IP group the DHT takes.

    per_bucket: peers of one group in one bucket of the routing table.
    per_table: peers of one group in the whole routing table.
    per_reply: closer peers of one group a lookup answer may name; an answer naming
        more is treated as a failed one.
    local_addresses: "exempt" (default): loopback and private addresses (127/8, ::1,
        10/8, 172.16/12, 192.168/16, 100.64/10, link-local, fc00::/7) put a peer in no
        group, so a swarm on one machine or one LAN is not limited; "grouped": they
        are grouped like public ones (/16, /32).

    Raises:
        ValueError: a limit below 1, or an unknown ``local_addresses``.
    """

    per_bucket: int = 2
    per_table: int = 3
    per_reply: int = 3
    local_addresses: LocalAddresses = "exempt"

    def __post_init__(self) -> None:
        for name in ("per_bucket", "per_table", "per_reply"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, not {value!r:.40}")
        if self.local_addresses not in LOCAL_ADDRESSES:
            raise ValueError(
                f"local_addresses must be exempt or grouped, not {self.local_addresses!r:.40}"
            )


def address_groups(local_addresses: LocalAddresses = "exempt") -> GroupOf:
    """The grouping of real peers: the IP groups of a peer's addresses, loopback and
    private ones left out unless ``local_addresses`` is "grouped"."""
    exempt = local_addresses == "exempt"

    def groups(peer: PeerInfo) -> frozenset[str]:
        return frozenset(
            group
            for addr in peer.addrs
            if (group := ip_group(addr)) is not None
            and not (exempt and scope_of(addr) in _LOCAL_SCOPES)
        )

    return groups


def reply_too_concentrated(peers: Iterable[PeerInfo], group_of: GroupOf, limit: int) -> str | None:
    """The first IP group that more than ``limit`` of ``peers`` are in, or None."""
    counts: Counter[str] = Counter()
    for peer in peers:
        for group in group_of(peer):
            counts[group] += 1
            if counts[group] > limit:
                return group
    return None


class GroupCounts:
    """How many peers of each IP group a set holds (a bucket, a table), kept as peers
    come and go."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def full(self, groups: frozenset[str], limit: int) -> tuple[str, int] | None:
        """A group of ``groups`` that already holds ``limit`` peers or more, with its
        count; None if a peer of ``groups`` may join."""
        for group in sorted(groups):
            count = self._counts.get(group, 0)
            if count >= limit:
                return group, count
        return None

    def add(self, groups: frozenset[str]) -> None:
        for group in groups:
            self._counts[group] = self._counts.get(group, 0) + 1

    def discard(self, groups: frozenset[str]) -> None:
        for group in groups:
            count = self._counts[group] - 1
            if count:
                self._counts[group] = count
            else:
                del self._counts[group]

    def get(self, group: str) -> int:
        return self._counts.get(group, 0)

    def __bool__(self) -> bool:
        return bool(self._counts)
