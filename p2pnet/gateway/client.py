"""Clients of a running peer's local HTTP API (docs/gateway.md, "Local HTTP API and
metrics"), for the command line: ``p2pnet find``, ``call``, ``pipeline run`` and
``chat`` use them when a peer of their identity runs (docs/cli.md).

    async with ApiClient(url, token) as api:
        found = await api.find(task="iris-species")
        reply = await api.call({"x": array}, task="iris-species")
        async with api.generate([("user", "Hi")], task="chat") as stream:
            async for event in stream: ...

    with BlockingApiClient(url, token) as api:       # no trio, no httpx
        found = api.find(task="iris-species")

``ApiClient`` (httpx, under trio) streams replies; ``BlockingApiClient`` (the standard
library's http.client) asks for one JSON reply at a time, what the one-shot ``find`` and
``call`` need, without loading trio or httpx (docs/benchmarks.md, "CLI against a
running peer"). An error reply of the API (``{"error": message, "code": code}``) is
raised by both as the p2pnet error class of that code (``error_from_api``), so a
command prints the same message and exits with the same status as with a peer of its
own.

Cheap to import: p2pnet's pure modules; not the HTTP server's; httpx when an
``ApiClient`` is made, numpy and the generation settings only when a call or a reply
needs them (tests/test_cli_imports.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from p2pnet.core.pricing import Price, price_to_wire
from p2pnet.errors import (
    ConfigError,
    InternalPeerError,
    P2PNetError,
    PeerUnreachableError,
    RemoteProtocolError,
    UnknownSessionError,
    UsageError,
)

if TYPE_CHECKING:
    import http.client

    import httpx
    import numpy.typing as npt

    from p2pnet.core.generation import GenerationParams

__all__ = [
    "ApiChat",
    "ApiClient",
    "ApiReply",
    "BlockingApiClient",
    "CallReply",
    "FindReply",
    "TensorCallReply",
    "error_from_api",
    "error_of",
]

# The largest JSON reply and the longest NDJSON line taken from the API, in bytes.
MAX_REPLY = 64 * 1024 * 1024
MAX_LINE = 1024 * 1024
# Seconds to connect to the API, and the HTTP read timeout's margin over a call's own.
CONNECT_TIMEOUT = 5.0
MARGIN = 10.0
REPLY_HEADER = "P2PNet-Reply"  # as p2pnet.gateway.app.REPLY_HEADER


@cache
def _error_classes() -> dict[str, type[P2PNetError]]:
    """Every p2pnet error class by its code (codes are unique)."""
    found: dict[str, type[P2PNetError]] = {}
    todo: list[type[P2PNetError]] = [P2PNetError]
    while todo:
        cls = todo.pop()
        found[cls.code] = cls
        todo.extend(cls.__subclasses__())
    return found


def error_from_api(status: int, body: bytes) -> P2PNetError:
    """The error of an API reply with HTTP ``status`` and ``body`` ``{"error", "code"}``
    (``error_of``); for a body that is not the API's, InternalPeerError (5xx) or
    RemoteProtocolError."""
    try:
        doc = json.loads(body)
        message, code = doc["error"], doc["code"]
        if not isinstance(message, str) or not isinstance(code, str):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        text = body[:200].decode("utf-8", errors="replace")
        if status >= 500:
            return InternalPeerError(f"the running peer's API failed ({status}): {text}")
        return RemoteProtocolError(f"the running peer's API replied {status}: {text}")
    return error_of(code, message, status)


def error_of(code: str, message: str, status: int = 502) -> P2PNetError:
    """The p2pnet error class of ``code`` with ``message``; for a code of the HTTP layer
    (the token refused, a route unknown), ConfigError (HTTP ``status`` 401, 403) or
    UsageError (other 4xx) with the code in the message, else InternalPeerError."""
    cls = _error_classes().get(code)
    if cls is not None and cls is not P2PNetError:
        return cls(message)
    if status in (401, 403):
        return ConfigError(f"the running peer's API refused the request ({code}): {message}")
    if 400 <= status < 500:
        return UsageError(f"[{code}] {message}")
    return InternalPeerError(f"[{code}] {message}")


@dataclass(frozen=True, slots=True)
class FindReply:
    """``POST /api/find``: the offers (``Offer.to_dict()`` each), best first, and the
    providers that did not describe their models in time."""

    offers: list[dict[str, Any]]
    unanswered: list[str]


@dataclass(frozen=True, slots=True)
class CallReply:
    """``POST /api/call``: who answered (``peer_id`` and ``name`` None for a call to a
    given peer) and the outputs."""

    model_id: str
    peer_id: str | None
    name: str | None
    outputs: dict[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class TensorCallReply:
    """``CallReply`` with the outputs as the API sent them: JSON tensors by name."""

    model_id: str
    peer_id: str | None
    name: str | None
    outputs: dict[str, Any]


def _params(params: GenerationParams) -> dict[str, Any]:
    return {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": params.seed,
        "stop": list(params.stop),
    }


def _target(task: str | None, model: str | None) -> dict[str, str]:
    return {"task": task} if task is not None else {"model": model} if model is not None else {}


def _price(body: dict[str, Any], max_price: Price | None) -> dict[str, Any]:
    if max_price is not None:
        body["max_price"] = price_to_wire(max_price)
    return body


def _find_body(
    task: str | None, model: str | None, count: int, timeout: float, max_price: Price | None
) -> dict[str, Any]:
    return _price({**_target(task, model), "count": count, "timeout": timeout}, max_price)


def _find_reply(reply: Any) -> FindReply:
    return FindReply(list(reply["offers"]), list(reply.get("unanswered", [])))


def _call_body(
    tensors: Mapping[str, Any],
    task: str | None,
    model: str | None,
    peer: str | None,
    timeout: float,
    max_price: Price | None,
) -> dict[str, Any]:
    """The body of ``POST /api/call``; ``tensors``: the inputs as JSON tensors."""
    return _price(
        {
            **_target(task, model),
            **({"peer": peer} if peer is not None else {}),
            "timeout": timeout,
            "inputs": dict(tensors),
        },
        max_price,
    )


def _call_reply(reply: Any) -> CallReply:
    return CallReply(
        reply["model_id"], reply.get("peer_id"), reply.get("name"), _outputs(reply["outputs"])
    )


def _outputs(doc: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
    from p2pnet.inputs import tensor_from_json

    return {name: tensor_from_json(name, value) for name, value in doc.items()}


def _unreachable(url: str, exc: Exception) -> P2PNetError:
    """The error of a request to the running peer's API at ``url`` that failed below HTTP."""
    return PeerUnreachableError(
        f"the running peer's API at {url}: {type(exc).__name__} {exc}".rstrip()
    )


def _json_reply(status: int, data: bytes, path: str) -> Any:
    """The JSON of a reply with HTTP ``status`` and body ``data`` to a request of ``path``.

    Raises:
        P2PNetError: an error reply (``error_from_api``).
        RemoteProtocolError: a body that is not JSON.
    """
    if status >= 400:
        raise error_from_api(status, data)
    try:
        return json.loads(data)
    except ValueError:
        raise RemoteProtocolError(f"the running peer's API sent no JSON for {path}") from None


class ApiClient:
    """The local API at ``url`` with ``token``; ``async with`` opens its connection."""

    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, connect=CONNECT_TIMEOUT),
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection."""
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        timeout: float,
        *,
        margin: float = MARGIN,
    ) -> Any:
        """The JSON reply to ``method path``, waiting ``timeout`` plus ``margin``.

        Raises:
            P2PNetError: the API's error (``error_from_api``); PeerUnreachableError when
                it cannot be reached.
        """
        import httpx

        try:
            async with self._http.stream(
                method,
                path,
                json=body,
                timeout=httpx.Timeout(timeout + margin, connect=CONNECT_TIMEOUT),
            ) as response:
                data = await _read(response, MAX_REPLY)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        return _json_reply(response.status_code, data, path)

    async def status(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """``GET /api/status``: the running peer's ``PeerStatus.to_dict()``, within
        ``timeout`` seconds."""
        reply: dict[str, Any] = await self._request("GET", "/api/status", None, timeout, margin=0.0)
        return reply

    async def find(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        count: int = 20,
        timeout: float = 10.0,
        max_price: Price | None = None,
    ) -> FindReply:
        """The offers of ``task`` or ``model`` in the running peer's swarm."""
        body = _find_body(task, model, count, timeout, max_price)
        return _find_reply(await self._request("POST", "/api/find", body, timeout))

    async def call(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        task: str | None = None,
        model: str | None = None,
        peer: str | None = None,
        timeout: float = 30.0,
        max_price: Price | None = None,
    ) -> CallReply:
        """Call ``task`` or ``model`` (on the peer at address ``peer``, if given: then
        ``model`` only) with ``inputs``."""
        from p2pnet.inputs import tensor_to_json

        tensors = {name: tensor_to_json(arr) for name, arr in inputs.items()}
        body = _call_body(tensors, task, model, peer, timeout, max_price)
        return _call_reply(await self._request("POST", "/api/call", body, timeout))

    async def run_pipeline(
        self,
        spec: str | Mapping[str, Any],
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        name: str | None = None,
        mode: str = "orchestrated",
        timeout: float = 30.0,
        max_price: Price | None = None,
    ) -> dict[str, Any]:
        """Run the pipeline ``spec`` (its YAML/JSON text, named ``name`` in errors, or
        its object) on ``inputs``: ``PipelineResult.to_dict()``, and ``tensors``, the
        outputs as JSON tensors (dtype kept)."""
        from p2pnet.inputs import tensor_to_json

        body = _price(
            {
                "spec": spec,
                **({"name": name} if name is not None else {}),
                "mode": mode,
                "timeout": timeout,
                "inputs": {n: tensor_to_json(arr) for n, arr in inputs.items()},
            },
            max_price,
        )
        reply: dict[str, Any] = await self._request("POST", "/api/pipeline", body, timeout)
        return reply

    def generate(
        self,
        messages: Sequence[tuple[str, str]],
        *,
        task: str | None = None,
        model: str | None = None,
        peer: str | None = None,
        params: GenerationParams | None = None,
        timeout: float = 60.0,
    ) -> ApiReply:
        """The reply to ``messages`` ((role, text) turns), streamed (``ApiReply``)."""
        from p2pnet.core.generation import GenerationParams

        body = {
            **_target(task, model),
            **({"peer": peer} if peer is not None else {}),
            "messages": [list(m) for m in messages],
            "params": _params(params or GenerationParams()),
            "timeout": timeout,
        }
        return ApiReply(self, "/api/generate", body, timeout)

    async def chat(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        system: str | None = None,
        timeout: float = 60.0,
    ) -> ApiChat:
        """A chat held by the running peer (``ApiChat``; close it when done)."""
        body: dict[str, Any] = {**_target(task, model), "timeout": timeout}
        if system is not None:
            body["system"] = system
        chat = ApiChat(self, body, timeout)
        await chat.reopen()
        return chat

    async def _cancel(self, reply_id: str) -> bool:
        reply = await self._request("POST", f"/api/replies/{reply_id}/cancel", None, 10.0)
        return bool(reply["cancelled"])


class BlockingApiClient:
    """The local API at ``url`` (``http://HOST:PORT``) with ``token``, asked one JSON
    request at a time over one connection of the standard library's http.client: what
    the one-shot ``p2pnet find`` and ``call`` need, without trio and httpx (and the TLS
    context httpx makes even for a plain http:// URL). ``with`` closes the connection.
    Requests and replies are those of ``ApiClient``: the same bodies, the same errors.

    Raises:
        ConfigError: ``url`` is not an http:// URL (the API serves no TLS).
    """

    def __init__(self, url: str, token: str) -> None:
        import http.client
        from urllib.parse import urlsplit

        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "http" or not parts.hostname or port is None:
            raise ConfigError(
                f"the running peer's API at {self.url!r:.80}: expected http://HOST:PORT"
            )
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "*/*",
        }
        self._connection = http.client.HTTPConnection(parts.hostname, port, timeout=CONNECT_TIMEOUT)

    def __enter__(self) -> BlockingApiClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        timeout: float,
        *,
        margin: float = MARGIN,
    ) -> Any:
        """The JSON reply to ``method path``: connecting within CONNECT_TIMEOUT, then
        waiting ``timeout`` plus ``margin`` for each read.

        Raises:
            P2PNetError: the API's error (``error_from_api``); PeerUnreachableError when
                it cannot be reached; ReplyTooLargeError: a reply over MAX_REPLY bytes.
            InvalidInputError: a body that JSON cannot carry (NaN or infinity).
        """
        import http.client

        content = None
        if body is not None:
            try:
                # As httpx encodes a json= body.
                text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            except ValueError as exc:
                from p2pnet.errors import InvalidInputError

                raise InvalidInputError(f"the request cannot be sent as JSON: {exc}") from None
            content = text.encode("utf-8")
        connection = self._connection
        try:
            if connection.sock is None:
                connection.connect()
            connection.sock.settimeout(timeout + margin)
            connection.request(method, path, body=content, headers=self._headers)
            response = connection.getresponse()
            data = _read_blocking(response, MAX_REPLY)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _unreachable(self.url, exc) from None
        return _json_reply(response.status, data, path)

    def status(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """``GET /api/status``: the running peer's ``PeerStatus.to_dict()``, within
        ``timeout`` seconds."""
        reply: dict[str, Any] = self._request("GET", "/api/status", None, timeout, margin=0.0)
        return reply

    def find(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        count: int = 20,
        timeout: float = 10.0,
        max_price: Price | None = None,
    ) -> FindReply:
        """The offers of ``task`` or ``model`` in the running peer's swarm."""
        body = _find_body(task, model, count, timeout, max_price)
        return _find_reply(self._request("POST", "/api/find", body, timeout))

    def call(
        self,
        inputs: Mapping[str, npt.NDArray[Any]],
        *,
        task: str | None = None,
        model: str | None = None,
        peer: str | None = None,
        timeout: float = 30.0,
        max_price: Price | None = None,
    ) -> CallReply:
        """Call ``task`` or ``model`` (on the peer at address ``peer``, if given: then
        ``model`` only) with ``inputs``."""
        from p2pnet.inputs import tensor_to_json

        tensors = {name: tensor_to_json(arr) for name, arr in inputs.items()}
        reply = self.call_tensors(
            tensors, task=task, model=model, peer=peer, timeout=timeout, max_price=max_price
        )
        return CallReply(reply.model_id, reply.peer_id, reply.name, _outputs(reply.outputs))

    def call_tensors(
        self,
        tensors: Mapping[str, dict[str, Any]],
        *,
        task: str | None = None,
        model: str | None = None,
        peer: str | None = None,
        timeout: float = 30.0,
        max_price: Price | None = None,
    ) -> TensorCallReply:
        """``call`` with the inputs and outputs as the API's JSON tensors
        (``{"dtype", "shape", "data"}``), not arrays: no numpy is needed for them."""
        body = _call_body(tensors, task, model, peer, timeout, max_price)
        reply = self._request("POST", "/api/call", body, timeout)
        outputs = reply["outputs"]
        if not isinstance(outputs, dict):
            raise RemoteProtocolError("the running peer's API sent outputs that are not an object")
        return TensorCallReply(reply["model_id"], reply.get("peer_id"), reply.get("name"), outputs)


def _read_blocking(response: http.client.HTTPResponse, limit: int) -> bytes:
    """The body of ``response``, up to ``limit`` bytes.

    Raises:
        ReplyTooLargeError: over the limit.
    """
    from p2pnet.errors import ReplyTooLargeError

    data = response.read(limit + 1)
    if len(data) > limit:
        raise ReplyTooLargeError(f"the running peer's API replied over {limit} bytes")
    return data


class ApiChat:
    """A chat the running peer holds for this client: ``send`` a message, ``close``
    (``async with`` closes it). It keeps the conversation (``history``, as the peer's
    ChatSession keeps it): when the peer no longer holds the chat (closed after its idle
    time, or the peer restarted), the next message opens it again with the
    conversation, which the provider then replays."""

    def __init__(self, client: ApiClient, body: dict[str, Any], timeout: float) -> None:
        self._client = client
        self._body = body
        self._timeout = timeout
        self.id = ""
        self.history: list[tuple[str, str]] = []

    async def reopen(self) -> None:
        """Open the chat on the peer (again), with ``history``."""
        body = {**self._body, "messages": [list(m) for m in self.history]}
        reply = await self._client._request("POST", "/api/chat", body, self._timeout)
        self.id = str(reply["id"])

    def send(self, text: str, params: GenerationParams | None = None) -> ApiReply:
        """The reply to the user message ``text``, streamed."""
        from p2pnet.core.generation import GenerationParams

        body = {"text": text, "params": _params(params or GenerationParams())}
        return ApiReply(self._client, "", body, self._timeout, chat=self, text=text)

    def turn_done(self, text: str, reply: str) -> None:
        """A turn ended (``done``): keep it, as the peer's ChatSession does."""
        system = self._body.get("system")
        if system and not self.history:
            self.history.append(("system", system))
        self.history += [("user", text), ("assistant", reply)]

    async def close(self) -> None:
        """Close the chat (and its session on its provider).

        Raises:
            P2PNetError: as the API says (UnknownSessionError: closed already, or idle
                too long).
        """
        await self._client._request("DELETE", f"/api/chat/{self.id}", None, 10.0)

    async def __aenter__(self) -> ApiChat:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.close()
        except P2PNetError:
            pass  # gone already: nothing to close


class ApiReply:
    """A reply streamed by the API: ``async with`` sends the request, ``async for``
    gives its events (p2pnet.gateway.events) but an error event, which it raises as
    the p2pnet error of its code. ``cancel`` asks the provider to stop; ``aclose`` (or
    leaving ``async with``) drops the reply, which ends it on the running peer too."""

    def __init__(
        self,
        client: ApiClient,
        path: str,
        body: dict[str, Any],
        timeout: float,
        *,
        chat: ApiChat | None = None,
        text: str = "",
    ) -> None:
        self._client = client
        self._path = path
        self._body = body
        self._timeout = timeout
        self._chat = chat  # a turn of this chat (``path`` unused), the message ``text``
        self._text = text
        self._response: httpx.Response | None = None
        self.reply_id: str | None = None

    async def __aenter__(self) -> ApiReply:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _open(self) -> httpx.Response:
        if self._chat is None:
            return await self._post(self._path)
        try:
            return await self._post(f"/api/chat/{self._chat.id}")
        except UnknownSessionError:  # the peer no longer holds the chat
            await self._chat.reopen()
            return await self._post(f"/api/chat/{self._chat.id}")

    async def _post(self, path: str) -> httpx.Response:
        import httpx

        http = self._client._http
        request = http.build_request(
            "POST",
            path,
            json=self._body,
            timeout=httpx.Timeout(self._timeout + MARGIN, connect=CONNECT_TIMEOUT),
        )
        try:
            response = await http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _unreachable(self._client.url, exc) from None
        self._response = response
        if response.status_code >= 400:
            data = await _read(response, MAX_REPLY)
            await response.aclose()
            raise error_from_api(response.status_code, data)
        self.reply_id = response.headers.get(REPLY_HEADER)
        return response

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        import httpx

        response = self._response or await self._open()
        buffer = b""
        pieces: list[str] = []
        try:
            async for data in response.aiter_bytes():
                buffer += data
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    yield self._seen(_event(line), pieces)
                if len(buffer) > MAX_LINE:
                    raise RemoteProtocolError(f"an event of the API over {MAX_LINE} bytes")
        except httpx.TransportError as exc:
            raise _unreachable(self._client.url, exc) from None
        if buffer.strip():
            yield self._seen(_event(buffer), pieces)

    def _seen(self, event: dict[str, Any], pieces: list[str]) -> dict[str, Any]:
        """``event``, noted: the reply's text so far in ``pieces``; a chat's turn kept
        once it is done."""
        if event["event"] == "chunk":
            pieces.append(str(event["text"]))
        elif event["event"] == "done" and self._chat is not None:
            self._chat.turn_done(self._text, "".join(pieces))
        return event

    async def cancel(self) -> bool:
        """Ask the provider to stop the reply: True; False when none answered yet or the
        reply has ended (drop it then)."""
        if self.reply_id is None:
            return False
        try:
            return await self._client._cancel(self.reply_id)
        except UsageError:  # the reply ended meanwhile
            return False

    async def aclose(self) -> None:
        if self._response is not None:
            await self._response.aclose()


def _event(line: bytes) -> dict[str, Any]:
    """One NDJSON line as its event.

    Raises:
        P2PNetError: an error event, as the class of its code.
        RemoteProtocolError: a line that is not an event.
    """
    try:
        event = json.loads(line)
        kind = event["event"]
    except (ValueError, TypeError, KeyError):
        raise RemoteProtocolError(
            f"the API sent a line that is not an event: {line[:80]!r}"
        ) from None
    if kind == "error":
        raise error_of(str(event.get("code")), str(event.get("message")))
    return dict(event)


async def _read(response: httpx.Response, limit: int) -> bytes:
    """The body of ``response``, up to ``limit`` bytes.

    Raises:
        ReplyTooLargeError: over the limit.
    """
    from p2pnet.errors import ReplyTooLargeError

    chunks, size = [], 0
    async for data in response.aiter_bytes():
        size += len(data)
        if size > limit:
            raise ReplyTooLargeError(f"the running peer's API replied over {limit} bytes")
        chunks.append(data)
    return b"".join(chunks)
