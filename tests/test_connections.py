"""Bounded connections (docs/networking.md, "Connections"): the pure policy
(p2pnet/core/connections.py), then the trimmer on real hosts (p2pnet/net/connmgr.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from echo_streams import ECHO_PROTOCOL, echo
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.core.address import PeerAddress
from p2pnet.core.connections import ConnectionFacts, ConnectionLimits, connections_to_close

LIMITS = ConnectionLimits(low_water=2, high_water=4, grace_period=20.0)
NOW = 1000.0


def idle(name: str, last_active: float = 0.0) -> ConnectionFacts:
    return ConnectionFacts(name, last_active)


def test_nothing_is_closed_at_or_below_the_high_water_mark() -> None:
    assert connections_to_close([idle(f"p{i}") for i in range(4)], LIMITS, NOW) == []


def test_above_high_water_the_least_recently_used_idle_ones_go_down_to_low_water() -> None:
    facts = [idle("a", 50.0), idle("b", 10.0), idle("c", 30.0), idle("d", 40.0), idle("e", 20.0)]
    assert connections_to_close(facts, LIMITS, NOW) == ["b", "e", "c"]


def test_connections_in_use_stay_even_if_the_bound_is_not_reached() -> None:
    facts = [
        ConnectionFacts("streams", 0.0, open_streams=1),
        ConnectionFacts("recent", NOW - 19.9),  # within the grace period
        ConnectionFacts("bootstrap", 0.0, protected=True),
        idle("old", 0.0),
        idle("older", -5.0),
    ]
    # Three should go (5 open, low water 2); only the two idle ones may.
    assert connections_to_close(facts, LIMITS, NOW) == ["older", "old"]
    facts[1] = ConnectionFacts("recent", NOW - 20.0)  # the grace period is over
    assert connections_to_close(facts, LIMITS, NOW) == ["older", "old", "recent"]


facts_lists = st.lists(
    st.builds(
        ConnectionFacts,
        peer_id=st.text("abcdef", min_size=1, max_size=4),
        last_active=st.floats(0.0, NOW),
        open_streams=st.integers(0, 3),
        protected=st.booleans(),
    ),
    max_size=30,
    unique_by=lambda c: c.peer_id,
)


@given(
    facts=facts_lists,
    low=st.integers(0, 10),
    extra=st.integers(0, 10),
    grace=st.floats(0.0, 100.0),
)
def test_trimming_closes_only_idle_ones_never_below_low_water_oldest_first(
    facts: list[ConnectionFacts], low: int, extra: int, grace: float
) -> None:
    limits = ConnectionLimits(low_water=low, high_water=low + extra, grace_period=grace)
    chosen = connections_to_close(facts, limits, NOW)
    by_peer = {c.peer_id: c for c in facts}
    closed = [by_peer[p] for p in chosen]
    assert len(set(chosen)) == len(chosen)
    for c in closed:
        assert not c.protected and c.open_streams == 0 and NOW - c.last_active >= grace
    if len(facts) <= limits.high_water:
        assert chosen == []
        return
    assert len(facts) - len(chosen) >= low
    idle_left = [
        c
        for c in facts
        if c.peer_id not in chosen
        and not c.protected
        and c.open_streams == 0
        and NOW - c.last_active >= grace
    ]
    # Stopped only at low water or when no idle one was left...
    assert len(facts) - len(chosen) == low or not idle_left
    # ...and every idle one kept was active no earlier than those closed.
    if closed and idle_left:
        assert min(c.last_active for c in idle_left) >= max(c.last_active for c in closed)


def test_limits_check_themselves() -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(low_water=10, high_water=5)
    with pytest.raises(ValueError):
        ConnectionLimits(grace_period=-1.0)
    with pytest.raises(ValueError):
        ConnectionLimits(check_interval=0.0)


@pytest.mark.network
async def test_trimming_a_real_host_closes_idle_connections_and_keeps_a_busy_one() -> None:
    from p2pnet.net.host import open_host
    from p2pnet.net.identity import generate_identity

    protocol = ECHO_PROTOCOL

    # Checked by hand (trim() below), never by the trimmer's own loop.
    limits = ConnectionLimits(low_water=1, high_water=2, grace_period=0.0, check_interval=3600)
    async with (
        open_host(generate_identity(), connections=limits) as host,
        open_host(generate_identity()) as busy,
        open_host(generate_identity()) as idle_1,
        open_host(generate_identity()) as idle_2,
    ):
        for other in (busy, idle_1, idle_2):
            other.set_stream_handler(protocol, echo)
        busy_stream = await host.open_stream(PeerAddress(busy.peer_id, tuple(busy.addrs)), protocol)
        await busy_stream.write(b"ping")
        assert await busy_stream.read() == b"ping"
        for other in (idle_1, idle_2):
            stream = await host.open_stream(
                PeerAddress(other.peer_id, tuple(other.addrs)), protocol
            )
            await stream.write(b"once")
            assert await stream.read() == b"once"
            await stream.close()
            assert await stream.read() == b""  # the other side closed too: the stream is gone
        assert host.trimmer is not None
        # py-libp2p's identify streams end on their own shortly after a connection opens.
        trimmer = host.trimmer
        with trio.fail_after(10):
            while any(
                f.open_streams
                for f in trimmer.facts(trio.current_time())
                if f.peer_id != busy.peer_id
            ):
                await trio.sleep(0.01)
        closed = await host.trimmer.trim()
        assert sorted(closed) == sorted([idle_1.peer_id, idle_2.peer_id])
        assert host.connection_count(idle_1.peer_id) == host.connection_count(idle_2.peer_id) == 0
        assert host.connection_count(busy.peer_id) == 1
        await busy_stream.write(b"still here")  # the busy connection works as before
        assert await busy_stream.read() == b"still here"
        # A closed connection is only closed: the peer is dialled again when needed.
        again = await host.open_stream(PeerAddress(idle_1.peer_id, tuple(idle_1.addrs)), protocol)
        await again.write(b"back")
        assert await again.read() == b"back"


def test_the_connections_table_of_config_toml(tmp_path: Path) -> None:
    from p2pnet.config import load_connections
    from p2pnet.errors import ConfigError

    path = tmp_path / "config.toml"
    assert load_connections(path) == ConnectionLimits()  # no file: the defaults
    path.write_text("[connections]\nlow_water = 8\nhigh_water = 12\ngrace_period = 5\n")
    assert load_connections(path) == ConnectionLimits(8, 12, 5.0)
    for bad in ("low_water = 20\nhigh_water = 10", "high_water = -1", "grace = 3"):
        path.write_text(f"[connections]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"\[connections\]"):
            load_connections(path)


@pytest.mark.network
async def test_py_libp2p_s_own_pruner_closes_nothing_of_a_p2pnet_host() -> None:
    # Connections are p2pnet's ConnectionTrimmer's to close; py-libp2p's pruner, run
    # after every new connection, only cost CPU (p2pnet/net/host.py).
    from p2pnet.net.host import open_host
    from p2pnet.net.identity import generate_identity

    async with (
        open_host(generate_identity(), connections=None) as host,
        open_host(generate_identity()) as other,
    ):
        other.set_stream_handler(ECHO_PROTOCOL, echo)
        stream = await host.open_stream(
            PeerAddress(other.peer_id, tuple(other.addrs)), ECHO_PROTOCOL
        )
        await stream.write(b"hi")
        assert await stream.read() == b"hi"
        await stream.close()
        swarm = host._raw.get_network()
        swarm.connection_config.high_watermark = 0  # py-libp2p would prune everything
        swarm.connection_config.low_watermark = 0
        swarm.connection_config.grace_period = 0.0
        await swarm.connection_pruner.maybe_prune_connections()
        assert host.connection_count(other.peer_id) == 1
