"""The Open Inference Protocol v2 over gRPC: KServe's and Triton's
``inference.GRPCInferenceService``, served by grpcio next to a peer's trio loop
(docs/gateway.md, "Open Inference Protocol over gRPC").

The service and its messages are the ones tritonclient ships
(``tritonclient.grpc.service_pb2_grpc``, ``service_pb2``), so tritonclient's gRPC client
and KServe's work unchanged. grpcio runs the handlers in a thread pool: they decode and
encode tensors there (p2pnet.core.oip) and call the ``ModelBackend`` (the same
``PeerBackend`` as the REST routes, so routing is identical) in the peer's trio loop
with ``trio.from_thread.run``.

Every RPC but ServerLive, ServerReady and ServerMetadata takes the metadata
``authorization: Bearer <token>`` (the HTTP API's token). Errors are gRPC status codes
read from ``http_status`` (``GRPC_STATUS``). RPCs p2pnet does not implement
(``UNSUPPORTED``) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import grpc  # type: ignore[import-untyped]
import numpy as np
import trio
from tritonclient.grpc import (  # type: ignore[import-untyped]
    service_pb2,
    service_pb2_grpc,
)

from p2pnet.core.oip import (
    DEFAULT_LIMITS,
    OipLimits,
    TensorData,
    check_requested_outputs,
    decode_tensors,
    model_metadata,
    tensor_to_raw,
)
from p2pnet.errors import (
    DeadlineExceededError,
    InvalidInputError,
    P2PNetError,
    PayloadTooLargeError,
    UnknownModelError,
)
from p2pnet.gateway.errors import http_status
from p2pnet.gateway.oip import SERVER_NAME, ModelBackend, PeerBackend

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from p2pnet.peer import Peer

__all__ = ["GRPC_STATUS", "OPEN_RPCS", "UNSUPPORTED", "grpc_status", "serve_grpc"]

log = logging.getLogger(__name__)

# The gRPC status code of each HTTP status of ``http_status``: one table for every
# gateway, read through this one.
GRPC_STATUS: Final[dict[int, Any]] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# The RPCs anyone may call without the token (probes and load balancers).
OPEN_RPCS: Final = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})
# The RPCs of the service p2pnet does not implement: they answer UNIMPLEMENTED.
UNSUPPORTED: Final = (
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)
UNAUTHENTICATED_MESSAGE: Final = "missing or wrong token (metadata authorization: Bearer <token>)"
STOPPING_MESSAGE: Final = "the gateway is stopping"

T = TypeVar("T")


def grpc_status(error: P2PNetError) -> Any:
    """The gRPC status code of ``error``: ``GRPC_STATUS`` of its ``http_status``."""
    return GRPC_STATUS.get(http_status(error), grpc.StatusCode.UNKNOWN)


class _Stopping(Exception):
    """The gateway stopped while a call waited for the peer."""


class _TrioCalls:
    """Runs coroutines of the backend in the peer's trio loop for grpcio's threads, and
    cancels those still running when the gateway stops."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._scopes: set[trio.CancelScope] = set()
        self.closing = False

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)`` in the trio loop, from a thread that is not trio's.

        Raises:
            _Stopping: the gateway stopped (or the trio loop ended) first.
        """
        try:
            result: T = trio.from_thread.run(self._guarded, fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise _Stopping from None
        return result

    async def _guarded(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self.closing:
            raise _Stopping
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                return await fn(*args)
            finally:
                self._scopes.discard(scope)
        raise _Stopping  # cancelled by close()

    def close(self) -> None:
        """Refuse new calls and cancel the running ones (in the trio loop)."""
        self.closing = True
        for scope in list(self._scopes):
            scope.cancel()


def _tensors(request: Any, limits: OipLimits) -> list[TensorData]:
    """The inputs of a ModelInferRequest as ``TensorData``: raw contents for every input,
    or typed contents (the non-empty fields of ``contents``) for every input."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give raw contents for every input or for none"
        )
    if len(request.inputs) > limits.max_tensors:
        raise PayloadTooLargeError(
            f"{len(request.inputs)} inputs; this gateway accepts at most {limits.max_tensors}"
        )
    tensors = []
    for i, entry in enumerate(request.inputs):
        contents = {field.name: list(values) for field, values in entry.contents.ListFields()}
        tensors.append(
            TensorData(
                entry.name,
                entry.datatype,
                list(entry.shape),
                raw=raw[i] if raw else None,
                contents=contents,
            )
        )
    return tensors


class OipServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """``inference.GRPCInferenceService`` over a ``ModelBackend``."""

    def __init__(
        self,
        backend: ModelBackend,
        token: str,
        calls: _TrioCalls,
        *,
        timeout: float,
        limits: OipLimits,
        version: str,
    ) -> None:
        self._backend = backend
        self._expected = f"Bearer {token}".encode()
        self._calls = calls
        self._timeout = timeout
        self._limits = limits
        self._version = version

    def _authorized(self, context: Any) -> bool:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False

    def _check_token(self, name: str, context: Any) -> None:
        """Abort the RPC UNAUTHENTICATED unless it is open or carries the token."""
        if name not in OPEN_RPCS and not self._authorized(context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    def _handle(self, name: str, request: Any, context: Any, body: Callable[[], T]) -> T:
        """``body()``, or the RPC aborted with the status of what went wrong (``body``
        must not abort itself: ``context.abort`` raises a plain Exception)."""
        self._check_token(name, context)
        try:
            return body()
        except P2PNetError as exc:
            code, message = grpc_status(exc), str(exc)
        except _Stopping:
            code, message = grpc.StatusCode.UNAVAILABLE, STOPPING_MESSAGE
        except Exception:
            log.exception("gRPC %s failed", name)
            code, message = grpc.StatusCode.INTERNAL, f"{name} failed in the gateway"
        context.abort(code, message)
        raise AssertionError("context.abort returned")  # it raises

    # --- health and metadata --------------------------------------------------------

    def ServerLive(self, request: Any, context: Any) -> Any:
        return self._handle(
            "ServerLive", request, context, lambda: service_pb2.ServerLiveResponse(live=True)
        )

    def ServerReady(self, request: Any, context: Any) -> Any:
        return self._handle(
            "ServerReady",
            request,
            context,
            lambda: service_pb2.ServerReadyResponse(ready=not self._calls.closing),
        )

    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return self._handle(
            "ServerMetadata",
            request,
            context,
            lambda: service_pb2.ServerMetadataResponse(
                name=SERVER_NAME, version=self._version, extensions=[]
            ),
        )

    def ModelReady(self, request: Any, context: Any) -> Any:
        def ready() -> Any:
            try:
                self._calls.run(self._backend.describe, request.name, request.version or None)
            except UnknownModelError:
                return service_pb2.ModelReadyResponse(ready=False)
            return service_pb2.ModelReadyResponse(ready=True)

        return self._handle("ModelReady", request, context, ready)

    def ModelMetadata(self, request: Any, context: Any) -> Any:
        def metadata() -> Any:
            desc = self._calls.run(self._backend.describe, request.name, request.version or None)
            meta = model_metadata(
                request.name, desc.schema, versions=desc.versions, platform=desc.platform
            )
            tensor = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]],
                outputs=[tensor(**t) for t in meta["outputs"]],
            )

        return self._handle("ModelMetadata", request, context, metadata)

    # --- inference ------------------------------------------------------------------

    def ModelInfer(self, request: Any, context: Any) -> Any:
        def infer() -> Any:
            if not request.model_name:
                raise InvalidInputError("model_name is empty")
            wanted: Sequence[str] = [out.name for out in request.outputs]
            if len(wanted) > self._limits.max_tensors:
                raise PayloadTooLargeError(
                    f"{len(wanted)} requested outputs; this gateway accepts at most "
                    f"{self._limits.max_tensors}"
                )
            inputs = decode_tensors(_tensors(request, self._limits), self._limits)
            timeout = self._timeout
            remaining = context.time_remaining()
            if remaining is not None:
                timeout = min(timeout, remaining)
            if timeout <= 0:
                raise DeadlineExceededError("the call's deadline passed before it started")
            outputs = self._calls.run(
                self._backend.call,
                request.model_name,
                request.model_version or None,
                inputs,
                timeout,
            )
            check_requested_outputs(wanted, outputs)
            reply = service_pb2.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            for name in wanted or list(outputs):
                arr = np.asarray(outputs[name])
                datatype, raw = tensor_to_raw(arr)
                reply.outputs.add(name=name, datatype=datatype, shape=arr.shape)
                reply.raw_output_contents.append(raw)
            return reply

        return self._handle("ModelInfer", request, context, infer)


def _unsupported(name: str) -> Callable[[OipServicer, Any, Any], Any]:
    def method(self: OipServicer, request: Any, context: Any) -> Any:
        self._check_token(name, context)
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{name} is not implemented by p2pnet's Open Inference Protocol gateway; it "
            "serves ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata "
            "and ModelInfer",
        )

    method.__name__ = name
    return method


for _name in UNSUPPORTED:
    setattr(OipServicer, _name, _unsupported(_name))


async def serve_grpc(
    backend: ModelBackend | Peer,
    host: str,
    port: int,
    token: str,
    *,
    timeout: float = 30.0,
    limits: OipLimits = DEFAULT_LIMITS,
    max_workers: int = 8,
    version: str = "",
    task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the OIP gRPC service of ``backend`` (a ``Peer``: its ``PeerBackend``) on
    ``host``:``port`` (0: a free port) until cancelled, then stop the server (a call
    still waiting for the peer ends UNAVAILABLE). ``await nursery.start(serve_grpc,
    ...)`` returns its address, ``host:port`` (``[v6]:port``), once it listens.

    ``token``: the bearer token every RPC but ``OPEN_RPCS`` needs; ``timeout``: the
    seconds one inference may take (less when the client's deadline is nearer);
    ``limits``: ``max_body_bytes`` is the largest message received, the others as for
    REST; ``max_workers``: the handler threads; ``version``: what ServerMetadata
    reports (default: p2pnet's version).

    Raises:
        OSError: the address cannot be bound (taken, or not this machine's).
        ValueError: an empty token.
    """
    if not token:
        raise ValueError("the gRPC API needs a token")
    from p2pnet.peer import Peer

    peer = backend if isinstance(backend, Peer) else None
    models: ModelBackend = PeerBackend(peer) if peer is not None else cast(ModelBackend, backend)
    if not version:
        from p2pnet import __version__

        version = __version__
    calls = _TrioCalls(trio.lowlevel.current_trio_token())
    executor = ThreadPoolExecutor(max_workers, thread_name_prefix="p2pnet-grpc")
    server = grpc.server(
        executor,
        options=[
            ("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            # A taken port is an error, not a port shared with another server.
            ("grpc.so_reuseport", 0),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        OipServicer(models, token, calls, timeout=timeout, limits=limits, version=version),
        server,
    )
    address = f"[{host}]" if ":" in host else host
    try:
        bound = server.add_insecure_port(f"{address}:{port}")
    except RuntimeError as exc:
        executor.shutdown(wait=False)
        raise OSError(f"cannot listen on {address}:{port}: {exc}") from None
    if not bound:
        executor.shutdown(wait=False)
        raise OSError(f"cannot listen on {address}:{port}")
    server.start()
    log.info("OIP gRPC on %s:%d", address, bound)
    if peer is not None:
        peer.grpc_address = f"{address}:{bound}"
    try:
        task_status.started(f"{address}:{bound}")
        await trio.sleep_forever()
    finally:
        if peer is not None:
            peer.grpc_address = None
        calls.close()
        with trio.CancelScope(shield=True):
            stopped = server.stop(grace=1.0)
            await trio.to_thread.run_sync(stopped.wait, 10.0)
        executor.shutdown(wait=False, cancel_futures=True)
