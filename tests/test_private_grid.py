"""Private grids: the swarm key file, the PSK layer (XSalsa20), and real peers on 127.0.0.1
that only connect to peers with the same key."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import nacl.bindings
import numpy as np
import pytest
import trio

from p2pnet import Peer
from p2pnet.errors import ConfigError, PeerUnreachableError
from p2pnet.net.host import open_host, parse_peer_address
from p2pnet.net.identity import generate_identity
from p2pnet.net.pnet import (
    SwarmKey,
    format_swarm_key,
    generate_swarm_key,
    load_swarm_key,
    parse_swarm_key,
    xsalsa20_stream,
)

TEXTS = np.array(["I love it, works great", "broken on arrival, terrible"], dtype=object)

# A fixed key file, byte for byte as `p2pnet swarm-key new` writes it (and as go-libp2p,
# js-libp2p and kubo read swarm.key files).
GOLDEN_KEY = bytes(range(32))
GOLDEN_FILE = (
    b"/key/swarm/psk/1.0.0/\n"
    b"/base16/\n"
    b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"
)


# --- key files ---------------------------------------------------------------------------


def test_key_file_golden_vector() -> None:
    assert format_swarm_key(SwarmKey(GOLDEN_KEY)).encode() == GOLDEN_FILE
    assert parse_swarm_key(GOLDEN_FILE).key == GOLDEN_KEY
    assert SwarmKey(GOLDEN_KEY).fingerprint == "757e8505bda814f2"


def test_key_file_round_trip_and_other_encodings() -> None:
    key = generate_swarm_key()
    assert parse_swarm_key(format_swarm_key(key).encode()) == key
    import base64

    b64 = b"/key/swarm/psk/1.0.0/\n/base64/\n" + base64.b64encode(key.key) + b"\n"
    assert parse_swarm_key(b64) == key
    assert parse_swarm_key(b"/key/swarm/psk/1.0.0/\n/bin/\n" + key.key) == key
    # Windows line ends and upper-case hex, as some tools write them.
    crlf = f"/key/swarm/psk/1.0.0/\r\n/base16/\r\n{key.key.hex().upper()}\r\n".encode()
    assert parse_swarm_key(crlf) == key
    assert key.key.hex() not in repr(key) and key.key.hex() not in str(key)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"deadbeef\n", "first line must be '/key/swarm/psk/1.0.0/'"),
        (b"/key/swarm/psk/1.0.0/", "missing the encoding line"),
        (b"/key/swarm/psk/1.0.0/\n/base32/\nabc\n", "unknown key encoding '/base32/'"),
        (b"/key/swarm/psk/1.0.0/\n/base16/\nzz\n", "not valid base16"),
        (b"/key/swarm/psk/1.0.0/\n/base16/\n0011\n", "the key has 2 bytes"),
        (b"/key/swarm/psk/1.0.0/\n/bin/\nshort", "exactly 32 bytes"),
    ],
)
def test_bad_key_files(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_swarm_key(data)


def test_key_file_permissions(tmp_path: Path) -> None:
    path = tmp_path / "grid.key"
    path.write_bytes(GOLDEN_FILE)
    path.chmod(0o600)
    assert load_swarm_key(path).key == GOLDEN_KEY
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=r"accessible by other users .*chmod 600"):
        load_swarm_key(path)
    with pytest.raises(ConfigError, match="cannot read swarm key"):
        load_swarm_key(tmp_path / "missing.key")


# --- the cipher --------------------------------------------------------------------------


def test_xsalsa20_matches_libsodium_and_known_vector() -> None:
    # XSalsa20 test vector of golang.org/x/crypto/salsa20.
    cipher = xsalsa20_stream(b"this is 32-byte key for xsalsa20", b"24-byte nonce for xsalsa")
    assert cipher.encrypt(b"Hello world!").hex() == "002d4513843fc240c401e541"
    # libsodium's secretbox is XSalsa20 with the first 32 key stream bytes kept for
    # Poly1305: its ciphertext of zeros is the key stream from byte 32 on.
    for _ in range(3):
        key, nonce = os.urandom(32), os.urandom(24)
        stream = xsalsa20_stream(key, nonce)
        head = stream.encrypt(bytes(40))  # in two calls: the position carries over
        stream_bytes = head + stream.encrypt(bytes(1000))
        box = nacl.bindings.crypto_secretbox(bytes(1008), nonce, key)
        assert box[16:] == stream_bytes[32:]


# --- hosts -------------------------------------------------------------------------------


async def _echo(stream) -> None:  # type: ignore[no-untyped-def]
    while data := await stream.read():
        await stream.write(data)


async def _dial(a_key: SwarmKey | None, b_key: SwarmKey | None) -> tuple[bytes, float]:
    async with (
        open_host(generate_identity(), swarm_key=a_key) as a,
        open_host(generate_identity(), swarm_key=b_key) as b,
    ):
        b.set_stream_handler("/echo/1", _echo)
        started = time.perf_counter()
        try:
            stream = await a.open_stream(parse_peer_address(b.addrs[0]), "/echo/1")
            await stream.write(b"x" * 100_000)
            got = b""
            while len(got) < 100_000:
                got += await stream.read()
            return got, time.perf_counter() - started
        finally:
            assert time.perf_counter() - started < 10


async def test_same_key_connects_and_carries_data() -> None:
    key = generate_swarm_key()
    got, _ = await _dial(key, key)
    assert got == b"x" * 100_000


@pytest.mark.parametrize("case", ["other key", "dialer without key", "listener without key"])
async def test_mismatch_fails_fast_with_a_clear_error(case: str) -> None:
    key, other = generate_swarm_key(), generate_swarm_key()
    a, b = {"other key": (key, other), "dialer without key": (None, key)}.get(case, (key, None))
    started = time.perf_counter()
    with pytest.raises(PeerUnreachableError, match="handshake failed") as info:
        await _dial(a, b)
    assert time.perf_counter() - started < 10
    assert "private network" in str(info.value)
    if a is not None:
        assert a.fingerprint in str(info.value)  # which key this side has, never the key
        assert a.key.hex() not in str(info.value)


async def test_quic_is_refused_with_a_swarm_key() -> None:
    with pytest.raises(ConfigError, match="does not apply the private network key to QUIC"):
        async with open_host(
            generate_identity(), ["/ip4/127.0.0.1/udp/0/quic-v1"], swarm_key=generate_swarm_key()
        ):
            pass
    async with open_host(generate_identity(), swarm_key=generate_swarm_key()) as host:
        peer = f"/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{host.peer_id}"
        with pytest.raises(ConfigError, match="QUIC"):
            await host.open_stream(parse_peer_address(peer), "/echo/1")


# --- peers -------------------------------------------------------------------------------


@pytest.fixture
async def grid(models: dict[str, Path], tmp_path: Path) -> AsyncIterator[tuple[list[Peer], Path]]:
    """A bootstrap peer and three peers of one private grid (the key from a file);
    peer 2 serves sentiment-analysis."""
    key_file = tmp_path / "grid.key"
    key_file.write_text(format_swarm_key(generate_swarm_key()))
    key_file.chmod(0o600)
    async with AsyncExitStack() as stack:
        boot = await stack.enter_async_context(Peer(swarm_key=key_file))
        peers = [boot]
        for _ in range(3):
            peer = Peer(swarm_key=key_file, bootstrap=[boot.addrs[0]])
            peers.append(await stack.enter_async_context(peer))
        peers[2].serve(models["sentiment"], tasks=["sentiment-analysis"])
        assert await peers[2].announce() > 0
        yield peers, key_file


async def test_keyed_peers_find_and_call(grid: tuple[list[Peer], Path]) -> None:
    peers, _ = grid
    (offer,) = await peers[3].find(task="sentiment-analysis")
    assert offer.record.peer_id == peers[2].peer_id
    out = await peers[1].call({"text": TEXTS}, task="sentiment-analysis")
    assert out["label"].tolist() == ["positive", "negative"]


async def test_outsiders_cannot_join_and_the_grid_keeps_working(
    grid: tuple[list[Peer], Path],
) -> None:
    peers, _ = grid
    boot = peers[0].addrs[0]
    for outsider_key in (None, generate_swarm_key()):
        started = time.perf_counter()
        async with Peer(swarm_key=outsider_key) as outsider:
            with pytest.raises(PeerUnreachableError, match="handshake failed"):
                await outsider.invoke(peers[2].addrs[0], next(iter(peers[2].models)), {})
        assert time.perf_counter() - started < 10
        # Bootstrapping through a grid peer gets the outsider nothing either.
        async with Peer(swarm_key=outsider_key, bootstrap=[boot]) as outsider:
            assert await outsider.find(task="sentiment-analysis", timeout=3) == []
    out = await peers[3].call({"text": TEXTS}, task="sentiment-analysis")
    assert out["label"].tolist() == ["positive", "negative"]


def test_measure_handshake_overhead() -> None:
    """Connection setup with and without the PSK layer, p50 of 20 dials each (printed
    with -s; docs/networking.md has a 50-dial figure)."""

    async def setup_times(key: SwarmKey | None, n: int) -> list[float]:
        times = []
        async with open_host(generate_identity(), swarm_key=key) as b:
            b.set_stream_handler("/echo/1", _echo)
            target = parse_peer_address(b.addrs[0])
            for _ in range(n):
                async with open_host(generate_identity(), swarm_key=key) as a:
                    started = time.perf_counter()
                    stream = await a.open_stream(target, "/echo/1")
                    times.append(time.perf_counter() - started)
                    await stream.close()
        return sorted(times)

    key = generate_swarm_key()
    plain = trio.run(setup_times, None, 20)
    keyed = trio.run(setup_times, key, 20)
    print(f"setup p50 without key {plain[10] * 1000:.1f} ms, with key {keyed[10] * 1000:.1f} ms")
    assert keyed[10] < 1.0
