"""Peers in processes of their own on this machine (127.0.0.1): for the demo, benchmarks
and local experiments. Each runs ``p2pnet peer`` exactly as a user would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from p2pnet.errors import ConfigError

__all__ = ["PeerProcess", "start_peer"]

_LISTENING = re.compile(r"listening (\S+)")


@dataclass
class PeerProcess:
    """A running ``p2pnet peer`` process and what it printed until it was ready."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        """Its first full multiaddr (``/ip4/127.0.0.1/tcp/PORT/p2p/12D3...``)."""
        for line in self.lines:
            if match := _LISTENING.match(line):
                return match.group(1)
        raise ConfigError("the peer printed no address")

    @property
    def peer_id(self) -> str:
        return self.address.rsplit("/", 1)[-1]

    def stop(self, timeout: float = 10.0) -> int:
        """Stop it as Ctrl-C does (SIGINT), killing it after ``timeout`` seconds; return
        its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> int:
        """Kill it at once (SIGKILL), as a crash would."""
        self.process.kill()
        return self.process.wait()


def start_peer(
    args: Sequence[str],
    *,
    identity: Path,
    listen: str = "/ip4/127.0.0.1/tcp/0",
    on_line: Callable[[str], None] | None = None,
    timeout: float = 60.0,
) -> PeerProcess:
    """Run ``p2pnet peer --listen LISTEN --identity IDENTITY ARGS...`` and wait until it
    prints "ready" (its models loaded, joined, listening). Its ledger is kept beside its
    identity (``IDENTITY`` with ``.ledger.sqlite3``) unless ``ARGS`` say otherwise, so a
    swarm of throwaway identities leaves nothing in the user's data directory.

    Raises:
        ConfigError: the process exited or did not get ready within ``timeout``.
    """
    ledger: list[str] = []
    if "--ledger" not in args and "--no-ledger" not in args:
        ledger = ["--ledger", str(identity.with_suffix(".ledger.sqlite3"))]
    command = [
        sys.executable, "-m", "p2pnet.cli", "peer", "--listen", listen,
        "--identity", str(identity), *ledger, *args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )
    assert process.stdout is not None
    peer = PeerProcess(process)
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        peer.lines.append(line.rstrip())
        if on_line is not None:
            on_line(line.rstrip())
        if line.startswith("ready"):
            # Keep reading what it prints, so that a full pipe never blocks it.
            threading.Thread(target=_drain, args=(peer, on_line), daemon=True).start()
            return peer
        if time.monotonic() > deadline:
            break
    peer.kill()
    raise ConfigError(
        "a peer did not start: " + " ".join(command) + "\n" + "\n".join(peer.lines[-10:])
    )


def _drain(peer: PeerProcess, on_line: Callable[[str], None] | None) -> None:
    assert peer.process.stdout is not None
    for line in peer.process.stdout:
        peer.lines.append(line.rstrip())
        if on_line is not None:
            on_line(line.rstrip())
