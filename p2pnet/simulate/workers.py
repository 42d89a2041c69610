"""Child processes that take one JSON command per line on stdin and answer one JSON line
on stdout, every read under a deadline (the libp2p engine's workers, the memory engine's
child, scripts/bench/dht.py's workers)."""

from __future__ import annotations

import json
import select
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["JsonLinesWorker"]


class JsonLinesWorker:
    """A child process and its JSON-lines pipe; stderr goes to ``log_path``."""

    def __init__(
        self, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self._log: IO[str] = log_path.open("w")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=None if env is None else dict(env),
        )
        self.ready: dict[str, Any] = {}

    @property
    def log_name(self) -> str:
        return self._log.name

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next line, parsed.

        Raises:
            RuntimeError: nothing within ``timeout`` seconds, or the process ended.
        """
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(
                f"worker {self.proc.pid} sent nothing within {timeout:.0f} s "
                f"(exit code {self.proc.poll()}); see {self._log.name}"
            )
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(message)
        return self.receive(timeout)

    def stop(self) -> None:
        """Ask the process to quit; kill it if it has not within 15 s."""
        try:
            if self.proc.poll() is None and self.proc.stdin:
                self.send({"cmd": "quit"})
                self.proc.stdin.close()
            self.proc.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait()
        self._log.close()
