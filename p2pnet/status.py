"""What a peer is doing: ``PeerStatus`` (typed, from ``Peer.status()``), and the status
files through which ``p2pnet status`` shows the peers running on this machine.

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
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pnet import __version__
from p2pnet.config import runtime_dir
from p2pnet.errors import ConfigError

if TYPE_CHECKING:
    # py-libp2p pulls in trio-typing, whose stubs mypy reads instead of trio's own types.
    from trio_typing import TaskStatus

    from p2pnet.peer import Peer

__all__ = [
    "ConnectionStatus",
    "JoinState",
    "PeerStatus",
    "ServedModelStatus",
    "StatusFile",
    "keep_status",
    "read_statuses",
    "snapshot",
    "status_file",
    "write_status",
]

log = logging.getLogger(__name__)

# Seconds between updates of a running peer's file.
UPDATE_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class ServedModelStatus:
    """One served model: its ID and name, the tasks it is announced for, and the peers it
    is served to (None: everyone); ``batching``, for a model served with dynamic
    batching (None: one run per call): "max_batch", "max_delay_ms", and what it did
    ("batches" run, "calls" and "rows" they held, "rows_per_batch", "largest" batch
    in rows, "failed" batches, "queued" calls now; ``BatchStats``)."""

    model_id: str
    name: str
    tasks: tuple[str, ...]
    allow: tuple[str, ...] | None
    batching: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """One open connection: the peer, its remote address, and "direct" or "relayed"."""

    peer_id: str
    addr: str
    path: str


@dataclass(frozen=True, slots=True)
class JoinState:
    """Whether the peer is in a swarm (docs/networking.md, "Joining").

    state: "joined"; "alone" (its routing table is empty: it keeps asking its bootstrap
        peers and the peers it learned, with backoff); "not joining" (alone, with no
        peer to ask: it waits for others to join through it).
    alone_since: unix time it found itself alone (None when joined).
    attempts: join requests sent since it was last joined (or since it started).
    next_attempt_in: seconds until it asks again (None: not planned, or asking now).
    """

    state: str
    alone_since: float | None = None
    attempts: int = 0
    next_attempt_in: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "alone_since": self.alone_since,
            "attempts": self.attempts,
            "next_attempt_in": self.next_attempt_in,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JoinState:
        """Raises: KeyError, TypeError, ValueError: not a join state."""
        since, after = data.get("alone_since"), data.get("next_attempt_in")
        return cls(
            _text(data["state"]),
            None if since is None else float(since),
            int(data.get("attempts", 0)),
            None if after is None else float(after),
        )


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What a running peer is doing: ``Peer.status()``. The CLI's ``peer`` and ``status``
    commands and the status file render this, and nothing else of the peer.

    reachability: "public", "private" or "unknown" (as far as AutoNAT could tell).
    dht_mode: "server" (answers DHT requests) or "client" (undialable: asks only).
    calls_served, call_errors: invoke calls answered, and error replies by wire code.
    ledger: the ledger file of a peer that keeps accounts (None: it keeps none).
    receipts: usage receipts "issued" (as provider) and "accepted" (as caller) since it
        started, and calls "refused_for_credit".
    balances: micro-units per peer from the ledger, positive when the peer owes this one
        (the 20 largest in size).
    limits_hit: streams the resource limits reset or closed, by reason: "streams_peer",
        "streams_system" (refused at once), "memory_peer", "memory_system" (a request over
        the byte budget), "stalled", "idle" (docs/networking.md, "Resource limits").
    join: whether it is in a swarm, or alone and retrying (None: not known, e.g. a
        status file of an older version).
    trust: spot checks of a peer with a trust store since it started (empty: it has
        none): "sampled", "agreed", "disagreed", "unresolved", "extra_calls" (re-runs
        made), "marked" (providers it marked), "untrusted" (providers marked in its store).
    dht: the DHT node's counters (``DhtStats``): "network_size" estimated, provider
        lookups and their messages, lookups the density detector judged
        ("density_checked") and found suspicious ("density_alarms"), peers the IP-group
        limits kept out of the routing table ("diversity_refused") and lookup answers
        they dropped ("diversity_dropped_replies").
    generation: streamed generations served since it started (empty: it serves no
        generative model): "generations", "tokens" streamed, "cancelled", and
        "sessions" open now.
    calls_made, call_failures, call_seconds: invoke calls this peer made to other peers
        (attempts, each provider tried counted once), those that ended in an error by its
        code, and the seconds they took in all.
    http: the URL of the peer's local HTTP API (docs/gateway.md; None: it serves none).
    grpc: the ``host:port`` of its Open Inference Protocol gRPC endpoint (None: none).
    """

    peer_id: str
    listen_addrs: tuple[str, ...]
    announced_addrs: tuple[str, ...]
    reachability: str
    swarm_key_fingerprint: str | None
    models: tuple[ServedModelStatus, ...]
    connections: tuple[ConnectionStatus, ...]
    routing_table: int
    dht_mode: str
    calls_served: int = 0
    call_errors: Mapping[str, int] = field(default_factory=dict)
    limits_hit: Mapping[str, int] = field(default_factory=dict)
    ledger: str | None = None
    receipts: Mapping[str, int] = field(default_factory=dict)
    balances: Mapping[str, int] = field(default_factory=dict)
    join: JoinState | None = None
    trust: Mapping[str, int] = field(default_factory=dict)
    dht: Mapping[str, float] = field(default_factory=dict)
    generation: Mapping[str, int] = field(default_factory=dict)
    calls_made: int = 0
    call_failures: Mapping[str, int] = field(default_factory=dict)
    call_seconds: float = 0.0
    http: str | None = None
    grpc: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (docs/networking.md, "Status")."""
        paths = [c.path for c in self.connections]
        return {
            "peer_id": self.peer_id,
            "swarm_key_fingerprint": self.swarm_key_fingerprint,
            "listen_addrs": list(self.listen_addrs),
            "announced_addrs": list(self.announced_addrs),
            "reachability": self.reachability,
            "models": [
                {
                    "model_id": m.model_id,
                    "name": m.name,
                    "tasks": list(m.tasks),
                    "allow": list(m.allow) if m.allow is not None else None,
                    "batching": dict(m.batching) if m.batching is not None else None,
                }
                for m in self.models
            ],
            "connections": {
                "total": len(paths),
                "direct": paths.count("direct"),
                "relayed": paths.count("relayed"),
                "peers": [
                    {"peer_id": c.peer_id, "addr": c.addr, "path": c.path} for c in self.connections
                ],
            },
            "routing_table": self.routing_table,
            "dht_mode": self.dht_mode,
            "calls_served": self.calls_served,
            "call_errors": dict(self.call_errors),
            "limits_hit": dict(self.limits_hit),
            "ledger": self.ledger,
            "receipts": dict(self.receipts),
            "balances": dict(self.balances),
            "join": self.join.to_dict() if self.join is not None else None,
            "trust": dict(self.trust),
            "dht": dict(self.dht),
            "generation": dict(self.generation),
            "calls_made": self.calls_made,
            "call_failures": dict(self.call_failures),
            "call_seconds": self.call_seconds,
            "http": self.http,
            "grpc": self.grpc,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PeerStatus:
        """The status ``to_dict`` gave (a status file's), checked.

        Raises:
            ValueError: a field is missing or of the wrong type.
        """
        try:
            models = tuple(
                ServedModelStatus(
                    _text(m["model_id"]),
                    _text(m["name"]),
                    tuple(_text(t) for t in m["tasks"]),
                    None if m["allow"] is None else tuple(_text(p) for p in m["allow"]),
                    None
                    if m.get("batching") is None
                    else {_text(k): float(v) for k, v in m["batching"].items()},
                )
                for m in data["models"]
            )
            connections = tuple(
                ConnectionStatus(_text(c["peer_id"]), _text(c["addr"]), _text(c["path"]))
                for c in data["connections"]["peers"]
            )
            key = data.get("swarm_key_fingerprint")
            return cls(
                peer_id=_text(data["peer_id"]),
                listen_addrs=tuple(_text(a) for a in data["listen_addrs"]),
                announced_addrs=tuple(_text(a) for a in data["announced_addrs"]),
                reachability=_text(data["reachability"]),
                swarm_key_fingerprint=None if key is None else _text(key),
                models=models,
                connections=connections,
                routing_table=int(data["routing_table"]),
                dht_mode=_text(data.get("dht_mode", "server")),
                calls_served=int(data.get("calls_served", 0)),
                call_errors={_text(k): int(v) for k, v in data.get("call_errors", {}).items()},
                limits_hit={_text(k): int(v) for k, v in data.get("limits_hit", {}).items()},
                ledger=None if data.get("ledger") is None else _text(data["ledger"]),
                receipts={_text(k): int(v) for k, v in data.get("receipts", {}).items()},
                balances={_text(k): int(v) for k, v in data.get("balances", {}).items()},
                join=None if data.get("join") is None else JoinState.from_dict(data["join"]),
                trust={_text(k): int(v) for k, v in data.get("trust", {}).items()},
                dht={_text(k): float(v) for k, v in data.get("dht", {}).items()},
                generation={_text(k): int(v) for k, v in data.get("generation", {}).items()},
                calls_made=int(data.get("calls_made", 0)),
                call_failures={_text(k): int(v) for k, v in data.get("call_failures", {}).items()},
                call_seconds=float(data.get("call_seconds", 0.0)),
                http=None if data.get("http") is None else _text(data["http"]),
                grpc=None if data.get("grpc") is None else _text(data["grpc"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a peer status: {exc!r}") from None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def status_file(pid: int | None = None, directory: Path | None = None) -> Path:
    """The status file of process ``pid`` (default: this one)."""
    return (directory or runtime_dir()) / f"peer-{pid or os.getpid()}.json"


def snapshot(peer: Peer, *, role: str = "peer", swarm: str | None = None) -> dict[str, Any]:
    """A running peer's status file contents: ``peer.status()`` as JSON, with this
    process, the time, and how the peer was started (role, named swarm)."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "updated_at": time.time(),
        "role": role,
        "swarm": swarm,
        **peer.status().to_dict(),
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
    task_status: TaskStatus[Path] | None = None,
) -> None:
    """Write the peer's status now and every ``interval`` seconds until cancelled;
    remove the file then. ``nursery.start(keep_status, ...)`` returns once the first is
    written, with its path."""
    # trio is imported here, not by the module: the command line reads status files
    # without loading trio (tests/test_cli_imports.py).
    import trio

    path = path or status_file()
    try:
        write_status(snapshot(peer, role=role, swarm=swarm), path)
        if task_status is not None:
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
class StatusFile:
    """One status file: the peer's status, how the peer was started (role, named swarm),
    its process, whether that is alive, and how old the file is."""

    path: Path
    data: dict[str, Any]
    status: PeerStatus
    alive: bool
    age: float  # seconds since the peer last wrote it

    @property
    def pid(self) -> int:
        return int(self.data["pid"])

    @property
    def role(self) -> str:
        return str(self.data.get("role") or "peer")

    @property
    def swarm(self) -> str | None:
        swarm = self.data.get("swarm")
        return str(swarm) if swarm else None

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


def read_statuses(directory: Path | None = None) -> Iterator[StatusFile]:
    """The status files of running peers, oldest process first; files of processes that
    exited without removing theirs (killed), and files that are not peer statuses, are
    skipped."""
    directory = directory or runtime_dir()
    files = sorted(directory.glob("peer-*.json"), key=lambda p: p.stat().st_mtime)
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            pid = int(data["pid"])
            status = PeerStatus.from_dict(data)
            age = max(0.0, time.time() - float(data["updated_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being replaced, or not ours
        if _alive(pid):
            yield StatusFile(path, data, status, True, age)
