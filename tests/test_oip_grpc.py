"""The Open Inference Protocol v2 over gRPC on 127.0.0.1 (p2pnet.gateway.oip_grpc), in
front of a gateway peer of a memory-network swarm, called with tritonclient's gRPC client
unchanged (and the raw stub for typed contents); the ``p2pnet peer --grpc`` options."""

from __future__ import annotations

import argparse
import functools
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
import pytest
import trio
import tritonclient.grpc as triton  # type: ignore[import-untyped]
from memory_peers import memory_peer, peer_maker
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from p2pnet.cli.parser import build_parser
from p2pnet.cli.peer import GrpcOptions, PeerOptions, parse_grpc
from p2pnet.core.oip import OipLimits
from p2pnet.errors import UsageError
from p2pnet.gateway.oip_grpc import GRPC_STATUS, serve_grpc
from p2pnet.net.memory import MemoryNetwork

pytestmark = pytest.mark.network  # a gRPC server on 127.0.0.1

TOKEN = "grpc-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
TEXTS = ["I love it, works great", "broken on arrival, terrible"]
# Small limits, so that oversized requests stay small.
LIMITS = OipLimits(max_body_bytes=1 << 20, max_elements=1 << 16)


@dataclass(frozen=True)
class Served:
    address: str
    iris_id: str
    sentiment_id: str
    iris_local: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def served(models: dict[str, Path]) -> Iterator[Served]:
    """A bootstrap peer, a provider of iris (iris-species), sentiment
    (sentiment-analysis) and identity, and a gateway peer served by ``serve_grpc``: all in
    a trio loop of their own thread, for the module's tests (plain functions, as
    tritonclient's gRPC client blocks)."""
    started: queue.Queue[Served | BaseException] = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        async with AsyncExitStack() as stack:
            new_peer = await peer_maker(stack, "memory", seed=11)
            boot = await stack.enter_async_context(new_peer())
            server = await stack.enter_async_context(new_peer(bootstrap=[boot.addrs[0]]))
            iris = server.serve(models["iris"], tasks=["iris-species"])
            sentiment = server.serve(models["sentiment"], tasks=["sentiment-analysis"])
            server.serve(models["identity"], tasks=["identity"])
            assert await server.announce() > 0
            peer = await stack.enter_async_context(new_peer(bootstrap=[boot.addrs[0]]))
            async with trio.open_nursery() as nursery:
                serve = functools.partial(serve_grpc, peer, "127.0.0.1", 0, TOKEN, limits=LIMITS)
                address = await nursery.start(serve)
                assert peer.status().grpc == address  # shown by `p2pnet status`
                local = await server.models[iris.model_id].run({"x": IRIS_ROWS})
                started.put(Served(address, iris.model_id, sentiment.model_id, local))
                await trio.to_thread.run_sync(stop.wait)
                nursery.cancel_scope.cancel()
            assert peer.status().grpc is None  # cleared when it stops

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the fixture
            started.put(exc)

    thread = threading.Thread(target=run, name="grpc-swarm")
    thread.start()
    first = started.get(timeout=120)
    if isinstance(first, BaseException):
        raise first
    try:
        yield first
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the swarm did not stop"
        assert started.empty(), started.get()  # no error while stopping


@pytest.fixture
def client(served: Served) -> Iterator[Any]:
    c = triton.InferenceServerClient(served.address)
    yield c
    c.close()


def failure(call: Any) -> tuple[str, str]:
    """(gRPC status name, message) of a tritonclient call that must fail."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()), str(caught.value.message())


def iris_input(rows: np.ndarray = IRIS_ROWS, datatype: str = "FP32") -> Any:
    x = triton.InferInput("x", list(rows.shape), datatype)
    x.set_data_from_numpy(rows)
    return x


def test_health_and_metadata(client: Any, served: Served) -> None:
    # Health and server metadata need no token; the rest does.
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "p2pnet" and server["version"]
    meta = client.get_model_metadata("iris-species", headers=AUTH, as_json=True)
    assert meta["name"] == "iris-species" and meta["versions"] == [served.iris_id]
    assert meta["platform"] == "p2pnet"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "label": ("INT64", ["-1"]),
        "probabilities": ("FP32", ["-1", "3"]),
    }
    by_id = client.get_model_metadata(served.iris_id, headers=AUTH)
    assert by_id.name == served.iris_id and list(by_id.inputs[0].shape) == [-1, 4]
    versioned = client.get_model_metadata("iris-species", served.iris_id, headers=AUTH)
    assert list(versioned.versions) == [served.iris_id]
    text = client.get_model_metadata("sentiment-analysis", headers=AUTH)
    assert [(t.name, t.datatype, list(t.shape)) for t in text.inputs] == [("text", "BYTES", [-1])]
    assert client.is_model_ready("iris-species", headers=AUTH)
    assert client.is_model_ready("iris-species", served.iris_id, headers=AUTH)
    assert not client.is_model_ready("no-such-task", headers=AUTH)


def test_iris_and_text_inference(client: Any, served: Served) -> None:
    result = client.infer("iris-species", [iris_input()], request_id="r1", headers=AUTH)
    assert result.get_response().id == "r1"
    assert result.get_response().model_name == "iris-species"
    assert result.as_numpy("label").tolist() == served.iris_local["label"].tolist()
    np.testing.assert_allclose(result.as_numpy("probabilities"), served.iris_local["probabilities"])
    # Requested outputs: only those, in that order, as raw contents.
    wanted = [triton.InferRequestedOutput("probabilities")]
    by_id = client.infer(served.iris_id, [iris_input()], outputs=wanted, headers=AUTH)
    reply = by_id.get_response()
    assert [o.name for o in reply.outputs] == ["probabilities"]
    assert len(reply.raw_output_contents) == 1 and by_id.as_numpy("label") is None
    assert by_id.as_numpy("probabilities").shape == (2, 3)

    # BYTES: 4-byte little-endian lengths both ways.
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
    labels = client.infer("sentiment-analysis", [text], headers=AUTH).as_numpy("label")
    assert labels.tolist() == [b"positive", b"negative"]


def test_typed_contents_and_version(served: Served) -> None:
    """Inputs as typed ``contents`` (KServe's client sends those), by task and version."""
    with grpc.insecure_channel(served.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(
            model_name="iris-species", model_version=served.iris_id, id="typed"
        )
        x = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
        x.contents.fp32_contents.extend(IRIS_ROWS.ravel().tolist())
        reply = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
        assert reply.id == "typed" and reply.model_version == served.iris_id
        label = reply.outputs[[o.name for o in reply.outputs].index("label")]
        assert label.datatype == "INT64" and list(label.shape) == [2]

        text = service_pb2.ModelInferRequest(model_name="sentiment-analysis")
        entry = text.inputs.add(name="text", datatype="BYTES", shape=[2])
        entry.contents.bytes_contents.extend(t.encode() for t in TEXTS)
        out = stub.ModelInfer(text, metadata=tuple(AUTH.items()))
        raw = out.raw_output_contents[[o.name for o in out.outputs].index("label")]
        assert raw == b"\x08\x00\x00\x00positive\x08\x00\x00\x00negative"

        # Typed contents of another datatype's field are refused, naming both.
        wrong = service_pb2.ModelInferRequest(model_name="iris-species")
        bad = wrong.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        bad.contents.int_contents.extend([1, 2, 3, 4])
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(wrong, metadata=tuple(AUTH.items()))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has int_contents; it takes fp32_contents" in caught.value.details()

        # Streaming inference is not implemented: said so, after the token check.
        for metadata, code in (((), "UNAUTHENTICATED"), (tuple(AUTH.items()), "UNIMPLEMENTED")):
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.ModelStreamInfer(iter([request]), metadata=metadata))
            assert caught.value.code().name == code
        assert "ModelStreamInfer is not implemented" in caught.value.details()


def test_errors_and_the_peer_keeps_serving(client: Any, served: Served) -> None:
    status, message = failure(lambda: client.infer("no-such-task", [iris_input()], headers=AUTH))
    assert status == "StatusCode.NOT_FOUND" and "no-such-task" in message
    status, _ = failure(lambda: client.get_model_metadata("no-such-task", headers=AUTH))
    assert status == "StatusCode.NOT_FOUND"
    # The provider's precise messages: wrong shape, wrong dtype.
    short = np.ones((1, 3), np.float32)
    status, message = failure(
        lambda: client.infer("iris-species", [iris_input(short)], headers=AUTH)
    )
    assert status == "StatusCode.INVALID_ARGUMENT" and "axis 1" in message
    doubles = IRIS_ROWS.astype(np.float64)
    status, message = failure(
        lambda: client.infer("iris-species", [iris_input(doubles, "FP64")], headers=AUTH)
    )
    assert status == "StatusCode.INVALID_ARGUMENT" and "dtype float64" in message
    wanted = [triton.InferRequestedOutput("nope")]
    status, message = failure(
        lambda: client.infer("iris-species", [iris_input()], outputs=wanted, headers=AUTH)
    )
    assert status == "StatusCode.INVALID_ARGUMENT" and "'nope' is not an output" in message
    # No token, a wrong one.
    for headers in (None, {"authorization": "Bearer wrong"}):
        for call in (
            lambda h=headers: client.infer("iris-species", [iris_input()], headers=h),
            lambda h=headers: client.get_model_metadata("iris-species", headers=h),
            lambda h=headers: client.is_model_ready("iris-species", headers=h),
        ):
            status, message = failure(call)
            assert status == "StatusCode.UNAUTHENTICATED" and "Bearer" in message
    # Over the limits: a message over max_body_bytes (grpcio refuses it), a tensor with
    # more elements than max_elements (the codec does).
    big = np.zeros((1, 1 << 19), np.float32)  # 2 MiB
    status, _ = failure(lambda: client.infer("identity", [iris_input(big)], headers=AUTH))
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    many = np.zeros((2, 40000), np.float32)  # 320 kB, 80000 elements
    status, message = failure(lambda: client.infer("identity", [iris_input(many)], headers=AUTH))
    assert status == "StatusCode.RESOURCE_EXHAUSTED" and "80000 elements" in message
    # BYTES that are not UTF-8.
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object))
    status, message = failure(lambda: client.infer("sentiment-analysis", [text], headers=AUTH))
    assert status == "StatusCode.INVALID_ARGUMENT" and "not UTF-8" in message
    # What p2pnet does not implement.
    status, message = failure(lambda: client.get_model_config("iris-species", headers=AUTH))
    assert status == "StatusCode.UNIMPLEMENTED" and "ModelConfig is not implemented" in message
    status, _ = failure(lambda: client.get_inference_statistics(headers=AUTH))
    assert status == "StatusCode.UNIMPLEMENTED"

    result = client.infer("iris-species", [iris_input()], headers=AUTH)
    assert result.as_numpy("label").tolist() == served.iris_local["label"].tolist()


def test_error_statuses_come_from_the_one_table() -> None:
    assert {code: status.name for code, status in GRPC_STATUS.items()} == {
        400: "INVALID_ARGUMENT",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        413: "RESOURCE_EXHAUSTED",
        502: "INTERNAL",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }


async def test_a_taken_port_is_an_error_and_a_cancelled_server_lets_it_go() -> None:
    async with MemoryNetwork() as network, memory_peer(network) as peer:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(OSError, match="cannot listen"):
                await serve_grpc(peer, "127.0.0.1", taken.getsockname()[1], TOKEN)
        with pytest.raises(ValueError, match="token"):
            await serve_grpc(peer, "127.0.0.1", 0, "")
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_grpc, peer, "127.0.0.1", 0, TOKEN)
            nursery.cancel_scope.cancel()
        port = int(address.rsplit(":", 1)[1])
        with socket.socket() as again:  # free again once serve_grpc returned
            again.bind(("127.0.0.1", port))


def peer_options(*argv: str) -> PeerOptions:
    args: argparse.Namespace = build_parser().parse_args(["peer", *argv])
    options: PeerOptions = args.handler.options(args)
    return options


def test_grpc_option(tmp_path: Path) -> None:
    assert peer_options().grpc is None
    assert peer_options("--grpc", "off").grpc is None
    assert peer_options("--grpc", "127.0.0.1:8001").grpc == GrpcOptions("127.0.0.1", 8001)
    assert peer_options("--grpc", "[::1]:0").grpc == GrpcOptions("::1", 0)
    for bad in ("8001", "127.0.0.1:", "127.0.0.1:99999"):
        with pytest.raises(UsageError, match=r"--grpc .*expected HOST:PORT"):
            peer_options("--grpc", bad)
    token_file = tmp_path / "token"
    for argv in (
        ["--grpc", "0.0.0.0:8001"],
        ["--grpc", "0.0.0.0:8001", "--http-remote"],
        ["--grpc", "0.0.0.0:8001", "--http-token-file", str(token_file)],
    ):
        with pytest.raises(UsageError, match="needs --http-remote and --http-token-file"):
            peer_options(*argv)
    remote = peer_options(
        "--grpc", "0.0.0.0:8001", "--http-remote", "--http-token-file", str(token_file)
    )
    assert remote.grpc == GrpcOptions("0.0.0.0", 8001, token_file=token_file)
    assert parse_grpc("[::]:1", remote=True, token_file=token_file) == GrpcOptions(
        "::", 1, token_file=token_file
    )
    # Without the HTTP API too: the token file is written all the same.
    assert peer_options("--http", "off", "--grpc", "127.0.0.1:0").grpc == GrpcOptions(
        "127.0.0.1", 0
    )


@pytest.mark.slow
def test_p2pnet_peer_serves_grpc_without_the_http_api(
    models: dict[str, Path], config_home: Path
) -> None:
    """``p2pnet peer --http off --grpc 127.0.0.1:0``: the address and the token file it
    prints answer tritonclient; Ctrl-C stops it cleanly."""
    env = os.environ | {"XDG_CONFIG_HOME": str(config_home), "COLUMNS": "300"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pnet.cli", "peer", "--listen", "/ip4/127.0.0.1/tcp/0",
         "--serve", str(models["iris"]), "--task", "iris-species",
         "--http", "off", "--grpc", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    watchdog = threading.Timer(60, proc.kill)  # a peer that hangs fails the test
    watchdog.start()
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:  # ends if the peer exits before it is ready
            lines.append(line.strip())
            if line.startswith("ready"):
                break
        found = [m for line in lines if (m := re.match(r"grpc api (\S+) \(token in (.+)\)$", line))]
        assert len(found) == 1, lines
        assert not any(line.startswith("http api") for line in lines)
        address, token_file = found[0].groups()
        token = Path(token_file).read_text().strip()
        client = triton.InferenceServerClient(address)
        try:
            auth = {"authorization": f"Bearer {token}"}
            result = client.infer("iris-species", [iris_input()], headers=auth)
            assert result.as_numpy("label").shape == (2,)
            status, _ = failure(lambda: client.infer("iris-species", [iris_input()]))
            assert status == "StatusCode.UNAUTHENTICATED"
        finally:
            client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
