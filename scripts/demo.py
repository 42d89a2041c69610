"""The p2pnet demo: a local two-peer swarm where one peer calls the other's models.

Starts a serving peer as its own process (``p2pnet peer``) on 127.0.0.1, calls its
iris and sentiment models from a second peer in this process, shows what a bad
call looks like, then stops the serving peer with SIGINT. Nothing leaves this
machine. Usage: python scripts/demo.py [--models build/models]
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


def start_serving_peer(
    models: Path, identity: Path
) -> tuple[subprocess.Popen[str], str, dict[str, str]]:
    """Run `p2pnet peer` in its own process; return it, its address and {name: model ID}."""
    command = [
        sys.executable, "-m", "p2pnet.cli", "peer",
        "--identity", str(identity),
        "--listen", "/ip4/127.0.0.1/tcp/0",
        "--serve", str(models / "iris.onnx"),
        "--serve", str(models / "sentiment.onnx"),
    ]  # fmt: skip
    console.print(
        "[dim]$ p2pnet peer --serve iris.onnx --serve sentiment.onnx "
        "--listen /ip4/127.0.0.1/tcp/0[/]"
    )
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=os.environ | {"COLUMNS": "200"}
    )
    assert proc.stdout is not None
    address, model_ids = "", {}
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        console.print(f"[dim]  {line.rstrip()}[/]")
        if m := re.match(r"listening (\S+)", line):
            address = address or m.group(1)
        if m := re.match(r"serving (\S+) (\S+)", line):
            model_ids[m.group(2)] = m.group(1)
        if line.startswith("ready") or time.monotonic() > deadline:
            break
    if not address:
        proc.kill()
        raise SystemExit("the serving peer did not start; run it by hand to see why")
    return proc, address, model_ids


async def call_models(address: str, model_ids: dict[str, str]) -> None:
    async with Peer() as client:
        console.print(f"\ncalling peer from a second peer {client.peer_id}\n")
        iris = np.array(
            [[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3]], np.float32
        )
        species = ["setosa", "versicolor", "virginica"]
        started = time.perf_counter()
        out = await client.invoke(address, model_ids["iris"], {"x": iris})
        first_ms = (time.perf_counter() - started) * 1000
        table = Table(
            title=f"iris on the remote peer (first call {first_ms:.1f} ms, includes dialling)"
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
        out = await client.invoke(
            address, model_ids["sentiment"], {"text": np.array(messages, dtype=object)}
        )
        table = Table(title="sentiment on the remote peer (a string tensor in, labels out)")
        for column in ("message", "label", "p"):
            table.add_column(column)
        for text, label, probs in zip(messages, out["label"], out["probabilities"], strict=True):
            table.add_row(text, str(label), f"{probs.max():.2f}")
        console.print(table)

        latencies = []
        for _ in range(200):
            started = time.perf_counter()
            await client.invoke(address, model_ids["iris"], {"x": iris[:1]})
            latencies.append((time.perf_counter() - started) * 1000)
        console.print(
            f"200 warm calls on the open connection: p50 {statistics.median(latencies):.2f} ms, "
            f"p95 {np.percentile(latencies, 95):.2f} ms"
        )

        console.print(
            "\na call with the wrong shape gets a precise error, and the peer keeps serving:"
        )
        try:
            await client.invoke(address, model_ids["iris"], {"x": np.zeros((1, 3), np.float32)})
        except P2PNetError as exc:
            console.print(f"  [red]{type(exc).__name__}[/]: {exc}")
        out = await client.invoke(address, model_ids["iris"], {"x": iris[:1]})
        console.print(f"  next call: {species[int(out['label'][0])]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "build" / "models")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="p2pnet-demo-") as tmp:
        proc, address, model_ids = start_serving_peer(args.models, Path(tmp) / "server.key")
        try:
            trio.run(call_models, address, model_ids)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    console.print(
        f"\nserving peer stopped (exit {code}); demo took {time.monotonic() - started:.1f} s"
    )
    if code != 0:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
