"""The records a peer has been sent lately (p2pnet/core/seen.py): bounded, newest seq kept,
expired ones left out; and ``Peer.known_records`` after a search."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from memory_peers import memory_peer

from p2pnet.core.records import CapabilityRecord
from p2pnet.core.seen import SeenRecords
from p2pnet.net.identity import generate_identity, peer_id_of
from p2pnet.net.memory import MemoryNetwork
from p2pnet.runtime.onnx_model import inspect_model

PEERS = [peer_id_of(generate_identity()) for _ in range(3)]


@pytest.fixture
def iris_record(models: dict[str, Path]) -> CapabilityRecord:
    info = inspect_model(models["iris"])
    return CapabilityRecord(
        model_id=info.model_id,
        peer_id=PEERS[0],
        schema=info.schema,
        tasks=("iris-species",),
        name=info.name,
        version="1.0.0",
        runtime="onnxruntime",
        addrs=(),
        seq=1,
        expires_at=2_000,
    )


def test_seen_records_keep_the_newest_seq_and_forget_the_least_recent(
    iris_record: CapabilityRecord,
) -> None:
    seen = SeenRecords(capacity=2)
    newer = replace(iris_record, seq=2, tasks=("iris-species", "flowers"))
    seen.add([newer])
    seen.add([iris_record])  # an older seq does not replace the newer one
    assert seen.current(now=1_000) == [newer]

    other = replace(iris_record, peer_id=PEERS[1])
    third = replace(iris_record, peer_id=PEERS[2])
    seen.add([other, third])
    assert len(seen) == 2
    assert seen.current(now=1_000) == [third, other]  # most recently seen first
    assert seen.current(now=2_000) == []  # expired at expires_at
    with pytest.raises(ValueError, match="capacity"):
        SeenRecords(capacity=0)


@pytest.mark.network
async def test_a_peer_knows_the_records_its_searches_verified(models: dict[str, Path]) -> None:
    async with MemoryNetwork() as network, memory_peer(network) as caller:
        provider = memory_peer(network, bootstrap=[caller.addrs[0]])
        provider.serve(models["iris"], tasks=["iris-species"])
        async with provider:
            await provider.announce()
            assert caller.known_records() == []
            offers = await caller.find(task="iris-species")
            known = caller.known_records()
            assert [r.model_id for r in known] == [offers[0].record.model_id]
            assert known[0].peer_id == provider.peer_id
            assert provider.known_records()[0].tasks == ("iris-species",)  # its own
            assert caller.known_records(now=time.time() + 10 * 86400) == []
