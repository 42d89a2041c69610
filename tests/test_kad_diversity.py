"""IP groups and the diversity limits: which group an address is in, which addresses are
exempt, when a lookup answer names too many peers of one group; the ``[dht]`` table of
config.toml, and what ``p2pnet status`` shows of the limits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.cli.status import status_text
from p2pnet.config import load_dht
from p2pnet.core.address_filter import ip_group, ip_groups
from p2pnet.core.kad.diversity import DiversityLimits, address_groups, reply_too_concentrated
from p2pnet.core.kad.keys import PeerInfo
from p2pnet.dht.node import DhtDefences
from p2pnet.errors import ConfigError
from p2pnet.status import PeerStatus, StatusFile


def peer(i: int, *addrs: str) -> PeerInfo:
    return PeerInfo(f"peer{i}", b"\x00\x24" + i.to_bytes(32, "big"), addrs)


def test_ip_groups_are_the_ipv4_slash16_and_the_ipv6_slash32() -> None:
    assert ip_group("/ip4/10.1.2.3/tcp/4001/p2p/12D3KooW") == "ip4:10.1"
    assert ip_group("/ip4/203.0.113.7/udp/4001/quic-v1") == "ip4:203.0"
    assert ip_group("/ip6/2001:db8::1/tcp/1") == "ip6:2001:0db8"
    assert ip_group("/ip6/2a01:4f8:1:2::3/tcp/1") == ip_group("/ip6/2a01:4f8:ffff::/tcp/9")
    assert ip_group("/ip6/::ffff:10.1.2.3/tcp/1") == "ip4:10.1"  # IPv4-mapped: its IPv4 /16
    assert ip_group("/ip4/127.0.0.1/tcp/1") == "ip4:127.0"
    assert ip_group("/memory/12") is None and ip_group("/dns4/example.com/tcp/1") is None
    assert ip_group("/ip4/1.2.3.4/tcp/1/p2p/R/p2p-circuit/p2p/X") is None  # the relay's IP
    assert ip_group("/ip4/999.1.1.1/tcp/1") is None and ip_group("garbage") is None
    assert ip_group("/ip4/::1/tcp/1") is None  # an IPv6 address under /ip4
    assert ip_groups(["/ip4/10.1.2.3/tcp/1", "/ip4/10.1.9.9/udp/1", "/memory/x"]) == {"ip4:10.1"}


def test_loopback_and_private_addresses_are_exempt_unless_grouped() -> None:
    local = peer(
        1,
        "/ip4/127.0.0.1/tcp/1",
        "/ip6/::1/tcp/1",
        "/ip4/192.168.1.5/tcp/1",
        "/ip4/10.9.8.7/tcp/1",
        "/ip4/172.20.0.1/tcp/1",
        "/ip6/fe80::1/tcp/1",
        "/ip6/fd00::1/tcp/1",
        "/ip4/100.64.0.1/tcp/1",
    )
    assert address_groups()(local) == frozenset()
    assert address_groups("grouped")(local) == {
        "ip4:127.0",
        "ip6:0000:0000",
        "ip4:192.168",
        "ip4:10.9",
        "ip4:172.20",
        "ip6:fe80:0000",
        "ip6:fd00:0000",
        "ip4:100.64",
    }
    public = peer(2, "/ip4/8.8.4.4/tcp/1", "/ip4/192.168.1.5/tcp/1", "/memory/3")
    assert address_groups()(public) == {"ip4:8.8"}
    relayed = peer(3, "/ip4/8.8.4.4/tcp/1/p2p/R/p2p-circuit")
    assert address_groups()(relayed) == address_groups("grouped")(relayed) == frozenset()


def test_an_answer_naming_more_than_the_limit_of_one_group_is_too_concentrated() -> None:
    group_of = address_groups()
    three = [peer(i, f"/ip4/1.2.{i}.1/tcp/1") for i in range(3)]
    others = [peer(10 + i, f"/ip4/{10 + i}.0.0.1/tcp/1") for i in range(10)]
    assert reply_too_concentrated(three + others, group_of, 3) is None
    fourth = peer(3, "/ip4/1.2.200.9/tcp/1")
    assert reply_too_concentrated([*three, *others, fourth], group_of, 3) == "ip4:1.2"
    assert reply_too_concentrated([*three, fourth], group_of, 4) is None
    # Peers with no group never count; a peer counts in each of its groups.
    bare = [peer(20 + i, "/memory/1") for i in range(10)]
    assert reply_too_concentrated(bare, group_of, 1) is None
    dual = [peer(30 + i, f"/ip4/5.5.{i}.1/tcp/1", f"/ip6/2001:db8:{i}::1/tcp/1") for i in range(2)]
    assert reply_too_concentrated([*dual, peer(40, "/ip6/2001:db8::9/tcp/1")], group_of, 2) == (
        "ip6:2001:0db8"
    )


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 255)), max_size=30), st.integers(1, 5))
def test_too_concentrated_exactly_when_a_group_counts_more_than_the_limit(
    slots: list[tuple[int, int]], limit: int
) -> None:
    peers = [peer(i, f"/ip4/9.{g}.{h}.1/tcp/1") for i, (g, h) in enumerate(slots)]
    counts = [sum(1 for g, _ in slots if g == group) for group in range(4)]
    found = reply_too_concentrated(peers, address_groups(), limit)
    assert (found is not None) == (max(counts, default=0) > limit)
    if found is not None:
        assert counts[int(found.rsplit(".", 1)[1])] > limit


def test_limits_are_checked() -> None:
    assert DiversityLimits() == DiversityLimits(2, 3, 3, "exempt")
    for bad in ({"per_bucket": 0}, {"per_table": -1}, {"per_reply": 1.5}):
        with pytest.raises(ValueError, match="must be a whole number >= 1"):
            DiversityLimits(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exempt or grouped"):
        DiversityLimits(local_addresses="ignored")  # type: ignore[arg-type]


def test_the_dht_table_of_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    assert load_dht(config).diversity == DhtDefences().diversity  # no file: the defaults
    assert DhtDefences().diversity == DiversityLimits(local_addresses="exempt")
    config.write_text('[dht]\nlocal_addresses = "grouped"\n')
    assert load_dht(config).diversity == DiversityLimits(local_addresses="grouped")
    config.write_text("[dht]\ndiversity = false\n")
    assert load_dht(config).diversity is None
    for bad, says in (
        ("diversity = 'yes'", "diversity must be true or false"),
        ("local_addresses = 'ignored'", 'local_addresses must be "exempt" or "grouped"'),
        ("per_bucket = 5", "unknown key 'per_bucket'"),
    ):
        config.write_text(f"[dht]\n{bad}\n")
        with pytest.raises(ConfigError, match=says):
            load_dht(config)


def test_status_shows_what_the_limits_did_once_they_did_something() -> None:
    status = PeerStatus(
        peer_id="12D3KooWpeer",
        listen_addrs=(),
        announced_addrs=(),
        reachability="public",
        swarm_key_fingerprint=None,
        models=(),
        connections=(),
        routing_table=3,
        dht_mode="server",
        dht={"network_size": 90.0, "diversity_refused": 0.0, "diversity_dropped_replies": 0.0},
    )

    def shown(st: PeerStatus) -> str:
        return status_text(StatusFile(Path("s.json"), {"pid": 1}, st, False, 1.0)).plain

    assert "IP-group limits" not in shown(status)
    counted = dataclasses.replace(
        status, dht={**status.dht, "diversity_refused": 7.0, "diversity_dropped_replies": 2.0}
    )
    assert (
        "IP-group limits: a peer kept out of the routing table 7 times, "
        "2 lookup answers dropped" in shown(counted)
    )
