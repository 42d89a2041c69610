"""Peer.status(): the typed snapshot, its JSON form (the status file) read back, and what
``p2pnet status`` makes of files that are not peer statuses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from memory_peers import memory_peer

from p2pnet.cli.status import join_text
from p2pnet.errors import UsageError
from p2pnet.net.memory import MemoryNetwork
from p2pnet.status import JoinState, PeerStatus, read_statuses, snapshot, write_status


async def test_a_running_peer_reports_what_it_does_and_the_report_round_trips(
    models: dict[str, Path], tmp_path: Path
) -> None:
    async with MemoryNetwork(seed=2) as network:
        boot = memory_peer(network)
        async with boot:
            peer = memory_peer(network, bootstrap=[boot.addrs[0]])
            with pytest.raises(UsageError, match="not running"):
                peer.status()
            peer.serve(models["iris"], tasks=["iris-species"], allow=[boot.peer_id])
            async with peer:
                status = peer.status()
                assert status.peer_id == peer.peer_id
                assert status.listen_addrs == tuple(peer.addrs)
                (model,) = status.models
                assert (model.name, model.tasks, model.allow) == (
                    "iris",
                    ("iris-species",),
                    (boot.peer_id,),
                )
                assert [c.peer_id for c in status.connections] == [boot.peer_id]
                assert status.connections[0].path == "direct"
                assert status.routing_table == 1 and status.dht_mode == "server"
                assert status.reachability == "public"
                assert status.join == JoinState("joined", attempts=1)
                x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
                await boot.invoke(peer.addrs[0], model.model_id, {"x": x})
                assert peer.status().calls_served == 1
                assert PeerStatus.from_dict(json.loads(json.dumps(status.to_dict()))) == status
                data = snapshot(peer, role="bootstrap", swarm="lab")
                path = write_status(data, tmp_path / "peer-1.json")
                (file,) = read_statuses(tmp_path)
                assert file.path == path and file.status == peer.status()
                assert (file.role, file.swarm, file.pid) == ("bootstrap", "lab", os.getpid())


def test_files_that_are_not_peer_statuses_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "peer-1.json").write_text("{not json")
    (tmp_path / "peer-2.json").write_text(json.dumps({"pid": os.getpid(), "updated_at": 0}))
    bad_models = {"pid": os.getpid(), "updated_at": time.time(), "peer_id": "x", "models": 3}
    (tmp_path / "peer-3.json").write_text(json.dumps(bad_models))
    assert list(read_statuses(tmp_path)) == []
    with pytest.raises(ValueError, match="not a peer status"):
        PeerStatus.from_dict({"peer_id": 7})


def test_the_join_state_is_shown_and_read_back() -> None:
    alone = JoinState("alone", alone_since=1_800_000_000.0, attempts=7, next_attempt_in=32.4)
    assert JoinState.from_dict(json.loads(json.dumps(alone.to_dict()))) == alone
    text = join_text(alone, 1_800_000_090.0).plain
    assert text.startswith("alone, since ") and "(90 s), retrying, 7 attempts, next in 32 s" in text
    assert join_text(JoinState("joined", attempts=2)).plain == "joined"
    idle = JoinState("not joining", alone_since=1_800_000_000.0)
    assert "retrying" not in join_text(idle).plain
    with pytest.raises(ValueError, match="not a peer status"):
        PeerStatus.from_dict(
            {"peer_id": "x", "listen_addrs": [], "announced_addrs": [], "reachability": "x",
             "models": [], "connections": {"peers": []}, "routing_table": 0,
             "join": {"state": 3}}
        )  # fmt: skip
