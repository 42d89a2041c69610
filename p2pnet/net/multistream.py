"""multistream-select with the dialer's header and protocol sent in one write, as go- and
rust-libp2p send them.

py-libp2p 0.8.1's ``MultiselectClient.select_one_of`` writes ``/multistream/1.0.0``, waits
for the listener's header, then writes the protocol and waits again: two round trips and
two Yamux frames (two Noise messages) from the dialer for every new stream, and the
same for the security and muxer negotiations of every new connection. go-multistream
sends both messages in one write since multiformats/go-multistream#32 (rust-libp2p since
libp2p/rust-libp2p#1212); a py-libp2p change to do so (libp2p/py-libp2p#285) was closed
unmerged. The bytes on the wire are the same and in the same order; the listener's side
is unchanged, and every implementation reads the two messages from one buffer as from
two.

``install_pipelined_select`` replaces ``select_one_of`` for the case p2pnet uses, one
protocol proposed; with several it runs upstream's, which proposes them one at a time.
Checked against py-libp2p 0.8.1 (pinned in pyproject.toml): a new release needs it
compared again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
from libp2p.io.exceptions import IOException
from libp2p.protocol_muxer import multiselect_client as _client
from libp2p.protocol_muxer.exceptions import (
    MultiselectClientError,
    MultiselectCommunicatorError,
)
from libp2p.utils import encode_delim

from p2pnet.net.patching import replace_attribute

__all__ = ["install_pipelined_select"]

_HEADER = _client.MULTISELECT_PROTOCOL_ID
_NOT_FOUND = _client.PROTOCOL_NOT_FOUND_MSG
_upstream_select_one_of = _client.MultiselectClient.select_one_of


async def _select_one_of(
    self: Any,
    protocols: Sequence[Any],
    communicator: Any,
    negotiate_timeout: int = _client.DEFAULT_NEGOTIATE_TIMEOUT,
) -> Any:
    """upstream ``select_one_of`` for one protocol, header and proposal in one write."""
    writer = getattr(communicator, "read_writer", None)
    if len(protocols) != 1 or writer is None:
        return await _upstream_select_one_of(self, protocols, communicator, negotiate_timeout)
    protocol = protocols[0]
    proposal = protocol if protocol is not None else ""
    with trio.move_on_after(negotiate_timeout):
        try:
            await writer.write(encode_delim(_HEADER.encode()) + encode_delim(proposal.encode()))
        except (IOException, AssertionError, ValueError) as error:  # upstream's write errors
            raise MultiselectClientError(f"handshake write failed: {error}") from error
        try:
            header = await communicator.read()
            response = await communicator.read()
        except MultiselectCommunicatorError as error:
            raise MultiselectClientError(
                f"protocol read failed: {error}, protocol={protocol}"
            ) from error
        if header != _HEADER:
            raise MultiselectClientError(
                f"multiselect protocol ID mismatch: expected {_HEADER}, got {header!r}"
            )
        if response == proposal:
            return protocol
        if response == _NOT_FOUND:
            raise MultiselectClientError(
                f"protocols not supported: tried {list(protocols)}, "
                f"timeout={negotiate_timeout}s (last error: protocol not supported: "
                f"{protocol}, response={response!r})"
            )
        if response == _HEADER:
            # The listener restarted the handshake (upstream's case of go-libp2p under
            # churn): upstream's own retry proposes the protocol again.
            return await self.try_select(communicator, protocol)
        raise MultiselectClientError(
            f"unrecognized response: {response!r}, expected {proposal!r} or "
            f"{_NOT_FOUND!r}, protocol={protocol}"
        )
    raise MultiselectClientError(
        f"response timed out after {negotiate_timeout}s, protocols tried: {list(protocols)}"
    )


def install_pipelined_select() -> None:
    """Patch py-libp2p's ``MultiselectClient.select_one_of`` (see the module docstring);
    idempotent."""
    replace_attribute(_client.MultiselectClient, "select_one_of", _select_one_of)
