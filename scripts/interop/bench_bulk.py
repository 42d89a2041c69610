"""Bulk transfer speed between p2pnet and js-libp2p, against p2pnet-to-p2pnet, in one run.

Usage:
    PYTHONPATH=. .venv/bin/python scripts/interop/bench_bulk.py [--sizes 16,64] [--runs 5]
        [--out build/bench/interop_bulk.json] [--quick]

Everything runs on 127.0.0.1, over TCP + Noise + Yamux, on the bulk protocol of bulk.py
(``/p2pnet-interop/bulk/1.0.0``). A client p2pnet host (``open_host``, ``Host.open_stream``,
``Stream.read/write``, writes of 1 MiB) measures against two servers, each in its own
process so that neither shares a CPU core's event loop with the client:

  js       js_node.mjs (js-libp2p, @chainsafe/libp2p-yamux, @chainsafe/libp2p-noise)
  p2pnet   this file with --serve: a p2pnet host serving bulk.serve_bulk

in both directions: put (p2pnet client -> server) and get (server -> p2pnet client).
Runs alternate between the two servers, after an uncounted warm-up (10 transfers of
16 MiB each way to each server, kept in the JSON as "warm_up": a fresh js node's first
ones run at half speed or less while V8 compiles). The whole set is measured twice,
each time in a fresh child process (this file with --measure): with p2pnet's Yamux
window wake-up (p2pnet.net.yamux_window, installed by tune_libp2p) and without it (the
child, and its p2pnet server, get P2PNET_BULK_NO_WINDOW_WAKEUP=1, which this script
alone reads: it replaces install_window_wakeup with a no-op before the first host
opens).

Also recorded per transfer: CPU seconds of the client and of the server process (Linux
/proc), and for puts how often p2pnet's Yamux writer found its send window empty.

Figures: MB/s (10^6 bytes per second) of the payload, median over the runs, with min and
max; "js/p2pnet" is the js median over the p2pnet median (target >= 0.8). Every transfer
is checked (byte count and sha256); a wrong one makes the run exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from bulk import BULK_PROTOCOL, Transfer, bulk_get, bulk_put, make_payload, serve_bulk  # noqa: E402
from run_js_interop import NODE_MODULES, JsNode, js_versions, run_js_node  # noqa: E402

from p2pnet.core.address import PeerAddress, parse_peer_address  # noqa: E402
from p2pnet.net import host as host_module  # noqa: E402
from p2pnet.net.host import Host, open_host  # noqa: E402
from p2pnet.net.identity import generate_identity  # noqa: E402

NO_WAKEUP_ENV = "P2PNET_BULK_NO_WINDOW_WAKEUP"
MIB = 1 << 20
TRANSFER_TIMEOUT = 180.0
WARM_UP_SIZE = 16 * MIB
WARM_UP_RUNS = 10


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _skip_wakeup_if_asked() -> bool:
    """Whether the window wake-up is on for this process (off when NO_WAKEUP_ENV is 1)."""
    if os.environ.get(NO_WAKEUP_ENV) == "1":
        # tune_libp2p looks the name up in its module at each call
        host_module.install_window_wakeup = lambda: None  # type: ignore[attr-defined]
        return False
    return True


# --- --serve: the p2pnet server -------------------------------------------------------


async def serve() -> None:
    async with open_host(generate_identity(), ["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_stream_handler(BULK_PROTOCOL, serve_bulk)
        print(json.dumps({"addr": host.addrs[0], "wakeup": _wakeup_installed()}), flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        while await stdin.receive_some(4096):
            pass  # until the parent closes our stdin


def _wakeup_installed() -> bool:
    import libp2p.stream_muxer.yamux.yamux as yamux

    return bool(getattr(yamux.YamuxStream, "_p2pnet_window_wakeup", False))


@asynccontextmanager
async def run_p2pnet_server() -> AsyncIterator[tuple[PeerAddress, int]]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(Path(__file__).resolve()), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        buf = b""
        with trio.fail_after(30):
            while b"\n" not in buf:
                data = await process.stdout.receive_some(4096)
                if not data:
                    raise RuntimeError(f"p2pnet server exited ({process.poll()})")
                buf += data
        yield parse_peer_address(json.loads(buf.partition(b"\n")[0])["addr"]), process.pid
    finally:
        with trio.CancelScope(shield=True):
            await process.stdin.aclose()
            with trio.move_on_after(10):
                await process.wait()
            if process.poll() is None:
                process.kill()
                await process.wait()


# --- --measure: one set of runs ---------------------------------------------------------


async def _one(
    host: Host, peer: PeerAddress, direction: str, payload: tuple[bytes, bytes]
) -> Transfer:
    """One put of ``payload`` (data, sha256) or one get of as many bytes."""
    with trio.fail_after(TRANSFER_TIMEOUT):
        if direction == "put":
            return await bulk_put(host, peer, *payload)
        return await bulk_get(host, peer, len(payload[0]))


async def measure(sizes: list[int], runs: int, js_log: Path) -> dict[str, Any]:
    wakeup = _skip_wakeup_if_asked()
    node_bin = shutil.which("node")
    if node_bin is None or not (NODE_MODULES / "libp2p").is_dir():
        raise SystemExit("bench_bulk: needs `node` and scripts/interop/node_modules (npm ci)")
    transfers: list[dict[str, Any]] = []
    warm_up: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        js: JsNode = await stack.enter_async_context(run_js_node(node_bin, js_log))
        server, server_pid = await stack.enter_async_context(run_p2pnet_server())
        host = await stack.enter_async_context(
            open_host(generate_identity(), ["/ip4/127.0.0.1/tcp/0"])
        )
        targets = {"js": js.address, "p2pnet": server}
        pids = {"js": js.process.pid, "p2pnet": server_pid}
        # Uncounted warm-up: connect, let identify settle, and let V8 compile the js
        # node's hot paths (its first 16 MiB transfers run at half speed or less).
        warm_payload = make_payload(WARM_UP_SIZE)
        for run in range(WARM_UP_RUNS):
            for target, peer in targets.items():
                for direction in ("put", "get"):
                    warm = await _one(host, peer, direction, warm_payload)
                    if not warm.ok:
                        raise RuntimeError(f"warm-up {direction} to {target}: {warm.detail}")
                    warm_up.append(
                        {"target": target, "direction": direction, "run": run}
                        | {"mb_per_s": warm.mb_per_s}
                    )
        for size in sizes:
            payload = make_payload(size)  # the same random bytes in every put of this size
            for run in range(runs):
                for target, peer in targets.items():
                    for direction in ("put", "get"):
                        server_cpu = _cpu_seconds(pids[target])
                        client_cpu = time.process_time()
                        t = await _one(host, peer, direction, payload)
                        client_cpu = time.process_time() - client_cpu
                        after = _cpu_seconds(pids[target])
                        if server_cpu is not None and after is not None:
                            server_cpu = after - server_cpu
                        transfers.append(
                            {
                                "target": target,
                                "direction": direction,
                                "size": size,
                                "run": run,
                                "seconds": t.seconds,
                                "mb_per_s": t.mb_per_s,
                                # CPU seconds of each side during the transfer
                                "client_cpu": client_cpu,
                                "server_cpu": server_cpu,
                                "window_waits": t.window_waits,
                                "ok": t.ok,
                                "detail": t.detail,
                            }
                        )
                        print(
                            f"  wakeup={'on' if wakeup else 'off'} {target:<6} {direction} "
                            f"{size // MIB:>3} MiB run {run}: {t.mb_per_s:7.1f} MB/s"
                            f" window waits {t.window_waits}"
                            + ("" if t.ok else f" WRONG: {t.detail}"),
                            file=sys.stderr,
                            flush=True,
                        )
    return {
        "wakeup": wakeup,
        "wakeup_installed": _wakeup_installed(),
        "warm_up": warm_up,
        "transfers": transfers,
    }


# --- the driver ---------------------------------------------------------------------------


def summarize(sets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for patch, result in sets.items():
        by_key: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for t in result["transfers"]:
            by_key.setdefault((t["target"], t["direction"], t["size"]), []).append(t)
        for (target, direction, size), ts in sorted(by_key.items()):
            if target != "js":
                continue
            bs = by_key[("p2pnet", direction, size)]
            speeds, base = [t["mb_per_s"] for t in ts], [t["mb_per_s"] for t in bs]
            rows.append(
                {
                    "wakeup": patch,
                    "direction": direction,
                    "size_mib": size // MIB,
                    "runs": len(speeds),
                    "js_median": statistics.median(speeds),
                    "js_min": min(speeds),
                    "js_max": max(speeds),
                    "p2pnet_median": statistics.median(base),
                    "p2pnet_min": min(base),
                    "p2pnet_max": max(base),
                    "ratio": statistics.median(speeds) / statistics.median(base),
                    # median CPU seconds per transfer: the p2pnet client, and the server
                    "js_client_cpu": _median_of(ts, "client_cpu"),
                    "js_server_cpu": _median_of(ts, "server_cpu"),
                    "p2pnet_client_cpu": _median_of(bs, "client_cpu"),
                    "p2pnet_server_cpu": _median_of(bs, "server_cpu"),
                    # times p2pnet's writer ran out of send window, median (puts only)
                    "js_window_waits": _median_of(ts, "window_waits"),
                    "p2pnet_window_waits": _median_of(bs, "window_waits"),
                }
            )
    return rows


def _median_of(transfers: list[dict[str, Any]], key: str) -> float | None:
    values = [t[key] for t in transfers if t[key] is not None]
    return statistics.median(values) if values else None


def _cpu(row: dict[str, Any], target: str) -> str:
    client, server = row[f"{target}_client_cpu"], row[f"{target}_server_cpu"]
    return f"{client:.2f} / {'?' if server is None else f'{server:.2f}'}"


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bulk transfer, MB/s median (min-max); put = p2pnet sends")
    for column in (
        "wake-up",
        "direction",
        "MiB",
        "runs",
        "js",
        "p2pnet",
        "js/p2pnet",
        "CPU s client/js",
        "CPU s client/p2pnet",
        "window waits js/p2pnet",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["wakeup"],
            "p2pnet -> peer (put)" if r["direction"] == "put" else "peer -> p2pnet (get)",
            str(r["size_mib"]),
            str(r["runs"]),
            f"{r['js_median']:.1f} ({r['js_min']:.1f}-{r['js_max']:.1f})",
            f"{r['p2pnet_median']:.1f} ({r['p2pnet_min']:.1f}-{r['p2pnet_max']:.1f})",
            f"{r['ratio']:.2f}",
            _cpu(r, "js"),
            _cpu(r, "p2pnet"),
            "-"
            if r["js_window_waits"] is None
            else f"{r['js_window_waits']:.0f} / {r['p2pnet_window_waits']:.0f}",
        )
    Console(width=max(shutil.get_terminal_size().columns, 180)).print(table)


def drive(args: argparse.Namespace) -> int:
    started = time.time()
    load_before = os.getloadavg()
    sets: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for patch in ("on", "off"):
            env = dict(os.environ)
            env.pop(NO_WAKEUP_ENV, None)
            if patch == "off":
                env[NO_WAKEUP_ENV] = "1"
            out = Path(tmp) / f"{patch}.json"
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--measure",
                str(out),
                "--sizes",
                args.sizes,
                "--runs",
                str(args.runs),
            ]
            print(f"measuring with the window wake-up {patch} ...", file=sys.stderr, flush=True)
            result = subprocess.run(command, env=env, check=False)
            if result.returncode != 0 or not out.exists():
                print(f"bench_bulk: the measuring process failed ({result.returncode})")
                return 1
            sets[patch] = json.loads(out.read_text())
            if sets[patch]["wakeup_installed"] != (patch == "on"):
                print(f"bench_bulk: the wake-up was not {patch} in its run")
                return 1
    rows = summarize(sets)
    print_table(rows)
    wrong = [t for s in sets.values() for t in s["transfers"] if not t["ok"]]
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "python": platform.python_version(),
            "node": subprocess.run(
                ["node", "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
        },
        "js_versions": js_versions(),
        "unit": "MB/s = 10^6 payload bytes per second",
        "target": "js/p2pnet >= 0.8 for 16 and 64 MiB, both directions",
        "rows": rows,
        "wrong_transfers": wrong,
        "transfers": sets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}; wrote {args.out}")
    if wrong:
        print(f"{len(wrong)} transfers arrived wrong: {wrong[:3]}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16,64", help="MiB, comma-separated (default 16,64)")
    parser.add_argument("--runs", type=int, default=5, help="runs per size and direction")
    parser.add_argument("--quick", action="store_true", help="3 runs")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "interop_bulk.json")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 3
    if args.serve:
        _skip_wakeup_if_asked()
        trio.run(serve)
        return 0
    if args.measure:
        sizes = [int(s) * MIB for s in args.sizes.split(",")]
        js_log = Path(tempfile.gettempdir()) / f"p2pnet-bulk-js-{os.getpid()}.log"
        result = trio.run(measure, sizes, args.runs, js_log)
        args.measure.write_text(json.dumps(result))
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
