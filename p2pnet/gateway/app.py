"""The local HTTP API of a running peer (docs/gateway.md, "Local HTTP API and metrics"):
a starlette app served by hypercorn inside the peer's trio program.

    GET    /                          the status page (page/)                    no token
    GET    /api/calls                 the recent calls, for the status page      token
    GET    /api/status                the peer's ``status()``                    token
    POST   /api/find                  offers of a task or model                  token
    POST   /api/call                  call a task or model with JSON tensors     token
    POST   /api/pipeline              run a pipeline spec                        token
    POST   /api/generate              a generative model's reply, NDJSON         token
    POST   /api/chat                  open a chat held by the peer               token
    POST   /api/chat/{id}             the reply to one more message, NDJSON      token
    DELETE /api/chat/{id}             close the chat                             token
    POST   /api/replies/{id}/cancel   ask the provider to stop a reply           token
    GET    /metrics                   Prometheus text format                     no token
    /v2/...                           the Open Inference Protocol v2 (oip.py)    token, but health
    /v1/...                           the OpenAI-style chat API (openai.py)      token
    /mcp                              the Model Context Protocol (mcp.py)        token

Every route but those of ``auth.OPEN`` takes ``Authorization: Bearer <token>``
(``TokenGuard``); errors are JSON, ``{"error": message, "code": p2pnet wire code}``
(OIP replies: ``{"error": message}``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse as _StrictJSONResponse
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from p2pnet.core.generation import GenerationParams, Prompt
from p2pnet.core.pricing import Price, price_from_wire
from p2pnet.discovery.generation import Generation
from p2pnet.discovery.service import Offer
from p2pnet.errors import (
    DeadlineExceededError,
    P2PNetError,
)
from p2pnet.gateway.auth import LOOPBACK_HOSTS, TokenGuard
from p2pnet.gateway.chats import CHAT_IDLE_TIMEOUT, MAX_CHATS, ChatTable, Replies
from p2pnet.gateway.errors import http_status
from p2pnet.gateway.events import (
    ReplyTiming,
    chunk_event,
    done_event,
    encode_event,
    error_event,
    provider_event,
    replay_event,
)
from p2pnet.gateway.mcp import McpHttp
from p2pnet.gateway.metrics import peer_registry
from p2pnet.gateway.oip import PeerBackend, oip_routes
from p2pnet.gateway.openai import openai_routes
from p2pnet.gateway.page import MAX_CALLS, calls_reply, page_response
from p2pnet.gateway.settings import is_loopback
from p2pnet.inputs import tensor_from_json, tensor_to_json
from p2pnet.pipeline import Pipeline

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from p2pnet.peer import Peer

__all__ = ["IDLE_TIMEOUT", "MAX_BODY", "NDJSON", "REPLY_HEADER", "build_app", "serve_http"]

log = logging.getLogger(__name__)

# The largest request body taken, in bytes.
MAX_BODY = 16 * 1024 * 1024
# Seconds a client may send nothing before it is disconnected.
IDLE_TIMEOUT = 30.0

# The media type of the streamed replies, and the header that names a reply (for
# POST /api/replies/{id}/cancel).
NDJSON = "application/x-ndjson"
REPLY_HEADER = "P2PNet-Reply"

Handler = Callable[[Request], Awaitable[Response]]


class JSONResponse(_StrictJSONResponse):
    """JSON as ``p2pnet call --json`` writes it: a non-finite float of a model's output
    is ``NaN``, ``Infinity`` or ``-Infinity`` (Python's json; what Python's, and most
    clients', parsers read), not a failed reply (starlette's own refuses them)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


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


def _text(body: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    """A text field of the body (None when absent and not ``required``).

    Raises:
        _BadRequest: not text, or missing when required.
    """
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _BadRequest(400, f"{key} must be text")
    return value


def _max_price(body: Mapping[str, Any]) -> Price | None:
    """``max_price``: {"per_call", "per_mb", "per_cpu_s"} in micro-units, or None.

    Raises:
        _BadRequest: not such a map.
    """
    value = body.get("max_price")
    if value is None:
        return None
    try:
        return price_from_wire(value)
    except ValueError as exc:
        raise _BadRequest(400, f"max_price: {exc}") from None


def _inputs(body: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs``: named JSON tensors, as arrays.

    Raises:
        _BadRequest: not an object of tensors.
        InvalidInputError: a tensor that is not one (tensor_from_json).
    """
    inputs = body.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise _BadRequest(400, "inputs must be an object of named tensors", "invalid_input")
    return {name: tensor_from_json(name, value) for name, value in inputs.items()}


def _params(body: Mapping[str, Any]) -> GenerationParams:
    """``params``: GenerationParams' fields (max_tokens, temperature, top_p, top_k, seed,
    stop), each optional.

    Raises:
        _BadRequest: not an object, or an unknown field.
        InvalidInputError: a value out of range.
    """
    value = body.get("params", {})
    if not isinstance(value, dict):
        raise _BadRequest(400, "params must be an object")
    known = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise _BadRequest(400, f"params: unknown fields {unknown[:5]}; known {sorted(known)}")
    fields = dict(value)
    if "stop" in fields:
        stop = fields["stop"]
        if not isinstance(stop, list) or not all(isinstance(t, str) for t in stop):
            raise _BadRequest(400, "params.stop must be a list of texts")
        fields["stop"] = tuple(stop)
    for key in ("max_tokens", "top_k", "seed"):
        if key in fields and (isinstance(fields[key], bool) or not isinstance(fields[key], int)):
            raise _BadRequest(400, f"params.{key} must be a whole number")
    for key in ("temperature", "top_p"):
        if key in fields and (
            isinstance(fields[key], bool) or not isinstance(fields[key], int | float)
        ):
            raise _BadRequest(400, f"params.{key} must be a number")
    return GenerationParams(**fields)


def _messages(body: Mapping[str, Any]) -> Prompt:
    """``messages``: [[role, text], ...] as a Prompt.

    Raises:
        _BadRequest: not a non-empty list of [role, text] pairs.
        InvalidInputError: a role that is not system, user or assistant.
    """
    value = body.get("messages")
    if (
        not isinstance(value, list)
        or not value
        or not all(
            isinstance(m, list) and len(m) == 2 and all(isinstance(t, str) for t in m)
            for m in value
        )
    ):
        raise _BadRequest(400, "messages must be a non-empty list of [role, text] pairs")
    return Prompt(messages=tuple((role, text) for role, text in value))


class _Streamed(StreamingResponse):
    """A StreamingResponse that calls ``on_exit`` when it is over: sent, failed, or
    cancelled because the client went, also before its body iterator started (whose own
    cleanup then never runs)."""

    def __init__(
        self, content: AsyncIterator[str], on_exit: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_exit = on_exit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_exit()


async def _reply_events(
    generation: Generation, shown: Offer | None, on_end: Callable[[], None]
) -> AsyncIterator[str]:
    """The NDJSON lines of ``generation`` (p2pnet.gateway.events), as ``p2pnet call
    --json`` writes them: the replay and provider (unless it is ``shown``) before the
    first chunk, the chunks, then done; an error event instead of what did not come.
    The generation is dropped when the lines end or the client goes (which cancels the
    iteration); ``on_end`` is called first, before the response's last bytes."""
    try:
        started = False
        try:
            async for chunk in generation:
                if not started:
                    started = True
                    for line in _announce(generation, shown):
                        yield line
                yield encode_event(chunk_event(chunk))
            if not started:
                for line in _announce(generation, shown):
                    yield line
            summary = generation.summary
            assert summary is not None  # the iteration ended with the provider's Done
            timing = ReplyTiming.of(generation, summary, trio.current_time())
            yield encode_event(done_event(summary, timing))
        except P2PNetError as exc:
            yield encode_event(error_event(exc.code, str(exc)))
    finally:
        on_end()
        with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
            await generation.aclose()


def _announce(generation: Generation, shown: Offer | None) -> list[str]:
    """The replay and provider lines of a reply that started (as cli.stream announces)."""
    lines = []
    if generation.replay is not None:
        lines.append(encode_event(replay_event(generation.replay)))
    offer = generation.offer
    if offer is not None and (
        shown is None
        or (offer.record.peer_id, offer.record.model_id)
        != (shown.record.peer_id, shown.record.model_id)
    ):
        lines.append(encode_event(provider_event(offer)))
    return lines


def build_app(
    peer: Peer,
    token: str,
    *,
    max_body: int = MAX_BODY,
    hosts: Collection[str] | None = LOOPBACK_HOSTS,
    max_chats: int = MAX_CHATS,
    chat_idle_timeout: float = CHAT_IDLE_TIMEOUT,
) -> Starlette:
    """The local API of ``peer`` as a starlette app (not served: see ``serve_http``).
    Every route but ``auth.OPEN`` takes the token; ``hosts``: the Host header names it
    answers (None: any; see ``TokenGuard``); ``max_chats`` and ``chat_idle_timeout``:
    the chats it holds (``ChatTable``).

    Raises:
        ValueError: an empty token.
    """
    if not token:
        raise ValueError("the HTTP API needs a token")
    registry = peer_registry(peer)
    mcp = McpHttp(peer, max_body=max_body)
    chats = ChatTable(max_chats=max_chats, idle_timeout=chat_idle_timeout)
    replies = Replies()

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
        search = await peer.finder.search(
            task=task, model=model, count=count, timeout=timeout, max_price=_max_price(body)
        )
        return JSONResponse(
            {
                "offers": [offer.to_dict() for offer in search.offers],
                "unanswered": list(search.unanswered),
            }
        )

    async def call(request: Request) -> Response:
        body = await _json_body(request, max_body)
        address = _text(body, "peer")
        timeout = _number(body, "timeout", 30.0)
        if address is not None:
            model_id = _text(body, "model", required=True)
            assert model_id is not None
            if body.get("task") is not None or body.get("max_price") is not None:
                raise _BadRequest(400, "a call to a given peer takes model, not task or max_price")
            outputs = await peer.invoke(address, model_id, _inputs(body), timeout=timeout)
            reply: dict[str, Any] = {"model_id": model_id, "peer_id": None, "name": None}
        else:
            task, model = _target(body)
            offer, outputs = await peer.call_with_offer(
                _inputs(body),
                task=task,
                model=model,
                timeout=timeout,
                max_price=_max_price(body),
            )
            record = offer.record
            reply = {"model_id": record.model_id, "peer_id": record.peer_id, "name": record.name}
        reply["outputs"] = {name: tensor_to_json(arr) for name, arr in outputs.items()}
        return JSONResponse(reply)

    async def pipeline(request: Request) -> Response:
        body = await _json_body(request, max_body)
        spec = body.get("spec")
        if isinstance(spec, str):
            run = Pipeline.from_text(spec, where=_text(body, "name") or "spec")
        elif isinstance(spec, dict):
            run = Pipeline.from_dict(spec)
        else:
            raise _BadRequest(400, "spec must be the spec's YAML/JSON text or an object")
        mode = body.get("mode", "orchestrated")
        if mode not in ("orchestrated", "forwarded"):
            raise _BadRequest(400, "mode must be orchestrated or forwarded")
        timeout = _number(body, "timeout", 30.0)
        inputs = _inputs(body)
        run.check_inputs(inputs)
        try:
            with trio.fail_after(timeout):
                result = await run.run(peer, inputs, mode=mode, max_price=_max_price(body))
        except trio.TooSlowError:
            raise DeadlineExceededError(
                f"the pipeline did not finish within {timeout:g} s"
            ) from None
        reply = result.to_dict()
        reply["tensors"] = {name: tensor_to_json(arr) for name, arr in result.outputs.items()}
        return JSONResponse(reply)

    def streamed(
        generation: Generation,
        shown: Offer | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> Response:
        reply_id = replies.add(generation)
        over = False

        def ended() -> None:
            nonlocal over
            if not over:
                over = True
                replies.remove(reply_id)
                if on_end is not None:
                    on_end()

        return _Streamed(
            _reply_events(generation, shown, ended),
            ended,
            media_type=NDJSON,
            headers={REPLY_HEADER: reply_id, "Cache-Control": "no-store"},
        )

    async def generate(request: Request) -> Response:
        body = await _json_body(request, max_body)
        address = _text(body, "peer")
        if address is not None:
            task, model = None, _text(body, "model", required=True)
        else:
            task, model = _target(body)
        prompt, params = _messages(body), _params(body)
        timeout = _number(body, "timeout", 60.0)
        generation = peer.generate(
            prompt, task=task, model=model, peer=address, params=params, timeout=timeout
        )
        return streamed(generation)

    async def chat_open(request: Request) -> Response:
        body = await _json_body(request, max_body)
        task, model = _target(body)
        system = _text(body, "system")
        timeout = _number(body, "timeout", 60.0)
        history = _messages(body).messages if body.get("messages") else ()
        session = peer.chat(task=task, model=model, system=system, timeout=timeout)
        session.messages = list(history or ())
        chat_id = await chats.open(session)
        return JSONResponse({"id": chat_id}, status_code=201)

    async def chat_send(request: Request) -> Response:
        chat = await chats.get(request.path_params["chat_id"])
        body = await _json_body(request, max_body)
        text = _text(body, "text", required=True)
        assert text is not None
        params = _params(body)
        if chat.busy:
            raise _BadRequest(409, "this chat is replying to another message; wait for its end")
        chat.busy = True
        generation = chat.session.send(text, params)

        def ended() -> None:
            chat.busy = False
            chat.last_used = trio.current_time()
            chat.shown = generation.offer or chat.shown

        return streamed(generation, chat.shown, on_end=ended)

    async def chat_close(request: Request) -> Response:
        await chats.close(request.path_params["chat_id"])
        return JSONResponse({"closed": True})

    async def cancel(request: Request) -> Response:
        return JSONResponse({"cancelled": await replies.cancel(request.path_params["reply_id"])})

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
            Route("/api/pipeline", control(pipeline), methods=["POST"]),
            Route("/api/generate", control(generate), methods=["POST"]),
            Route("/api/chat", control(chat_open), methods=["POST"]),
            Route("/api/chat/{chat_id}", control(chat_send), methods=["POST"]),
            Route("/api/chat/{chat_id}", control(chat_close), methods=["DELETE"]),
            Route("/api/replies/{reply_id}/cancel", control(cancel), methods=["POST"]),
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
    loopback = is_loopback(host)
    app = build_app(peer, token, max_body=max_body, hosts=LOOPBACK_HOSTS if loopback else None)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("p2pnet.gateway.hypercorn")
    # Slow clients: hypercorn closes a connection idle this long (docs/gateway.md).
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
