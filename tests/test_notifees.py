"""Swarm events reach only the notifees that do something with them
(p2pnet/net/notifees.py)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from echo_streams import ECHO_PROTOCOL, echo
from libp2p.host.basic_host import _IdentifyNotifee
from libp2p.network.tag_store import TagStoreNotifee

from p2pnet.core.address import PeerAddress
from p2pnet.net.notifees import does_nothing


class Recorder:
    """A notifee that does something on every event."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def opened_stream(self, network: Any, stream: Any) -> None:
        self.events.append("opened_stream")

    async def closed_stream(self, network: Any, stream: Any) -> None:
        self.events.append("closed_stream")

    async def connected(self, network: Any, conn: Any) -> None:
        self.events.append("connected")

    async def disconnected(self, network: Any, conn: Any) -> None:
        self.events.append("disconnected")

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        """Nothing."""


class TaskCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


def test_a_method_does_nothing_only_if_its_body_is_a_bare_return() -> None:
    assert does_nothing(Recorder.listen) and does_nothing(Recorder.listen_close)
    assert not does_nothing(Recorder.opened_stream) and not does_nothing(Recorder.connected)
    assert not does_nothing(None) and not does_nothing(len)
    # py-libp2p's own notifees, on the events that cost every stream two tasks each.
    for notifee in (TagStoreNotifee, _IdentifyNotifee):
        assert does_nothing(notifee.opened_stream) and does_nothing(notifee.closed_stream)
    # Those that act still get their calls: the tag store counts connections.
    assert not does_nothing(TagStoreNotifee.connected)
    assert not does_nothing(TagStoreNotifee.disconnected)


@pytest.mark.network
async def test_notifees_that_act_still_get_every_event_of_a_real_host() -> None:
    from p2pnet.net.host import open_host
    from p2pnet.net.identity import generate_identity

    recorder = Recorder()
    async with open_host(generate_identity()) as host, open_host(generate_identity()) as other:
        other.set_stream_handler(ECHO_PROTOCOL, echo)
        swarm = host._raw.get_network()
        # Its own notifees do nothing with streams: an event costs no task.
        spawned = TaskCounter()
        trio.lowlevel.add_instrument(spawned)
        try:
            await swarm._notify("opened_stream", None)
            await swarm._notify("closed_stream", None)
        finally:
            trio.lowlevel.remove_instrument(spawned)
        assert spawned.count == 0
        swarm.register_notifee(recorder)
        address = PeerAddress(other.peer_id, tuple(other.addrs))
        stream = await host.open_stream(address, ECHO_PROTOCOL)
        await stream.write(b"hi")
        assert await stream.read() == b"hi"
        await stream.close()
        with trio.fail_after(10):
            while "closed_stream" not in recorder.events:
                await trio.sleep(0.01)
        assert recorder.events[:2] == ["connected", "opened_stream"]
