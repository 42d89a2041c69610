"""``/dnsaddr/`` bootstrap addresses: DNS TXT records that list a swarm's peers.

``/dnsaddr/boot.example.org`` names the TXT records of ``_dnsaddr.boot.example.org``,
each ``dnsaddr=<multiaddr>``; entries may point to further ``/dnsaddr/`` names. An
address ending in ``/p2p/<peer-id>`` keeps only the entries of that peer. The
multiaddr package's DNSResolver (dnspython) does the lookups and the recursion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import multiaddr
import trio

from p2pnet.core.address import PeerAddress, parse_peer_address
from p2pnet.errors import InvalidAddressError, PeerUnreachableError

__all__ = ["is_dnsaddr", "resolve_bootstrap", "resolve_dnsaddr"]


def is_dnsaddr(text: str) -> bool:
    return text.strip().startswith("/dnsaddr/")


def _resolver(txt_resolver: Any | None) -> Any:
    from multiaddr.resolvers.dns import DNSResolver

    if txt_resolver is None:
        try:
            return DNSResolver()
        except Exception as exc:  # dnspython: no resolv.conf, no name servers
            raise PeerUnreachableError(
                f"cannot resolve /dnsaddr/ addresses: this machine has no DNS configuration "
                f"({exc}); give /ip4/.../tcp/PORT/p2p/... bootstrap addresses instead"
            ) from None
    resolver = DNSResolver.__new__(DNSResolver)
    resolver._resolver = txt_resolver  # a dnspython-like async resolver: resolve(name, "TXT")
    return resolver


async def resolve_dnsaddr(
    text: str, *, txt_resolver: Any | None = None, timeout: float = 10.0
) -> list[PeerAddress]:
    """The peers a ``/dnsaddr/`` address lists, one PeerAddress per peer.

    ``txt_resolver`` replaces DNS (tests): an object with ``async resolve(name, "TXT")``
    returning records with ``.strings``, as dnspython's async resolver.

    Raises:
        InvalidAddressError: not a /dnsaddr/ multiaddr.
        PeerUnreachableError: DNS failed or timed out, or the records list no peer.
    """
    try:
        addr = multiaddr.Multiaddr(text.strip())
    except Exception as exc:
        raise InvalidAddressError(f"{text!r} is not a valid multiaddr: {exc}") from None
    if not is_dnsaddr(text):
        raise InvalidAddressError(f"{text!r} is not a /dnsaddr/ address")
    resolver = _resolver(txt_resolver)
    resolved: list[Any] = []
    with trio.move_on_after(timeout) as scope:
        try:
            resolved = await resolver.resolve(addr)
        except Exception as exc:  # ResolutionError, RecursionLimitError, dnspython errors
            raise PeerUnreachableError(
                f"cannot resolve bootstrap address {text}: {exc}; /dnsaddr/ addresses need "
                "DNS: check the network, or give /ip4/.../tcp/PORT/p2p/... addresses"
            ) from None
    if scope.cancelled_caught:
        raise PeerUnreachableError(
            f"cannot resolve bootstrap address {text}: no DNS answer within {timeout:g} s; "
            "check the network, or give /ip4/.../tcp/PORT/p2p/... addresses"
        )
    peers: dict[str, list[str]] = {}
    for found in resolved:
        try:
            peer = parse_peer_address(str(found))
        except InvalidAddressError:
            continue  # an entry without /p2p/ cannot be authenticated
        peers.setdefault(peer.peer_id, []).extend(peer.addrs)
    if not peers:
        raise PeerUnreachableError(
            f"bootstrap address {text} lists no peers (no dnsaddr=.../p2p/... TXT records "
            f"at _dnsaddr.{addr.value_for_protocol('dnsaddr')!s})"
        )
    return [PeerAddress(pid, tuple(dict.fromkeys(a))) for pid, a in peers.items()]


async def resolve_bootstrap(
    addrs: Sequence[str], *, txt_resolver: Any | None = None, timeout: float = 10.0
) -> list[PeerAddress]:
    """Bootstrap addresses as PeerAddresses, /dnsaddr/ ones resolved.

    Raises:
        As parse_peer_address and resolve_dnsaddr.
    """
    out: list[PeerAddress] = []
    for text in addrs:
        if is_dnsaddr(text):
            out.extend(await resolve_dnsaddr(text, txt_resolver=txt_resolver, timeout=timeout))
        else:
            out.append(parse_peer_address(text))
    return out
