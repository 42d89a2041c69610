"""Which announced addresses a node keeps, and which it hands to which requester."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.core.address_filter import (
    AddressScope,
    addrs_for_scope,
    addrs_seen_at,
    is_relayed,
    scope_of,
    scope_seen_at,
)

RELAY = "12D3KooWRelayRelayRelayRelayRelayRelayRelayRelay"
LOOPBACK, PRIVATE, PUBLIC, OTHER = (
    AddressScope.LOOPBACK,
    AddressScope.PRIVATE,
    AddressScope.PUBLIC,
    AddressScope.OTHER,
)


@pytest.mark.parametrize(
    ("addr", "scope"),
    [
        ("/ip4/127.0.0.1/tcp/4001", LOOPBACK),
        ("/ip4/127.255.0.9/udp/1/quic-v1", LOOPBACK),
        ("/ip6/::1/tcp/4001", LOOPBACK),
        ("/ip6/::ffff:127.0.0.1/tcp/1", LOOPBACK),
        ("/ip4/10.1.2.3/tcp/4001", PRIVATE),
        ("/ip4/172.16.0.1/tcp/4001", PRIVATE),
        ("/ip4/172.31.255.255/tcp/4001", PRIVATE),
        ("/ip4/192.168.1.5/tcp/4001", PRIVATE),
        ("/ip4/100.64.0.1/tcp/4001", PRIVATE),
        ("/ip4/100.127.255.254/tcp/4001", PRIVATE),
        ("/ip4/169.254.10.10/tcp/4001", PRIVATE),
        ("/ip6/fe80::1/tcp/4001", PRIVATE),
        ("/ip6/fd00::5/tcp/4001", PRIVATE),
        ("/ip6/fc00::5/tcp/4001", PRIVATE),
        ("/ip4/172.32.0.1/tcp/4001", PUBLIC),
        ("/ip4/100.128.0.1/tcp/4001", PUBLIC),
        ("/ip4/8.8.8.8/tcp/4001", PUBLIC),
        ("/ip6/2606:4700::1111/tcp/4001", PUBLIC),
        ("/dns4/boot.example.org/tcp/4001", PUBLIC),
        ("/dnsaddr/bootstrap.libp2p.io", PUBLIC),
        ("/dns/localhost/tcp/4001", LOOPBACK),
        ("/dns4/printer.local/tcp/4001", PRIVATE),
        (f"/ip4/8.8.8.8/tcp/4001/p2p/{RELAY}/p2p-circuit", PUBLIC),  # the relay's scope
        (f"/ip4/192.168.0.2/tcp/1/p2p/{RELAY}/p2p-circuit", PRIVATE),
        ("/ip4/0.0.0.0/tcp/4001", OTHER),
        ("/ip4/192.0.2.1/tcp/4001", OTHER),  # documentation range: routes nowhere
        ("/ip4/224.0.0.1/udp/1", OTHER),
        ("/memory/3", OTHER),
        ("/ip4/999.1.1.1/tcp/1", OTHER),
        ("/ip4/::1/tcp/1", OTHER),  # an IPv6 address under /ip4 is no address
        ("", OTHER),
        ("garbage", OTHER),
    ],
)
def test_scope_of(addr: str, scope: AddressScope) -> None:
    assert scope_of(addr) is scope


MIXED = (
    "/ip4/127.0.0.1/tcp/1",
    "/ip4/192.168.1.5/tcp/1",
    "/ip4/100.64.3.3/tcp/1",
    "/ip6/fe80::1/tcp/1",
    "/ip4/8.8.8.8/tcp/1",
    "/ip6/2606:4700::1111/tcp/1",
    f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit",
    f"/ip4/10.0.0.1/tcp/1/p2p/{RELAY}/p2p-circuit",
    "/memory/4",
)


def test_a_public_requester_gets_only_public_addresses() -> None:
    assert addrs_for_scope(MIXED, PUBLIC) == (
        "/ip4/8.8.8.8/tcp/1",
        "/ip6/2606:4700::1111/tcp/1",
        f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit",
    )


def test_a_private_requester_gets_all_but_loopback() -> None:
    assert addrs_for_scope(MIXED, PRIVATE) == MIXED[1:]


@pytest.mark.parametrize("scope", [LOOPBACK, OTHER])
def test_a_loopback_or_unknown_requester_gets_everything(scope: AddressScope) -> None:
    assert addrs_for_scope(MIXED, scope) == MIXED


def test_the_requester_is_judged_by_its_most_exposed_connection() -> None:
    assert scope_seen_at([]) is OTHER
    assert scope_seen_at(["/memory/2"]) is OTHER
    assert scope_seen_at(["/ip4/127.0.0.1/tcp/5"]) is LOOPBACK
    assert scope_seen_at(["/ip4/127.0.0.1/tcp/5", "/ip4/10.0.0.2/tcp/9"]) is PRIVATE
    assert scope_seen_at(["/ip4/10.0.0.2/tcp/9", "/ip4/8.8.8.8/tcp/1"]) is PUBLIC
    # A requester reached through a public relay is treated as public.
    assert scope_seen_at([f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit"]) is PUBLIC


def test_announced_addresses_are_kept_only_where_the_peer_is_seen() -> None:
    announced = (
        "/ip4/203.0.113.7/tcp/4001",  # another host: dropped
        "/ip4/198.51.100.20/tcp/4001",  # its own IP, its listening port: kept
        "/ip4/198.51.100.20/udp/4001/quic-v1",  # same IP, another transport: kept
        "/ip4/192.168.1.5/tcp/4001",  # behind its NAT: dropped
        "/ip4/127.0.0.1/tcp/4001",  # its own loopback: dropped
        f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit",  # through a relay: kept
        "/memory/9",
    )
    seen = ("/ip4/198.51.100.20/tcp/53124",)  # dialled us from an ephemeral port
    assert addrs_seen_at(announced, seen) == (
        "/ip4/198.51.100.20/tcp/4001",
        "/ip4/198.51.100.20/udp/4001/quic-v1",
        f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit",
    )


def test_loopback_swarms_keep_their_addresses() -> None:
    seen = ("/ip4/127.0.0.1/tcp/40001",)
    assert addrs_seen_at(("/ip4/127.0.0.1/tcp/4001",), seen) == ("/ip4/127.0.0.1/tcp/4001",)


def test_memory_addresses_must_be_the_connection_s_own() -> None:
    assert addrs_seen_at(("/memory/3", "/memory/4"), ("/memory/4",)) == ("/memory/4",)


def test_ipv6_spellings_and_mapped_ipv4_match() -> None:
    seen = ("/ip6/2001:4860:0:0::8888/tcp/9", "/ip6/::ffff:198.51.100.20/tcp/9")
    announced = ("/ip6/2001:4860::8888/tcp/1", "/ip4/198.51.100.20/tcp/1")
    assert addrs_seen_at(announced, seen) == announced


def test_a_relayed_connection_does_not_vouch_for_the_relay_s_ip() -> None:
    seen = (f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit",)
    assert addrs_seen_at(("/ip4/8.8.4.4/tcp/4001",), seen) == ()


def test_nothing_is_kept_for_a_sender_seen_nowhere_but_relayed_addresses() -> None:
    relayed = f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit"
    assert addrs_seen_at(("/ip4/8.8.8.8/tcp/1", relayed), ()) == (relayed,)


def test_duplicates_are_dropped() -> None:
    seen = ("/ip4/8.8.8.8/tcp/2",)
    assert addrs_seen_at(("/ip4/8.8.8.8/tcp/1",) * 3, seen) == ("/ip4/8.8.8.8/tcp/1",)


@pytest.mark.parametrize(
    ("addr", "relayed"),
    [
        (f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit", True),
        (f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuit/p2p/12D3KooWTarget", True),
        ("/ip4/8.8.4.4/tcp/1/p2p-circuit", False),  # no relay named
        (f"/ip4/8.8.4.4/tcp/1/p2p/{RELAY}/p2p-circuitry", False),
        ("/ip4/8.8.4.4/tcp/1", False),
    ],
)
def test_is_relayed(addr: str, relayed: bool) -> None:
    assert is_relayed(addr) is relayed


ips = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: f"/ip4/{ip}/tcp/1"),
    st.ip_addresses(v=6).map(lambda ip: f"/ip6/{ip}/tcp/1"),
)
anything = st.one_of(ips, st.text(max_size=40), st.just("/memory/1"))


@given(st.lists(anything, max_size=8), st.sampled_from(list(AddressScope)))
def test_filtering_only_removes_and_keeps_order(addrs: list[str], scope: AddressScope) -> None:
    kept = addrs_for_scope(addrs, scope)
    assert list(kept) == [a for a in addrs if a in kept]


@given(st.lists(ips, max_size=8))
def test_a_public_requester_never_gets_a_private_or_loopback_ip(addrs: list[str]) -> None:
    for addr in addrs_for_scope(addrs, PUBLIC):
        ip = ipaddress.ip_address(addr.split("/")[2])
        assert ip.is_global and not ip.is_private and not ip.is_loopback
        assert ip not in ipaddress.ip_network("100.64.0.0/10")


@given(st.lists(anything, max_size=8), st.lists(anything, max_size=3))
def test_kept_addresses_share_an_ip_or_a_place_with_a_connection(
    announced: list[str], seen: list[str]
) -> None:
    seen_places = {place(a) for a in seen if "/p2p-circuit" not in a} - {None}
    for addr in addrs_seen_at(announced, seen):
        assert is_relayed(addr) or place(addr) in seen_places


def place(addr: str) -> object:
    """The IP of an /ip4 or /ip6 address (mapped IPv4 unwrapped), else its first component."""
    parts = addr.split("/")
    if len(parts) < 3 or parts[0]:
        return None
    if parts[1] not in ("ip4", "ip6"):
        return (parts[1], parts[2])
    try:
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@given(st.text(max_size=200))
def test_random_text_never_raises(text: str) -> None:
    scope_of(text)
    addrs_seen_at([text], [text])
    is_relayed(text)
