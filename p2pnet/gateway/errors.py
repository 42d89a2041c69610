"""The HTTP status of a p2pnet error: one table for every gateway (the local API, the
Open Inference Protocol, the OpenAI-style chat API, MCP over HTTP), read from whose
fault the error is (p2pnet.errors; docs/gateway.md, "Errors")."""

from __future__ import annotations

from p2pnet.errors import (
    CreditExceededError,
    DeadlineExceededError,
    NetworkError,
    P2PNetError,
    PayloadTooLargeError,
    PeerBusyError,
    PermissionDeniedError,
    UnknownModelError,
    UnknownSessionError,
    UsageError,
)

__all__ = ["http_status"]


def http_status(error: P2PNetError) -> int:
    """404 nobody offers the model (or the session is gone), 403 not served to this peer,
    413 too large, 400 any other fault of the request, 504 out of time, 503 providers
    exist but none could answer now (busy, over credit, unreachable), 502 the providers
    failed (the model raised, a broken reply)."""
    if isinstance(error, UnknownModelError | UnknownSessionError):
        return 404
    if isinstance(error, PermissionDeniedError):
        return 403
    if isinstance(error, PayloadTooLargeError):
        return 413
    if isinstance(error, UsageError):
        return 400
    if isinstance(error, DeadlineExceededError):
        return 504
    if isinstance(error, PeerBusyError | CreditExceededError | NetworkError):
        return 503
    return 502
