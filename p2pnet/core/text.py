"""Text from another peer, made safe to put in an error message: quoted and bounded.

A peer that sends a 4 MiB model name must not get 4 MiB echoed back in the
error reply, nor fill a log line with it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_QUOTED_CHARS", "quote_bounded"]

MAX_QUOTED_CHARS: Final = 80


def quote_bounded(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with an ellipsis and the full length.

    Strings longer than a few times ``limit`` are cut before ``repr`` runs, so the cost
    does not grow with the value.
    """
    if isinstance(value, str | bytes) and len(value) > limit:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{repr(value[:limit])[:limit]}… ({len(value)} {unit})"
    if isinstance(value, list | dict | tuple):
        return f"a {type(value).__name__} of {len(value)} entries"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"
