"""The Open Inference Protocol v2 REST endpoints (KServe V2, Triton) as starlette routes
over a ``ModelBackend``; ``PeerBackend`` routes them through a running ``Peer`` exactly as
``p2pnet call`` (docs/gateway.md).

A model name is a task tag ("iris-species") or a model ID (bafkrei...). A version, where
a path has one, is a model ID: for a task, one of the models offered for it; for a
model ID, that same ID.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy.typing as npt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from p2pnet.core.model_id import is_model_id
from p2pnet.core.oip import (
    BINARY_EXTENSION,
    DEFAULT_LIMITS,
    OipLimits,
    decode_infer_request,
    encode_infer_reply,
    model_metadata,
)
from p2pnet.core.schema import ModelSchema
from p2pnet.core.text import quote_bounded
from p2pnet.errors import (
    InvalidInputError,
    P2PNetError,
    PayloadTooLargeError,
    UnknownModelError,
)
from p2pnet.gateway.errors import http_status

if TYPE_CHECKING:
    from p2pnet.peer import Peer

__all__ = [
    "HEADER_LENGTH",
    "ModelBackend",
    "ModelDescription",
    "PeerBackend",
    "oip_routes",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER_NAME = "p2pnet"


@dataclass(frozen=True, slots=True)
class ModelDescription:
    """What the metadata endpoint says of a model: the versions it has (model IDs) and the
    schema (of the version asked for, or of the best offer)."""

    versions: tuple[str, ...]
    schema: ModelSchema
    platform: str = "p2pnet"


class ModelBackend(Protocol):
    """Where the OIP routes find and call models."""

    async def describe(self, model: str, version: str | None) -> ModelDescription:
        """The model's description.

        Raises:
            UnknownModelError: nobody offers that model (or version).
        """
        ...

    async def call(
        self,
        model: str,
        version: str | None,
        inputs: Mapping[str, npt.NDArray[Any]],
        timeout: float,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run the model on ``inputs``; its outputs by name.

        Raises:
            P2PNetError: any failure of the call (see ``http_status`` for the HTTP status).
        """
        ...


class PeerBackend:
    """Models of the swarm a running ``Peer`` sees: metadata from ``peer.find`` (verified
    signed records), inference through ``peer.call`` (discovery, failover, access lists,
    credit and spot checks as for ``p2pnet call``)."""

    def __init__(self, peer: Peer, *, find_timeout: float = 10.0) -> None:
        self.peer = peer
        self.find_timeout = find_timeout

    def _target(self, model: str, version: str | None) -> tuple[str | None, str | None]:
        """(task, model ID) to find or call."""
        if version is not None:
            if not is_model_id(version):
                raise UnknownModelError(
                    f"version {quote_bounded(version)} is not a model ID; versions are model IDs"
                )
            if is_model_id(model) and model != version:
                raise UnknownModelError(f"model {model} has no version {version}")
            return None, version
        return (None, model) if is_model_id(model) else (model, None)

    async def describe(self, model: str, version: str | None) -> ModelDescription:
        """Raises:
        UnknownModelError: no verified offer of the model, task or version (for a task
            and a version: the version is not offered for that task).
        """
        task, model_id = self._target(model, version)
        offers = await self.peer.find(task=task, model=model_id, timeout=self.find_timeout)
        if version is not None and not is_model_id(model):
            offers = [o for o in offers if model in o.record.tasks]
        if not offers:
            what = model if version is None else f"{model} version {version}"
            raise UnknownModelError(f"no provider offers {what}")
        versions = tuple(dict.fromkeys(o.record.model_id for o in offers))
        return ModelDescription(versions, offers[0].record.schema)

    async def call(
        self,
        model: str,
        version: str | None,
        inputs: Mapping[str, npt.NDArray[Any]],
        timeout: float,
    ) -> dict[str, npt.NDArray[Any]]:
        """Raises: as ``Peer.call``; UnknownModelError when a version is not offered for
        the task."""
        if version is not None and not is_model_id(model):
            await self.describe(model, version)  # the version must serve the task
        task, model_id = self._target(model, version)
        return await self.peer.call(inputs, task=task, model=model_id, timeout=timeout)


def _error(status: int, message: str, request_id: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if request_id is not None:
        body["id"] = request_id
    # A body over the limit may be partly unread: the connection cannot carry another request.
    headers = {"connection": "close"} if status == 413 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"body of {declared} bytes; this gateway accepts at most {limit}"
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"body over {limit} bytes; this gateway accepts at most that"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidInputError(f"{HEADER_LENGTH} is {quote_bounded(value)}, not a byte count")
    return int(value)


def _request_id(body: bytes, json_length: int | None) -> str | None:
    """The request's id, for an error reply, if its JSON header parses."""
    try:
        head = json.loads(body if json_length is None else body[:json_length])
    except (ValueError, RecursionError):
        return None
    value = head.get("id") if isinstance(head, dict) else None
    return value if isinstance(value, str) else None


def oip_routes(
    backend: ModelBackend,
    *,
    version: str = "",
    timeout: float = 30.0,
    limits: OipLimits = DEFAULT_LIMITS,
) -> list[Route]:
    """The OIP v2 REST routes over ``backend``, for a starlette app to mount at its root.

    ``version`` is the server version ``GET /v2`` reports (default: p2pnet's);
    ``timeout`` the seconds an inference call may take; ``limits`` what a request body
    may hold. Every error is a JSON ``{"error": ...}`` reply with the status of
    ``http_status``; an inference error echoes the request's id.
    """
    if not version:
        from p2pnet import __version__

        version = __version__

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(
            {"name": SERVER_NAME, "version": version, "extensions": [BINARY_EXTENSION]}
        )

    def names(request: Request) -> tuple[str, str | None]:
        params = request.path_params
        return params["model"], params.get("version")

    async def metadata(request: Request) -> Response:
        model, model_version = names(request)
        try:
            desc = await backend.describe(model, model_version)
            body = model_metadata(
                model, desc.schema, versions=desc.versions, platform=desc.platform
            )
        except P2PNetError as exc:
            return _error(http_status(exc), str(exc))
        return JSONResponse(body)

    async def model_ready(request: Request) -> Response:
        model, model_version = names(request)
        try:
            await backend.describe(model, model_version)
        except P2PNetError as exc:
            return _error(http_status(exc), str(exc))
        return JSONResponse({"name": model, "ready": True})

    async def infer(request: Request) -> Response:
        model, model_version = names(request)
        request_id: str | None = None
        try:
            body = await _read_body(request, limits.max_body_bytes)
            json_length = _header_length(request)
            request_id = _request_id(body, json_length)
            decoded = decode_infer_request(body, json_length, limits)
            outputs = await backend.call(model, model_version, decoded.inputs, timeout)
            reply, reply_json_length = encode_infer_reply(model, model_version, decoded, outputs)
        except P2PNetError as exc:
            return _error(http_status(exc), str(exc), request_id)
        if reply_json_length is None:
            return Response(reply, media_type="application/json")
        return Response(
            reply,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(reply_json_length)},
        )

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
    ]
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(base, metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
        ]
    return routes
