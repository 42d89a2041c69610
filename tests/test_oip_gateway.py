"""The Open Inference Protocol v2 REST endpoints over HTTP on 127.0.0.1, in front of a
gateway peer of a memory-network swarm: metadata, JSON and binary inference by task and
by model ID, and every error."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from memory_peers import peer_maker
from starlette.applications import Starlette

from p2pnet import Peer
from p2pnet.core.oip import OipLimits, decode_infer_reply, encode_infer_request
from p2pnet.errors import (
    ConnectionLostError,
    CreditExceededError,
    DeadlineExceededError,
    InvalidInputError,
    InvalidModelIdError,
    ModelExecutionError,
    OutputSchemaError,
    P2PNetError,
    PayloadTooLargeError,
    PeerBusyError,
    PeerUnreachableError,
    PermissionDeniedError,
    RemoteProtocolError,
    UnknownModelError,
    UnknownSessionError,
)
from p2pnet.gateway.errors import http_status
from p2pnet.gateway.oip import HEADER_LENGTH, PeerBackend, oip_routes

pytestmark = pytest.mark.network  # an HTTP server on 127.0.0.1

IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
TEXTS = ["I love it, works great", "broken on arrival, terrible"]


@dataclass
class Gateway:
    url: str
    server: Peer
    iris_id: str
    sentiment_id: str


async def start_http(nursery: trio.Nursery, app: Starlette) -> str:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    urls: list[str] = await nursery.start(serve, app, config)
    return urls[0]


@pytest.fixture
async def gateway(models: dict[str, Path]) -> AsyncIterator[Gateway]:
    """A bootstrap peer, a provider of iris (iris-species) and sentiment
    (sentiment-analysis), and a gateway peer whose OIP routes are served over HTTP (and a
    second app with a small body limit and a very short timeout at /tight)."""
    async with AsyncExitStack() as stack:
        new_peer = await peer_maker(stack, "memory", seed=5)
        boot = await stack.enter_async_context(new_peer())
        server = await stack.enter_async_context(new_peer(bootstrap=[boot.addrs[0]]))
        iris = server.serve(models["iris"], tasks=["iris-species"])
        sentiment = server.serve(models["sentiment"], tasks=["sentiment-analysis"])
        server.serve(models["reshape3"], tasks=["reshape3"])
        assert await server.announce() > 0
        peer = await stack.enter_async_context(new_peer(bootstrap=[boot.addrs[0]]))
        nursery = await stack.enter_async_context(trio.open_nursery())
        backend = PeerBackend(peer)
        url = await start_http(nursery, Starlette(routes=oip_routes(backend)))
        yield Gateway(url, server, iris.model_id, sentiment.model_id)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def http(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        yield client


def error_of(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    message: str = reply.json()["error"]
    return message


async def test_health_and_server_metadata(http: httpx.AsyncClient) -> None:
    for path, body in (("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True})):
        reply = await http.get(path)
        assert reply.status_code == 200 and reply.json() == body
        assert reply.headers["content-type"] == "application/json"
    meta = (await http.get("/v2")).json()
    assert meta["name"] == "p2pnet" and "binary_tensor_data" in meta["extensions"]
    assert isinstance(meta["version"], str) and meta["version"]


async def test_model_metadata_by_task_model_id_and_version(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    expected = {
        "name": "iris-species",
        "versions": [gateway.iris_id],
        "platform": "p2pnet",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    }
    meta = (await http.get("/v2/models/iris-species")).json()
    assert {k: meta[k] for k in expected} == expected
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "label": "INT64",
        "probabilities": "FP32",
    }
    by_id = (await http.get(f"/v2/models/{gateway.iris_id}")).json()
    assert by_id["name"] == gateway.iris_id and by_id["inputs"] == meta["inputs"]
    versioned = await http.get(f"/v2/models/iris-species/versions/{gateway.iris_id}")
    assert versioned.json()["inputs"] == meta["inputs"]
    ready = await http.get(f"/v2/models/iris-species/versions/{gateway.iris_id}/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    sentiment = (await http.get("/v2/models/sentiment-analysis")).json()
    assert sentiment["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


async def test_unknown_models_and_versions_are_404(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    assert "no-such-task" in error_of(await http.get("/v2/models/no-such-task"), 404)
    error_of(await http.get("/v2/models/no-such-task/ready"), 404)
    # A version that is not a model ID, and a model that exists under another task.
    assert "not a model ID" in error_of(await http.get("/v2/models/iris-species/versions/1"), 404)
    error_of(await http.get(f"/v2/models/iris-species/versions/{gateway.sentiment_id}"), 404)
    error_of(await http.get(f"/v2/models/{gateway.iris_id}/versions/{gateway.sentiment_id}"), 404)
    body = {"id": "q", "inputs": []}
    reply = await http.post("/v2/models/no-such-task/infer", json=body)
    error_of(reply, 404)
    assert reply.json()["id"] == "q"
    reply = await http.post(
        f"/v2/models/iris-species/versions/{gateway.sentiment_id}/infer",
        json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]},
    )
    error_of(reply, 404)


async def test_json_inference_by_task_and_by_model_id(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    local = gateway.server.models[gateway.iris_id].run_sync({"x": IRIS_ROWS})
    request = {
        "id": "req-1",
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": IRIS_ROWS.tolist()}],
    }
    for path in (
        "/v2/models/iris-species/infer",
        f"/v2/models/{gateway.iris_id}/infer",
        f"/v2/models/iris-species/versions/{gateway.iris_id}/infer",
    ):
        reply = await http.post(path, json=request)
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "application/json"
        body = reply.json()
        assert body["id"] == "req-1"
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [2]
        assert outputs["label"]["data"] == local["label"].tolist()
        np.testing.assert_allclose(
            np.array(outputs["probabilities"]["data"], np.float32).reshape(2, 3),
            local["probabilities"],
        )
    assert body["model_name"] == "iris-species" and body["model_version"] == gateway.iris_id


async def test_binary_inference_without_content_type(
    http: httpx.AsyncClient, gateway: Gateway
) -> None:
    body, length = encode_infer_request(
        {"text": np.array(TEXTS, dtype=object)}, id="b", binary=True, binary_output=True
    )
    assert length is not None
    reply = await http.post(
        "/v2/models/sentiment-analysis/infer",
        content=body,
        headers={HEADER_LENGTH: str(length), "content-type": ""},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/octet-stream"
    decoded = decode_infer_reply(reply.content, int(reply.headers[HEADER_LENGTH]))
    assert decoded.id == "b" and decoded.outputs["label"].tolist() == ["positive", "negative"]


async def test_requested_outputs_mix_json_and_binary(http: httpx.AsyncClient) -> None:
    x = IRIS_ROWS[:1]
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    ).encode()
    reply = await http.post(
        "/v2/models/iris-species/infer",
        content=head + x.tobytes(),
        headers={HEADER_LENGTH: str(len(head))},
    )
    assert reply.status_code == 200, reply.text
    length = int(reply.headers[HEADER_LENGTH])
    meta = json.loads(reply.content[:length])
    assert [o["name"] for o in meta["outputs"]] == ["label"]
    assert meta["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert struct.unpack("<q", reply.content[length:]) == (0,)  # setosa


async def test_bad_input_is_400_with_the_reason_and_the_id(http: httpx.AsyncClient) -> None:
    path = "/v2/models/iris-species/infer"
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
            "axis 1",
        ),
        (
            {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]},
            "dtype float64",
        ),
        ({"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2]}, "needs 4"),
        (
            {"name": "y", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            "missing input 'x'",
        ),
    ]
    for entry, reason in cases:
        reply = await http.post(path, json={"id": "e", "inputs": [entry]})
        assert reason in error_of(reply, 400)
        assert reply.json()["id"] == "e"
    assert "does not parse" in error_of(await http.post(path, content=b"{nope"), 400)
    good = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    reply = await http.post(path, json={**good, "outputs": [{"name": "nope"}]})
    assert "'nope' is not an output" in error_of(reply, 400)
    reply = await http.post(path, json=good, headers={HEADER_LENGTH: "ten"})
    assert HEADER_LENGTH in error_of(reply, 400)
    reply = await http.post(path, json=good, headers={HEADER_LENGTH: "5"})
    error_of(reply, 400)
    assert (await http.get("/v2/models/iris-species/infer")).status_code == 405


async def test_limits_are_413(models: dict[str, Path]) -> None:
    """A gateway with a small body and element limit: 413 for a body over it (declared or
    streamed without a length) and for a tensor with too many elements."""
    async with AsyncExitStack() as stack:
        new_peer = await peer_maker(stack, "memory", seed=6)
        peer = await stack.enter_async_context(new_peer())
        nursery = await stack.enter_async_context(trio.open_nursery())
        limits = OipLimits(max_body_bytes=200, max_elements=8)
        url = await start_http(
            nursery, Starlette(routes=oip_routes(PeerBackend(peer), limits=limits))
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            path = "/v2/models/iris-species/infer"
            big = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1] * 100}]}
            assert "200" in error_of(await http.post(path, json=big), 413)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(10):
                    yield b" " * 100

            error_of(await http.post(path, content=chunks()), 413)  # no content-length
            many = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": []}]}
            assert "12 elements" in error_of(await http.post(path, json=many), 413)
        nursery.cancel_scope.cancel()


async def test_a_call_out_of_time_is_504(models: dict[str, Path]) -> None:
    """matmul of a 4000 x 4000 matrix (about a second on 2 cores) takes longer than the
    gateway's 0.6 s, of which finding the provider may take half."""
    async with AsyncExitStack() as stack:
        new_peer = await peer_maker(stack, "memory", seed=7)
        boot = await stack.enter_async_context(new_peer())
        peer = await stack.enter_async_context(new_peer(bootstrap=[boot.addrs[0]]))
        boot.serve(models["matmul"], tasks=["matmul"])
        assert await boot.announce() > 0
        nursery = await stack.enter_async_context(trio.open_nursery())
        url = await start_http(
            nursery, Starlette(routes=oip_routes(PeerBackend(peer), timeout=0.6))
        )
        body, length = encode_infer_request(
            {"a": np.ones((4000, 4000), np.float32)}, id="t", binary=True
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            reply = await http.post(
                "/v2/models/matmul/infer", content=body, headers={HEADER_LENGTH: str(length)}
            )
            error_of(reply, 504)
            assert reply.json()["id"] == "t"
        nursery.cancel_scope.cancel()


async def test_tritonclient_unchanged(gateway: Gateway) -> None:
    """tritonclient's HTTP client (binary tensors, no Content-Type), in a thread."""
    import tritonclient.http as tritonclient_http  # a dev dependency (pyproject.toml)
    from tritonclient.utils import InferenceServerException

    def session() -> dict[str, Any]:
        client = tritonclient_http.InferenceServerClient(gateway.url.removeprefix("http://"))
        try:
            found: dict[str, Any] = {
                "live": client.is_server_live(),
                "ready": client.is_server_ready(),
                "model_ready": client.is_model_ready("iris-species"),
                "unknown_ready": client.is_model_ready("no-such-task"),
                "server": client.get_server_metadata(),
                "meta": client.get_model_metadata("sentiment-analysis"),
            }
            x = tritonclient_http.InferInput("x", [2, 4], "FP32")
            x.set_data_from_numpy(IRIS_ROWS)
            result = client.infer("iris-species", [x], request_id="tc")
            found["label"] = result.as_numpy("label")
            found["id"] = result.get_response()["id"]
            text = tritonclient_http.InferInput("text", [2], "BYTES")
            text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
            wanted = [tritonclient_http.InferRequestedOutput("label", binary_data=False)]
            found["sentiment"] = client.infer(
                "sentiment-analysis", [text], outputs=wanted
            ).as_numpy("label")
            bad = tritonclient_http.InferInput("x", [1, 3], "FP32")
            bad.set_data_from_numpy(np.ones((1, 3), np.float32))
            try:
                client.infer("iris-species", [bad])
            except InferenceServerException as exc:
                found["error"] = (exc.status(), exc.message())
            return found
        finally:
            client.close()

    found = await trio.to_thread.run_sync(session)
    assert found["live"] and found["ready"] and found["model_ready"]
    assert not found["unknown_ready"]
    assert "binary_tensor_data" in found["server"]["extensions"]
    assert found["meta"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    local = gateway.server.models[gateway.iris_id].run_sync({"x": IRIS_ROWS})
    assert found["label"].tolist() == local["label"].tolist() and found["id"] == "tc"
    assert [v.decode() if isinstance(v, bytes) else v for v in found["sentiment"]] == [
        "positive",
        "negative",
    ]
    status, message = found["error"]
    assert "400" in str(status) and "axis 1" in message


async def test_a_model_that_fails_is_502(http: httpx.AsyncClient) -> None:
    reply = await http.post(
        "/v2/models/reshape3/infer",
        json={
            "id": "f",
            "inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [0] * 4}],
        },
    )
    assert "failed" in error_of(reply, 502) and reply.json()["id"] == "f"
    ok = await http.post(
        "/v2/models/reshape3/infer",
        json={"inputs": [{"name": "x", "shape": [6], "datatype": "FP32", "data": [0] * 6}]},
    )
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [3, 2]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInputError("x"), 400),
        (InvalidModelIdError("x"), 400),
        (PermissionDeniedError("x"), 403),
        (UnknownModelError("x"), 404),
        (UnknownSessionError("x"), 404),
        (PayloadTooLargeError("x"), 413),
        (ModelExecutionError("x"), 502),
        (OutputSchemaError("x"), 502),
        (RemoteProtocolError("x"), 502),
        (PeerBusyError("x"), 503),
        (CreditExceededError("x"), 503),
        (PeerUnreachableError("x"), 503),
        (ConnectionLostError("x"), 503),
        (DeadlineExceededError("x"), 504),
    ],
)
def test_http_status_of_every_kind_of_error(error: P2PNetError, status: int) -> None:
    assert http_status(error) == status
