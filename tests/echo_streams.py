"""An echo handler for tests that open real streams: every byte read is written back,
and the stream is closed once the other side closed its end."""

from __future__ import annotations

from typing import Protocol

ECHO_PROTOCOL = "/p2pnet-test/echo/1.0.0"


class ByteStream(Protocol):
    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


async def echo(stream: ByteStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.close()
