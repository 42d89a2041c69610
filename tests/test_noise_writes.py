"""A long write's Noise messages reach the socket in one write, with the same bytes
py-libp2p writes in several (p2pnet/net/noise_writes.py)."""

from __future__ import annotations

from libp2p.security.noise import io as _noise_io

from p2pnet.net.noise_writes import install_coalesced_writes


class RecordingConnection:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


class CountingCipher:
    """Stands in for the Noise cipher state: a message's bytes, then a 16-byte tag
    numbering it (so messages out of order or merged would show)."""

    def __init__(self) -> None:
        self.sealed = 0

    def encrypt(self, data: bytes) -> bytes:
        self.sealed += 1
        return bytes(data) + self.sealed.to_bytes(16, "big")


def writer_on(connection: RecordingConnection) -> _noise_io.NoiseTransportReadWriter:
    return _noise_io.NoiseTransportReadWriter(connection, CountingCipher())  # type: ignore[arg-type]


async def test_messages_of_one_write_go_out_at_once_with_the_same_bytes() -> None:
    payload = bytes(range(256)) * 1024  # 262,144 bytes: five Noise messages
    upstream = RecordingConnection()
    await _noise_io.BaseNoiseMsgReadWriter.write_msg(writer_on(upstream), payload)
    assert len(upstream.writes) == 5

    install_coalesced_writes()
    patched = RecordingConnection()
    await writer_on(patched).write_msg(payload)
    assert patched.writes == [b"".join(upstream.writes)]

    small = RecordingConnection()
    await writer_on(small).write_msg(b"hello")
    assert small.writes == [(5 + 16).to_bytes(2, "big") + b"hello" + (1).to_bytes(16, "big")]
