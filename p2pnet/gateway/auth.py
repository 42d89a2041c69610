"""Who may use a peer's HTTP app: one ASGI middleware in front of every route
(docs/gateway.md, "Who may call").

- Every route takes ``Authorization: Bearer <token>`` except the ``OPEN`` ones (the status
  page, which holds no data of its own, /metrics and the OIP health and server metadata
  that load balancers and probes read without credentials).
- While the app listens on loopback only, a request must name a loopback host in its
  ``Host`` header: a web page cannot reach the peer through a DNS name that it points at
  127.0.0.1 (DNS rebinding).

Clients that already exist pass the token as configuration: tritonclient
``headers={"Authorization": "Bearer " + token}``, the OpenAI client ``api_key=token``, an
MCP client its ``headers``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection
from typing import Any, Final

__all__ = ["LOOPBACK_HOSTS", "OPEN", "TokenGuard"]

# Paths anyone on the allowed hosts may GET (or HEAD) without the token.
OPEN: Final = frozenset({"/", "/metrics", "/v2", "/v2/", "/v2/health/live", "/v2/health/ready"})
# The Host header values (without the port) a loopback-only app answers.
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})

Scope = dict[str, Any]


def _host_name(host_header: str) -> str:
    """``host[:port]`` or ``[v6]:port`` without the port, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class TokenGuard:
    """ASGI middleware: refuses (401, or 403 for a foreign ``Host``) before the app sees
    the request, with the local API's JSON error body ``{"error", "code"}``.

    ``hosts``: the Host names accepted (None: any, for an app served beyond loopback,
    where the token alone decides).
    """

    def __init__(self, app: Any, token: str, hosts: Collection[str] | None = LOOPBACK_HOSTS):
        if not token:
            raise ValueError("the HTTP API needs a token")
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._hosts = None if hosts is None else frozenset(h.lower() for h in hosts)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        host = headers.get(b"host", b"").decode("latin-1")
        if self._hosts is not None and _host_name(host) not in self._hosts:
            await _refuse(send, 403, f"Host {host[:100]!r} is not this machine", "forbidden_host")
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        if path in OPEN and method in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if not hmac.compare_digest(headers.get(b"authorization", b""), self._expected):
            await _refuse(send, 401, "missing or wrong token (Authorization: Bearer)",
                          "unauthorized")  # fmt: skip
            return
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": message, "code": code}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
