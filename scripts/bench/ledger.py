"""What the ledger adds to every call: the latency of ``Ledger.record_receipt`` (one
committed transaction: the receipt, the balance, the chain checks), with the ledger's
``synchronous=FULL`` against ``NORMAL``, in the same run.

    python scripts/bench/ledger.py [--receipts 2000] [--dir DIR] [--out build/bench]

Each mode writes ``--receipts`` receipts, round-robin over 10 callers, into a new ledger
file in ``--dir`` (default: the system's temporary directory; give a directory on the disk
the real ledger uses, ``$XDG_DATA_HOME/p2pnet``: fsync costs what that disk costs). FULL
fsyncs the write-ahead log at each commit (a receipt survives power loss); NORMAL only at
checkpoints (survives a crash of the process, not of the machine). The filesystem of
``--dir`` is reported with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, git_state, machine_info
from rich.console import Console
from rich.table import Table

from p2pnet.ledger import Ledger, StoredReceipt

MODES = ("FULL", "NORMAL")
CALLERS = 10


def _filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on, from /proc/mounts ("unknown" if none)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3 and resolved.startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


def _measure(folder: Path, mode: str, receipts: int) -> dict[str, Any]:
    path = folder / f"ledger-{mode.lower()}.sqlite3"
    heads: dict[str, tuple[int, bytes]] = {}
    samples = []
    with Ledger.open(path, owner="provider", synchronous=mode) as ledger:  # type: ignore[arg-type]
        for n in range(receipts):
            caller = f"caller{n % CALLERS}"
            seq, prev = heads.get(caller, (0, bytes(32)))
            digest = hashlib.sha256(f"{caller}/{seq + 1}".encode()).digest()
            receipt = StoredReceipt(
                "provider", caller, "model", seq + 1, 1500, digest, prev, n, bytes(160)
            )
            started = time.perf_counter()
            ledger.record_receipt(receipt, role="provider")
            samples.append(time.perf_counter() - started)
            heads[caller] = (seq + 1, digest)
        assert ledger.audit() == []
    samples.sort()
    ms = [s * 1000 for s in samples]
    return {
        "synchronous": mode,
        "receipts": receipts,
        "p50_ms": round(statistics.median(ms), 4),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 4),
        "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 4),
        "max_ms": round(ms[-1], 4),
        "per_second": round(len(ms) / (sum(ms) / 1000), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receipts", type=int, default=2000, help="per mode (default 2000)")
    parser.add_argument("--dir", type=Path, default=None, help="where the ledger files go")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "bench")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="p2pnet-ledger-bench-") as tmp:
        folder = Path(tmp)
        rows = [_measure(folder, mode, args.receipts) for mode in MODES]
        filesystem = _filesystem(folder)
    result = {
        "benchmark": "ledger",
        "rows": rows,
        "filesystem": filesystem,
        "machine": machine_info(),
        "git": git_state(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "ledger.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"Ledger.record_receipt latency, {args.receipts} receipts ({filesystem})")
    for column in ("synchronous", "p50 ms", "p95 ms", "p99 ms", "max ms", "receipts/s"):
        table.add_column(column, justify="left" if column == "synchronous" else "right")
    for row in rows:
        table.add_row(
            row["synchronous"],
            f"{row['p50_ms']:.3f}",
            f"{row['p95_ms']:.3f}",
            f"{row['p99_ms']:.3f}",
            f"{row['max_ms']:.3f}",
            f"{row['per_second']:.0f}",
        )
    console = Console(width=110)
    console.print(table)
    load = result["machine"].get("load_average_at_start")
    console.print(f"load average at start {load}; written to {path}")


if __name__ == "__main__":
    main()
