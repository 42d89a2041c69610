"""Per-model access lists: allowed peers call, others get permission_denied (plain calls
and forwarded pipeline steps), describe and find show a restricted model to allowed
peers only, and the serving peer keeps serving everyone else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from memory_peers import BOTH_HOSTS, peer_maker

from p2pnet import Peer
from p2pnet.core.access import AccessPolicy, parse_allow_list
from p2pnet.core.address import PeerAddress
from p2pnet.core.messages import ErrorReply, Forward, ForwardResult, Hop, Invoke
from p2pnet.discovery.describe import DescribeClient
from p2pnet.errors import (
    InvalidAddressError,
    PermissionDeniedError,
    UnknownModelError,
    UsageError,
    error_from_wire,
)
from p2pnet.invoke.local import LocalInvoker
from p2pnet.invoke.server import InvokeServer
from p2pnet.net.identity import generate_identity, peer_id_of
from p2pnet.pipeline import Pipeline
from p2pnet.runtime.onnx_model import OnnxModel

TEXTS = np.array(["I love it, works great", "broken on arrival, terrible"], dtype=object)
IRIS = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
ALICE = peer_id_of(generate_identity())
MALLORY = peer_id_of(generate_identity())
SERVER = peer_id_of(generate_identity())


def test_permission_denied_is_a_usage_error_with_its_wire_code() -> None:
    assert issubclass(PermissionDeniedError, UsageError)
    err = error_from_wire("permission_denied", "no", "12D3KooWpeer")
    assert type(err) is PermissionDeniedError and err.code == "permission_denied"


def test_allow_lists_parse_ids_lists_and_addresses() -> None:
    assert parse_allow_list([f"{ALICE},{MALLORY}"]) == {ALICE, MALLORY}
    assert parse_allow_list([f"/ip4/127.0.0.1/tcp/1/p2p/{ALICE}", " "]) == {ALICE}
    with pytest.raises(InvalidAddressError, match="neither a multiaddr"):
        parse_allow_list(["alice"])
    policy = AccessPolicy("12D3KooWself")
    policy.restrict("m", [ALICE])
    assert policy.permits("m", ALICE) and policy.permits("m", "12D3KooWself")
    assert not policy.permits("m", MALLORY) and policy.permits("other", MALLORY)
    with pytest.raises(PermissionDeniedError, match=f"{MALLORY} is not on it"):
        policy.check("m", MALLORY, "iris")


async def test_invoke_server_checks_plain_calls_and_forwarded_steps(
    models: dict[str, Path],
) -> None:
    iris = OnnxModel.load(models["iris"])
    policy = AccessPolicy()
    policy.restrict(iris.model_id, [ALICE])
    server = InvokeServer(LocalInvoker(SERVER, {iris.model_id: iris}, access=policy))
    call = Invoke(1, iris.model_id, {"x": IRIS}, 5000)
    assert not isinstance(await server.answer(call, ALICE), ErrorReply)
    denied = await server.answer(call, MALLORY)
    assert isinstance(denied, ErrorReply) and denied.code == "permission_denied"
    assert MALLORY in denied.message and "access list" in denied.message
    hop = Hop("classify", iris.model_id, (), {"x": "input.x"}, ("classify.label",))
    forward = Forward(2, (hop,), {"input.x": IRIS}, 5000)
    assert isinstance(await server.answer(forward, ALICE), ForwardResult)
    denied = await server.answer(forward, MALLORY)
    assert isinstance(denied, ErrorReply) and denied.code == "permission_denied"
    assert denied.message.startswith("step 'classify': ")
    # An unknown model's error does not list restricted models to outsiders.
    missing = await server.answer(Invoke(3, "bafkreiaaaa" + iris.model_id[11:], {}, 5000), MALLORY)
    assert isinstance(missing, ErrorReply) and iris.model_id not in missing.message
    assert server.stats.errors["permission_denied"] == 2


@pytest.fixture(params=["memory"])
async def swarm(
    request: pytest.FixtureRequest, models: dict[str, Path]
) -> AsyncIterator[list[Peer]]:
    """Peer 0 bootstraps; peer 1 serves sentiment to peer 2 only, and iris to all;
    peer 3 is an outsider. On the memory network unless the test asks for "libp2p"
    hosts (whose peer IDs the Noise handshake proves)."""
    async with AsyncExitStack() as stack:
        new_peer = await peer_maker(stack, request.param)
        boot = await stack.enter_async_context(new_peer())
        peers = [boot]
        for _ in range(3):
            peers.append(await stack.enter_async_context(new_peer(bootstrap=[boot.addrs[0]])))
        peers[1].serve(models["sentiment"], tasks=["sentiment-analysis"], allow=[peers[2].peer_id])
        peers[1].serve(models["iris"], tasks=["iris-species"])
        assert await peers[1].announce() > 0
        yield peers


@pytest.mark.parametrize("swarm", BOTH_HOSTS, indirect=True)
async def test_allowed_peer_calls_others_are_denied(swarm: list[Peer]) -> None:
    server, alice, outsider = swarm[1], swarm[2], swarm[3]
    sentiment = next(m for m, s in server.models.items() if s.info.name == "sentiment")
    out = await alice.invoke(server.addrs[0], sentiment, {"text": TEXTS})
    assert out["label"].tolist() == ["positive", "negative"]
    with pytest.raises(PermissionDeniedError, match="access list") as denied:
        await outsider.invoke(server.addrs[0], sentiment, {"text": TEXTS})
    assert denied.value.peer == server.peer_id
    # The serving peer goes on serving everyone else, the outsider included.
    iris = next(m for m, s in server.models.items() if s.info.name == "iris")
    assert (await outsider.invoke(server.addrs[0], iris, {"x": IRIS}))["label"].shape == (1,)
    out = await alice.invoke(server.addrs[0], sentiment, {"text": TEXTS})
    assert out["label"].tolist() == ["positive", "negative"]


async def test_find_shows_a_restricted_model_to_allowed_peers_only(swarm: list[Peer]) -> None:
    server, alice, outsider = swarm[1], swarm[2], swarm[3]
    (offer,) = await alice.find(task="sentiment-analysis")
    assert offer.record.peer_id == server.peer_id
    assert await outsider.find(task="sentiment-analysis") == []
    with pytest.raises(UnknownModelError, match="no peer in the swarm offers"):
        await outsider.call({"text": TEXTS}, task="sentiment-analysis")
    # The describe server's own answer to the outsider leaves the record out.
    describer = DescribeClient(outsider.host)
    address = PeerAddress(server.peer_id, tuple(a.rpartition("/p2p/")[0] for a in server.addrs))
    assert [r.name for r in (await describer.describe(address)).records] == ["iris"]
    await describer.aclose()
    assert (await outsider.find(task="iris-species"))[0].record.peer_id == server.peer_id
    out = await alice.call({"text": TEXTS}, task="sentiment-analysis")
    assert out["label"].tolist() == ["positive", "negative"]


async def test_forwarded_step_is_checked_against_the_forwarding_peer(
    swarm: list[Peer], models: dict[str, Path]
) -> None:
    """Peer 2 serves sentiment; peer 1 serves a restricted second step to peer 0 only.
    Orchestrated by peer 0, the step is called by peer 0: allowed. Forwarded, peer 2
    calls it: denied, and the error names the step."""
    boot, server, first = swarm[0], swarm[1], swarm[2]
    first.serve(models["sentiment"], tasks=["sentiment-copy"])
    await first.announce()
    # The same model again, now announced for the second step and open to peer 0 only.
    server.serve(models["sentiment"], tasks=["second-step"], allow=[boot.peer_id])
    await server.announce()
    doc: dict[str, Any] = {
        "inputs": {"text": "string[n]"},
        "steps": {
            "first": {"task": "sentiment-copy", "inputs": {"text": "input.text"}},
            "second": {"task": "second-step", "inputs": {"text": "first.label"}},
        },
        "outputs": {"label": "second.label"},
    }
    pipeline = Pipeline.from_dict(doc)
    result = await pipeline.run(boot, {"text": TEXTS}, mode="orchestrated")
    assert result.outputs["label"].shape == (2,)
    with pytest.raises(PermissionDeniedError, match="step 'second'"):
        await pipeline.run(boot, {"text": TEXTS}, mode="forwarded")
