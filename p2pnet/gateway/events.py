"""The events of a streamed reply, one JSON object a line (NDJSON): what ``p2pnet call
--prompt --json`` and ``p2pnet chat --json`` print, and what the local API streams from
``POST /api/generate`` and ``POST /api/chat/{id}`` (docs/gateway.md, "Local HTTP API
and metrics"). One set of builders for both, so the two are the same bytes.

    {"event": "provider", <Offer.to_dict()>}          the offer that answers
    {"event": "replay", "from_peer", "to_peer", "reason"}
    {"event": "chunk", "text": str, "tokens": [int]}
    {"event": "done", "finish", "prompt_tokens", "completion_tokens", "cached_tokens",
     "session", "ttft_ms", "tokens_per_s"}
    {"event": "error", "code": str, "message": str}

Pure: no I/O, and cheap to import (the CLI's client path loads it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pnet.core.generation import GenerationSummary
    from p2pnet.core.messages import Chunk
    from p2pnet.discovery.generation import Generation, Replay
    from p2pnet.discovery.service import Offer

__all__ = [
    "ReplyTiming",
    "chunk_event",
    "done_event",
    "encode_event",
    "error_event",
    "provider_event",
    "replay_event",
]


@dataclass(frozen=True, slots=True)
class ReplyTiming:
    """How fast a reply came: milliseconds from asking to the first token (finding the
    provider included), and tokens per second after it (None with fewer than two)."""

    ttft_ms: float | None
    tokens_per_s: float | None

    @classmethod
    def of(cls, generation: Generation, summary: GenerationSummary, ended: float) -> ReplyTiming:
        """The timing of ``generation``, which ended at ``ended`` (trio clock)."""
        started, first = generation.started_at, generation.first_chunk_at
        if started is None or first is None:
            return cls(None, None)
        rate = None
        if summary.completion_tokens > 1 and ended > first:
            rate = (summary.completion_tokens - 1) / (ended - first)
        return cls((first - started) * 1000, rate)


def provider_event(offer: Offer) -> dict[str, Any]:
    return {"event": "provider", **offer.to_dict()}


def replay_event(replay: Replay) -> dict[str, Any]:
    return {
        "event": "replay",
        "from_peer": replay.from_peer,
        "to_peer": replay.to_peer,
        "reason": replay.reason,
    }


def chunk_event(chunk: Chunk) -> dict[str, Any]:
    return {"event": "chunk", "text": chunk.text, "tokens": list(chunk.tokens)}


def done_event(summary: GenerationSummary, timing: ReplyTiming) -> dict[str, Any]:
    return {
        "event": "done",
        "finish": summary.finish,
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens,
        "cached_tokens": summary.cached_tokens,
        "session": summary.session,
        "ttft_ms": None if timing.ttft_ms is None else round(timing.ttft_ms, 1),
        "tokens_per_s": None if timing.tokens_per_s is None else round(timing.tokens_per_s, 1),
    }


def error_event(code: str, message: str) -> dict[str, Any]:
    return {"event": "error", "code": code, "message": message}


def encode_event(event: dict[str, Any]) -> str:
    """One event as its line: ``json.dumps`` with its default separators (``", "``,
    ``": "``), non-ASCII escaped, and a line feed."""
    return json.dumps(event) + "\n"
