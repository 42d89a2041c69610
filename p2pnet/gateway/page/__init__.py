"""The peer's status page (docs/gateway.md, "Status page"): one self-contained HTML file,
``index.html`` next to this module (inline CSS and JavaScript, nothing loaded from
elsewhere), served open at ``GET /``; it holds no data, and reads the token-guarded
routes with the token the URL fragment gives it. ``calls_reply`` is what ``GET
/api/calls`` returns.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

if TYPE_CHECKING:
    from p2pnet.peer import Peer

__all__ = ["MAX_CALLS", "calls_reply", "page_html", "page_response"]

# The most recent calls ``GET /api/calls`` returns (the peer keeps 200).
MAX_CALLS: Final = 200

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@functools.cache
def page_html() -> tuple[str, str]:
    """The page's HTML and the Content-Security-Policy it is served with: its own inline
    script and style (by their SHA-256) and requests to this origin only; no images,
    frames, forms sent elsewhere, or inline event handlers."""
    html = resources.files(__package__).joinpath("index.html").read_text(encoding="utf-8")
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(hashes["script"]),
            "style-src " + " ".join(hashes["style"]),
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html, policy


async def page_response(request: Request) -> Response:
    """``GET /``: the page, open (it holds no data)."""
    html, policy = page_html()
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


def calls_reply(peer: Peer, limit: int = MAX_CALLS) -> dict[str, Any]:
    """``GET /api/calls``: the peer's recent calls, newest first (at most ``limit``),
    when it started counting and its wall clock now (unix seconds).

    Raises:
        UsageError: the peer is not running.
    """
    stats = peer.services.call_stats
    return {
        "started_at": stats.started,
        "now": peer.config.clock(),
        "calls": [call.to_dict() for call in stats.recent(limit)],
    }
