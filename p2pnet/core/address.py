"""Where a peer is: its ID and the transport addresses to dial it at.

A full multiaddr ends in ``/p2p/<peer-id>``; the transport part is what comes before
it. Only the *trailing* ``/p2p/`` component is the peer's own: a relayed address,
``/ip4/.../tcp/N/p2p/<relay>/p2p-circuit/p2p/<target>``, names its relay in the
middle, and that part belongs to the transport address
(``/ip4/.../tcp/N/p2p/<relay>/p2p-circuit``). Every split and join of a peer ID and
an address goes through ``split_peer_id`` and ``with_peer_id``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import multiaddr

from p2pnet.errors import InvalidAddressError

__all__ = [
    "PeerAddress",
    "parse_peer_address",
    "split_peer_id",
    "transport_part",
    "with_peer_id",
]

_P2P = "/p2p/"


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where to reach a peer: its ID and the transport addresses to dial (may be empty)."""

    peer_id: str
    addrs: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.addrs:
            return self.peer_id
        return with_peer_id(self.addrs[0], self.peer_id)

    @property
    def full_addrs(self) -> list[str]:
        """Every transport address with ``/p2p/<peer-id>`` appended."""
        return [with_peer_id(a, self.peer_id) for a in self.addrs]

    @classmethod
    def of(cls, peer_id: str, addrs: Iterable[str]) -> PeerAddress:
        """The address of ``peer_id`` at ``addrs``, full or transport-only, de-duplicated."""
        return cls(peer_id, tuple(dict.fromkeys(transport_part(a) for a in addrs)))


def split_peer_id(addr: str) -> tuple[str, str | None]:
    """``(transport part, peer ID)`` of a multiaddr's text; the peer ID is None when the
    address does not end in ``/p2p/<peer-id>``. Nothing is validated."""
    head, sep, tail = addr.rpartition(_P2P)
    if sep and tail and "/" not in tail:
        return head, tail
    return addr, None


def transport_part(addr: str) -> str:
    """``addr`` without its trailing ``/p2p/<peer-id>`` (a relayed address keeps its relay's)."""
    return split_peer_id(addr)[0]


def with_peer_id(transport: str, peer_id: str) -> str:
    """``transport`` with ``/p2p/<peer_id>`` appended, unless it already ends with it."""
    if split_peer_id(transport)[1] == peer_id:
        return transport
    return f"{transport}{_P2P}{peer_id}"


@functools.lru_cache(maxsize=1024)
def parse_peer_address(text: str) -> PeerAddress:
    """Parse ``/ip4/.../tcp/N/p2p/<peer-id>`` (or a bare peer ID) into a PeerAddress.

    Results are cached: parsing costs ~0.1 ms, and ``Peer.invoke`` parses its address
    argument on every call.

    Raises:
        InvalidAddressError: not a multiaddr ending in /p2p/<peer-id>, nor a peer ID.
    """
    text = text.strip()
    if not text.startswith("/"):
        try:
            multiaddr.Multiaddr(_P2P + text)
        except Exception:  # py-multiaddr raises several unrelated types
            raise InvalidAddressError(
                f"{text!r} is neither a multiaddr (/ip4/127.0.0.1/tcp/4001/p2p/12D3...) "
                "nor a peer ID (12D3...)"
            ) from None
        return PeerAddress(text)
    try:
        multiaddr.Multiaddr(text)
    except Exception as exc:
        raise InvalidAddressError(f"{text!r} is not a valid multiaddr: {exc}") from None
    transport, peer_id = split_peer_id(text.rstrip("/"))
    if peer_id is None:
        raise InvalidAddressError(
            f"{text!r} has no /p2p/<peer-id> part; p2pnet needs it to authenticate the peer"
        )
    return PeerAddress(peer_id, (transport,) if transport else ())
