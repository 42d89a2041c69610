"""Hostile providers: a provider that stalls, drips, breaks or inflates its replies,
returns outputs its signed schema does not allow, fakes its describe round trip, floods a
find with offers, is silent on describe, or dies. In each case the caller gets the honest
provider's result within its deadline, and the error of the failed attempt names the
hostile peer.

Each runs on the in-memory network and on real libp2p hosts on 127.0.0.1, except those
that need the memory network's latencies (a faked round trip) or its crashes (a dead
provider).

The hostile provider is a real ``Peer`` serving the same model under the same task (so
its signed record is genuine); its invoke or describe handler is replaced by a
hand-written one, or its describe server given extra records through ``PeerHooks``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from p2pnet import Peer
from p2pnet.core.describe import DescribeRequest, encode_describe_message
from p2pnet.core.messages import ErrorReply, Invoke, MessageReader, Result, encode_message
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.records import sign_record
from p2pnet.discovery.describe import DESCRIBE_PROTOCOL
from p2pnet.discovery.service import FinderPolicy, ModelFinder, Offer
from p2pnet.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    OutputSchemaError,
    P2PNetError,
    PeerBusyError,
    PeerUnreachableError,
    RemoteProtocolError,
    ReplyTooLargeError,
)
from p2pnet.invoke.protocol import INVOKE_PROTOCOL, read_message, write_message
from p2pnet.net.identity import generate_identity
from p2pnet.net.interfaces import ByteStream
from p2pnet.net.memory import MemoryNetwork
from p2pnet.services import PeerHooks

TASK = "iris-species"
INPUTS = {"x": np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)}
NEAR = 0.010  # one-way latency between honest peers, seconds
# One-way latency to and from the hostile provider: under twice NEAR, so that a reply
# sent before the request would arrive (measured from the request) sooner than an honest
# round trip.
FAR = 0.018
TIMEOUT = 2.0  # the caller's budget for a call


@dataclasses.dataclass
class Grid:
    boot: Peer
    honest: Peer
    hostile: Peer
    caller: Peer
    extra_records: list[bytes]  # what the hostile's describe server adds to its own

    async def offers(self) -> tuple[Offer, Offer]:
        """The hostile's and the honest provider's offers, as the caller finds them."""
        found = await self.caller.finder.find(task=TASK)
        by_peer = {o.record.peer_id: o for o in found}
        return by_peer[self.hostile.peer_id], by_peer[self.honest.peer_id]

    def hostile_invoke(self, handler: Callable[[ByteStream], Awaitable[None]]) -> None:
        self.hostile.host.set_stream_handler(INVOKE_PROTOCOL, handler)


@asynccontextmanager
async def open_grid(models: dict[str, Path], kind: str) -> AsyncIterator[Grid]:
    """Four peers: a bootstrap, an honest and a hostile provider of iris, and a caller.

    ``kind`` "memory": the in-memory network, with the hostile provider FAR away and
    the others NEAR; "loopback": real libp2p hosts on 127.0.0.1.
    """
    far: set[str] = set()

    def latency(src: str, dst: str) -> float:
        return FAR if src in far or dst in far else NEAR

    extra: list[bytes] = []
    async with AsyncExitStack() as stack:
        network = (
            await stack.enter_async_context(MemoryNetwork(latency=latency, seed=12))
            if kind == "memory"
            else None
        )

        async def peer(hooks: PeerHooks | None = None, bootstrap: Sequence[str] = ()) -> Peer:
            identity = generate_identity()
            new = Peer(
                identity,
                host=network.add_host(identity.peer_id) if network is not None else None,
                hooks=hooks,
                bootstrap=list(bootstrap),
            )
            return await stack.enter_async_context(new)

        boot = await peer()
        honest = await peer(bootstrap=[boot.addrs[0]])
        hostile = await peer(
            PeerHooks(describe_records=lambda own: [*own, *extra]), bootstrap=[boot.addrs[0]]
        )
        far.add(hostile.peer_id)
        caller = await peer(bootstrap=[boot.addrs[0]])
        for provider in (honest, hostile):
            provider.serve(models["iris"], tasks=[TASK])
            assert await provider.announce() > 0
        yield Grid(boot, honest, hostile, caller, extra)


@pytest.fixture
async def memory_grid(models: dict[str, Path]) -> AsyncIterator[Grid]:
    """The grid on the in-memory network: for what needs its latencies or its crashes."""
    async with open_grid(models, "memory") as grid:
        yield grid


@pytest.fixture(params=["memory", pytest.param("loopback", marks=pytest.mark.network)])
async def grid(models: dict[str, Path], request: pytest.FixtureRequest) -> AsyncIterator[Grid]:
    """The grid on the in-memory network, then on real libp2p hosts on 127.0.0.1."""
    async with open_grid(models, request.param) as grid:
        yield grid


async def read_invoke(stream: ByteStream) -> Invoke:
    message = await read_message(stream, MessageReader())
    assert isinstance(message, Invoke)
    return message


async def drain(stream: ByteStream) -> None:
    try:
        while await stream.read():
            pass
    except ConnectionLostError:
        pass


async def call_past_the_hostile(
    grid: Grid, expected: type[P2PNetError]
) -> tuple[dict[str, Any], P2PNetError]:
    """Call [hostile, honest] in that order; return the outputs and the hostile's error,
    checking that the call ended within its deadline and that the error names it."""
    hostile_offer, honest_offer = await grid.offers()
    failures: list[tuple[Offer, P2PNetError]] = []
    started = trio.current_time()
    offer, outputs = await grid.caller.finder.call_offers(
        [hostile_offer, honest_offer], INPUTS, TIMEOUT, failures
    )
    assert trio.current_time() - started < TIMEOUT
    assert offer.record.peer_id == grid.honest.peer_id
    assert outputs["label"].tolist() == [0, 2]
    ((failed, error),) = failures
    assert failed.record.peer_id == grid.hostile.peer_id
    assert isinstance(error, expected), error
    assert error.peer == grid.hostile.peer_id and grid.hostile.peer_id in str(error)
    return outputs, error


@pytest.mark.slow  # waits out a provider's share of the time, by design
async def test_a_provider_that_never_answers_gets_half_the_budget(grid: Grid) -> None:
    grid.hostile_invoke(drain)
    started = trio.current_time()
    _, error = await call_past_the_hostile(grid, DeadlineExceededError)
    assert "within 1 s" in error.message  # half of the 2 s budget, not all of it
    assert trio.current_time() - started >= TIMEOUT / 2


@pytest.mark.slow  # waits out a provider's share of the time, by design
async def test_a_provider_that_drips_bytes_is_left_at_its_share(grid: Grid) -> None:
    async def drip(stream: ByteStream) -> None:
        await read_invoke(stream)
        await stream.write(b"\xe8\x07")  # a frame of 1000 bytes...
        while True:  # ...that arrives one byte at a time
            await stream.write(b"\x00")
            await trio.sleep(0.05)

    grid.hostile_invoke(drip)
    await call_past_the_hostile(grid, DeadlineExceededError)


async def test_a_malformed_reply_fails_over(grid: Grid) -> None:
    async def malformed(stream: ByteStream) -> None:
        await read_invoke(stream)
        await stream.write(b"\x01\xc1")  # one byte that is never msgpack
        await drain(stream)

    grid.hostile_invoke(malformed)
    await call_past_the_hostile(grid, RemoteProtocolError)


async def test_an_oversized_reply_is_the_providers_fault_and_fails_over(grid: Grid) -> None:
    async def oversized(stream: ByteStream) -> None:
        await read_invoke(stream)
        await stream.write(b"\x80\x80\x80\x04" + b"\x00" * 1000)  # a frame of 8 MiB
        await drain(stream)

    grid.hostile_invoke(oversized)
    await call_past_the_hostile(grid, ReplyTooLargeError)


async def test_outputs_its_signed_schema_does_not_allow_fail_over(grid: Grid) -> None:
    async def bad_outputs(stream: ByteStream) -> None:
        request = await read_invoke(stream)
        outputs = {"label": np.zeros((2, 2)), "bogus": np.ones(3, np.float32)}
        await write_message(stream, encode_message(Result(request.request_id, outputs)))
        await drain(stream)

    grid.hostile_invoke(bad_outputs)
    _, error = await call_past_the_hostile(grid, OutputSchemaError)
    assert error.code == "bad_output"


async def test_describe_time_is_measured_from_our_request(memory_grid: Grid) -> None:
    """The hostile provider, farther away, answers describe as soon as a stream opens,
    without reading the request (its reply arrives FAR after the request leaves, sooner
    than the honest 2 * NEAR): it no longer ranks first, its round trip is a real one."""
    grid = memory_grid
    record = grid.hostile.services.describe_server.answer(DescribeRequest((), (TASK,)))
    reply = encode_describe_message(record)

    async def answer_at_once(stream: ByteStream) -> None:
        await stream.write(reply)
        await drain(stream)

    grid.hostile.host.set_stream_handler(DESCRIBE_PROTOCOL, answer_at_once)
    search = await grid.caller.finder.search(task=TASK)
    offers = search.offers
    assert [o.record.peer_id for o in offers] == [grid.honest.peer_id, grid.hostile.peer_id], (
        search.providers,
        search.unanswered,
        grid.honest.peer_id,
    )
    assert offers[1].rtt >= 2 * FAR  # a round trip to it, not ~0 nor one way
    assert offers[0].rtt >= 2 * NEAR


async def test_one_provider_cannot_fill_a_find(grid: Grid, models: dict[str, Path]) -> None:
    own = grid.hostile.services.publisher.records()[0]
    key = grid.hostile.identity.signing_key
    grid.extra_records[:] = [
        sign_record(dataclasses.replace(own, model_id=model_id_of_bytes(b"fake %d" % i)), key)
        for i in range(100)
    ]
    search = await grid.caller.finder.search(task=TASK)
    by_peer = [o.record.peer_id for o in search.offers]
    policy = grid.caller.finder.policy
    assert by_peer.count(grid.hostile.peer_id) == policy.max_offers_per_provider == 4
    assert by_peer.count(grid.honest.peer_id) == 1


@pytest.mark.slow  # waits out a provider's share of the time, by design
async def test_a_provider_silent_on_describe_is_named_and_does_not_hold_up_calls(
    grid: Grid,
) -> None:
    grid.hostile.host.set_stream_handler(DESCRIBE_PROTOCOL, drain)
    services = grid.caller.services
    finder = ModelFinder(
        services.dht,
        services.describer,
        services.invokers,
        services.publisher,
        FinderPolicy(describe_timeout=1.0),
    )
    started = trio.current_time()
    search = await finder.search(task=TASK, timeout=10.0)
    assert trio.current_time() - started < 2.0  # the describe phase ends after 1 s
    assert search.unanswered == (grid.hostile.peer_id,)
    assert [o.record.peer_id for o in search.offers] == [grid.honest.peer_id]
    assert not search.complete
    # A call by task starts once the honest provider described itself, plus a grace.
    started = trio.current_time()
    out = await grid.caller.call(INPUTS, task=TASK, timeout=10.0)
    assert out["label"].tolist() == [0, 2]
    assert trio.current_time() - started < grid.caller.finder.policy.describe_grace + 1.0


@pytest.mark.slow  # waits out a provider's share of the time, by design
async def test_a_dead_provider_is_not_dialled_again_during_its_backoff(
    memory_grid: Grid,
) -> None:
    grid = memory_grid
    hostile_offer, honest_offer = await grid.offers()
    grid.hostile.host.crash()  # type: ignore[attr-defined]  # a memory host
    finder = grid.caller.finder
    failures: list[tuple[Offer, P2PNetError]] = []
    await finder.call_offers([hostile_offer, honest_offer], INPUTS, TIMEOUT, failures)
    ((failed, error),) = failures
    assert failed.record.peer_id == grid.hostile.peer_id
    assert isinstance(error, PeerUnreachableError) and error.peer == grid.hostile.peer_id
    started = trio.current_time()
    for _ in range(20):
        later: list[tuple[Offer, P2PNetError]] = []
        offer, _ = await finder.call_offers([hostile_offer, honest_offer], INPUTS, TIMEOUT, later)
        assert offer.record.peer_id == grid.honest.peer_id and later == []
    assert trio.current_time() - started < finder.stats.policy.backoff_base  # still backing off


async def test_busy_then_dead_is_reported_as_busy(memory_grid: Grid) -> None:
    grid = memory_grid
    hostile_offer, honest_offer = await grid.offers()

    async def busy(stream: ByteStream) -> None:
        request = await read_invoke(stream)
        reply = ErrorReply(request.request_id, "busy", "at its concurrency limit")
        await write_message(stream, encode_message(reply))
        await drain(stream)

    grid.honest.host.set_stream_handler(INVOKE_PROTOCOL, busy)
    grid.hostile.host.crash()  # type: ignore[attr-defined]  # a memory host
    with pytest.raises(PeerBusyError) as caught:
        await grid.caller.finder.call_offers([honest_offer, hostile_offer], INPUTS, TIMEOUT)
    error = caught.value
    assert error.peer == grid.honest.peer_id
    assert [(p, e.code) for p, e in error.attempts] == [
        (grid.honest.peer_id, "busy"),
        (grid.hostile.peer_id, "unreachable"),
    ]
    assert grid.hostile.peer_id in str(error) and "2 tried" in str(error)
