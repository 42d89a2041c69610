"""Peers that find each other's models through the DHT: on the in-memory network, and
once on real libp2p hosts on 127.0.0.1 (the same ``Peer`` on either)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import numpy as np
import pytest
import trio
from memory_peers import BOTH_HOSTS, peer_maker

from p2pnet import Peer
from p2pnet.errors import InvalidInputError, UnknownModelError, UsageError
from p2pnet.invoke.protocol import INVOKE_PROTOCOL

TEXTS = np.array(["I love it, works great", "broken on arrival, terrible"], dtype=object)


@pytest.fixture(params=["memory"])
async def swarm(
    request: pytest.FixtureRequest, models: dict[str, Path]
) -> AsyncIterator[list[Peer]]:
    """A bootstrap peer and 11 peers joined through it; peer 3 serves sentiment-analysis,
    peer 6 serves iris for iris-species. On the memory network unless the test asks for
    "libp2p" hosts."""
    async with AsyncExitStack() as stack:
        new_peer = await peer_maker(stack, request.param, seed=3)
        boot = await stack.enter_async_context(new_peer())
        peers = [boot]
        for _ in range(11):
            peers.append(await stack.enter_async_context(new_peer(bootstrap=[boot.addrs[0]])))
        peers[3].serve(models["sentiment"], tasks=["sentiment-analysis"])
        peers[6].serve(models["iris"], tasks=["iris-species", "tabular-classification"])
        assert await peers[3].announce() > 0
        assert await peers[6].announce() > 0
        yield peers


@pytest.mark.parametrize("swarm", BOTH_HOSTS, indirect=True)
async def test_every_peer_finds_models_by_task_and_by_id(swarm: list[Peer]) -> None:
    sentiment_id = next(iter(swarm[3].models))
    for peer in swarm:
        (offer,) = await peer.find(task="sentiment-analysis")
        assert offer.record.peer_id == swarm[3].peer_id
        assert offer.record.model_id == sentiment_id
        assert offer.record.schema.inputs[0].dtype == "string"
        (by_id,) = await peer.find(model=sentiment_id)
        assert by_id.record == offer.record
    assert await swarm[0].find(task="no-such-task") == []


async def test_call_by_task_from_any_peer(swarm: list[Peer]) -> None:
    for peer in (swarm[0], swarm[5], swarm[11]):
        offer, out = await peer.call_with_offer({"text": TEXTS}, task="sentiment-analysis")
        assert out["label"].tolist() == ["positive", "negative"]
        assert offer.record.peer_id == swarm[3].peer_id
    out = await swarm[3].call({"text": TEXTS}, task="sentiment-analysis")  # its own model
    assert out["label"].tolist() == ["positive", "negative"]


async def test_call_fails_over_to_another_provider(
    swarm: list[Peer], models: dict[str, Path]
) -> None:
    swarm[8].serve(models["sentiment"], tasks=["sentiment-analysis"])
    await swarm[8].announce()
    offers = await swarm[1].find(task="sentiment-analysis")
    assert {o.record.peer_id for o in offers} == {swarm[3].peer_id, swarm[8].peer_id}
    # The first-ranked provider stops answering calls (it still describes itself).
    first = offers[0].record.peer_id
    dying = next(p for p in swarm if p.peer_id == first)
    dying.host.remove_stream_handler(INVOKE_PROTOCOL)
    offer, out = await swarm[1].call_with_offer({"text": TEXTS}, task="sentiment-analysis")
    assert offer.record.peer_id != first
    assert out["label"].tolist() == ["positive", "negative"]
    # The failure is remembered: the dead provider now ranks last.
    ranked = await swarm[1].find(task="sentiment-analysis")
    assert ranked[-1].record.peer_id == first


async def test_calls_reuse_the_last_search_for_offer_ttl_seconds(swarm: list[Peer]) -> None:
    caller, lookups = swarm[1], swarm[1].services.dht.stats
    await caller.call({"text": TEXTS}, task="sentiment-analysis")
    searched = lookups.lookups
    for _ in range(3):  # warm calls: no lookup, no describe
        out = await caller.call({"text": TEXTS}, task="sentiment-analysis")
        assert out["label"].tolist() == ["positive", "negative"]
    assert lookups.lookups == searched
    await caller.call({"x": np.zeros((1, 4), np.float32)}, task="iris-species")
    assert lookups.lookups == searched + 1  # another task: a search of its own
    caller.finder.policy = dataclasses.replace(caller.finder.policy, offer_ttl=0.0)
    await caller.call({"text": TEXTS}, task="sentiment-analysis")
    assert lookups.lookups == searched + 2  # offer_ttl 0: a search for every call


async def test_a_provider_gone_since_the_last_search_is_searched_around(
    swarm: list[Peer], models: dict[str, Path]
) -> None:
    caller = swarm[1]
    offer, _ = await caller.call_with_offer({"text": TEXTS}, task="sentiment-analysis")
    assert offer.record.peer_id == swarm[3].peer_id  # the only provider, now remembered
    swarm[8].serve(models["sentiment"], tasks=["sentiment-analysis"])
    await swarm[8].announce()
    swarm[3].host.crash()  # type: ignore[attr-defined]  # a memory host
    offer, out = await caller.call_with_offer({"text": TEXTS}, task="sentiment-analysis")
    assert offer.record.peer_id == swarm[8].peer_id  # found by a new search
    assert out["label"].tolist() == ["positive", "negative"]


async def test_nobody_offers_it(swarm: list[Peer]) -> None:
    with pytest.raises(UnknownModelError, match="no peer in the swarm offers task 'translation'"):
        await swarm[2].call({"x": np.zeros(1)}, task="translation")


async def test_bad_inputs_are_not_retried_elsewhere(swarm: list[Peer]) -> None:
    with pytest.raises(InvalidInputError, match="missing input 'x'"):
        await swarm[2].call({"y": np.zeros((1, 4), np.float32)}, task="iris-species")


async def test_find_needs_a_task_or_a_model(swarm: list[Peer]) -> None:
    with pytest.raises(UsageError):
        await swarm[0].find()


@pytest.mark.network
async def test_a_peer_without_bootstrap_is_alone(models: dict[str, Path]) -> None:
    async with Peer() as lonely, Peer() as other:
        other.serve(models["iris"], tasks=["iris-species"])
        await other.announce()
        with trio.fail_after(20):
            assert await lonely.find(task="iris-species") == []
