"""Process figures (memory, CPU) and the machine a measurement ran on; Linux /proc first.

Shared by the simulation engines and scripts/bench/dht.py.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pnet.runtime.served import usable_cpus

__all__ = ["machine_info", "pct", "peak_rss_kb", "process_cpu_seconds", "rss_kb"]


def rss_kb() -> int:
    """Resident set size of this process in KiB (Linux /proc), else peak RSS."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return peak_rss_kb()


def peak_rss_kb() -> int:
    """Peak resident set size of this process in KiB (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def pct(samples: Sequence[float], q: float) -> float:
    """The sample nearest the q-quantile (0..1) of a non-empty sequence."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine_info() -> dict[str, Any]:
    """CPU, memory, load and versions of the machine a measurement runs on."""

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = usable_cpus()
    try:
        mem_total_mb: int | None = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        mem_total_mb = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": cpu_model,
        "memory_mb": mem_total_mb,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libp2p": version("libp2p"),
        "trio": version("trio"),
        "p2pnet": version("p2pnet"),
    }
