"""Noise transport messages of one write sent to the socket in one write.

py-libp2p 0.8.1's ``BaseNoiseMsgReadWriter.write_msg`` splits a write larger than one
Noise message (65,519 bytes of plaintext) into messages, as go-libp2p does, but then
writes each to the connection on its own: a Yamux frame of 262,064 bytes
(``tune_libp2p``'s frame size) is four socket writes, each a trip through py-libp2p's
TCP write lock, trio's ``send_all`` and the scheduler. go-libp2p's ``noise/rw.go``
encrypts all of them into one buffer and writes it once. ``install_coalesced_writes``
does that: the bytes on the wire are the same, in the same order (each message its
2-byte length, then its ciphertext), from one ``write`` of the raw connection.
Handshake messages (``prefix_encoded``) and writes of one message are upstream's.
No upstream issue found (searched libp2p/py-libp2p issues, 2026-12-05).

Checked against py-libp2p 0.8.1 (pinned in pyproject.toml): a new release needs it
compared again.
"""

from __future__ import annotations

from typing import Any

from libp2p.security.noise import io as _noise_io

from p2pnet.net.patching import replace_attribute

__all__ = ["install_coalesced_writes"]

_MAX_PLAINTEXT = _noise_io.MAX_PLAINTEXT_LENGTH
_LENGTH_BYTES = _noise_io.SIZE_NOISE_MESSAGE_LEN
_upstream_write_msg = _noise_io.NoiseTransportReadWriter.write_msg


async def _coalesced_write_msg(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
    """upstream ``write_msg``, the messages of a long ``msg`` written at once."""
    total = len(msg)
    if prefix_encoded or total <= _MAX_PLAINTEXT:
        await _upstream_write_msg(self, msg, prefix_encoded)
        return
    view = memoryview(msg)
    parts: list[bytes] = []
    for start in range(0, total, _MAX_PLAINTEXT):
        sealed = self.encrypt(bytes(view[start : start + _MAX_PLAINTEXT]))
        parts.append(len(sealed).to_bytes(_LENGTH_BYTES, "big"))
        parts.append(sealed)
    await self.read_writer.read_write_closer.write(b"".join(parts))


def install_coalesced_writes() -> None:
    """Patch py-libp2p's ``NoiseTransportReadWriter.write_msg`` (see the module
    docstring); idempotent."""
    replace_attribute(_noise_io.NoiseTransportReadWriter, "write_msg", _coalesced_write_msg)
