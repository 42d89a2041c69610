"""The network's models as MCP tools (p2pnet/gateway/mcp.py), called with the ``mcp``
SDK's client: over Streamable HTTP at ``/mcp`` of a memory-swarm peer's HTTP app, and over
stdio through ``p2pnet mcp`` processes in a swarm of real peers on 127.0.0.1 (its own
peer, or bridged to a running peer's API)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import httpx2
import mcp_types as types
import numpy as np
import pytest
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from memory_peers import memory_peer

from p2pnet.core.generation import GenerationCard
from p2pnet.core.records import CapabilityRecord
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.errors import InvalidInputError, UsageError
from p2pnet.gateway.app import serve_http
from p2pnet.gateway.mcp import (
    META_CODE,
    META_MODEL,
    META_PEER,
    STDIO_MAX_LINE,
    McpGateway,
    check_expose,
    input_schema,
    task_tools,
    tensors_from_arguments,
    tool_description,
)
from p2pnet.net.identity import generate_identity
from p2pnet.net.memory import MemoryNetwork
from p2pnet.peer import Peer
from p2pnet.runtime.onnx_model import inspect_model

TOKEN = "mcp-test-token"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
REPO = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def mcp_over_http(
    models: dict[str, Path], query: str = "", **client: Any
) -> AsyncIterator[tuple[Client, Peer, Peer, str]]:
    """An MCP client of a gateway peer's /mcp (its HTTP app on 127.0.0.1; ``query``: the
    endpoint's query string), the gateway, a provider of iris (iris-species) and
    sentiment (sentiment-analysis), and the URL."""
    async with MemoryNetwork() as network, memory_peer(network) as gateway:
        provider = memory_peer(network, bootstrap=[gateway.addrs[0]])
        provider.serve(models["iris"], tasks=["iris-species"])
        provider.serve(models["sentiment"], tasks=["sentiment-analysis"])
        async with provider, trio.open_nursery() as nursery:
            await provider.announce()
            url = await nursery.start(serve_http, gateway, "127.0.0.1", 0, TOKEN)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            endpoint = f"{url}/mcp{query}"
            async with (
                httpx2.AsyncClient(headers=headers) as http,
                Client(streamable_http_client(endpoint, http_client=http), **client) as mcp,
            ):
                yield mcp, gateway, provider, url
            nursery.cancel_scope.cancel()


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest.mark.network
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_list_and_call_over_streamable_http(models: dict[str, Path], mode: str) -> None:
    """The modern protocol (2026-07-28, one POST per request) and the initialize handshake
    of the earlier versions are both served."""
    async with mcp_over_http(models, mode=mode) as (mcp, gateway, provider, _):
        # The gateway has not searched yet: it knows no record, so no tool.
        assert (await mcp.list_tools()).tools == []
        await gateway.find(task="iris-species")
        await gateway.find(task="sentiment-analysis")
        tools = {t.name: t for t in (await mcp.list_tools()).tools}  # read again
        assert sorted(tools) == ["iris-species", "sentiment-analysis"]

        iris = tools["iris-species"]
        assert iris.input_schema == {
            "type": "object",
            "properties": {
                "x": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 4,
                        "maxItems": 4,
                    },
                    "description": "float32[?, 4]",
                }
            },
            "required": ["x"],
            "additionalProperties": False,
        }
        assert iris.output_schema is not None
        label = iris.output_schema["properties"]["label"]
        assert label["items"]["type"] == "integer" and label["description"] == "int64[?]"
        assert "Model 'iris'" in (iris.description or "")
        assert "Takes x: float32[?, 4]." in (iris.description or "")
        text = tools["sentiment-analysis"].input_schema["properties"]["text"]
        assert text["anyOf"][0] == {"type": "string"}

        called = await mcp.call_tool("iris-species", {"x": [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]})
        assert not called.is_error, text_of(called)
        assert called.structured_content is not None
        assert called.structured_content["label"] == [0, 2]
        assert len(called.structured_content["probabilities"]) == 2
        assert json.loads(text_of(called)) == called.structured_content
        assert called.meta is not None
        assert called.meta[META_PEER] == provider.peer_id
        iris_id = next(r.model_id for r in gateway.known_records() if r.name == "iris")
        assert called.meta[META_MODEL] == iris_id
        assert f"Model 'iris' ({iris_id}); 1 known provider(s)." in (iris.description or "")

        # A text model: a plain string is the tensor [text]; a list, several texts.
        one = await mcp.call_tool("sentiment-analysis", {"text": "I love it, works great"})
        assert not one.is_error, text_of(one)
        assert one.structured_content is not None
        assert one.structured_content["label"] == ["positive"]
        two = await mcp.call_tool(
            "sentiment-analysis", {"text": ["I love it", "broken on arrival, terrible"]}
        )
        assert two.structured_content is not None
        assert two.structured_content["label"] == ["positive", "negative"]


@pytest.mark.network
async def test_bad_inputs_and_unknown_tasks_are_tool_errors(models: dict[str, Path]) -> None:
    async with mcp_over_http(models) as (mcp, gateway, _, _):
        await gateway.find(task="iris-species")
        await mcp.list_tools()
        wrong = [
            ({"x": [[5.1, 3.5, 1.4]]}, "input 'x' has size 3 on axis 1; the model expects 4"),
            ({"x": [["a", "b", "c", "d"]]}, "input 'x' (x: float32[?, 4]) takes numbers"),
            ({"x": IRIS_ROW}, "takes nested arrays 2 deep; level 1 is not"),
            ({"y": [IRIS_ROW]}, "unexpected input 'y'; the model takes x: float32[?, 4]"),
            ({}, "missing input 'x'; the model takes x: float32[?, 4]"),
        ]
        for arguments, message in wrong:
            result = await mcp.call_tool("iris-species", arguments)
            assert result.is_error, arguments
            assert message in text_of(result), text_of(result)
            assert result.meta is not None and result.meta[META_CODE] == "invalid_input"

        nobody = await mcp.call_tool("no-such-task", {"x": {"data": [1.0]}})
        assert nobody.is_error
        assert "no peer in the swarm offers task 'no-such-task'" in text_of(nobody)
        assert nobody.meta is not None and nobody.meta[META_CODE] == "unknown_model"
        bad_name = await mcp.call_tool("Not A Task", {})
        assert bad_name.is_error and "is not a task tag" in text_of(bad_name)

        # The gateway keeps serving.
        again = await mcp.call_tool("iris-species", {"x": [IRIS_ROW]})
        assert again.structured_content == {
            "label": [0],
            "probabilities": again.structured_content["probabilities"],  # type: ignore[index]
        }


@pytest.mark.network
async def test_the_endpoint_url_chooses_the_tools(models: dict[str, Path]) -> None:
    """``/mcp?expose=TASK``: those tasks only, a task no known record offers searched for
    at the list; others are not called."""
    async with mcp_over_http(models, "?expose=iris-species") as (mcp, gateway, _, _):
        assert gateway.known_records() == []
        tools = (await mcp.list_tools()).tools
        assert [t.name for t in tools] == ["iris-species"]
        assert tools[0].input_schema["properties"]["x"]["items"]["maxItems"] == 4  # found
        refused = await mcp.call_tool("sentiment-analysis", {"text": "fine"})
        assert refused.is_error
        assert text_of(refused) == "no tool 'sentiment-analysis' here; the tools are iris-species"
    async with mcp_over_http(models, "?expose=Iris") as (mcp, _, _, _):
        with pytest.raises(MCPError, match="expose: 'Iris' is not a task tag"):
            await mcp.list_tools()


@pytest.mark.network
async def test_mcp_takes_the_token_and_bounds_the_body(models: dict[str, Path]) -> None:
    async with mcp_over_http(models) as (_, _, _, url):
        initialize = {
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "test", "version": "0"}},
        }  # fmt: skip
        accept = {"Accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient(base_url=url) as client:
            for auth in ({}, {"Authorization": "Bearer wrong"}):
                refused = await client.post("/mcp", json=initialize, headers=accept | auth)
                assert refused.status_code == 401
                assert refused.json()["code"] == "unauthorized"
            # A page whose DNS name points at 127.0.0.1 is refused, token or not.
            rebound = await client.post(
                "/mcp",
                json=initialize,
                headers=accept | {"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"},
            )
            assert rebound.status_code == 403
            answered = await client.post(
                "/mcp", json=initialize, headers=accept | {"Authorization": f"Bearer {TOKEN}"}
            )
            assert answered.status_code == 200
            assert answered.headers["mcp-session-id"]
            # A body over the app's limit (16 MiB) is refused before it is parsed.
            big = b'{"pad": "' + b"x" * (17 * 1024 * 1024) + b'"}'
            oversized = await client.post(
                "/mcp",
                content=big,
                headers=accept
                | {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            assert oversized.status_code == 413


# --- pure parts ----------------------------------------------------------------------------


def test_input_schemas_and_conversion_follow_the_tensor_schema() -> None:
    schema = ModelSchema(
        inputs=(
            TensorSpec("ids", "int8", ("batch", 2)),
            TensorSpec("mask", "bool", ("batch", 2)),
            TensorSpec("scale", "float64", ()),
            TensorSpec("prompt", "string", (1, None)),
        ),
        outputs=(TensorSpec("y", "float32", ("batch",)),),
    )
    properties = input_schema(schema)["properties"]
    assert properties["ids"]["items"]["items"] == {
        "type": "integer",
        "minimum": -128,
        "maximum": 127,
    }
    assert "dimension 'batch' is the same size" in properties["ids"]["description"]
    assert properties["mask"]["items"]["items"] == {"type": "boolean"}
    assert properties["scale"] == {"type": "number", "description": "float64[]"}
    assert properties["prompt"]["anyOf"][0] == {"type": "string"}
    nested = properties["prompt"]["anyOf"][1]
    assert (nested["minItems"], nested["maxItems"]) == (1, 1) and "minItems" not in nested["items"]

    arrays = tensors_from_arguments(
        schema,
        {"ids": [[1, -2]], "mask": [[True, False]], "scale": 0.5, "prompt": "hello"},
    )
    assert arrays["ids"].dtype == np.int8 and arrays["ids"].tolist() == [[1, -2]]
    assert arrays["mask"].dtype == np.bool_
    assert arrays["scale"].shape == () and arrays["scale"].dtype == np.float64
    assert arrays["prompt"].shape == (1, 1) and arrays["prompt"].tolist() == [["hello"]]

    good = {"mask": [[True, False]], "scale": 1, "prompt": [["a", "b"]]}
    for ids, message in (
        ([[1.5, 2]], "takes whole numbers from -128 to 127; got 1.5"),
        ([[300, 2]], "takes whole numbers from -128 to 127; got 300"),
        ([[True, 2]], "takes whole numbers"),
        ([[1, 2], [3]], "the arrays at level 1 differ in length"),
    ):
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            tensors_from_arguments(schema, {"ids": ids, **good})
    with pytest.raises(InvalidInputError, match=r"takes whole numbers .*; got an array"):
        tensors_from_arguments(schema, {"ids": [[[1], 2]], **good})  # deeper than the rank
    empty = tensors_from_arguments(schema, {**good, "ids": [], "mask": []})
    assert empty["ids"].shape == (0, 2) and empty["mask"].shape == (0, 2)
    with pytest.raises(InvalidInputError, match=r"input .mask. .* takes true or false; got 1"):
        tensors_from_arguments(schema, {**good, "ids": [[1, 2]], "mask": [[1, 0]]})


def test_exposed_tasks_are_task_tags_named_once() -> None:
    assert check_expose(["iris-species", "sentiment-analysis"]) == (
        "iris-species",
        "sentiment-analysis",
    )
    with pytest.raises(UsageError, match="exposed twice"):
        check_expose(["iris-species", "iris-species"])
    for bad in ("Iris", "iris species", "-iris", "x" * 65, ""):
        with pytest.raises(UsageError, match="is not a task tag"):
            check_expose([bad])


# --- p2pnet mcp on stdio -------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("mcp-home")
    return os.environ | {
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "PYTHONPATH": str(REPO),
        "COLUMNS": "200",  # log lines on stderr unwrapped
    }


class ProviderProcess:
    """``p2pnet peer`` serving iris (iris-species) with its HTTP API on a free port of
    127.0.0.1, under the default identity of ``env``'s configuration directory."""

    def __init__(self, env: dict[str, str], models: dict[str, Path]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2pnet.cli", "peer", "--listen", "/ip4/127.0.0.1/tcp/0",
             "--serve", str(models["iris"]), "--task", "iris-species", "--http", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        for line in self.proc.stdout:  # its "ready" line ends the start-up lines
            self.lines.append(line.strip())
            if line.startswith("ready"):
                break
        else:
            pytest.fail(f"peer exited {self.proc.wait()}: {self.lines} {self.proc.stderr}")
        self.address = next(ln.split()[1] for ln in self.lines if ln.startswith("listening"))
        self.api = next(ln.split()[2] for ln in self.lines if ln.startswith("http api"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")  # one for the module's tests: a process takes seconds
def provider_process(env: dict[str, str], models: dict[str, Path]) -> Iterator[ProviderProcess]:
    provider = ProviderProcess(env, models)
    yield provider
    provider.stop()


def mcp_command(env: dict[str, str], *args: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "p2pnet.cli", "mcp", *args],
        env={k: env[k] for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "PYTHONPATH")},
    )


async def list_and_call(
    params: StdioServerParameters, errlog: Path, mode: str = "auto"
) -> tuple[list[types.Tool], types.CallToolResult]:
    with errlog.open("w") as log:
        async with Client(stdio_client(params, errlog=log), mode=mode) as mcp:
            tools = (await mcp.list_tools()).tools
            called = await mcp.call_tool("iris-species", {"x": [IRIS_ROW]})
    return tools, called


@pytest.mark.slow  # Python processes: two peers and p2pnet mcp
@pytest.mark.network
async def test_p2pnet_mcp_on_stdio_with_its_own_peer(
    provider_process: ProviderProcess, env: dict[str, str], tmp_path: Path
) -> None:
    """Another identity than the running peer's: p2pnet mcp joins the swarm itself."""
    params = mcp_command(
        env, "--identity", str(tmp_path / "agent.key"), "--bootstrap", provider_process.address,
        "--expose", "iris-species",
    )  # fmt: skip
    tools, called = await list_and_call(params, tmp_path / "mcp.err")
    assert [t.name for t in tools] == ["iris-species"]
    assert tools[0].input_schema["properties"]["x"]["items"]["maxItems"] == 4
    assert not called.is_error, text_of(called)
    assert called.structured_content is not None
    assert called.structured_content["label"] == [0]
    assert "MCP on stdio with peer" in (tmp_path / "mcp.err").read_text()


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_p2pnet_mcp_bridges_to_the_running_peer_of_its_identity(
    provider_process: ProviderProcess, env: dict[str, str], tmp_path: Path, mode: str
) -> None:
    """The identity of a running peer with its HTTP API: p2pnet mcp forwards to its /mcp
    (no second peer of the identity); without --expose, its tools are the tasks that peer
    knows, its own iris-species among them."""
    tools, called = await list_and_call(mcp_command(env), tmp_path / "mcp.err", mode)
    stderr = (tmp_path / "mcp.err").read_text()
    assert f"MCP on stdio through the running peer's API at {provider_process.api}" in stderr
    assert [t.name for t in tools] == ["iris-species"]
    assert not called.is_error, text_of(called)
    assert called.structured_content is not None
    assert called.structured_content["label"] == [0]
    assert called.meta is not None and called.meta[META_PEER] in provider_process.address


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("bridged", [False, True])
def test_p2pnet_mcp_answers_every_request_before_it_exits(
    provider_process: ProviderProcess, env: dict[str, str], tmp_path: Path, bridged: bool
) -> None:
    """A client that writes its requests and closes stdin at once gets every answer, in
    its own peer's mode and bridged, and the command then exits with status 0. A line
    over the size limit before them is skipped."""
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "test", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "iris-species", "arguments": {"x": [[6.7, 3.0, 5.2, 2.3]]}}},
    ]  # fmt: skip
    own = [] if bridged else ["--identity", str(tmp_path / "agent.key")]
    done = subprocess.run(
        [sys.executable, "-m", "p2pnet.cli", "mcp", *own,
         "--bootstrap", provider_process.address, "--expose", "iris-species"],
        input="x" * (STDIO_MAX_LINE + 1) + "\n" + "".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True, text=True, env=env, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers = {a["id"]: a for a in map(json.loads, done.stdout.splitlines())}
    assert sorted(answers) == [1, 2, 3], done.stdout
    assert [t["name"] for t in answers[2]["result"]["tools"]] == ["iris-species"]
    assert answers[3]["result"]["structuredContent"] == {
        "label": [2],
        "probabilities": answers[3]["result"]["structuredContent"]["probabilities"],
    }
    assert ("through the running peer's API" in done.stderr) is bridged
    assert ("the swarm options are not used" in done.stderr) is bridged
    assert f"stdin: a line over {STDIO_MAX_LINE} bytes, skipped" in done.stderr


def test_tools_are_the_known_tasks_with_the_first_record_s_schema(
    models: dict[str, Path],
) -> None:
    info = inspect_model(models["iris"])
    own = CapabilityRecord(
        model_id=info.model_id, peer_id=generate_identity().peer_id, schema=info.schema,
        tasks=("iris-species",), name=info.name, version="1", runtime="onnxruntime",
        addrs=(), seq=1, expires_at=2_000_000_000,
    )  # fmt: skip
    wider = ModelSchema(info.schema.inputs, info.schema.outputs[:1])
    other = dataclasses.replace(
        own, peer_id=generate_identity().peer_id, schema=wider, tasks=("flowers", "iris-species")
    )
    card = GenerationCard(2048, (2,), "<u>{content}</u>", "<a>", "sha256:" + "0" * 64)
    chat = dataclasses.replace(own, tasks=("chat",), generation=card)

    tools = task_tools([own, other, chat])  # a generative model is no tool by itself
    assert [(t.name, t.providers, t.outputs_agree) for t in tools] == [
        ("flowers", 1, True),
        ("iris-species", 2, False),  # two models, other outputs: no output schema
    ]
    assert tools[1].record is own and tools[0].record is other
    assert "2 known provider(s)." in tool_description(tools[1])
    assert "its other tasks: iris-species." in tool_description(tools[0])

    exposed = task_tools([own, other, chat], ("chat", "nobody-offers-this"))
    assert [t.record for t in exposed] == [chat, None]
    assert '{"dtype", "shape", "data"}' in tool_description(exposed[1])
    assert input_schema(None)["additionalProperties"]["required"] == ["data"]
    untyped = tensors_from_arguments(None, {"x": {"shape": [1, 2], "data": [1, 2]}})
    assert untyped["x"].shape == (1, 2) and untyped["x"].dtype == np.float32


async def test_outputs_unlike_the_listed_ones_are_a_tool_error(models: dict[str, Path]) -> None:
    """A provider found at call time whose model declares other outputs than the tool's
    output schema: its outputs come back as text in a tool error, not as structured
    content that the client would find does not fit."""
    info = inspect_model(models["iris"])
    listed = CapabilityRecord(
        model_id=info.model_id, peer_id=generate_identity().peer_id, schema=info.schema,
        tasks=("iris-species",), name=info.name, version="1", runtime="onnxruntime",
        addrs=(), seq=1, expires_at=2_000_000_000,
    )  # fmt: skip
    answered = dataclasses.replace(
        listed,
        peer_id=generate_identity().peer_id,
        schema=ModelSchema(info.schema.inputs, (TensorSpec("score", "float32", (None,)),)),
    )

    class Provider:
        """What the gateway asks of its peer: the records it knows, and the call."""

        def known_records(self) -> list[CapabilityRecord]:
            return [listed]

        async def call_with_offer(self, inputs: Any, **_: Any) -> tuple[Any, dict[str, Any]]:
            assert inputs["x"].dtype == np.float32
            return SimpleNamespace(record=answered), {"score": np.array([0.5], np.float32)}

    gateway = McpGateway(Provider())  # type: ignore[arg-type]
    ctx: Any = SimpleNamespace(request=None)
    params = types.CallToolRequestParams(name="iris-species", arguments={"x": [IRIS_ROW]})
    result = await gateway.call_tool(ctx, params)
    assert result.is_error and result.structured_content is None
    assert result.meta is not None and result.meta[META_CODE] == "bad_output"
    assert result.meta[META_PEER] == answered.peer_id
    assert text_of(result).endswith('its outputs:{"score": [0.5]}')
