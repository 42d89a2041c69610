"""The local HTTP API of a running peer (p2pnet/gateway/): status, find and call behind
the token, errors as JSON, /metrics in Prometheus text format; and ``p2pnet peer``'s
``--http`` options. The peers are on the in-memory network; the HTTP server listens on
127.0.0.1."""

from __future__ import annotations

import argparse
import functools
import math
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from memory_peers import memory_peer
from prometheus_client.parser import text_string_to_metric_families

from p2pnet.cli.parser import build_parser
from p2pnet.cli.peer import HttpOptions, PeerOptions, http_token, parse_http
from p2pnet.errors import ConfigError, UsageError
from p2pnet.gateway.app import build_app, serve_http
from p2pnet.gateway.settings import default_token_path, running_api, write_token
from p2pnet.net.memory import MemoryNetwork
from p2pnet.peer import Peer
from p2pnet.status import PeerStatus, snapshot, write_status

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IRIS_INPUT = {"x": {"dtype": "float32", "shape": [1, 4], "data": [[5.1, 3.5, 1.4, 0.2]]}}


@asynccontextmanager
async def api(
    models: dict[str, Path], **serve: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Peer, Peer]]:
    """An HTTP client of a caller peer's API (on 127.0.0.1, port 0), the caller, and a
    provider of iris (task iris-species) in the caller's swarm."""
    async with MemoryNetwork() as network, memory_peer(network) as caller:
        provider = memory_peer(network, bootstrap=[caller.addrs[0]])
        provider.serve(models["iris"], tasks=["iris-species"])
        async with provider, trio.open_nursery() as nursery:
            await provider.announce()
            url = await nursery.start(serve_http, caller, "127.0.0.1", 0, TOKEN)
            assert url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=url, timeout=20) as client:
                yield client, caller, provider
            nursery.cancel_scope.cancel()


@pytest.mark.network
async def test_status_find_and_call_with_the_token(models: dict[str, Path]) -> None:
    async with api(models) as (client, caller, provider):
        status = await client.get("/api/status", headers=AUTH)
        assert status.status_code == 200
        body = status.json()
        assert body["peer_id"] == caller.peer_id
        assert body["http"] == str(client.base_url).rstrip("/")
        assert caller.status().http == body["http"]
        assert PeerStatus.from_dict(body).http == body["http"]  # the status file's reader

        found = await client.post("/api/find", headers=AUTH, json={"task": "iris-species"})
        assert found.status_code == 200, found.text
        offers = found.json()["offers"]
        assert [o["peer_id"] for o in offers] == [provider.peer_id]
        assert offers[0]["tasks"] == ["iris-species"]

        called = await client.post(
            "/api/call", headers=AUTH, json={"task": "iris-species", "inputs": IRIS_INPUT}
        )
        assert called.status_code == 200, called.text
        reply = called.json()
        assert reply["peer_id"] == provider.peer_id
        label = reply["outputs"]["label"]
        assert label["dtype"] == "int64" and label["shape"] == [1] and label["data"] == [0]

        # The same input as a flat list with a shape, by model ID.
        model_id = offers[0]["model_id"]
        flat = {"x": {"shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}}
        again = await client.post(
            "/api/call", headers=AUTH, json={"model": model_id, "inputs": flat}
        )
        assert again.json()["outputs"]["label"]["data"] == [0]
    assert caller.http_url is None  # cleared when the server stops


@pytest.mark.network
async def test_requests_without_the_token_are_refused(models: dict[str, Path]) -> None:
    async with api(models) as (client, _, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path in (
                ("GET", "/api/status"),
                ("POST", "/api/find"),
                ("POST", "/api/call"),
            ):
                reply = await client.request(
                    method, path, headers=headers, json={"task": "iris-species"}
                )
                assert reply.status_code == 401, (method, path, headers)
                assert reply.json()["code"] == "unauthorized"


@pytest.mark.network
async def test_every_route_but_the_open_ones_takes_the_token(models: dict[str, Path]) -> None:
    """The Open Inference Protocol routes are served by the peer's app behind the same
    token; health, server metadata and /metrics are open, as probes and scrapers expect."""
    async with api(models) as (client, _, _):
        for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        infer = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                             "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
        for path, method in (
            ("/v2/models/iris-species", "GET"),
            ("/v2/models/iris-species/ready", "GET"),
            ("/v2/models/iris-species/infer", "POST"),
            ("/nothing", "GET"),
        ):
            refused = await client.request(method, path, json=infer)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["code"] == "unauthorized"
        answered = await client.post("/v2/models/iris-species/infer", headers=AUTH, json=infer)
        assert answered.status_code == 200
        assert answered.json()["outputs"][0]["name"] == "label"


@pytest.mark.network
async def test_a_loopback_api_answers_loopback_host_names_only(models: dict[str, Path]) -> None:
    """A page whose DNS name points at 127.0.0.1 (DNS rebinding) is refused, with or
    without the token; the loopback names are answered."""
    async with api(models) as (client, _, _):
        for host in ("attacker.example", "attacker.example:8739", "127.0.0.1.nip.io"):
            reply = await client.get("/api/status", headers={**AUTH, "Host": host})
            assert reply.status_code == 403, host
            assert reply.json()["code"] == "forbidden_host"
            assert (await client.get("/metrics", headers={"Host": host})).status_code == 403
        for host in ("localhost:1", "127.0.0.1", "[::1]:8739", "LOCALHOST"):
            reply = await client.get("/api/status", headers={**AUTH, "Host": host})
            assert reply.status_code == 200, host


@pytest.mark.network
async def test_bad_requests_get_precise_json_errors(models: dict[str, Path]) -> None:
    async with api(models) as (client, caller, _):
        malformed = await client.post(
            "/api/call", headers={**AUTH, "Content-Type": "application/json"}, content=b'{"task": '
        )
        assert malformed.status_code == 400
        assert malformed.json() == {
            "error": "malformed JSON: Expecting value at line 1 column 10",
            "code": "usage",
        }

        big = b'{"task": "iris-species", "pad": "' + b"x" * (17 * 1024 * 1024) + b'"}'
        oversized = await client.post("/api/call", headers=AUTH, content=big)
        assert oversized.status_code == 413
        assert oversized.json()["code"] == "payload_too_large"

        unknown = await client.get("/api/nothing", headers=AUTH)
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "GET /api/nothing: Not Found", "code": "not_found"}

        wrong_method = await client.get("/api/call", headers=AUTH)
        assert wrong_method.status_code == 405
        assert wrong_method.json() == {
            "error": "GET /api/call: Method Not Allowed",
            "code": "http_error",
        }

        both = await client.post("/api/find", headers=AUTH, json={"task": "a", "model": "b"})
        assert (both.status_code, both.json()["error"]) == (
            400,
            "give exactly one of task and model",
        )

        bad_dtype = {"x": {"dtype": "complex64", "data": [1]}}
        wrong = await client.post(
            "/api/call", headers=AUTH, json={"task": "iris-species", "inputs": bad_dtype}
        )
        assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_input"
        assert "unknown dtype 'complex64'" in wrong.json()["error"]

        nobody = await client.post(
            "/api/call",
            headers=AUTH,
            json={"task": "no-such-task", "inputs": IRIS_INPUT, "timeout": 2},
        )
        assert nobody.status_code == 404 and nobody.json()["code"] == "unknown_model"

        # The peer keeps serving.
        assert (await client.get("/api/status", headers=AUTH)).status_code == 200
        assert caller.status().peer_id == caller.peer_id


def metrics_of(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> labels -> value of a Prometheus text exposition."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


@pytest.mark.network
async def test_metrics_show_the_call_just_served(models: dict[str, Path]) -> None:
    async with api(models) as (client, _, provider), trio.open_nursery() as nursery:
        # The provider's own API: its metrics count the calls it served.
        url = await nursery.start(serve_http, provider, "127.0.0.1", 0, "other-token")
        (iris,) = provider.models
        ok = (("code", ""), ("model", iris), ("outcome", "ok"))
        async with httpx.AsyncClient(base_url=url) as provider_client:
            before = metrics_of((await provider_client.get("/metrics")).text)
            assert before["p2pnet_calls_served_total"] == {ok: 0.0}
            called = await client.post(
                "/api/call", headers=AUTH, json={"task": "iris-species", "inputs": IRIS_INPUT}
            )
            assert called.status_code == 200
            scraped = await provider_client.get("/metrics")  # no token needed
        assert scraped.headers["content-type"].startswith("text/plain; version=")
        after = metrics_of(scraped.text)
        assert after["p2pnet_calls_served_total"] == {ok: 1.0}
        assert after["p2pnet_call_served_seconds_count"] == {(("model", iris),): 1.0}
        assert after["p2pnet_models_served"] == {(): 1.0}
        assert after["p2pnet_routing_table_peers"] == {(): float(provider.status().routing_table)}
        assert after["p2pnet_connections"][(("path", "direct"),)] >= 1
        assert "p2pnet_dht_network_size" in after
        nursery.cancel_scope.cancel()
        caller_metrics = metrics_of((await client.get("/metrics")).text)
        assert caller_metrics["p2pnet_models_served"] == {(): 0.0}
        # The caller's metrics count the call it made, and the time it took.
        assert caller_metrics["p2pnet_calls_made_total"] == {ok: 1.0}
        assert caller_metrics["p2pnet_call_made_seconds_count"] == {(("model", iris),): 1.0}
        assert 0 < caller_metrics["p2pnet_call_made_seconds_sum"][(("model", iris),)] < 20
        assert "p2pnet_calls_made_total" not in metrics_of(scraped.text)


@pytest.mark.network
async def test_a_taken_port_is_an_os_error_that_start_raises() -> None:
    # ``p2pnet peer`` falls back to a free port on this error when --http is the default.
    async with MemoryNetwork() as network, memory_peer(network) as peer:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, peer, "127.0.0.1", 0, TOKEN)
            port = int(url.rsplit(":", 1)[1])
            with pytest.raises(OSError):
                await nursery.start(serve_http, peer, "127.0.0.1", port, TOKEN)
            assert peer.http_url == url
            nursery.cancel_scope.cancel()


@pytest.mark.network
async def test_a_client_that_stalls_is_disconnected_and_others_are_served() -> None:
    async with MemoryNetwork() as network, memory_peer(network) as peer:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                functools.partial(serve_http, peer, "127.0.0.1", 0, TOKEN, idle_timeout=1.0)
            )
            port = int(url.rsplit(":", 1)[1])
            stalled = await trio.open_tcp_stream("127.0.0.1", port)
            await stalled.send_all(b"POST /api/call HTTP/1.1\r\nHost: x\r\n")  # and no more
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/api/status", headers=AUTH)).status_code == 200
            with trio.fail_after(10):
                while await stalled.receive_some(65536):  # a 408 reply may come first
                    pass
            await stalled.aclose()
            nursery.cancel_scope.cancel()


async def test_build_app_needs_a_token() -> None:
    async with MemoryNetwork() as network, memory_peer(network) as peer:
        with pytest.raises(ValueError, match="token"):
            build_app(peer, "")


def peer_options(*argv: str) -> PeerOptions:
    args: argparse.Namespace = build_parser().parse_args(["peer", *argv])
    options: PeerOptions = args.handler.options(args)
    return options


def test_http_defaults_to_loopback_and_can_be_turned_off(tmp_path: Path) -> None:
    assert peer_options().http == HttpOptions("127.0.0.1", 8739, default=True)
    assert peer_options("--http", "off").http is None
    assert peer_options("--http", "127.0.0.1:0").http == HttpOptions("127.0.0.1", 0)
    assert peer_options("--http", "[::1]:9000").http == HttpOptions("::1", 9000)
    assert peer_options("--http", "localhost:9000").http == HttpOptions("localhost", 9000)
    for bad in ("8080", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:http"):
        with pytest.raises(UsageError, match="expected HOST:PORT"):
            peer_options("--http", bad)


def test_http_beyond_loopback_needs_remote_and_a_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    for argv in (
        ["--http", "0.0.0.0:8080"],
        ["--http", "0.0.0.0:8080", "--http-remote"],
        ["--http", "0.0.0.0:8080", "--http-token-file", str(token_file)],
        ["--http", "192.168.1.5:8080"],
    ):
        with pytest.raises(UsageError, match="needs --http-remote and --http-token-file"):
            peer_options(*argv)
    remote = peer_options(
        "--http", "0.0.0.0:8080", "--http-remote", "--http-token-file", str(token_file)
    )
    assert remote.http == HttpOptions("0.0.0.0", 8080, token_file=token_file)
    assert parse_http("[::]:1", remote=True, token_file=token_file) == HttpOptions(
        "::", 1, token_file=token_file
    )


def test_token_files_are_written_for_the_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    token, path = http_token(HttpOptions("127.0.0.1", 0, default=True), "12D3KooWPeer")
    assert (
        path
        == default_token_path("12D3KooWPeer")
        == tmp_path / "config/p2pnet/http/12D3KooWPeer.token"
    )
    assert path.read_text() == token + "\n" and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again, _ = http_token(HttpOptions("127.0.0.1", 0, default=True), "12D3KooWPeer")
    assert again != token  # a new one at every start

    # A given token file: kept when it holds a token, created when it does not.
    given = tmp_path / "mine.token"
    created, where = http_token(HttpOptions("0.0.0.0", 1, token_file=given), "p")
    assert where == given and stat.S_IMODE(given.stat().st_mode) == 0o600
    assert http_token(HttpOptions("0.0.0.0", 1, token_file=given), "p") == (created, given)
    os.chmod(given, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        http_token(HttpOptions("0.0.0.0", 1, token_file=given), "p")
    write_token(given, "replaced")  # an existing file's mode is reset
    assert stat.S_IMODE(given.stat().st_mode) == 0o600 and given.read_text() == "replaced\n"


@pytest.mark.network
async def test_the_running_api_of_an_identity_is_found_by_its_status_file(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    statuses = tmp_path / "run"
    async with api(models) as (_client, caller, _):
        assert running_api(caller.peer_id, statuses=statuses) is None  # no status file
        write_status(snapshot(caller), statuses / f"peer-{os.getpid()}.json")
        assert running_api(caller.peer_id, statuses=statuses) is None  # no token file
        token_path = default_token_path(caller.peer_id)
        write_token(token_path, TOKEN)
        found = running_api(caller.peer_id, statuses=statuses)
        assert found is not None and (found.url, found.token) == (caller.http_url, TOKEN)
        assert found.pid == os.getpid()
        assert running_api("12D3KooWSomeoneElse", statuses=statuses) is None
        token_path.chmod(0o644)
        with pytest.raises(ConfigError, match="readable by others"):
            running_api(caller.peer_id, statuses=statuses)


@pytest.mark.network
async def test_non_finite_outputs_come_back_as_python_json_writes_them(
    models: dict[str, Path],
) -> None:
    """NaN and infinities in a model's outputs are a reply, not a server error: written as
    ``p2pnet call --json`` writes them (NaN, Infinity), which Python's json reads back."""
    async with MemoryNetwork() as network, memory_peer(network) as caller:
        provider = memory_peer(network, bootstrap=[caller.addrs[0]])
        provider.serve(models["identity"], tasks=["identity"])
        async with provider, trio.open_nursery() as nursery:
            await provider.announce()
            url = await nursery.start(serve_http, caller, "127.0.0.1", 0, TOKEN)
            async with httpx.AsyncClient(base_url=url, timeout=20) as client:
                x = b'{"dtype": "float32", "data": [NaN, -Infinity, 1.5]}'
                body = b'{"task": "identity", "inputs": {"x": ' + x + b"}}"
                reply = await client.post("/api/call", headers=AUTH, content=body)
                assert reply.status_code == 200
                assert b'"data":[NaN,-Infinity,1.5]' in reply.content
                data = reply.json()["outputs"]["y"]["data"]
                assert math.isnan(data[0]) and data[1:] == [-math.inf, 1.5]
            nursery.cancel_scope.cancel()
