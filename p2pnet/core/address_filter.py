"""Which peer addresses to believe, and which to hand to whom.

Two decisions about transport addresses (multiaddr text without ``/p2p/<peer-id>``):

``addrs_seen_at(announced, seen_at)``: of the addresses a peer announces for itself,
those it is seen at. An address is kept if its IP is the IP of one of the peer's direct
connections (any port: it dials from an ephemeral port and listens on another), or if
it is relayed (``.../p2p/<relay>/p2p-circuit``: the dial goes through a relay whose
peer ID the handshake checks). Anything else (another host's address, a private address
behind the NAT it is seen through) is dropped, so a peer cannot make the DHT send
finders to a third party. Non-IP locations (``/memory/<n>`` in simulations) must equal
the connection's location.

``addrs_for_scope(addrs, scope_seen_at(seen_at))``: the addresses that may be
exchanged with a peer, by the scope it is seen at, as go-libp2p's identify
``filterAddrs`` (p2p/protocol/identify/id.go, applied to the addresses a peer tells)
and go-libp2p-kad-dht's WAN ``AddressFilter`` (``ma.FilterAddrs(addrs,
manet.IsPublicAddr)``, dual/dual.go) do: a peer on loopback gets (or may tell of)
everything (local swarms, tests); one in a private range all but loopback; one at a
public address only public addresses; one whose scope is unknown (no IP: the
in-memory network) everything. A DHT node applies it to what it answers a requester,
and to what a responder answers it, so a node that lies cannot send it into its own LAN.

Scopes: loopback 127/8, ::1; private 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT),
169.254/16, fe80::/10, fc00::/7; public: globally routable IPs and DNS names (but
``localhost`` is loopback and ``*.local`` private); other: not IP, unroutable (0/8,
documentation, multicast) or unparsable.

``ip_group(addr)``: the network group of an address's IP, as peer diversity counts it
(the /16 of an IPv4 address, the /32 of an IPv6 one): the DHT limits how many peers of
one group its routing table holds and a lookup answer names
(``p2pnet.core.kad.diversity``), spot checks ask a provider in another group.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable
from typing import Final

__all__ = [
    "AddressScope",
    "addrs_for_scope",
    "addrs_seen_at",
    "ip_group",
    "ip_groups",
    "is_relayed",
    "scope_of",
    "scope_seen_at",
]

_PRIVATE_NETWORKS: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fe80::/10",
        "fc00::/7",
    )
)
_DNS_PROTOCOLS: Final = frozenset({"dns", "dns4", "dns6", "dnsaddr"})
_IP_PROTOCOLS: Final = frozenset({"ip4", "ip6"})
_CIRCUIT: Final = "/p2p-circuit"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressScope(enum.Enum):
    """Where an address can be reached from."""

    LOOPBACK = "loopback"  # this machine only
    PRIVATE = "private"  # the same private network (LAN, CGNAT, link)
    PUBLIC = "public"  # anywhere
    OTHER = "other"  # not an IP (/memory), unroutable, or unparsable


def _first_component(addr: str) -> tuple[str, str]:
    """``("ip4", "1.2.3.4")`` of ``/ip4/1.2.3.4/tcp/1``; ``("", "")`` if there is none."""
    parts = addr.split("/", 3)
    if len(parts) < 3 or parts[0] != "":
        return "", ""
    return parts[1], parts[2]


def _ip(protocol: str, value: str) -> IPAddress | None:
    if protocol not in _IP_PROTOCOLS:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if (protocol == "ip4") != (ip.version == 4):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ip_scope(ip: IPAddress) -> AddressScope:
    if ip.is_loopback:
        return AddressScope.LOOPBACK
    if any(ip in network for network in _PRIVATE_NETWORKS):
        return AddressScope.PRIVATE
    if ip.is_global and not ip.is_multicast:
        return AddressScope.PUBLIC
    return AddressScope.OTHER


@functools.lru_cache(maxsize=4096)
def scope_of(addr: str) -> AddressScope:
    """The scope of ``addr`` (a relayed address has its relay's scope)."""
    protocol, value = _first_component(addr)
    if protocol in _DNS_PROTOCOLS:
        name = value.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return AddressScope.LOOPBACK
        if name.endswith(".local"):
            return AddressScope.PRIVATE
        return AddressScope.PUBLIC if name else AddressScope.OTHER
    ip = _ip(protocol, value)
    return AddressScope.OTHER if ip is None else _ip_scope(ip)


# The requester scope that allows the fewest addresses wins when a peer is seen at several.
_RESTRICTIVENESS: Final = {
    AddressScope.OTHER: 0,
    AddressScope.LOOPBACK: 1,
    AddressScope.PRIVATE: 2,
    AddressScope.PUBLIC: 3,
}


def scope_seen_at(seen_at: Iterable[str]) -> AddressScope:
    """The scope a peer is treated as, from the remote addresses of its connections: the
    most restrictive of them; OTHER (no filtering) when none has an IP scope."""
    return max(
        (scope_of(a) for a in seen_at),
        key=_RESTRICTIVENESS.__getitem__,
        default=AddressScope.OTHER,
    )


def addrs_for_scope(addrs: Iterable[str], peer: AddressScope) -> tuple[str, ...]:
    """The ``addrs`` that may be exchanged with a peer seen in scope ``peer``: given to it
    when it asks, or believed when it tells them (go-libp2p identify's ``filterAddrs``
    rule, applied there to what a peer tells; see the module docstring)."""
    if peer is AddressScope.PUBLIC:
        return tuple(a for a in addrs if scope_of(a) is AddressScope.PUBLIC)
    if peer is AddressScope.PRIVATE:
        return tuple(a for a in addrs if scope_of(a) is not AddressScope.LOOPBACK)
    return tuple(addrs)


@functools.lru_cache(maxsize=4096)
def ip_group(addr: str) -> str | None:
    """The network group of a multiaddr's IP, as peer diversity counts it: the /16 of an
    IPv4 address (``ip4:10.1``, an IPv4-mapped IPv6 address included), the /32 of an
    IPv6 one (``ip6:2001:0db8``); None for an address without an IP (``/memory/...``,
    ``/dns4/...``), an unparsable one, or a relayed one (its IP is the relay's)."""
    if _CIRCUIT in addr:
        return None
    ip = _ip(*_first_component(addr))
    if ip is None:
        return None
    if ip.version == 4:
        octets = ip.packed
        return f"ip4:{octets[0]}.{octets[1]}"
    words = ip.exploded.split(":")
    return f"ip6:{words[0]}:{words[1]}"


def ip_groups(addrs: Iterable[str]) -> frozenset[str]:
    """The groups of every address in ``addrs`` that has one."""
    return frozenset(g for g in (ip_group(a) for a in addrs) if g is not None)


def is_relayed(addr: str) -> bool:
    """Whether ``addr`` is a circuit-relay address naming its relay
    (``.../p2p/<relay>/p2p-circuit``)."""
    head, sep, tail = addr.partition(_CIRCUIT)
    if not sep or (tail and not tail.startswith("/")):
        return False
    _, p2p, relay = head.rpartition("/p2p/")
    return bool(p2p) and bool(relay) and "/" not in relay


@functools.lru_cache(maxsize=4096)
def _location(addr: str) -> tuple[str, object] | None:
    """What must match between an announced address and a connection: the IP (any
    port), or for non-IP transports the first component whole; None if empty."""
    protocol, value = _first_component(addr)
    if not protocol:
        return None
    ip = _ip(protocol, value)
    if ip is not None:
        return ("ip", ip)
    if protocol in _IP_PROTOCOLS:
        return None  # an unparsable IP matches nothing
    return (protocol, value)


def addrs_seen_at(announced: Iterable[str], seen_at: Iterable[str]) -> tuple[str, ...]:
    """The ``announced`` addresses a peer is seen at (see the module docstring), in order.

    ``seen_at``: the remote addresses of the peer's connections to us; relayed ones give
    no location (the IP there is the relay's, not the peer's).
    """
    locations = {
        location for a in seen_at if _CIRCUIT not in a and (location := _location(a)) is not None
    }
    return tuple(dict.fromkeys(a for a in announced if is_relayed(a) or _location(a) in locations))
