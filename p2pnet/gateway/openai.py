"""An OpenAI-style chat API over the generative models of the swarm (docs/gateway.md,
"OpenAI-style chat"), as starlette routes for the peer's HTTP app:

    GET  /v1/models                the generative models this peer knows, by task and ID
    GET  /v1/models/{id}           one of them
    POST /v1/chat/completions      a reply, whole or streamed as server-sent events

A model name is a task tag ("chat") or a model ID (bafkrei...): a generation goes
through ``Peer.generate`` (discovery, failover before the first token, access lists,
credit) exactly as ``p2pnet chat``. ``parse_chat_request`` checks a request with no I/O;
errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from p2pnet.core.generation import MAX_GENERATION_TOKENS, GenerationParams, GenerationSummary
from p2pnet.core.messages import Chunk
from p2pnet.core.model_id import is_model_id
from p2pnet.core.records import CapabilityRecord
from p2pnet.core.text import quote_bounded
from p2pnet.discovery.generation import Generation
from p2pnet.errors import InvalidInputError, P2PNetError, UnknownModelError
from p2pnet.gateway.errors import http_status

if TYPE_CHECKING:
    from p2pnet.peer import Peer

log = logging.getLogger(__name__)

__all__ = [
    "MAX_CHAT_BODY",
    "MAX_MESSAGES",
    "ChatRequest",
    "OpenAIError",
    "finish_reason",
    "generative_models",
    "openai_routes",
    "parse_chat_request",
]

# The largest chat request body taken, in bytes (a context of 8,192 tokens is ~32 KB).
MAX_CHAT_BODY: Final = 1 << 20
MAX_MESSAGES: Final = 1024
ROLES: Final = ("system", "user", "assistant")
OWNER: Final = "p2pnet"
# Keys taken and ignored: they change nothing in the reply.
IGNORED: Final = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key"})
# Keys refused unless they hold their default (null, or the value given here).
DEFAULT_ONLY: Final[Mapping[str, tuple[object, ...]]] = {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (),
    "functions": ([],),
    "function_call": ("none",),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "web_search_options": (),
}
KNOWN: Final = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
        "stream",
        "stream_options",
        "response_format",
    }
)


class OpenAIError(Exception):
    """A request refused, as OpenAI reports it: HTTP ``status``, ``message``, the
    ``param`` at fault (None: the request as a whole) and a machine-readable ``code``."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @classmethod
    def from_p2pnet(cls, exc: P2PNetError) -> OpenAIError:
        """The status of ``http_status``; code ``model_not_found`` (param ``model``) when
        nobody offers the model, else the p2pnet error's wire code."""
        if isinstance(exc, UnknownModelError):
            return cls(http_status(exc), str(exc), "model", "model_not_found")
        return cls(http_status(exc), str(exc), None, exc.code)

    def body(self) -> dict[str, Any]:
        if self.status == 401:
            kind = "authentication_error"
        elif self.status == 403:
            kind = "permission_error"
        elif self.status < 500:
            kind = "invalid_request_error"
        else:
            kind = "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }

    def response(self) -> JSONResponse:
        # A body over the limit may be partly unread: the connection cannot carry another.
        headers = {"connection": "close"} if self.status == 413 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _bad(message: str, param: str | None, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param, code)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A checked chat completion request: the model name (task tag or model ID), the
    conversation as (role, content) turns, the generation parameters, and how to reply."""

    model: str
    messages: tuple[tuple[str, str], ...]
    params: GenerationParams
    stream: bool = False
    include_usage: bool = False
    task: str | None = field(default=None)
    model_id: str | None = field(default=None)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _content(message: Mapping[str, Any], where: str) -> str:
    """A message's content as text: a string, or a list of text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(
            f"{where}.content must be a string or a list of text parts, got {_type_name(content)}",
            f"{where}.content",
            "invalid_type",
        )
    texts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _bad(f"{at} must be an object, got {_type_name(part)}", at, "invalid_type")
        kind = part.get("type")
        if kind != "text":
            raise _bad(
                f"{at}.type {quote_bounded(kind)} is not supported; only text parts are",
                f"{at}.type",
                "unsupported_value",
            )
        extra = sorted(set(part) - {"type", "text"})
        if extra:
            raise _bad(f"{at}.{extra[0]} is not supported", f"{at}.{extra[0]}", "unknown_parameter")
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad(f"{at}.text must be a string", f"{at}.text", "invalid_type")
        texts.append(text)
    return "".join(texts)


def _messages(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise _bad("messages must be a non-empty list", "messages", "invalid_type")
    if len(value) > MAX_MESSAGES:
        raise _bad(f"at most {MAX_MESSAGES} messages, got {len(value)}", "messages")
    turns = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object, got {_type_name(message)}", where)
        role = message.get("role")
        if role not in ROLES:
            raise _bad(
                f"{where}.role {quote_bounded(role)} is not supported; roles are "
                + ", ".join(ROLES),
                f"{where}.role",
                "unsupported_value",
            )
        extra = sorted(k for k in set(message) - {"role", "content"} if message[k] is not None)
        if extra:
            raise _bad(
                f"{where}.{extra[0]} is not supported (tool calls, names and audio are not)",
                f"{where}.{extra[0]}",
                "unsupported_parameter",
            )
        turns.append((role, _content(message, where)))
    return tuple(turns)


def _whole(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{key} must be an integer, got {_type_name(value)}", key, "invalid_type")
    return value


def _real(body: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{key} must be a number, got {_type_name(value)}", key, "invalid_type")
    if not low <= value <= high:
        raise _bad(f"{key} must be in [{low:g}, {high:g}], got {value!r}", key)
    return float(value)


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop must be a string or a list of strings", "stop", "invalid_type")
    return tuple(stops)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for key, value in body.items():
        if key in KNOWN or key in IGNORED or value is None:
            continue
        if key in DEFAULT_ONLY:
            allowed = DEFAULT_ONLY[key]
            # (0 == False in Python: a default must match in kind, too.)
            if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
                raise _bad(
                    f"{key} is not supported by this server (got {quote_bounded(value)})",
                    key,
                    "unsupported_parameter",
                )
            continue
        raise _bad(f"unrecognized request argument supplied: {key}", key, "unknown_parameter")


def parse_chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """The chat completion request in ``body`` (a decoded JSON object), checked.

    Raises:
        OpenAIError: 400, naming the parameter at fault: a required one missing, a value
            of the wrong type or out of range, a parameter this server does not support
            (tools, logprobs, penalties, n above 1, a response format other than text,
            content other than text) or one it does not know.
    """
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        if model is None:
            raise _bad("model is required", "model", "missing_required_parameter")
        raise _bad("model must be a non-empty string", "model", "invalid_type")
    if "messages" not in body:
        raise _bad("messages is required", "messages", "missing_required_parameter")
    messages = _messages(body["messages"])
    n = _whole(body, "n")
    if n is not None and n != 1:
        raise _bad(f"n must be 1 (one choice per request), got {n}", "n", "unsupported_value")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise _bad(
            "response_format must be {'type': 'text'}; JSON output is not supported",
            "response_format",
            "unsupported_value",
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream", "invalid_type")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise _bad("stream_options is only allowed with stream: true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _bad(
                "stream_options takes include_usage only", "stream_options", "unsupported_value"
            )
        include_usage = options.get("include_usage") is True

    max_tokens = _whole(body, "max_completion_tokens")
    legacy = _whole(body, "max_tokens")
    if max_tokens is not None and legacy is not None and max_tokens != legacy:
        raise _bad("give one of max_tokens and max_completion_tokens", "max_tokens")
    limit = max_tokens if max_tokens is not None else legacy
    param = "max_completion_tokens" if max_tokens is not None else "max_tokens"
    if limit is not None and not 1 <= limit <= MAX_GENERATION_TOKENS:
        raise _bad(f"{param} must be in 1..{MAX_GENERATION_TOKENS}, got {limit}", param)
    temperature = _real(body, "temperature", 0.0, 2.0)
    top_p = _real(body, "top_p", 0.0, 1.0)
    top_k = _whole(body, "top_k")
    seed = _whole(body, "seed")
    if seed is not None and seed < 0:
        raise _bad(f"seed must be 0 or above, got {seed}", "seed")
    settings: dict[str, Any] = {
        "max_tokens": limit,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
        "stop": _stop(body.get("stop")),
    }
    given = {k: v for k, v in settings.items() if v is not None}
    try:
        params = GenerationParams(**given)
    except InvalidInputError as exc:
        # The message names the parameter ("top_p must be ...", "at most 8 stop strings").
        name = next((key for key in settings if key in exc.message), None)
        raise _bad(exc.message, name) from None
    is_id = is_model_id(model)
    return ChatRequest(
        model=model,
        messages=messages,
        params=params,
        stream=bool(stream),
        include_usage=include_usage,
        task=None if is_id else model,
        model_id=model if is_id else None,
    )


def finish_reason(summary: GenerationSummary | None) -> str:
    """OpenAI's finish reason of a generation: "length" when it ran out of tokens (its
    ``max_tokens`` or the model's context), else "stop" (an end token or a stop
    string)."""
    if summary is not None and summary.finish in ("length", "context"):
        return "length"
    return "stop"


def generative_models(records: list[CapabilityRecord]) -> list[dict[str, Any]]:
    """OpenAI model objects of the generative models among ``records``: one per task tag
    (first), then one per model ID, each once, in the order first seen."""
    tasks: dict[str, None] = {}
    ids: dict[str, None] = {}
    for record in records:
        if record.generation is None:
            continue
        ids.setdefault(record.model_id)
        for task in record.tasks:
            tasks.setdefault(task)
    # Records carry no creation time: ``created`` is 0.
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": OWNER} for name in [*tasks, *ids]
    ]


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OpenAIError(
            413, f"body of {declared} bytes; at most {limit}", None, "payload_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise OpenAIError(413, f"body over {limit} bytes", None, "payload_too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except UnicodeDecodeError:
        raise _bad("malformed JSON: not UTF-8", None, "invalid_json") from None
    except (ValueError, RecursionError) as exc:
        raise _bad(f"malformed JSON: {exc}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise _bad(f"expected a JSON object, got {_type_name(body)}", None, "invalid_json")
    return body


def _sse(data: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _usage(summary: GenerationSummary | None) -> dict[str, int] | None:
    if summary is None:
        return None
    return {
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "total_tokens": summary.prompt_tokens + summary.completion_tokens,
    }


def openai_routes(
    peer: Peer, *, timeout: float = 120.0, max_body: int = MAX_CHAT_BODY
) -> list[Route]:
    """The OpenAI-style routes over ``peer``, for a starlette app to mount at its root.
    ``timeout``: the seconds a generation may take (from the request to its last
    token); ``max_body``: the largest request body taken, in bytes."""

    def known() -> list[dict[str, Any]]:
        return generative_models(peer.known_records())

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": known()})

    async def get_model(request: Request) -> Response:
        name = request.path_params["model"]
        for entry in known():
            if entry["id"] == name:
                return JSONResponse(entry)
        return OpenAIError(
            404,
            f"the model {quote_bounded(name)} is not known to this peer",
            "model",
            "model_not_found",
        ).response()

    async def chat(request: Request) -> Response:
        try:
            chat = parse_chat_request(await _json_body(request, max_body))
        except OpenAIError as exc:
            return exc.response()
        generation = peer.generate(
            chat.messages,
            task=chat.task,
            model=chat.model_id,
            params=chat.params,
            timeout=timeout,
        )
        reply_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        # Find the provider and wait for the first chunk before answering, so that a
        # failure to start (nobody offers it, all busy) is an HTTP error status.
        try:
            first = await anext(generation, None)
        except P2PNetError as exc:
            await generation.aclose()
            return OpenAIError.from_p2pnet(exc).response()
        except BaseException:  # cancelled (the server stops): drop the stream, then go on
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await generation.aclose()
            raise
        assert generation.offer is not None
        model_id = generation.offer.record.model_id
        if chat.stream:
            events = _events(generation, first, reply_id, created, model_id, chat.include_usage)
            return _EventStream(generation, events)
        try:
            async with generation:
                async for _ in generation:
                    pass
        except P2PNetError as exc:
            return OpenAIError.from_p2pnet(exc).response()
        message = {"role": "assistant", "content": generation.text, "refusal": None}
        return JSONResponse(
            {
                "id": reply_id,
                "object": "chat.completion",
                "created": created,
                "model": model_id,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finish_reason(generation.summary),
                    }
                ],
                "usage": _usage(generation.summary),
            }
        )

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]


class _EventStream(StreamingResponse):
    """The server-sent events of a streamed reply. However the response ends (the
    client went away: starlette cancels it; the server stops), the provider is told to
    stop within a token if the reply was not over, and the stream is dropped."""

    def __init__(self, generation: Generation, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self.generation = generation
        self.events = events

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.events.aclose()
                if self.generation.summary is None:
                    try:
                        await self.generation.cancel()
                    except P2PNetError as exc:
                        log.debug("cancelling a generation its client left: %s", exc)
                await self.generation.aclose()


async def _events(
    generation: Generation,
    first: Chunk | None,
    reply_id: str,
    created: int,
    model_id: str,
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    """The events of a streamed reply (``first``: its first chunk, None if it ended at
    once): OpenAI's chunks, the last with the finish reason, then (``include_usage``)
    one with the usage and no choices, then ``[DONE]``. An error after the first
    event is sent as one ``{"error": ...}`` event, and the stream ends there."""
    head = {
        "id": reply_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_id,
        "system_fingerprint": None,
    }
    usage: dict[str, Any] = {"usage": None} if include_usage else {}

    def event(delta: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**head, "choices": [choice], **usage})

    yield event({"role": "assistant", "content": ""})
    if first is not None:
        if first.text:
            yield event({"content": first.text})
        try:
            async for piece in generation:
                if piece.text:
                    yield event({"content": piece.text})
        except P2PNetError as exc:
            yield _sse(OpenAIError.from_p2pnet(exc).body())
            return
    yield event({}, finish_reason(generation.summary))
    if include_usage:
        yield _sse({**head, "choices": [], "usage": _usage(generation.summary)})
    yield b"data: [DONE]\n\n"
