"""Private grids: the swarm key file, the PSK layer (XSalsa20), and real peers on 127.0.0.1
that only connect to peers with the same key."""

from __future__ import annotations

import functools
import os
import stat
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nacl.bindings
import numpy as np
import pytest
import trio

from p2pnet import Peer
from p2pnet.core.address import parse_peer_address
from p2pnet.errors import ConfigError, PeerUnreachableError
from p2pnet.net.host import open_host
from p2pnet.net.identity import generate_identity, peer_id_of
from p2pnet.net.pnet import xsalsa20_stream
from p2pnet.net.swarm_key import (
    SwarmKey,
    format_swarm_key,
    generate_swarm_key,
    load_swarm_key,
    parse_swarm_key,
    restrict_swarm_key_output,
    write_swarm_key_file,
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


def test_a_new_key_file_is_the_owners_alone_and_never_replaces_one(tmp_path: Path) -> None:
    key = generate_swarm_key()
    path = write_swarm_key_file(key, tmp_path / "grid.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_swarm_key(path) == key
    with pytest.raises(ConfigError, match=r"grid\.key exists; a swarm key is never overwritten"):
        write_swarm_key_file(generate_swarm_key(), path)
    assert load_swarm_key(path) == key
    with pytest.raises(ConfigError, match=r"cannot create .*missing/grid\.key"):
        write_swarm_key_file(key, tmp_path / "missing" / "grid.key")


def test_a_key_written_to_a_redirected_stdout_is_made_the_owners_alone(tmp_path: Path) -> None:
    path = tmp_path / "grid.key"
    with path.open("w") as out:  # as the shell opens `> grid.key` with umask 022
        path.chmod(0o644)
        assert restrict_swarm_key_output(out.fileno())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    read, write = os.pipe()
    try:
        assert not restrict_swarm_key_output(write)  # a pipe: nothing to protect
    finally:
        os.close(read)
        os.close(write)


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


@pytest.mark.network
async def test_same_key_connects_and_carries_data() -> None:
    key = generate_swarm_key()
    got, _ = await _dial(key, key)
    assert got == b"x" * 100_000


@pytest.mark.parametrize("case", ["other key", "dialer without key", "listener without key"])
@pytest.mark.network
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


@pytest.mark.network
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


@pytest.mark.network
async def test_keyed_peers_find_and_call(grid: tuple[list[Peer], Path]) -> None:
    peers, _ = grid
    (offer,) = await peers[3].find(task="sentiment-analysis")
    assert offer.record.peer_id == peers[2].peer_id
    out = await peers[1].call({"text": TEXTS}, task="sentiment-analysis")
    assert out["label"].tolist() == ["positive", "negative"]


@pytest.mark.network
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


@pytest.mark.network
@pytest.mark.slow
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


# --- swarms in config.toml ---------------------------------------------------------------

PEER_A = "12D3KooWEtJQnzCAiTpqs1bC1qZy9auioRn9RmZsZYtGpjuJZzzi"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_swarms_config(tmp_path: Path) -> None:
    from p2pnet.config import load_swarm, load_swarms

    path = _config(
        tmp_path,
        f"""
[swarms.lab]
bootstrap = ["/ip4/10.0.0.5/tcp/4001/p2p/{PEER_A}", "/dnsaddr/boot.lab.example"]
swarm_key = "lab.key"

[swarms.open]
bootstrap = []
""",
    )
    swarms = load_swarms(path)
    assert sorted(swarms) == ["lab", "open"]
    lab = load_swarm("lab", path)
    assert lab.bootstrap[1] == "/dnsaddr/boot.lab.example"
    assert lab.swarm_key == tmp_path / "lab.key"  # relative to the config file
    assert swarms["open"].swarm_key is None
    assert load_swarms(tmp_path / "missing.toml") == {}
    with pytest.raises(
        ConfigError, match=r"no swarm 'lba' in .*config.toml; swarms there: lab, open"
    ):
        load_swarm("lba", path)


def test_a_named_swarm_adds_its_bootstrap_peers_after_the_given_ones(tmp_path: Path) -> None:
    from p2pnet.config import SwarmJoin, resolve_swarm

    path = _config(
        tmp_path,
        f'[swarms.lab]\nbootstrap = ["/dnsaddr/boot.lab.example"]\nswarm_key = "lab.key"\n'
        f'[swarms.open]\nbootstrap = ["/ip4/10.0.0.5/tcp/4001/p2p/{PEER_A}"]\n',
    )
    given = (f"/ip4/10.0.0.9/tcp/4001/p2p/{PEER_A}",)
    assert resolve_swarm("lab", bootstrap=given, path=path) == SwarmJoin(
        (*given, "/dnsaddr/boot.lab.example"), tmp_path / "lab.key"
    )
    # An explicit key file wins over the swarm's; a swarm without one keeps the given one.
    mine = tmp_path / "mine.key"
    assert resolve_swarm("lab", swarm_key=mine, path=path).swarm_key == mine
    assert resolve_swarm("open", swarm_key=mine, path=path).swarm_key == mine
    assert resolve_swarm("open", path=path).swarm_key is None
    # No swarm named: just what was given, and no config file is read.
    assert resolve_swarm(None, bootstrap=given, swarm_key=mine, path=tmp_path / "x") == SwarmJoin(
        given, mine
    )
    with pytest.raises(ConfigError, match="no swarm 'lba'"):
        resolve_swarm("lba", path=path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[swarms.lab\n", r"config.toml is not valid TOML: .*line 1"),
        ("swarms = 3\n", r"'swarms' must be a table"),
        ("[swarms]\nlab = 3\n", r"\[swarms.lab\] must be a table"),
        ("[swarms.lab]\nbootstrp = []\n", r"\[swarms.lab\]: unknown key 'bootstrp'; a swarm has"),
        ("[swarms.lab]\nbootstrap = '/ip4/1.2.3.4'\n", r"bootstrap must be a list of multiaddr"),
        (
            "[swarms.lab]\nbootstrap = ['/ip4/1.2.3.4/tcp/1']\n",
            r"\[swarms.lab\]: bootstrap\[0\]: .* has no /p2p/<peer-id> part",
        ),
        (f"[swarms.lab]\nbootstrap = ['{PEER_A}']\n", r"bootstrap\[0\] .* is a bare peer ID"),
        ("[swarms.lab]\nswarm_key = 1\n", r"swarm_key must be the path of a swarm key file"),
    ],
)
def test_swarms_config_errors_are_precise(tmp_path: Path, text: str, message: str) -> None:
    from p2pnet.config import load_swarms

    with pytest.raises(ConfigError, match=message):
        load_swarms(_config(tmp_path, text))


# --- /dnsaddr/ -----------------------------------------------------------------------------


class FakeDns:
    """dnspython's async resolver, answering TXT queries from a dict; no network."""

    def __init__(self, records: dict[str, list[str]], fail: bool = False) -> None:
        self.records = records
        self.fail = fail
        self.asked: list[str] = []

    async def resolve(self, name: str, rdtype: str) -> list[Any]:
        import dns.resolver

        self.asked.append(name)
        if self.fail:
            raise dns.resolver.NoNameservers("All nameservers failed to answer the query")
        if name not in self.records:
            raise dns.resolver.NXDOMAIN()
        return [SimpleNamespace(strings=(t.encode(),)) for t in self.records[name]]


async def test_dnsaddr_resolution_with_a_fake_resolver() -> None:
    from p2pnet.net.dnsaddr import resolve_bootstrap, resolve_dnsaddr

    peer_b = peer_id_of(generate_identity())
    fake = FakeDns(
        {
            "_dnsaddr.boot.example": [
                f"dnsaddr=/ip4/10.0.0.1/tcp/4001/p2p/{PEER_A}",
                "dnsaddr=/dnsaddr/eu.boot.example",
                "some other TXT record",
            ],
            "_dnsaddr.eu.boot.example": [
                f"dnsaddr=/ip4/10.0.0.2/tcp/4001/p2p/{peer_b}",
                f"dnsaddr=/ip6/::1/tcp/4001/p2p/{peer_b}",
            ],
        }
    )
    found = await resolve_dnsaddr("/dnsaddr/boot.example", txt_resolver=fake)
    assert {p.peer_id: p.addrs for p in found} == {
        PEER_A: ("/ip4/10.0.0.1/tcp/4001",),
        peer_b: ("/ip4/10.0.0.2/tcp/4001", "/ip6/::1/tcp/4001"),
    }
    assert fake.asked == ["_dnsaddr.boot.example", "_dnsaddr.eu.boot.example"]
    only_a = await resolve_dnsaddr(f"/dnsaddr/boot.example/p2p/{PEER_A}", txt_resolver=fake)
    assert [p.peer_id for p in only_a] == [PEER_A]
    mixed = await resolve_bootstrap(
        [f"/ip4/127.0.0.1/tcp/1/p2p/{peer_b}", "/dnsaddr/eu.boot.example"], txt_resolver=fake
    )
    assert [p.peer_id for p in mixed] == [peer_b, peer_b]
    with pytest.raises(PeerUnreachableError, match=r"lists no peers .*_dnsaddr.nowhere.example"):
        await resolve_dnsaddr("/dnsaddr/nowhere.example", txt_resolver=fake)
    with pytest.raises(PeerUnreachableError, match="need DNS: check the network"):
        await resolve_dnsaddr("/dnsaddr/boot.example", txt_resolver=FakeDns({}, fail=True))


# --- announce and status -------------------------------------------------------------------


@pytest.mark.network
async def test_announced_addresses_and_status(models: dict[str, Path], tmp_path: Path) -> None:
    from p2pnet.status import keep_status, read_statuses, snapshot

    key = generate_swarm_key()
    async with (
        Peer(swarm_key=key, announce=["/ip4/203.0.113.7/tcp/4001"]) as peer,
        Peer(swarm_key=key, bootstrap=[peer.addrs[0]]) as other,
    ):
        info = peer.serve(models["iris"], tasks=["iris-species"], allow=[other.peer_id])
        record = peer.services.publisher.record(info.model_id)
        assert record.addrs[0] == "/ip4/203.0.113.7/tcp/4001"
        assert "/ip4/127.0.0.1" not in " ".join(record.addrs)
        data = snapshot(peer, role="bootstrap", swarm="lab")
        assert data["peer_id"] == peer.peer_id and data["swarm"] == "lab"
        assert data["swarm_key_fingerprint"] == key.fingerprint
        assert data["announced_addrs"][0] == f"/ip4/203.0.113.7/tcp/4001/p2p/{peer.peer_id}"
        assert data["models"] == [
            {
                "model_id": info.model_id,
                "name": "iris",
                "tasks": ["iris-species"],
                "allow": [other.peer_id],
                "batching": None,
            }
        ]
        assert data["connections"]["total"] >= 1
        assert data["connections"]["peers"][0]["peer_id"] == other.peer_id
        assert data["connections"]["relayed"] == 0
        assert data["routing_table"] == 1
        async with trio.open_nursery() as nursery:
            path = await nursery.start(
                functools.partial(keep_status, peer, interval=0.1, path=tmp_path / "peer-1.json")
            )
            assert path.stat().st_mode & 0o777 == 0o600
            (status,) = list(read_statuses(tmp_path))
            assert status.data["peer_id"] == peer.peer_id and not status.stale
            nursery.cancel_scope.cancel()
        assert not path.exists()  # removed when the peer stops


# --- the command line ----------------------------------------------------------------------


@pytest.mark.slow
def test_cli_private_grid_swarm_config_access_lists_and_status(
    config_home: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    import json
    import re
    import signal
    import subprocess
    import sys

    from test_cli import p2pnet, start_peer

    env = os.environ | {
        "XDG_CONFIG_HOME": str(config_home),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "COLUMNS": "200",
    }
    key = tmp_path / "grid.key"
    with key.open("w") as out:  # as `p2pnet swarm-key new > grid.key` with umask 022
        made = subprocess.run(
            [sys.executable, "-m", "p2pnet.cli", "swarm-key", "new"],
            stdout=out, stderr=subprocess.PIPE, text=True, env=env, timeout=60,
        )  # fmt: skip
    assert made.returncode == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"/key/swarm/psk/1\.0\.0/\n/base16/\n[0-9a-f]{64}\n", key.read_text())
    fingerprint = p2pnet("swarm-key", "fingerprint", str(key), env=env).stdout.strip()
    assert fingerprint in made.stderr

    caller = json.loads(p2pnet("id", "--json", env=env).stdout)["peer_id"]
    boot = start_peer(
        env | {"XDG_CONFIG_HOME": str(tmp_path / "boot")},
        "--role", "bootstrap", "--swarm-key", str(key),
    )  # fmt: skip
    server = start_peer(
        env | {"XDG_CONFIG_HOME": str(tmp_path / "server")},
        "--swarm-key", str(key), "--bootstrap", boot.address,
        "--serve", str(models["sentiment"]), "--task", "sentiment-analysis", "--allow", caller,
        "--serve", str(models["iris"]), "--task", "iris-species",
    )  # fmt: skip
    try:
        assert f"private network, swarm key {fingerprint}" in server.lines
        (config_home / "p2pnet").mkdir(parents=True, exist_ok=True)
        (config_home / "p2pnet" / "config.toml").write_text(
            f'[swarms.grid]\nbootstrap = ["{boot.address}"]\nswarm_key = "{key}"\n'
        )
        found = p2pnet("find", "--swarm", "grid", "--task", "sentiment-analysis", "--json", env=env)
        assert found.returncode == 0, found.stderr
        assert [o["name"] for o in json.loads(found.stdout)["offers"]] == ["sentiment"]
        called = p2pnet(
            "call", "--swarm", "grid", "--task", "iris-species", "-i", "x=[[5.1, 3.5, 1.4, 0.2]]",
            "--json", env=env,
        )  # fmt: skip
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout)["label"]["data"] == [0]

        status = p2pnet("status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        by_role = {s["role"]: s for s in json.loads(status.stdout)}
        assert by_role["bootstrap"]["swarm_key_fingerprint"] == fingerprint
        served = {m["name"]: m for m in by_role["peer"]["models"]}
        assert served["sentiment"]["allow"] == [caller] and served["iris"]["allow"] is None
        assert by_role["peer"]["connections"]["total"] >= 1
        text = p2pnet("status", env=env).stdout
        assert f"only for {caller}" in text and "peers in the DHT routing table" in text

        # An outsider (no key; another identity) is told why, fast, and exits 1.
        outsider_env = env | {"XDG_CONFIG_HOME": str(tmp_path / "outsider")}
        started = time.monotonic()
        outsider = p2pnet(
            "find", "--task", "iris-species", "--bootstrap", boot.address, env=outsider_env
        )
        assert time.monotonic() - started < 20  # process start included
        assert outsider.returncode == 1
        assert "handshake failed" in outsider.stderr and "private network" in outsider.stderr
        assert "could not join the swarm" in outsider.stderr

        # The bootstrap peer's own identity: the command goes through that running peer's
        # local API (no identity clash); a peer of its own is a usage error that says so.
        boot_env = env | {"XDG_CONFIG_HOME": str(tmp_path / "boot")}
        through_api = p2pnet(
            "find", "--task", "iris-species", "--swarm-key", str(key), "--bootstrap",
            boot.address, "--json", env=boot_env,
        )  # fmt: skip
        assert through_api.returncode == 0, through_api.stderr
        assert json.loads(through_api.stdout)["offers"][0]["name"] == "iris"
        same = p2pnet(
            "find", "--task", "iris-species", "--swarm-key", str(key), "--bootstrap", boot.address,
            "--standalone", env=boot_env,
        )  # fmt: skip
        assert same.returncode == 2 and "the bootstrap peer is this peer's own ID" in same.stderr

        unknown = p2pnet("find", "--swarm", "nope", "--task", "x", env=env)
        assert unknown.returncode == 2 and "no swarm 'nope'" in unknown.stderr
        quic = p2pnet(
            "peer", "--swarm-key", str(key), "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", env=env
        )
        assert quic.returncode == 2 and "QUIC" in quic.stderr
    finally:
        for peer in (server, boot):
            peer.proc.send_signal(signal.SIGINT)
            assert peer.proc.wait(timeout=30) == 0
    gone = p2pnet("status", env=env)
    assert gone.returncode == 1 and "no running peer" in gone.stderr


@pytest.mark.network
async def test_relayed_connections_inside_a_private_grid(models: dict[str, Path]) -> None:
    """A private peer reachable only through a relay of the grid: the relayed
    connection carries the PSK layer on both sides (py-libp2p left the dialling side's
    relayed connections without it), and its status counts it as relayed."""
    from p2pnet.core.address import PeerAddress
    from p2pnet.net.nat_config import NatConfig
    from p2pnet.status import snapshot

    key = generate_swarm_key()
    relay_config = NatConfig(relay_service=True, reachability="public")
    async with Peer(swarm_key=key, nat=relay_config) as relay:
        private = Peer(
            swarm_key=key, bootstrap=[relay.addrs[0]], nat=NatConfig(reachability="private")
        )
        private.serve(models["iris"])  # only a peer that serves something takes a relay slot
        async with private, Peer(swarm_key=key) as caller:
            (circuit,) = [a for a in private.addrs if "/p2p-circuit" in a]
            address = PeerAddress(private.peer_id, (circuit.rpartition("/p2p/")[0],))
            stream = await caller.host.open_stream(address, "/p2pnet/describe/1.0.0")
            await stream.close()
            assert caller.path(private.peer_id) == "relayed"
            assert snapshot(caller)["connections"]["relayed"] == 1
