"""What every benchmark script reports about the machine and the code it measured, and
the small helpers they share (quantiles, starting and stopping a serving child)."""

from __future__ import annotations

import importlib.metadata
import json
import math
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from p2pnet.simulate import procstats

REPO_ROOT = Path(__file__).resolve().parents[2]


def machine_info(*packages: str) -> dict[str, Any]:
    """CPU, memory, load, Python, and the versions of p2pnet, libp2p, trio and
    ``packages``."""
    info = procstats.machine_info()
    for name in packages:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    return info


def git_state() -> dict[str, Any]:
    """The commit measured, and whether p2pnet/ had uncommitted changes (read-only git)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "modified": bool(git("status", "--porcelain", "--", "p2pnet")),
    }


def targets_table(targets: list[dict[str, Any]], value: Callable[[Any], str]) -> Table:
    """The targets of a report as a table: name, measured (``value`` formats the number),
    goal, PASS or FAIL."""
    table = Table(title="targets", title_justify="left")
    for column in ("target", "measured", "goal", "result"):
        table.add_column(column)
    for t in targets:
        result = "[green]PASS[/green]" if t["pass"] else "[red]FAIL[/red]"
        table.add_row(
            t["name"], f"{value(t['value'])} {t['unit']}", f"{t['target']} {t['unit']}", result
        )
    return table


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (the nearest rank); nan when there are none."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_child(
    script: str, models_dir: Path, timeout: float
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``script --serve-child --models DIR`` and read the JSON line it prints once
    it serves (within ``timeout`` seconds); it serves until its stdin closes
    (``stop_child``)."""
    proc = subprocess.Popen(
        [sys.executable, script, "--serve-child", "--models", str(models_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise SystemExit("the serving child process did not start (see its error above)")
    child: dict[str, Any] = json.loads(line)
    return proc, child


def stop_child(proc: subprocess.Popen[str]) -> None:
    """End a child that serves until its stdin closes: close it, wait 10 s, then kill."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
