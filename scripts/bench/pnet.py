"""What the private network (PSK) layer costs: connection setup and bulk throughput with
and without a swarm key, one peer per process, on 127.0.0.1 (docs/networking.md).

    python scripts/bench/pnet.py [--dials 50] [--mib 64]

Each row: a listening peer in its own process; a fresh host in this process dials it
``--dials`` times (setup = connect + security + first stream + 1-byte echo), then one
stream carries ``--mib`` MiB to it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import trio

import p2pnet.net.logs  # noqa: F401  (quiet py-libp2p)
from p2pnet.core.address import parse_peer_address
from p2pnet.net.host import Stream, open_host
from p2pnet.net.identity import generate_identity
from p2pnet.net.swarm_key import SwarmKey

KEY = SwarmKey(bytes(range(32)))  # a fixed key: both processes must agree


def _key(mode: str) -> SwarmKey | None:
    return KEY if mode == "psk" else None


async def _serve(mode: str) -> None:
    async with open_host(generate_identity(), swarm_key=_key(mode)) as host:

        async def echo(stream: Stream) -> None:
            while data := await stream.read():
                await stream.write(data)

        async def sink(stream: Stream) -> None:
            while await stream.read():
                pass
            await stream.write(b"done")
            await stream.close()

        host.set_stream_handler("/bench/echo/1", echo)
        host.set_stream_handler("/bench/sink/1", sink)
        print(host.addrs[0], flush=True)
        await trio.sleep_forever()


async def _measure(mode: str, addr: str, dials: int, mib: int) -> tuple[float, float, float]:
    target = parse_peer_address(addr)
    times = []
    for _ in range(dials):
        async with open_host(generate_identity(), swarm_key=_key(mode)) as host:
            started = time.perf_counter()
            stream = await host.open_stream(target, "/bench/echo/1")
            await stream.write(b"x")
            await stream.read()
            times.append(time.perf_counter() - started)
            await stream.close()
    times.sort()
    async with open_host(generate_identity(), swarm_key=_key(mode)) as host:
        stream = await host.open_stream(target, "/bench/sink/1")
        chunk = b"x" * (1 << 20)
        started = time.perf_counter()
        for _ in range(mib):
            await stream.write(chunk)
        await stream._raw.close()  # half-close: the sink answers at end of stream
        while not await stream.read():
            pass
        rate = mib * (1 << 20) / (time.perf_counter() - started) / 1e6
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.9)] * 1000, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dials", type=int, default=50)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--serve", choices=("none", "psk"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(_serve, args.serve)
        return
    print(f"{'':10} {'setup p50':>10} {'setup p90':>10} {'bulk':>10}")
    for mode in ("none", "psk"):
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            addr = server.stdout.readline().strip()
            p50, p90, rate = trio.run(_measure, mode, addr, args.dials, args.mib)
        finally:
            server.kill()
            server.wait()
        label = "swarm key" if mode == "psk" else "no key"
        print(f"{label:10} {p50:8.1f} ms {p90:7.1f} ms {rate:6.0f} MB/s")


if __name__ == "__main__":
    main()
