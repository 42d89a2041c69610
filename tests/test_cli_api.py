"""The command line against a running peer: the local API's pipeline, generation and
chat routes (p2pnet/gateway/app.py), the client the commands use (p2pnet/gateway/
client.py), and ``p2pnet find``/``call`` next to a running ``p2pnet peer`` of the same
identity. In-process tests: peers on the in-memory network, the HTTP server on
127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_peers import memory_peer
from test_cli import p2pnet, start_peer

from p2pnet.cli.options import (
    DEFAULT_LISTEN,
    DiscoveryOptions,
    SwarmOptions,
    running_peer_api,
    running_peer_client,
)
from p2pnet.cli.render import tensor_json
from p2pnet.cli.stream import Interrupts, JsonReplies, stream_remote_reply
from p2pnet.config import runtime_dir
from p2pnet.core.generation import GenerationParams
from p2pnet.errors import (
    ConfigError,
    InvalidInputError,
    PeerUnreachableError,
    PipelineSpecError,
    SessionLimitError,
    UnknownModelError,
    UnknownSessionError,
)
from p2pnet.gateway.app import NDJSON, REPLY_HEADER, serve_http
from p2pnet.gateway.chats import ChatTable
from p2pnet.gateway.client import (
    ApiClient,
    BlockingApiClient,
    CallReply,
    FindReply,
    error_from_api,
)
from p2pnet.gateway.settings import default_token_path, write_token
from p2pnet.inputs import (
    exact_tensor_json,
    input_as_json,
    parse_input,
    tensor_from_json,
    tensor_to_json,
)
from p2pnet.net.identity import load_or_create_identity
from p2pnet.net.memory import MemoryNetwork
from p2pnet.net.swarm_key import generate_swarm_key, write_swarm_key_file
from p2pnet.peer import Peer
from p2pnet.runtime.generative import GenerativeModel, SessionLimits, SessionStore
from p2pnet.status import snapshot, write_status

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IRIS = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
ONE_STEP = (
    "inputs: {x: 'float32[N,4]'}\n"
    "steps: {species: {task: iris-species, inputs: {x: input.x}}}\n"
    "outputs: {label: species.label}\n"
)
STORY = [("user", "Write a long story about a fox and a lost key.")]
COLOURS = [("user", "List five colours, one per line.")]


@asynccontextmanager
async def api(
    served: list[tuple[Path | GenerativeModel, str]],
) -> AsyncIterator[tuple[str, Peer, Peer]]:
    """The URL of a caller peer's API (127.0.0.1, port 0), the caller, and a provider of
    ``served`` (model, task) in the caller's swarm."""
    async with AsyncExitStack() as stack:
        network = await stack.enter_async_context(MemoryNetwork(seed=3))
        caller = await stack.enter_async_context(memory_peer(network))
        provider = memory_peer(network, bootstrap=[caller.addrs[0]])
        for model, task in served:
            provider.serve(model, tasks=[task])
        await stack.enter_async_context(provider)
        await provider.announce()
        nursery = await stack.enter_async_context(trio.open_nursery())
        url = await nursery.start(serve_http, caller, "127.0.0.1", 0, TOKEN)
        yield url, caller, provider
        nursery.cancel_scope.cancel()


@pytest.fixture
def chat_model(dialogue_models: dict[str, Path]) -> GenerativeModel:
    return GenerativeModel(
        dialogue_models["smollm2-chat"],
        sessions=SessionStore(SessionLimits(max_sessions=4, idle_timeout=60)),
    )


@pytest.mark.network
async def test_find_call_and_pipeline_through_the_client(models: dict[str, Path]) -> None:
    async with api([(models["iris"], "iris-species")]) as (url, _, provider):
        async with ApiClient(url, TOKEN) as client:
            found = await client.find(task="iris-species", timeout=5)
            assert [o["peer_id"] for o in found.offers] == [provider.peer_id]
            assert found.unanswered == []
            model_id = found.offers[0]["model_id"]

            called = await client.call({"x": IRIS}, task="iris-species")
            assert (called.peer_id, called.model_id, called.name) == (
                provider.peer_id,
                model_id,
                "iris",
            )
            assert called.outputs["label"].dtype == np.int64
            assert called.outputs["label"].tolist() == [0]

            ran = await client.run_pipeline(ONE_STEP, {"x": IRIS}, name="one.yaml")
            assert ran["mode"] == "orchestrated" and ran["outputs"] == {"label": [0]}
            (step,) = ran["steps"]
            assert (step["step"], step["model_id"], step["peer_id"]) == (
                "species",
                model_id,
                provider.peer_id,
            )
            assert step["ms"] > 0 and ran["total_ms"] >= step["ms"]
            assert ran["tensors"]["label"] == {"dtype": "int64", "shape": [1], "data": [0]}


@pytest.mark.network
async def test_errors_are_the_p2pnet_errors_of_their_codes(models: dict[str, Path]) -> None:
    """What a one-shot command raises, the client raises: same class, same message; the
    peer keeps serving."""
    async with api([(models["iris"], "iris-species")]) as (url, _, _):
        async with ApiClient(url, TOKEN) as client:
            with pytest.raises(
                UnknownModelError, match=r"^no peer in the swarm offers task .no-such-task.; check"
            ):
                await client.call({"x": IRIS}, task="no-such-task", timeout=2)
            with pytest.raises(InvalidInputError) as bad_input:
                await client.call({"y": IRIS}, task="iris-species")
            assert "x" in bad_input.value.message
            with pytest.raises(PipelineSpecError, match=r"^one\.yaml: "):
                await client.run_pipeline("steps: {}\n", {"x": IRIS}, name="one.yaml")
            with pytest.raises(PipelineSpecError, match="not valid YAML/JSON"):
                await client.run_pipeline("steps: [", {"x": IRIS})
            with pytest.raises(InvalidInputError):
                await client.run_pipeline(ONE_STEP, {"text": np.array(["a"], dtype=object)})
            with pytest.raises(UnknownSessionError):
                await client._cancel("no-such-reply")
            assert (await client.find(task="iris-species", timeout=5)).offers
        async with ApiClient(url, "wrong-token") as stranger:
            with pytest.raises(ConfigError, match=r"refused the request \(unauthorized\)"):
                await stranger.status()


@pytest.mark.network
async def test_the_blocking_client_answers_and_fails_as_the_streaming_one_does(
    models: dict[str, Path],
) -> None:
    """BlockingApiClient (http.client: what find and call use, without trio): the
    replies and errors of ApiClient, its connection still usable after an error reply;
    an API that is gone is PeerUnreachableError, a URL that is not http:// ConfigError."""
    async with api([(models["iris"], "iris-species")]) as (url, caller, provider):
        async with ApiClient(url, TOKEN) as client:
            expected = await client.call({"x": IRIS}, task="iris-species")

        def ask() -> tuple[dict[str, Any], FindReply, CallReply, FindReply]:
            with BlockingApiClient(url, TOKEN) as blocking:
                status = blocking.status()
                found = blocking.find(task="iris-species", timeout=5)
                called = blocking.call({"x": IRIS}, task="iris-species")
                with pytest.raises(
                    UnknownModelError, match=r"^no peer in the swarm offers task .no-such-task."
                ):
                    blocking.call({"x": IRIS}, task="no-such-task", timeout=2)
                with pytest.raises(InvalidInputError, match="x"):
                    blocking.call({"y": IRIS}, task="iris-species")
                again = blocking.find(task="iris-species", timeout=5)
            with (
                BlockingApiClient(url, "wrong-token") as stranger,
                pytest.raises(ConfigError, match=r"refused the request \(unauthorized\)"),
            ):
                stranger.status()
            return status, found, called, again

        status, found, called, again = await trio.to_thread.run_sync(ask)
    assert status["peer_id"] == caller.peer_id
    assert (
        [o["peer_id"] for o in found.offers]
        == [provider.peer_id]
        == [o["peer_id"] for o in again.offers]
    )
    assert (called.peer_id, called.model_id, called.name) == (
        expected.peer_id,
        expected.model_id,
        expected.name,
    )
    assert called.outputs.keys() == expected.outputs.keys()
    for name, arr in expected.outputs.items():
        assert called.outputs[name].dtype == arr.dtype
        assert np.array_equal(called.outputs[name], arr)
    with (
        BlockingApiClient(url, TOKEN) as gone,
        pytest.raises(PeerUnreachableError, match=f"^the running peer's API at {url}: "),
    ):
        gone.status()
    with pytest.raises(ConfigError, match="expected http://HOST:PORT"):
        BlockingApiClient("https://127.0.0.1:1", TOKEN)


# JSON values of NAME=VALUE: numbers, text, booleans, nulls, in lists that may be empty
# or ragged.
_LEAVES = (
    st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True, width=64)
    | st.floats(width=32)
    | st.text(max_size=3)
    | st.booleans()
    | st.none()
)
_VALUES = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=3), max_leaves=12)
_DTYPES = ("", "float32", "float64", "int64", "string", "int32", "bool", "float16", "uint8")


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_DTYPES),
    _VALUES.map(json.dumps) | st.text(max_size=8),
    st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=3),
)
def test_inputs_made_without_numpy_are_what_numpy_makes_of_them(
    dtype: str, value: str, shape: list[int]
) -> None:
    """``input_as_json`` (what ``call`` through the API sends, without numpy) is the JSON
    tensor of ``parse_input``'s array, to the byte, or None; ``exact_tensor_json`` (the
    outputs ``call --json`` prints) is ``tensor_json`` of ``tensor_from_json``, or None."""
    spec = f"x:{dtype}={value}" if dtype else f"x={value}"
    made = input_as_json(spec)
    try:
        with np.errstate(all="ignore"):  # numpy's casts of what does not fit warn
            name, array = parse_input(spec)
    except InvalidInputError:
        assert made is None
    else:
        if made is not None:
            assert made[0] == name
            assert json.dumps(made[1]) == json.dumps(tensor_to_json(array))
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        data = value
    for tensor in (
        {"dtype": dtype or "float32", "shape": shape, "data": data},
        {"dtype": dtype or "float32", "shape": [], "data": data},
        {"dtype": dtype, "data": data},
    ):
        exact = exact_tensor_json(tensor)
        try:
            with np.errstate(all="ignore"):
                expected = tensor_json(tensor_from_json("y", tensor))
        except InvalidInputError:
            assert exact is None
            continue
        if exact is not None:
            assert json.dumps(exact) == json.dumps(expected)


def _finite_arrays(dtype: str) -> st.SearchStrategy[Any]:
    # uint64 up to 2**63 - 1: numpy itself reads larger ones mixed with others as float64.
    elements = (
        st.integers(0, 2**63 - 1)
        if dtype == "uint64"
        else {"allow_nan": False, "allow_infinity": False}
    )
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)
    return hnp.arrays(dtype, shapes, elements=elements)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["float32", "float64", "float16", "int64", "int8", "uint64", "bool"]).flatmap(
        _finite_arrays
    )
)
def test_the_outputs_of_a_model_are_printed_without_numpy_as_with_it(array: Any) -> None:
    """Every finite output tensor the API sends (``tensor_to_json``) is printed by
    ``call --json`` without numpy, exactly as with it."""
    sent = json.loads(json.dumps(tensor_to_json(array)))
    exact = exact_tensor_json(sent)
    assert exact is not None
    assert json.dumps(exact) == json.dumps(tensor_json(tensor_from_json("y", sent)))


def test_small_json_inputs_are_made_without_numpy_and_the_rest_with_it() -> None:
    assert input_as_json("x=[[5.1,3.5,1.4,0.2]]") == (
        "x",
        {
            "dtype": "float32",
            "shape": [1, 4],
            "data": [[float(np.float32(v)) for v in (5.1, 3.5, 1.4, 0.2)]],
        },
    )
    assert input_as_json("t=hello") == ("t", {"dtype": "string", "shape": [1], "data": ["hello"]})
    assert input_as_json("n:int64=[1,2]") == ("n", {"dtype": "int64", "shape": [2], "data": [1, 2]})
    for numpy_made in ("x=@in.npy", "x=[true]", "x=[[1],[2,3]]", "x=[]", "x:int8=[1]", "x=1e39"):
        assert input_as_json(numpy_made) is None, numpy_made


def test_an_error_body_that_is_not_the_apis_still_says_what_happened() -> None:
    assert type(error_from_api(400, b'{"error": "x", "code": "schema_mismatch"}')).__name__ == (
        "SchemaMismatchError"
    )
    failed = error_from_api(500, b"Internal Server Error")
    assert failed.code == "internal" and "Internal Server Error" in str(failed)
    unknown = error_from_api(404, b'{"error": "GET /x: Not Found", "code": "not_found"}')
    assert unknown.code == "usage" and str(unknown) == "[not_found] GET /x: Not Found"


def lines_of(body: bytes) -> list[dict[str, Any]]:
    """The NDJSON events of ``body``, checked to be byte-exact: each line is
    ``json.dumps(event)`` (default separators, ASCII) and a line feed."""
    assert body.endswith(b"\n")
    events = [json.loads(line) for line in body.split(b"\n")[:-1]]
    assert body == b"".join(json.dumps(e).encode() + b"\n" for e in events)
    return events


@pytest.mark.network
@pytest.mark.slow
async def test_generate_streams_ndjson_events_and_a_chat_keeps_its_session(
    chat_model: GenerativeModel,
) -> None:
    async with (
        api([(chat_model, "chat")]) as (url, _, provider),
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as http,
    ):
        body = {"task": "chat", "messages": COLOURS, "params": {"max_tokens": 8}}
        reply = await http.post("/api/generate", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == NDJSON and reply.headers[REPLY_HEADER]
        events = lines_of(reply.content)
        assert [e["event"] for e in events[:2]] == ["provider", "chunk"]
        assert events[0]["peer_id"] == provider.peer_id and events[0]["tasks"] == ["chat"]
        done = events[-1]
        assert {e["event"] for e in events[1:-1]} == {"chunk"}
        assert done["event"] == "done" and done["finish"] == "length"
        assert done["completion_tokens"] == 8 == sum(len(e["tokens"]) for e in events[1:-1])
        assert done["ttft_ms"] > 0 and done["session"] is None

        bad = await http.post("/api/generate", json={**body, "params": {"top_p": 0}})
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_input"
        nobody = await http.post("/api/generate", json={**body, "task": "none", "timeout": 2})
        # A stream that failed before its first event: the error is its one event.
        assert lines_of(nobody.content) == [
            {"event": "error", "code": "unknown_model", "message": "no provider offers it"}
        ]

        opened = await http.post("/api/chat", json={"task": "chat", "system": "Be brief."})
        assert opened.status_code == 201
        chat = opened.json()["id"]
        first = lines_of(
            (
                await http.post(
                    f"/api/chat/{chat}", json={"text": "Hi", "params": {"max_tokens": 4}}
                )
            ).content
        )
        second = lines_of(
            (
                await http.post(
                    f"/api/chat/{chat}", json={"text": "Bye", "params": {"max_tokens": 4}}
                )
            ).content
        )
        assert first[0]["event"] == "provider" and first[-1]["session"]
        # The provider is announced when it changes only, as `p2pnet chat` shows it.
        assert second[0]["event"] == "chunk"
        assert second[-1]["session"] == first[-1]["session"] and second[-1]["cached_tokens"] > 0
        closed = await http.delete(f"/api/chat/{chat}")
        assert closed.status_code == 200
        gone = await http.post(f"/api/chat/{chat}", json={"text": "Hi"})
        assert gone.status_code == 404 and gone.json()["code"] == "unknown_session"
        with trio.fail_after(10):  # its provider's session is closed with it
            while provider.status().generation.get("sessions"):
                await trio.sleep(0.01)

        # One turn at a time.
        chat = (await http.post("/api/chat", json={"task": "chat"})).json()["id"]
        long = {"text": "Write a long story.", "params": {"max_tokens": 200}}
        async with http.stream("POST", f"/api/chat/{chat}", json=long) as streaming:
            busy = await http.post(f"/api/chat/{chat}", json={"text": "Hi"})
            assert busy.status_code == 409 and busy.json()["code"] == "usage"
            await streaming.aclose()
        await http.delete(f"/api/chat/{chat}")

        # A chat the peer no longer holds is opened again with the conversation so far.
        async with ApiClient(url, TOKEN) as client, await client.chat(task="chat") as kept:
            params = GenerationParams(max_tokens=4)
            async with kept.send("Hi", params) as turn:
                (first_done,) = [e async for e in turn if e["event"] == "done"]
            assert [role for role, _ in kept.history] == ["user", "assistant"]
            gone_id = kept.id
            assert (await http.delete(f"/api/chat/{gone_id}")).status_code == 200
            async with kept.send("Bye", params) as turn:
                (again,) = [e async for e in turn if e["event"] == "done"]
            assert kept.id != gone_id and len(kept.history) == 4
            # The conversation replayed: its first turn is in the new prompt.
            assert again["prompt_tokens"] > first_done["prompt_tokens"]
            assert again["cached_tokens"] == 0


@pytest.mark.network
@pytest.mark.slow
async def test_a_client_that_goes_away_stops_the_generation_and_cancel_ends_it(
    chat_model: GenerativeModel,
) -> None:
    async with api([(chat_model, "chat")]) as (url, _, provider):
        stats = provider.services.invoke_server.stats
        async with ApiClient(url, TOKEN) as client:
            # Cancel: the reply ends with finish "cancelled" and what came before.
            async with client.generate(
                STORY, task="chat", params=GenerationParams(max_tokens=400)
            ) as reply:
                kinds = []
                async for event in reply:
                    kinds.append(event["event"])
                    if event["event"] == "chunk" and kinds.count("chunk") == 1:
                        assert await reply.cancel()
            assert kinds[0] == "provider" and kinds[-1] == "done"
            assert event["finish"] == "cancelled" and event["completion_tokens"] < 400

            # Gone: dropping the connection midway stops the provider.
            cancelled = stats.cancelled
            async with client.generate(
                STORY, task="chat", params=GenerationParams(max_tokens=400)
            ) as reply:
                async for event in reply:
                    if event["event"] == "chunk":
                        break
            with trio.fail_after(10):
                while stats.cancelled <= cancelled:
                    await trio.sleep(0.01)
            assert (await client.find(task="chat", timeout=5)).offers  # still serving


async def test_chats_are_bounded_and_closed_when_idle() -> None:
    now = [0.0]
    closed: list[str] = []

    class Session:
        def __init__(self, name: str) -> None:
            self.name = name

        async def close(self) -> None:
            closed.append(self.name)

    table = ChatTable(max_chats=2, idle_timeout=60, clock=lambda: now[0])
    a = await table.open(Session("a"))  # type: ignore[arg-type]
    now[0] = 30
    b = await table.open(Session("b"))  # type: ignore[arg-type]
    with pytest.raises(SessionLimitError, match="holds 2 chats"):
        await table.open(Session("c"))  # type: ignore[arg-type]
    now[0] = 61  # a idle 61 s: closed when the table is next used
    (await table.get(b)).busy = True
    c = await table.open(Session("c"))  # type: ignore[arg-type]
    assert closed == ["a"] and set(table.chats) == {b, c}
    with pytest.raises(UnknownSessionError):
        await table.get(a)
    now[0] = 500  # b is replying: kept however long
    await table.expire()
    assert closed == ["a", "c"] and set(table.chats) == {b}
    await table.close(b)
    assert closed == ["a", "c", "b"] and not table.chats


@pytest.fixture
def env(config_home: Path) -> dict[str, str]:
    return os.environ | {"XDG_CONFIG_HOME": str(config_home), "COLUMNS": "400"}


@pytest.mark.network
@pytest.mark.slow
def test_find_and_call_use_the_running_peer_of_their_identity(
    env: dict[str, str], models: dict[str, Path], tmp_path: Path
) -> None:
    """With the default identity, next to a running `p2pnet peer` of it: find and call
    go through its API (no second peer of the same ID), even given the running peer
    as --bootstrap; their --json is the one-shot form's."""
    peer = start_peer(
        env, "--http", "127.0.0.1:0", "--serve", str(models["iris"]), "--task", "iris-species"
    )
    try:
        (url,) = [line.split()[2] for line in peer.lines if line.startswith("http api ")]
        iris = ("-i", "x=[[5.1,3.5,1.4,0.2]]")
        found = p2pnet("find", "--task", "iris-species", "--json", "-v", env=env)
        assert found.returncode == 0, found.stderr
        assert "using the running peer" in found.stderr and url in found.stderr
        through_api = json.loads(found.stdout)
        (offer,) = through_api["offers"]
        assert offer["model_id"] == peer.models["iris"] and through_api["unanswered"] == []
        itself = p2pnet("find", "--task", "iris-species", "--bootstrap", peer.address, env=env)
        assert itself.returncode == 0, itself.stderr
        assert "iris-species" in itself.stdout
        called = p2pnet("call", "--task", "iris-species", *iris, "--json", env=env)
        assert called.returncode == 0, called.stderr
        missing = p2pnet("call", "--task", "none", *iris, "--timeout", "2", env=env)
        assert missing.returncode == 2
        assert "error (in the call or the configuration): no peer in the swarm offers task" in (
            missing.stderr
        )

        # The one-shot form (another identity: a second peer of the same one cannot join).
        other = ("--identity", str(tmp_path / "other.key"), "--bootstrap", peer.address)
        alone = p2pnet("find", "--task", "iris-species", *other, "--json", "-v", env=env)
        assert alone.returncode == 0, alone.stderr
        assert "no running peer of identity" in alone.stderr
        one_shot = json.loads(alone.stdout)
        assert one_shot.keys() == through_api.keys()
        assert [{**o, "rtt_ms": 0} for o in one_shot["offers"]] == [{**offer, "rtt_ms": 0}]
        alone_call = p2pnet("call", "--task", "iris-species", *iris, *other, "--json", env=env)
        assert alone_call.returncode == 0, alone_call.stderr
        assert alone_call.stdout == called.stdout

        spec = tmp_path / "one.yaml"
        spec.write_text(ONE_STEP)
        runs = [
            p2pnet("pipeline", "run", str(spec), *iris, "--json", *extra, env=env)
            for extra in ((), other)
        ]
        assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
        piped, alone_piped = (json.loads(r.stdout) for r in runs)
        for result in (piped, alone_piped):
            assert result["steps"][0]["ms"] > 0
            result["total_ms"] = result["steps"][0]["ms"] = 0
        assert piped == alone_piped and piped["outputs"] == {"label": [0]}
        text = p2pnet("pipeline", "run", str(spec), *iris, env=env)
        assert text.returncode == 0 and "species" in text.stdout and "label" in text.stdout

        # --standalone forces a peer of the command's own: with this identity, the clash.
        clash = p2pnet(
            "find", "--task", "iris-species", "--bootstrap", peer.address, "--standalone",
            env=env,
        )  # fmt: skip
        assert clash.returncode != 0 and "own ID" in clash.stderr
    finally:
        peer.proc.send_signal(signal.SIGINT)
        assert peer.proc.wait(timeout=30) == 0


def cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pnet.cli", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def replies_of(stdout: str) -> list[tuple[str, Any]]:
    """The events of a --json reply stream, without what differs between runs (timings,
    session IDs, the describe round trip): (event, what it says)."""
    events = []
    for line in stdout.splitlines():
        event = json.loads(line)
        kind = event.pop("event")
        for key in ("ttft_ms", "tokens_per_s", "rtt_ms", "session", "addrs"):
            event.pop(key, None)
        events.append((kind, event))
    return events


@pytest.mark.network
@pytest.mark.slow
def test_chat_and_prompt_through_the_running_peer_print_what_a_peer_of_their_own_does(
    env: dict[str, str], dialogue_models: dict[str, Path], tmp_path: Path
) -> None:
    """The running peer of the command's identity is in a swarm with a provider of the
    chat model, another peer."""
    provider = start_peer(
        env | {"XDG_CONFIG_HOME": str(tmp_path / "provider")},
        "--http", "off", "--serve", str(dialogue_models["smollm2-chat"]), "--task", "chat",
    )  # fmt: skip
    peer = start_peer(env, "--http", "127.0.0.1:0", "--bootstrap", provider.address)
    try:
        short = ("--task", "chat", "--max-tokens", "4", "--json")
        other = ("--identity", str(tmp_path / "other.key"), "--bootstrap", provider.address)
        chat = cli("chat", *short, "-v", env=env, stdin="Hi\nName a colour.\n")
        assert chat.returncode == 0, chat.stderr
        assert "using the running peer" in chat.stderr
        events = [json.loads(line) for line in chat.stdout.splitlines()]
        kinds = [e["event"] for e in events]
        assert kinds[0] == "provider" and kinds.count("provider") == 1  # shown once
        first, second = [e for e in events if e["event"] == "done"]
        assert first["session"] and second["session"] == first["session"]
        assert second["cached_tokens"] > 0  # the running peer kept the session
        alone = cli("chat", *short, *other, env=env, stdin="Hi\nName a colour.\n")
        assert alone.returncode == 0, alone.stderr
        assert replies_of(alone.stdout) == replies_of(chat.stdout)

        prompt = cli("call", *short, "--prompt", "Hi", env=env)
        assert prompt.returncode == 0, prompt.stderr
        assert replies_of(prompt.stdout) == replies_of(
            cli("call", *short, "--prompt", "Hi", *other, env=env).stdout
        )
        assert replies_of(prompt.stdout)[-1][1]["finish"] == "length"
        bad = cli("call", "--task", "none", "--prompt", "Hi", "--timeout", "2", "--json", env=env)
        assert bad.returncode == 2
        assert json.loads(bad.stdout) == {
            "event": "error",
            "code": "unknown_model",
            "message": "no provider offers it",
        }
    finally:
        for running in (peer, provider):
            running.proc.send_signal(signal.SIGINT)
            assert running.proc.wait(timeout=30) == 0


class FakeReply:
    """A RemoteReply whose events the test sends; ``answered``: what ``cancel`` says."""

    def __init__(self, answered: bool) -> None:
        self.send, self._receive = trio.open_memory_channel[dict[str, Any]](10)
        self.answered = answered
        self.cancelled = self.closed = False

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for event in self._receive:
            yield event

    async def cancel(self) -> bool:
        self.cancelled = True
        if self.answered:
            await self.send.send(DONE | {"finish": "cancelled"})
            await self.send.aclose()
        return self.answered

    async def aclose(self) -> None:
        self.closed = True


DONE = {
    "event": "done", "finish": "length", "prompt_tokens": 3, "completion_tokens": 1,
    "cached_tokens": 0, "session": None, "ttft_ms": 5.0, "tokens_per_s": None,
}  # fmt: skip


@pytest.mark.parametrize("answered", [True, False])
async def test_ctrl_c_during_a_reply_of_the_api_does_what_it_does_in_a_reply_of_its_own(
    answered: bool,
) -> None:
    """Once the provider answered, Ctrl-C asks it to stop and the reply ends "cancelled";
    before that (the peer says so), it drops the reply: the events are those of
    ``stream_reply`` (tests/test_cli_chat.py)."""
    out = io.StringIO()
    reply = FakeReply(answered)
    async with trio.open_nursery() as nursery:
        interrupts = Interrupts(nursery.cancel_scope)

        async def ctrl_c_after_the_first_chunk() -> None:
            await reply.send.send({"event": "chunk", "text": "Hi", "tokens": [1]})
            await trio.testing.wait_all_tasks_blocked()
            await interrupts.handler()

        nursery.start_soon(ctrl_c_after_the_first_chunk)
        done = await stream_remote_reply(reply, JsonReplies(out), interrupts)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events[0] == {"event": "chunk", "text": "Hi", "tokens": [1]}
    assert reply.cancelled and not interrupts.stopped
    if answered:
        assert done is not None and done["finish"] == "cancelled" and events[1] == done
        assert not reply.closed
    else:
        assert done is None and reply.closed
        assert events[1] == {
            "event": "error",
            "code": "interrupted",
            "message": "interrupted before the reply ended",
        }


@pytest.mark.slow
def test_the_client_path_loads_no_http_server() -> None:
    """A command that talks to the running peer loads httpx, not starlette or hypercorn."""
    code = (
        "import sys, p2pnet.cli.find, p2pnet.cli.call, p2pnet.cli.chat, p2pnet.cli.pipeline, "
        "p2pnet.gateway.client; "
        "print(sorted(m for m in ('starlette', 'hypercorn', 'prometheus_client') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def discovery(key: Path, *bootstrap: str, **options: Any) -> DiscoveryOptions:
    fields: dict[str, Any] = {
        "identity": key,
        "swarm": SwarmOptions(None, options.pop("swarm_key", None), bootstrap),
        "task": "iris-species",
        "model": None,
        "timeout": 10.0,
        "listen": DEFAULT_LISTEN,
        "json": True,
    }
    return DiscoveryOptions(**(fields | options))


@pytest.mark.network
async def test_a_command_uses_the_running_peer_unless_it_names_a_peer_or_network_of_its_own(
    models: dict[str, Path], config_home: Path, tmp_path: Path
) -> None:
    """docs/cli.md, "A running peer": the rule, decided by its status asked live."""
    key = tmp_path / "me.key"
    identity, _ = load_or_create_identity(key)
    async with AsyncExitStack() as stack:
        network = await stack.enter_async_context(MemoryNetwork(seed=5))
        provider = memory_peer(network)
        provider.serve(models["iris"], tasks=["iris-species"])
        await stack.enter_async_context(provider)
        me = Peer(identity, host=network.add_host(identity.peer_id), bootstrap=[provider.addrs[0]])
        await stack.enter_async_context(me)
        stranger = await stack.enter_async_context(memory_peer(network))
        server = await stack.enter_async_context(trio.open_nursery())
        url = await server.start(serve_http, me, "127.0.0.1", 0, TOKEN)
        write_token(default_token_path(me.peer_id), TOKEN)
        status_file = runtime_dir() / f"peer-{os.getpid()}.json"
        write_status(snapshot(me), status_file)

        def uses_client(options: DiscoveryOptions) -> bool:
            client = running_peer_client(options)
            if client is None:
                return False
            with client:
                assert client.url == url
                return True

        async def uses_api(options: DiscoveryOptions) -> bool:
            """Whether ``running_peer_api`` goes through the API; ``running_peer_client``
            (find and call, without trio) decides the same."""
            api = await running_peer_api(options)
            blocking = await trio.to_thread.run_sync(uses_client, options)
            if api is None:
                assert not blocking
                return False
            async with api:
                assert api.url == url and blocking
                return True

        assert await uses_api(discovery(key))
        assert await uses_api(discovery(key, provider.addrs[0]))  # connected to it
        assert await uses_api(discovery(key, me.addrs[0]))  # itself
        assert not await uses_api(discovery(key, stranger.addrs[0]))  # not connected
        assert not await uses_api(discovery(key, standalone=True))
        assert not await uses_api(discovery(key, listen_given=True))
        swarm_key = tmp_path / "swarm.key"
        write_swarm_key_file(generate_swarm_key(), swarm_key)
        assert not await uses_api(discovery(key, swarm_key=swarm_key))  # it has none
        assert not await uses_api(discovery(tmp_path / "other.key"))  # no such identity

        server.cancel_scope.cancel()  # the API goes; its status file stays (a killed peer)
        with trio.fail_after(5):
            while me.http_url is not None:
                await trio.sleep(0.01)
        assert not await uses_api(discovery(key))
        status_file.unlink()
