"""The local HTTP API of a running peer (docs/gateways.md, "Local HTTP API and metrics"):
a starlette app served by hypercorn inside the peer's trio program.

    GET  /             the status page (page/)                       no token
    GET  /api/status   the peer's ``status()``                      token
    GET  /api/calls    the recent calls, for the status page        token
    POST /api/find     offers of a task or model                    token
    POST /api/call     call a task or model with JSON tensors       token
    GET  /metrics      Prometheus text format                       no token
    /v2/...            the Open Inference Protocol v2 (oip.py)      token, but health
    /mcp               the Model Context Protocol (mcp.py)          token

Every route but those of ``auth.OPEN`` takes ``Authorization: Bearer <token>``
(``TokenGuard``); errors are JSON, ``{"error": message, "code": p2pnet wire code}``
(OIP replies: ``{"error": message}``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from p2pnet.errors import (
    P2PNetError,
)
from p2pnet.gateway.auth import LOOPBACK_HOSTS, TokenGuard
from p2pnet.gateway.errors import http_status
from p2pnet.gateway.mcp import McpHttp
from p2pnet.gateway.metrics import peer_registry
from p2pnet.gateway.oip import PeerBackend, oip_routes
from p2pnet.gateway.openai import openai_routes
from p2pnet.gateway.page import MAX_CALLS, calls_reply, page_response
from p2pnet.inputs import tensor_from_json, tensor_to_json

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from p2pnet.peer import Peer

__all__ = ["IDLE_TIMEOUT", "MAX_BODY", "build_app", "serve_http"]

log = logging.getLogger(__name__)

# The largest request body taken, in bytes.
MAX_BODY = 16 * 1024 * 1024
# Seconds a client may send nothing before it is disconnected.
IDLE_TIMEOUT = 30.0

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


class _BadRequest(Exception):
    """A request this API refuses before calling the peer: HTTP status, message, code."""

    def __init__(self, status: int, message: str, code: str = "usage") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


async def _json_body(request: Request, max_body: int) -> dict[str, Any]:
    """The request's body as a JSON object, read up to ``max_body`` bytes.

    Raises:
        _BadRequest: over the limit (413), not JSON or not an object (400).
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body:
        raise _BadRequest(413, f"body of {length} bytes; at most {max_body}", "payload_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise _BadRequest(413, f"body over {max_body} bytes", "payload_too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except UnicodeDecodeError:
        raise _BadRequest(400, "malformed JSON: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _BadRequest(
            400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(body, dict):
        raise _BadRequest(400, f"expected a JSON object, got {type(body).__name__}")
    return body


def _target(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(task, model) of a find or call: exactly one of them, as text.

    Raises:
        _BadRequest: neither or both, or not text.
    """
    task, model = body.get("task"), body.get("model")
    if (task is None) == (model is None):
        raise _BadRequest(400, "give exactly one of task and model")
    if not isinstance(task if task is not None else model, str):
        raise _BadRequest(400, "task and model must be text")
    return task, model


def _number(body: Mapping[str, Any], key: str, default: float, *, whole: bool = False) -> float:
    """A positive number field of the body, or its default.

    Raises:
        _BadRequest: not a positive number (a whole one if ``whole``).
    """
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        kind = "a whole number" if whole else "a number"
        raise _BadRequest(400, f"{key} must be {kind}")
    if value <= 0:
        raise _BadRequest(400, f"{key} must be above 0")
    return float(value)


def build_app(
    peer: Peer,
    token: str,
    *,
    max_body: int = MAX_BODY,
    hosts: Collection[str] | None = LOOPBACK_HOSTS,
) -> Starlette:
    """The local API of ``peer`` as a starlette app (not served: see ``serve_http``).
    Every route but ``auth.OPEN`` takes the token; ``hosts``: the Host header names it
    answers (None: any; see ``TokenGuard``).

    Raises:
        ValueError: an empty token.
    """
    if not token:
        raise ValueError("the HTTP API needs a token")
    registry = peer_registry(peer)
    mcp = McpHttp(peer, max_body=max_body)

    def control(handler: Handler) -> Handler:
        """``handler`` with its refusals and p2pnet errors as JSON (the token is checked
        before: ``TokenGuard``)."""

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except _BadRequest as exc:
                return _error(exc.status, exc.message, exc.code)
            except P2PNetError as exc:
                return _error(http_status(exc), str(exc), exc.code)

        return guarded

    async def status(request: Request) -> Response:
        return JSONResponse(peer.status().to_dict())

    async def calls(request: Request) -> Response:
        limit = request.query_params.get("limit", str(MAX_CALLS))
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_CALLS:
            raise _BadRequest(400, f"limit must be a whole number from 1 to {MAX_CALLS}")
        return JSONResponse(calls_reply(peer, int(limit)))

    async def find(request: Request) -> Response:
        body = await _json_body(request, max_body)
        task, model = _target(body)
        count = int(_number(body, "count", 20, whole=True))
        timeout = _number(body, "timeout", 10.0)
        offers = await peer.find(task=task, model=model, count=count, timeout=timeout)
        return JSONResponse({"offers": [offer.to_dict() for offer in offers]})

    async def call(request: Request) -> Response:
        body = await _json_body(request, max_body)
        task, model = _target(body)
        timeout = _number(body, "timeout", 30.0)
        inputs = body.get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise _BadRequest(400, "inputs must be an object of named tensors", "invalid_input")
        arrays = {name: tensor_from_json(name, value) for name, value in inputs.items()}
        offer, outputs = await peer.call_with_offer(arrays, task=task, model=model, timeout=timeout)
        return JSONResponse(
            {
                "model_id": offer.record.model_id,
                "peer_id": offer.record.peer_id,
                "outputs": {name: tensor_to_json(arr) for name, arr in outputs.items()},
            }
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = "not_found" if exc.status_code == 404 else "http_error"
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code)

    return Starlette(
        routes=[
            Route("/", page_response, methods=["GET"]),
            Route("/api/status", control(status), methods=["GET"]),
            Route("/api/calls", control(calls), methods=["GET"]),
            Route("/api/find", control(find), methods=["POST"]),
            Route("/api/call", control(call), methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            *oip_routes(PeerBackend(peer)),
            *openai_routes(peer),
            Route("/mcp", mcp),  # MCP, Streamable HTTP (gateway/mcp.py)
        ],
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(TokenGuard, token=token, hosts=hosts)],
        lifespan=mcp.lifespan,
    )


async def serve_http(
    peer: Peer,
    host: str,
    port: int,
    token: str,
    *,
    max_body: int = MAX_BODY,
    idle_timeout: float = IDLE_TIMEOUT,
    task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``peer``'s local API on ``host``:``port`` (0: any free port) until cancelled.
    ``await nursery.start(serve_http, ...)`` returns its URL once it listens; the peer's
    status shows it (``PeerStatus.http``) while it serves. A client that sends nothing
    for ``idle_timeout`` seconds (a request part-way, or between requests) is
    disconnected.

    Raises:
        OSError: the address cannot be bound (taken, or not this machine's).
        ValueError: an empty token.
    """
    loopback = _is_loopback(host)
    app = build_app(peer, token, max_body=max_body, hosts=LOOPBACK_HOSTS if loopback else None)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("p2pnet.gateway.hypercorn")
    # Slow clients: hypercorn closes a connection idle this long (docs/gateways.md).
    config.keep_alive_timeout = idle_timeout
    config.read_timeout = math.ceil(idle_timeout)
    config.h11_max_incomplete_size = 64 * 1024

    class Started:
        """What hypercorn reports its bound URLs to: the first one becomes the peer's
        ``http_url`` and the caller's start value."""

        listening = False

        def started(self, urls: list[str]) -> None:
            self.listening = True
            peer.http_url = urls[0]
            log.info("HTTP API on %s", urls[0])
            task_status.started(urls[0])

    started = Started()
    try:
        # starlette's ASGI types are its own; hypercorn checks the app at run time.
        await serve(cast(Any, app), config, task_status=cast(Any, started))
    except BaseExceptionGroup as group:
        # hypercorn raises a bind error inside its nursery's exception group: the caller
        # gets the OSError itself, as the docstring says.
        leaves = _leaves(group)
        if not started.listening and len(leaves) == 1 and isinstance(leaves[0], OSError):
            raise leaves[0] from None
        raise
    finally:
        if started.listening:
            peer.http_url = None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions in ``group`` and its nested groups."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or "localhost") is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
