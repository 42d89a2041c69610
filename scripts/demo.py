"""The p2pnet demo: a local swarm where peers find each other's models through the DHT.

Starts a bootstrap peer and a serving peer as processes of their own (``p2pnet
peer``) on 127.0.0.1; the serving peer joins through the bootstrap peer and
announces its iris and sentiment models by task. A third peer, in this process,
joins the same way, finds the models by task (knowing no address but the
bootstrap peer's), calls them, shows what a bad call looks like, and the two
processes are stopped with SIGINT. Nothing leaves this machine.
Usage: python scripts/demo.py [--models build/models]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio
from rich.console import Console
from rich.table import Table

from p2pnet import Peer
from p2pnet.errors import P2PNetError

REPO = Path(__file__).resolve().parent.parent
console = Console(highlight=False, soft_wrap=True)


def start_peer(args: list[str], shown: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Run `p2pnet peer ARGS` in its own process; return it and its output up to "ready"."""
    console.print(f"[dim]$ p2pnet peer {shown}[/]")
    command = [sys.executable, "-m", "p2pnet.cli", "peer", "--listen", "/ip4/127.0.0.1/tcp/0"]
    proc = subprocess.Popen(
        command + args, stdout=subprocess.PIPE, text=True, env=os.environ | {"COLUMNS": "200"}
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        console.print(f"[dim]  {line.rstrip()}[/]")
        lines.append(line)
        if line.startswith("ready") or time.monotonic() > deadline:
            break
    if not any(line.startswith("ready") for line in lines):
        proc.kill()
        raise SystemExit("a peer did not start; run the command above by hand to see why")
    return proc, lines


def address_of(lines: list[str]) -> str:
    return next(m.group(1) for line in lines if (m := re.match(r"listening (\S+)", line)))


async def call_models(bootstrap: str) -> None:
    async with Peer(bootstrap=[bootstrap]) as client:
        console.print(f"\na third peer {client.peer_id} joins through the bootstrap peer\n")
        offers = await client.find(task="iris-species")
        table = Table(title="p2pnet find --task iris-species (DHT lookup + signed record)")
        for column in ("model", "peer", "input", "latency"):
            table.add_column(column)
        for offer in offers:
            r = offer.record
            table.add_row(
                f"{r.name} {r.model_id[:16]}...", f"{r.peer_id[:16]}...",
                r.schema.inputs[0].describe(), f"{offer.rtt * 1000:.1f} ms",
            )  # fmt: skip
        console.print(table)
        address = str(offers[0].address)
        iris_id = offers[0].record.model_id
        iris = np.array(
            [[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3]], np.float32
        )
        species = ["setosa", "versicolor", "virginica"]
        started = time.perf_counter()
        out = await client.call({"x": iris}, task="iris-species")
        first_ms = (time.perf_counter() - started) * 1000
        table = Table(
            title=f"call --task iris-species ({first_ms:.1f} ms: lookup, describe, dial, call)"
        )
        for column in ("measurements", "species", "p"):
            table.add_column(column)
        for row, label, probs in zip(iris, out["label"], out["probabilities"], strict=True):
            table.add_row(
                ", ".join(f"{v:.1f}" for v in row), species[int(label)], f"{probs.max():.2f}"
            )
        console.print(table)

        messages = [
            "I love it, works great",
            "My order arrived broken, I want a refund",
            "Fast delivery and friendly support",
        ]
        offer, out = await client.call_with_offer(
            {"text": np.array(messages, dtype=object)}, task="sentiment-analysis"
        )
        table = Table(
            title=f"call --task sentiment-analysis: {offer.record.name} on "
            f"{offer.record.peer_id[:16]}... (a string tensor in, labels out)"
        )
        for column in ("message", "label", "p"):
            table.add_column(column)
        for text, label, probs in zip(messages, out["label"], out["probabilities"], strict=True):
            table.add_row(text, str(label), f"{probs.max():.2f}")
        console.print(table)

        latencies = []
        for _ in range(200):
            started = time.perf_counter()
            await client.invoke(address, iris_id, {"x": iris[:1]})
            latencies.append((time.perf_counter() - started) * 1000)
        console.print(
            f"200 warm calls on the open connection: p50 {statistics.median(latencies):.2f} ms, "
            f"p95 {np.percentile(latencies, 95):.2f} ms"
        )

        console.print(
            "\na call with the wrong shape gets a precise error, and the peer keeps serving:"
        )
        try:
            await client.invoke(address, iris_id, {"x": np.zeros((1, 3), np.float32)})
        except P2PNetError as exc:
            console.print(f"  [red]{type(exc).__name__}[/]: {exc}")
        out = await client.invoke(address, iris_id, {"x": iris[:1]})
        console.print(f"  next call: {species[int(out['label'][0])]}")


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "build" / "models")
    args = parser.parse_args()
    started = time.monotonic()
    procs: list[subprocess.Popen[str]] = []
    codes: list[int] = []
    with tempfile.TemporaryDirectory(prefix="p2pnet-demo-") as tmp:
        try:
            boot, lines = start_peer(
                ["--role", "bootstrap", "--identity", f"{tmp}/boot.key"],
                "--role bootstrap --listen /ip4/127.0.0.1/tcp/0",
            )
            procs.append(boot)
            bootstrap = address_of(lines)
            server, _ = start_peer(
                [
                    "--identity", f"{tmp}/server.key", "--bootstrap", bootstrap,
                    "--serve", str(args.models / "iris.onnx"), "--task", "iris-species",
                    "--serve", str(args.models / "sentiment.onnx"),
                    "--task", "sentiment-analysis",
                ],
                "--serve iris.onnx --serve sentiment.onnx --task iris-species "
                "--task sentiment-analysis --bootstrap <the bootstrap peer>",
            )  # fmt: skip
            procs.append(server)
            trio.run(call_models, bootstrap)
        finally:
            codes = [stop(proc) for proc in reversed(procs)]
    console.print(f"\npeers stopped (exit {codes}); demo took {time.monotonic() - started:.1f} s")
    if any(codes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
