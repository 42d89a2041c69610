"""The dialer's multistream-select header and protocol go out in one write, the same bytes
as before (p2pnet/net/multistream.py), and every answer a listener can give still
reads as py-libp2p's own client reads it."""

from __future__ import annotations

import pytest
import trio
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.utils import encode_delim

from p2pnet.net.multistream import install_pipelined_select

HEADER = b"/multistream/1.0.0"
PROTOCOL = "/p2pnet-test/echo/1"


class ScriptedListener:
    """A byte stream whose reads return a listener's scripted answer and whose writes are
    recorded, one entry per write."""

    def __init__(self, answer: bytes) -> None:
        self.writes: list[bytes] = []
        self._answer = answer

    async def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = len(self._answer) if n is None else n
        chunk, self._answer = self._answer[:size], self._answer[size:]
        return chunk

    async def close(self) -> None:
        pass


def answer(*messages: bytes) -> bytes:
    return b"".join(encode_delim(m) for m in messages)


async def select(listener: ScriptedListener) -> str:
    install_pipelined_select()
    communicator = MultiselectCommunicator(listener)  # type: ignore[arg-type]
    protocol: str = await MultiselectClient().select_one_of([PROTOCOL], communicator)  # type: ignore[list-item]
    return protocol


async def test_header_and_protocol_go_out_in_one_write_with_the_same_bytes() -> None:
    listener = ScriptedListener(answer(HEADER, PROTOCOL.encode()))
    assert await select(listener) == PROTOCOL
    assert listener.writes == [answer(HEADER, PROTOCOL.encode())]


async def test_a_protocol_the_listener_does_not_serve_fails_as_upstream_does() -> None:
    listener = ScriptedListener(answer(HEADER, b"na"))
    with pytest.raises(MultiselectClientError, match="protocols not supported"):
        await select(listener)


async def test_a_listener_that_restarts_the_handshake_gets_the_protocol_again() -> None:
    listener = ScriptedListener(answer(HEADER, HEADER, PROTOCOL.encode()))
    assert await select(listener) == PROTOCOL
    assert listener.writes[1:] == [encode_delim(PROTOCOL.encode())]


async def test_a_wrong_header_fails() -> None:
    listener = ScriptedListener(answer(b"/multistream/2.0.0", PROTOCOL.encode()))
    with pytest.raises(MultiselectClientError, match="protocol ID mismatch"):
        await select(listener)
