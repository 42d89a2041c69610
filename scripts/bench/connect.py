"""What a new libp2p connection costs in CPU, on each side and per stage, against a new
stream and a request on connections already open (docs/benchmarks.md, "Connection setup").

    python scripts/bench/connect.py [--connections 50] [--out DIR]

Two hosts built by ``open_host`` (TCP, Noise, Yamux), one per process on 127.0.0.1: this
process dials, a child process listens and echoes. Each of ``--connections`` rounds:

- connect: TCP, multistream-select, the Noise XX handshake, multistream-select, Yamux;
- first stream: multistream-select of the protocol and a 1-byte echo, stream closed;
- settle: ``--settle`` seconds idle, for what py-libp2p does in the background after a
  connection (identify, both ways);
- disconnect: the connection closed.

Each process's CPU time (``time.process_time``) is read at every stage boundary, the
child's over its stdin/stdout pipe. The baselines, measured in the same run on one
connection kept open: a new stream with a 1-byte echo, and a 1-byte echo on a stream
kept open. Each figure is measured in each of ``--modes`` in the same run, the modes
taking turns: ``p2pnet`` (the hosts as they are), ``upstream_select`` (py-libp2p's own
multistream-select dialer: the patch of p2pnet/net/multistream.py left out, in both
processes) and ``upstream_reads`` (py-libp2p's own reads: the patches of
p2pnet/net/tcp_reads.py left out, in both processes). Writes ``connect.json`` to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from p2pnet.core.address import PeerAddress, parse_peer_address
from p2pnet.net.host import Host, Stream, open_host
from p2pnet.net.identity import generate_identity
from p2pnet.net.logs import set_libp2p_log_level
from p2pnet.simulate.workers import JsonLinesWorker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, machine_info

ECHO = "/p2pnet-bench/echo/1"
STAGES = ("connect", "first_stream", "settle", "disconnect")
START_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0
CHILD_TIMEOUT = 900.0


async def _echo(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.close()


def leave_out_pipelined_select() -> None:
    """Keep py-libp2p's own multistream-select dialer: ``tune_libp2p`` calls nothing for
    p2pnet/net/multistream.py's patch."""
    import p2pnet.net.host

    setattr(p2pnet.net.host, "install_pipelined_select", lambda: None)  # noqa: B010


def leave_out_read_patches() -> None:
    """Keep py-libp2p's own read path: ``tune_libp2p`` calls nothing for
    p2pnet/net/tcp_reads.py's patches."""
    import p2pnet.net.host

    setattr(p2pnet.net.host, "install_read_patches", lambda: None)  # noqa: B010


def leave_out(mode: str) -> None:
    """Before any host is opened: leave out the patches ``mode`` measures without."""
    if mode == "upstream_select":
        leave_out_pipelined_select()
    elif mode == "upstream_reads":
        leave_out_read_patches()


async def serve() -> None:
    """The listening side: prints its address, then answers each stdin line with its CPU
    seconds so far; ends when stdin closes."""
    set_libp2p_log_level(100)
    async with open_host(generate_identity()) as host:
        host.set_stream_handler(ECHO, _echo)
        print(json.dumps({"addr": host.addrs[0]}), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buffer = b""
        while True:
            data = await stdin.receive_some(4096)
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                _, _, buffer = buffer.partition(b"\n")
                print(json.dumps({"cpu_s": time.process_time()}), flush=True)


class Meter:
    """CPU seconds of both processes at stage boundaries, summed per stage."""

    def __init__(self, child: JsonLinesWorker) -> None:
        self._child = child
        self.client: dict[str, list[float]] = {}
        self.server: dict[str, list[float]] = {}
        self._last = self._now()

    def _now(self) -> tuple[float, float]:
        server = self._child.call({"cmd": "cpu"}, CALL_TIMEOUT)["cpu_s"]
        return time.process_time(), float(server)

    def mark(self, stage: str) -> None:
        """The CPU spent since the last mark goes to ``stage``."""
        now = self._now()
        self.client.setdefault(stage, []).append(now[0] - self._last[0])
        self.server.setdefault(stage, []).append(now[1] - self._last[1])
        # The pipe exchange itself is not counted: the next stage starts after it.
        self._last = self._now()


async def _echo_once(stream: Stream) -> None:
    await stream.write(b"x")
    if await stream.read() != b"x":
        raise RuntimeError("the echo answered something else")


async def _new_stream_echo(host: Host, target: PeerAddress) -> None:
    stream = await host.open_stream(target, ECHO)
    await _echo_once(stream)
    await stream.close()


async def measure(target: PeerAddress, meter: Meter, connections: int, settle: float) -> None:
    async with open_host(generate_identity()) as host:
        raw: Any = host._raw  # the stages need py-libp2p's own connect and disconnect
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo
        from multiaddr import Multiaddr

        peer_id = ID.from_base58(target.peer_id)
        info = PeerInfo(peer_id, [Multiaddr(a) for a in target.addrs])
        for i in range(connections + 1):  # the first round warms up and is dropped
            meter.mark("warm-up" if i == 0 else "between")
            await raw.connect(info)
            meter.mark("connect")
            await _new_stream_echo(host, PeerAddress(target.peer_id, ()))
            meter.mark("first_stream")
            await trio.sleep(settle)
            meter.mark("settle")
            await raw.disconnect(peer_id)
            meter.mark("disconnect")
            await trio.sleep(settle)  # the closing finishes out of the next stage
        # Baselines on one connection kept open.
        await raw.connect(info)
        await _new_stream_echo(host, PeerAddress(target.peer_id, ()))
        await trio.sleep(settle)
        meter.mark("between")
        for _ in range(connections):
            await _new_stream_echo(host, PeerAddress(target.peer_id, ()))
            meter.mark("new_stream")
        stream = await host.open_stream(PeerAddress(target.peer_id, ()), ECHO)
        await _echo_once(stream)
        meter.mark("between")
        for _ in range(connections):
            await _echo_once(stream)
            meter.mark("request")
        await stream.close()


def _ms(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples) * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
    }


def report(meter: Meter, connections: int, settle: float) -> dict[str, Any]:
    sides = {"client": meter.client, "server": meter.server}
    out: dict[str, Any] = {
        "connections": connections,
        "settle_s": settle,
        "stages": {
            side: {s: _ms(per[s]) for s in (*STAGES, "new_stream", "request")}
            for side, per in sides.items()
        },
    }
    for side, per in sides.items():
        total = [sum(per[s][i] for s in STAGES) for i in range(connections)]
        out[f"{side}_connection_ms"] = _ms(total)
    both = out["client_connection_ms"]["median_ms"] + out["server_connection_ms"]["median_ms"]
    stream = sum(out["stages"][side]["new_stream"]["median_ms"] for side in sides)
    request = sum(out["stages"][side]["request"]["median_ms"] for side in sides)
    out["both_sides_ms"] = {
        "connection": round(both, 3),
        "new_stream": round(stream, 3),
        "request": round(request, 3),
    }
    out["connection_over_new_stream"] = round(both / stream, 2) if stream else None
    out["connection_over_request"] = round(both / request, 2) if request else None
    return out


MODES = ("p2pnet", "upstream_select", "upstream_reads")
# What each mode other than p2pnet leaves out, for the printed summary.
LEFT_OUT = {
    "upstream_select": "pipelined multistream-select",
    "upstream_reads": "buffered reads (tcp_reads)",
}


def run_mode(mode: str, connections: int, settle: float, out: Path) -> dict[str, Any]:
    """One measurement, in a new process (py-libp2p's patches are per process)."""
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--mode-child",
            mode,
            "--connections",
            str(connections),
            "--settle",
            str(settle),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    if done.returncode != 0:
        raise SystemExit(f"the {mode} measurement failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure_mode(mode: str, connections: int, settle: float, out: Path) -> dict[str, Any]:
    """Both hosts, this process dialling and a child listening, in ``mode``."""
    leave_out(mode)
    set_libp2p_log_level(100)
    argv = [sys.executable, __file__, "--serve-child", "--leave-out", mode]
    child = JsonLinesWorker(argv, out / f"connect-{mode}-child.log")
    try:
        target = parse_peer_address(child.receive(START_TIMEOUT)["addr"])
        meter = Meter(child)
        trio.run(measure, target, meter, connections, settle)
        return report(meter, connections, settle)
    finally:
        child.stop()


def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over rounds (each round's figure is already a median)."""
    both = {
        k: round(statistics.median(r["both_sides_ms"][k] for r in results), 3)
        for k in ("connection", "new_stream", "request")
    }
    in_requests = {
        k: round(
            statistics.median(
                r["both_sides_ms"][k] / r["both_sides_ms"]["request"] for r in results
            ),
            2,
        )
        for k in ("connection", "new_stream")
    }
    stages = {
        side: {
            stage: round(
                statistics.median(r["stages"][side][stage]["median_ms"] for r in results), 3
            )
            for stage in (*STAGES, "new_stream", "request")
        }
        for side in ("client", "server")
    }
    return {
        "both_sides_ms": both,
        "in_requests": in_requests,
        "stages_median_ms": stages,
        "per_round": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="turns of each mode")
    parser.add_argument("--settle", type=float, default=0.05, help="seconds idle per stage")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated, p2pnet first (default {','.join(MODES)})",
    )
    parser.add_argument("--leave-out", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--mode-child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        leave_out(args.leave_out or "p2pnet")
        trio.run(serve)
        return
    if args.mode_child:
        print(json.dumps(measure_mode(args.mode_child, args.connections, args.settle, args.out)))
        return
    modes_run = tuple(args.modes.split(","))
    if modes_run[0] != "p2pnet" or not set(modes_run) <= set(MODES):
        parser.error(f"--modes: p2pnet first, then any of {', '.join(MODES[1:])}")
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    # The modes take turns, so that a change in the machine's load falls on both.
    rounds = {mode: [] for mode in modes_run}  # type: dict[str, list[dict[str, Any]]]
    for _ in range(args.rounds):
        for mode in modes_run:
            rounds[mode].append(run_mode(mode, args.connections, args.settle, args.out))
    modes = {mode: _median_of(rounds[mode]) for mode in modes_run}
    ours = modes["p2pnet"]
    result: dict[str, Any] = {
        "rounds": args.rounds,
        "modes": modes,
        # Per mode left out, the CPU p2pnet's patches save in plain CPU milliseconds
        # (medians over rounds), and counted in requests of the same process and round:
        # where the patches also make a request cheaper (tcp_reads does), that figure
        # understates the saving; where they do not, it cancels load changes between
        # the modes' turns.
        "saves_ms": {
            mode: {
                k: round(1 - ours["both_sides_ms"][k] / modes[mode]["both_sides_ms"][k], 3)
                for k in ("connection", "new_stream", "request")
            }
            for mode in modes_run[1:]
        },
        "saves_in_requests": {
            mode: {
                k: round(1 - ours["in_requests"][k] / modes[mode]["in_requests"][k], 3)
                for k in ("connection", "new_stream")
            }
            for mode in modes_run[1:]
        },
        "machine": machine_info("libp2p", "trio"),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "code": git_state(),
    }
    (args.out / "connect.json").write_text(json.dumps(result, indent=2) + "\n")
    print("CPU ms, median per connection (stages) or per operation; client / server")
    print(f"{'stage':14} " + " ".join(f"{mode:>22}" for mode in modes_run))
    for stage in (*STAGES, "new_stream", "request"):
        cells = []
        for mode in modes_run:
            c = modes[mode]["stages_median_ms"]["client"][stage]
            s = modes[mode]["stages_median_ms"]["server"][stage]
            cells.append(f"{c:10.2f} / {s:9.2f}")
        print(f"{stage:14} " + " ".join(cells))
    for mode in modes_run:
        both = modes[mode]["both_sides_ms"]
        print(
            f"{mode}: a connection {both['connection']:.2f} ms (both sides), a new stream "
            f"{both['new_stream']:.2f} ms, a request {both['request']:.2f} ms; in requests: "
            f"a connection {modes[mode]['in_requests']['connection']}, a new stream "
            f"{modes[mode]['in_requests']['new_stream']}"
        )
    for mode in modes_run[1:]:
        ms, counted = result["saves_ms"][mode], result["saves_in_requests"][mode]
        print(
            f"{LEFT_OUT[mode]} saves {ms['connection']:.0%} of a connection's CPU, "
            f"{ms['new_stream']:.0%} of a new stream's, {ms['request']:.0%} of a request's "
            f"(counted in requests: {counted['connection']:.0%} and "
            f"{counted['new_stream']:.0%})"
        )
    print(
        f"load {result['load_before'][0]} -> {result['load_after'][0]}; "
        f"wrote {args.out / 'connect.json'}"
    )


if __name__ == "__main__":
    main()
