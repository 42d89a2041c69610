"""Dials that reach a peer whenever its address is known, and stops that end at once:
py-libp2p 0.8.1 behaviours that made joins fail with "No valid connections available"
under churn, left a stopped peer's port listening, or made a stop take seconds.

**Closed connections trusted.** A ``SwarmConn`` marks itself closed first and leaves the
swarm's table (``Swarm.remove_conn``) only at the end of its clean-up: after closing
Yamux and the socket, resetting its streams and a fixed ``trio.sleep(0.1)``. A clean-up
that is cancelled on the way (a request timeout that fires while a connection is being
set up or torn down) never gets there, and the closed connection stays in the table for
good. ``BasicHost.connect`` returns at once when the table holds any connection to the
peer, closed or not, and ``Swarm.new_stream`` dials only when it holds none: with a
closed one left there, it filters it out and raises "No valid connections available"
instead of dialling. Every later request to that peer fails the same way, though the
peer is up and its address known. ``forget_closed_connections`` drops them first, so
both dial; and a connection that closes while ``new_stream`` waits (for its stream
semaphore, or for the connection to be ready) gets the stream opened once more, on a
new connection, instead of the same error. No upstream issue found for either.

**The oldest address dialled.** ``Swarm.dial_peer`` dials at most one address per
transport (TCP, QUIC, ...), the first the peerstore lists, and the peerstore lists
addresses in the order it learned them. A peer that restarted on another port (same
identity) is dialled at its old address, which refuses, even when the caller names the
new one: ``BasicHost.connect`` adds the caller's addresses after the old ones. Here the
caller's addresses go first.

**The listener closed last.** ``Swarm.close`` closes every connection, one after another
(each clean-up ends in ``trio.sleep(0.1)``), before it closes its listeners, and the
listeners run in a trio system task that nothing else cancels. A close cut short by its
caller's deadline (p2pnet's host gives it ``HOST_CLOSE_TIMEOUT``, 5 s: a peer with ~45
connections needs more) leaves the listener open for good, and a second ``close`` is a
no-op: the stopped peer's port stays bound, its dead swarm accepts connections there
and drops their streams ("fail to read from multiselect communicator", "Connection is
shutting down"), and the peer restarted with the same identity cannot take its port
back. ``close_listeners_first`` closes them before the connections. No upstream issue
found.

**Connections closed one after another.** The same ``Swarm.close`` awaits each
connection's close in turn, and each clean-up sleeps 0.1 s (``SwarmConn._cleanup``'s
``trio.sleep(0.1)``, for stream handlers to see their resets): a peer with 45
connections took 4.5 s to stop, and a test or benchmark process stopping ten such peers
waited ~20 s. ``close_connections_together`` closes them all at once; upstream's loop
then finds them closed. No upstream issue found.

``install_dial_fixes`` wraps ``BasicHost.connect``, ``Swarm.new_stream`` and
``Swarm.close``; upstream's code runs unchanged after the fix-up. Checked against
py-libp2p 0.8.1 (pinned in pyproject.toml): a new release needs all four compared
again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import trio
from libp2p.host.basic_host import BasicHost
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from multiaddr import Multiaddr

__all__ = [
    "close_connections_together",
    "close_listeners_first",
    "forget_closed_connections",
    "install_dial_fixes",
]

log = logging.getLogger(__name__)

_INSTALLED = "_p2pnet_dial_fixes"


def forget_closed_connections(swarm: Any, peer_id: ID) -> int:
    """Drop ``peer_id``'s closed connections from the swarm's table; how many were dropped.

    Only the table entry goes: a clean-up still under way finishes as it would (its own
    ``remove_conn`` then finds nothing to remove, and does its resource bookkeeping).
    """
    connections: list[Any] | None = swarm.connections.get(peer_id)
    if not connections:
        return 0
    live = [c for c in connections if not c.is_closed]
    dropped = len(connections) - len(live)
    if dropped:
        if live:
            swarm.connections[peer_id] = live
        else:
            del swarm.connections[peer_id]
    return dropped


def _put_first(peerstore: Any, peer_id: ID, addrs: list[Any]) -> None:
    """List ``addrs`` first among the addresses ``peerstore`` knows for ``peer_id``."""
    try:
        data = peerstore.peer_data_map[peer_id]
    except (AttributeError, KeyError):
        return  # a new peer: connect() adds the addresses in the caller's order
    known = data.get_addrs()
    ordered = list(addrs) + [a for a in known if a not in addrs]
    data.clear_addrs()
    data.add_addrs(ordered)


def _connect(upstream: Callable[[Any, Any], Awaitable[None]]) -> Callable[[Any, Any], Any]:
    @wraps(upstream)
    async def connect(self: Any, peer_info: Any) -> None:
        forget_closed_connections(self.get_network(), peer_info.peer_id)
        if peer_info.addrs:
            _put_first(self.peerstore, peer_info.peer_id, list(peer_info.addrs))
        await upstream(self, peer_info)

    return connect


def _new_stream(upstream: Callable[[Any, ID], Awaitable[Any]]) -> Callable[[Any, ID], Any]:
    @wraps(upstream)
    async def new_stream(self: Any, peer_id: ID) -> Any:
        forget_closed_connections(self, peer_id)
        try:
            return await upstream(self, peer_id)
        except SwarmException:
            # The connection closed while upstream waited (for its stream semaphore, or
            # for a connection to become ready): it raises "No valid / ready connections
            # available" rather than dialling. Once more, with the closed ones gone. A
            # failed dial leaves no connection behind, so it is not tried again here.
            if not forget_closed_connections(self, peer_id):
                raise
        return await upstream(self, peer_id)

    return new_stream


async def close_listeners_first(swarm: Any) -> None:
    """Close ``swarm``'s listeners (and tell its listeners' watchers, as upstream's close
    does); upstream's close then finds none left."""
    for listen_addr, listener in list(swarm.listeners.items()):
        del swarm.listeners[listen_addr]
        await listener.close()
        try:
            await swarm.notify_listen_close(Multiaddr(listen_addr))
        except Exception as exc:  # a watcher's failure; upstream only logs it too
            log.debug("notifying the close of %s: %r", listen_addr, exc)


async def close_connections_together(swarm: Any) -> None:
    """Close every connection of ``swarm`` concurrently (each ``SwarmConn.close`` is
    idempotent: upstream's close then returns at once for each)."""

    async def close_one(peer_id: Any, connection: Any) -> None:
        try:
            await connection.close()
        except Exception as exc:  # upstream logs a failed close and goes on, as here
            log.debug("closing a connection to %s: %r", peer_id, exc)

    async with trio.open_nursery() as nursery:
        for peer_id, connections in list(swarm.connections.items()):
            for connection in list(connections):
                nursery.start_soon(close_one, peer_id, connection)


def _close(upstream: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Any]:
    @wraps(upstream)
    async def close(self: Any) -> None:
        if not self._closing:
            await close_listeners_first(self)
            await close_connections_together(self)
        await upstream(self)

    return close


def install_dial_fixes() -> None:
    """Patch py-libp2p's ``BasicHost.connect``, ``Swarm.new_stream`` and ``Swarm.close``
    (see the module docstring); idempotent. Every host in the process gets them."""
    host_class: Any = BasicHost
    swarm_class: Any = Swarm
    if getattr(swarm_class, _INSTALLED, False):
        return
    host_class.connect = _connect(host_class.connect)
    swarm_class.new_stream = _new_stream(swarm_class.new_stream)
    swarm_class.close = _close(swarm_class.close)
    setattr(swarm_class, _INSTALLED, True)
