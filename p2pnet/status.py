"""What a running ``p2pnet peer`` is doing, for ``p2pnet status``.

A running peer writes a JSON status file, ``peer-<pid>.json`` in
``$XDG_RUNTIME_DIR/p2pnet/`` (else ``run/`` in the configuration directory), when it
is ready and then every few seconds, and removes it when it stops. ``p2pnet status``
reads the files of processes that are still alive. Nothing listens on a socket for
it: the file is only readable by its owner (mode 0600 in a 0700 directory), and a
peer that hangs shows as one whose file stopped being updated.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pnet import __version__
from p2pnet.config import runtime_dir
from p2pnet.errors import ConfigError

if TYPE_CHECKING:
    # py-libp2p pulls in trio-typing, whose stubs mypy reads instead of trio's own types.
    from trio_typing import TaskStatus

    from p2pnet.peer import Peer

__all__ = ["PeerStatus", "read_statuses", "snapshot", "status_file", "write_status"]

log = logging.getLogger(__name__)

# Seconds between updates of a running peer's file.
UPDATE_INTERVAL = 5.0


def status_file(pid: int | None = None, directory: Path | None = None) -> Path:
    """The status file of process ``pid`` (default: this one)."""
    return (directory or runtime_dir()) / f"peer-{pid or os.getpid()}.json"


def snapshot(peer: Peer, *, role: str = "peer", swarm: str | None = None) -> dict[str, Any]:
    """A running peer's status as a JSON-able dict (see docs/networking.md, "Status")."""
    host = peer.host
    path_of = getattr(peer, "path", None)  # NAT traversal knows direct vs relayed
    connections = []
    for peer_id, addr in host.connections():
        kind = "relayed" if "/p2p-circuit" in addr else "direct"
        if path_of is not None:
            with suppress(Exception):
                kind = path_of(peer_id) or kind
        connections.append({"peer_id": peer_id, "addr": addr, "path": kind})
    models = []
    for model_id, model in peer.models.items():
        allowed = peer.access.allowed(model_id)
        models.append(
            {
                "model_id": model_id,
                "name": model.info.name,
                "tasks": list(peer.publisher.record(model_id).tasks),
                "allow": sorted(allowed) if allowed is not None else None,
            }
        )
    key = peer.swarm_key
    return {
        "version": __version__,
        "pid": os.getpid(),
        "updated_at": time.time(),
        "peer_id": peer.peer_id,
        "role": role,
        "swarm": swarm,
        "swarm_key_fingerprint": key.fingerprint if key is not None else None,
        "listen_addrs": peer.addrs,
        "announced_addrs": peer.announced_addrs,
        "reachability": getattr(peer, "reachability", "unknown"),
        "models": models,
        "connections": {
            "total": len(connections),
            "direct": sum(1 for c in connections if c["path"] == "direct"),
            "relayed": sum(1 for c in connections if c["path"] == "relayed"),
            "peers": connections,
        },
        "routing_table": len(peer.dht.table) if peer.dht is not None else 0,
    }


def write_status(data: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``data`` to ``path`` atomically, readable by its owner only.

    Raises:
        ConfigError: the directory cannot be created or written.
    """
    path = path or status_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the status file {path}: {exc.strerror or exc}") from None
    return path


async def keep_status(
    peer: Peer,
    *,
    role: str = "peer",
    swarm: str | None = None,
    interval: float = UPDATE_INTERVAL,
    path: Path | None = None,
    task_status: TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write the peer's status now and every ``interval`` seconds until cancelled;
    remove the file then."""
    path = path or status_file()
    try:
        write_status(snapshot(peer, role=role, swarm=swarm), path)
        task_status.started(path)
        while True:
            await trio.sleep(interval)
            try:
                write_status(snapshot(peer, role=role, swarm=swarm), path)
            except ConfigError as exc:  # a full disk must not stop the peer
                log.warning("%s", exc)
    finally:
        with suppress(OSError):
            path.unlink()


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One status file: its data, and whether its process is alive and its data recent."""

    path: Path
    data: dict[str, Any]
    alive: bool
    age: float  # seconds since the peer last wrote it

    @property
    def stale(self) -> bool:
        """The peer has not updated its file for three intervals: it may be hung."""
        return self.age > 3 * UPDATE_INTERVAL


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that number
        return True
    return True


def read_statuses(directory: Path | None = None) -> Iterator[PeerStatus]:
    """The status files of running peers, oldest process first; files of processes that
    exited without removing theirs (killed) are skipped."""
    directory = directory or runtime_dir()
    files = sorted(directory.glob("peer-*.json"), key=lambda p: p.stat().st_mtime)
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced, or not ours
        alive = _alive(pid)
        if alive:
            yield PeerStatus(path, data, alive, max(0.0, time.time() - data["updated_at"]))
