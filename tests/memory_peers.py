"""Peers on the in-memory network for tests: the same ``Peer`` users run, on a memory host."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from p2pnet import Peer
from p2pnet.net.identity import generate_identity
from p2pnet.net.memory import MemoryNetwork

# Hosts for a swarm fixture that takes them from request.param, as in
# ``@pytest.mark.parametrize("swarm", BOTH_HOSTS, indirect=True)``: libp2p hosts open
# real sockets, so those tests are marked network.
LIBP2P = pytest.param("libp2p", marks=pytest.mark.network)
BOTH_HOSTS = ["memory", LIBP2P]


def memory_peer(network: MemoryNetwork, **options: Any) -> Peer:
    """A ``Peer`` on a new host of ``network`` (start it with ``async with``)."""
    identity = generate_identity()
    return Peer(identity, host=network.add_host(identity.peer_id), **options)


async def peer_maker(stack: AsyncExitStack, hosts: str, *, seed: int = 0) -> Callable[..., Peer]:
    """What makes the peers of a test swarm: ``Peer`` itself for "libp2p" hosts (TCP on
    127.0.0.1), or ``memory_peer`` on a ``MemoryNetwork(seed=seed)`` that runs until
    ``stack`` closes, for "memory" hosts."""
    if hosts == "libp2p":
        return Peer
    if hosts != "memory":
        raise ValueError(f"hosts must be 'memory' or 'libp2p', not {hosts!r}")
    network = await stack.enter_async_context(MemoryNetwork(seed=seed))
    return functools.partial(memory_peer, network)
