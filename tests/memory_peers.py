"""Peers on the in-memory network for tests: the same ``Peer`` users run, on a memory host."""

from __future__ import annotations

from typing import Any

from p2pnet import Peer
from p2pnet.net.identity import generate_identity
from p2pnet.net.memory import MemoryNetwork


def memory_peer(network: MemoryNetwork, **options: Any) -> Peer:
    """A ``Peer`` on a new host of ``network`` (start it with ``async with``)."""
    identity = generate_identity()
    return Peer(identity, host=network.add_host(identity.peer_id), **options)
