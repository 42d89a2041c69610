"""TCP vs QUIC in py-libp2p, measured in one run: should p2pnet listen on QUIC by default?

Usage: python scripts/bench/quic.py [--out build/bench] [--mib 16] [--rounds 200]

Two py-libp2p hosts in this process on 127.0.0.1, once over TCP (Noise + Yamux, as
p2pnet configures it: one connection per peer) and once over QUIC (quic-v1):

  connect     dial + handshake, until a stream can be opened (5 fresh hosts each)
  rtt         100-byte echo on an open stream (p50 of --rounds)
  bulk        --mib MiB written on one stream and echoed back; MB/s of both directions
  punch       QUIC only: the dial DCUtR's initiator makes to the peer's address
              (py-libp2p upgrades its hole-punch dials "as responder",
              Swarm.dial_addr_as_responder)

Writes <out>/quic.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import PeerInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, git_state, machine_info

import p2pnet.net.logs  # noqa: F401  (quiet py-libp2p)

ECHO = TProtocol("/bench/echo/1.0.0")
LISTEN = {"tcp": "/ip4/127.0.0.1/tcp/0", "quic": "/ip4/127.0.0.1/udp/0/quic-v1"}


def host_for(kind: str) -> Any:
    addr = multiaddr.Multiaddr(LISTEN[kind])
    return new_host(
        key_pair=create_new_key_pair(),
        listen_addrs=[addr],
        enable_mDNS=False,
        enable_upnp=False,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )


async def echo(stream: Any) -> None:
    try:
        while True:
            data = await stream.read(1 << 20)
            if not data:
                break
            await stream.write(data)
    except Exception:  # end of stream or reset: the bench is over
        pass


async def measure(kind: str, mib: int, rounds: int) -> dict[str, Any]:
    server = host_for(kind)
    server.set_stream_handler(ECHO, echo)
    out: dict[str, Any] = {}
    async with server.run([multiaddr.Multiaddr(LISTEN[kind])]):
        info = PeerInfo(server.get_id(), server.get_addrs())
        connects = []
        for _ in range(5):
            client = host_for(kind)
            async with client.run([multiaddr.Multiaddr(LISTEN[kind])]):
                t0 = time.perf_counter()
                await client.connect(info)
                stream = await client.new_stream(server.get_id(), [ECHO])
                connects.append((time.perf_counter() - t0) * 1000)
                await stream.close()
        client = host_for(kind)
        async with client.run([multiaddr.Multiaddr(LISTEN[kind])]):
            await client.connect(info)
            stream = await client.new_stream(server.get_id(), [ECHO])
            payload = b"x" * 100
            rtts = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                await stream.write(payload)
                got = b""
                while len(got) < len(payload):
                    got += await stream.read(1 << 20)
                rtts.append((time.perf_counter() - t0) * 1000)
            block = os.urandom(1 << 20)
            total = mib << 20
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:

                async def write() -> None:
                    for _ in range(mib):
                        await stream.write(block)

                nursery.start_soon(write)
                received = 0
                while received < total:
                    received += len(await stream.read(1 << 20))
            seconds = time.perf_counter() - t0
            # Over TCP the same dial needs the other side's simultaneous dial (the NAT
            # benchmark measures it); over QUIC py-libp2p refuses it outright.
            out["punch"] = (
                await punch_check(client, server)
                if kind == "quic"
                else "simultaneous open (scripts/bench/nat.py)"
            )
            await stream.close()
    out.update(
        connect_ms_p50=statistics.median(connects),
        rtt_ms_p50=statistics.median(rtts),
        bulk_mb_per_s=2 * total / seconds / 1e6,
    )
    return out


async def punch_check(client: Any, server: Any) -> str:
    """Dial the server the way DCUtR's initiator does; "ok" or the error."""
    network = client.get_network()
    addr = server.get_addrs()[0]
    try:
        with trio.fail_after(10):
            await network.dial_addr_as_responder(
                addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{server.get_id()}")),
                server.get_id(),
            )
        return "ok"
    except Exception as exc:  # what py-libp2p says is the point here
        return f"{type(exc).__name__}: {exc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    started = time.monotonic()
    machine = machine_info()
    figures = {kind: trio.run(measure, kind, args.mib, args.rounds) for kind in ("tcp", "quic")}
    report = {
        "benchmark": "quic",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "git": git_state(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "mib": args.mib,
        "rounds": args.rounds,
        **figures,
        "load_average_at_end": list(os.getloadavg()),
        "seconds": time.monotonic() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quic.json").write_text(json.dumps(report, indent=2) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"py-libp2p TCP vs QUIC on 127.0.0.1 ({args.mib} MiB bulk, echoed)")
    for column in ("transport", "connect ms", "RTT p50 ms", "bulk MB/s", "DCUtR initiator dial"):
        table.add_column(
            column, justify="left" if column in ("transport", "DCUtR initiator dial") else "right"
        )
    for kind in ("tcp", "quic"):
        f = figures[kind]
        table.add_row(
            kind,
            f"{f['connect_ms_p50']:.1f}",
            f"{f['rtt_ms_p50']:.2f}",
            f"{f['bulk_mb_per_s']:.1f}",
            f["punch"][:70],
        )
    Console(width=140).print(table)
    print(f"load {machine['load_average_at_start']} at start; wrote {args.out / 'quic.json'}")


if __name__ == "__main__":
    main()
