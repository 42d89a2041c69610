"""Streamed replies of generative models, as ``p2pnet chat`` and ``p2pnet call`` print
them: the text as it arrives, or one JSON event per line; and Ctrl-C, which stops the
reply in progress rather than the command.

    ReplyOutput   where a reply goes: ``TextReplies`` (the terminal) or ``JsonReplies``
    stream_reply  one Generation, streamed to a ReplyOutput; Ctrl-C cancels it
    Interrupts    what Ctrl-C does at each moment of a command (run_interruptible)

The events of ``--json`` (docs/cli.md): ``provider`` (the offer that answers, when it
first answers or changes), ``replay`` (the conversation moved to another provider),
``chunk`` (text and token IDs), ``done`` (how the reply ended, with its timing),
``error`` (code and message).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import trio
from rich.console import Console
from rich.text import Text

from p2pnet.cli.render import err, error_text, peer_text, reply_safe
from p2pnet.core.generation import GenerationSummary
from p2pnet.core.messages import Chunk
from p2pnet.discovery.generation import Generation, Replay
from p2pnet.discovery.service import Offer
from p2pnet.errors import P2PNetError

__all__ = [
    "INTERRUPTED",
    "Interrupts",
    "JsonReplies",
    "ReplyOutput",
    "ReplyTiming",
    "TextReplies",
    "run_interruptible",
    "stream_reply",
]

INTERRUPTED = 130
"""The exit status of a command that Ctrl-C stopped."""


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


class ReplyOutput(Protocol):
    """Where the events of a reply go."""

    def provider(self, offer: Offer) -> None:
        """The provider that answers (when it first answers, or changes)."""

    def replay(self, replay: Replay) -> None:
        """The conversation was replayed on another provider."""

    def chunk(self, chunk: Chunk) -> None:
        """A piece of the reply."""

    def done(self, summary: GenerationSummary, timing: ReplyTiming) -> None:
        """The reply ended."""

    def interrupted(self) -> None:
        """The reply was dropped (Ctrl-C before the provider answered, or twice)."""

    def error(self, exc: P2PNetError) -> None:
        """The reply (or the command) failed."""


class TextReplies:
    """Replies for a person: the reply's text on ``file`` (stdout) as it comes, made
    ``reply_safe`` and flushed per chunk; who answers, replays, how each reply ended and
    errors as lines on ``notes`` (stderr), dim. Text from other peers in the notes
    (names, IDs, reasons) is ``terminal_safe``, one line each."""

    def __init__(self, file: TextIO | None = None, notes: Console = err) -> None:
        self._file = file
        self._notes = notes
        self._line_open = False  # reply text written since its last line break

    @property
    def file(self) -> TextIO:
        return self._file if self._file is not None else sys.stdout

    def provider(self, offer: Offer) -> None:
        record = offer.record
        self._note(
            peer_text(record.name)
            + " "
            + peer_text(record.model_id)
            + " on "
            + peer_text(record.peer_id)
        )

    def replay(self, replay: Replay) -> None:
        lost = (
            Text("session on ") + peer_text(replay.from_peer) + " lost"
            if replay.from_peer is not None
            else Text("session lost")
        )
        self._note(
            lost
            + " ("
            + peer_text(replay.reason)
            + "); conversation replayed on "
            + peer_text(replay.to_peer)
        )

    def chunk(self, chunk: Chunk) -> None:
        if not chunk.text:
            return
        self.file.write(reply_safe(chunk.text))
        self.file.flush()
        self._line_open = not chunk.text.endswith("\n")

    def done(self, summary: GenerationSummary, timing: ReplyTiming) -> None:
        self.end_line()
        parts = [summary.finish, f"{summary.completion_tokens} tokens"]
        if timing.ttft_ms is not None:
            parts.append(f"first after {timing.ttft_ms:.0f} ms")
        if timing.tokens_per_s is not None:
            parts.append(f"{timing.tokens_per_s:.0f} tokens/s")
        prompt = f"prompt {summary.prompt_tokens} tokens"
        if summary.cached_tokens:
            prompt += f" + {summary.cached_tokens} cached"
        parts.append(prompt)
        self._note(Text(" · ".join(parts)))

    def interrupted(self) -> None:
        self.end_line()
        self._note(Text("interrupted"))

    def error(self, exc: P2PNetError) -> None:
        self.end_line()
        self._notes.print(error_text(exc), soft_wrap=True)

    def end_line(self) -> None:
        """End the reply's last line, if it is open."""
        if self._line_open:
            self.file.write("\n")
            self.file.flush()
            self._line_open = False

    def _note(self, text: Text) -> None:
        self.end_line()
        text.stylize("dim")
        self._notes.print(text, soft_wrap=True)


class JsonReplies:
    """Replies for a program: one JSON object per line on ``file`` (stdout), flushed per
    line. JSON escapes control characters itself; values are exactly as they came."""

    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file

    def provider(self, offer: Offer) -> None:
        self._event("provider", **offer.to_dict())

    def replay(self, replay: Replay) -> None:
        self._event(
            "replay", from_peer=replay.from_peer, to_peer=replay.to_peer, reason=replay.reason
        )

    def chunk(self, chunk: Chunk) -> None:
        self._event("chunk", text=chunk.text, tokens=list(chunk.tokens))

    def done(self, summary: GenerationSummary, timing: ReplyTiming) -> None:
        self._event(
            "done",
            finish=summary.finish,
            prompt_tokens=summary.prompt_tokens,
            completion_tokens=summary.completion_tokens,
            cached_tokens=summary.cached_tokens,
            session=summary.session,
            ttft_ms=None if timing.ttft_ms is None else round(timing.ttft_ms, 1),
            tokens_per_s=None if timing.tokens_per_s is None else round(timing.tokens_per_s, 1),
        )

    def interrupted(self) -> None:
        self._event("error", code="interrupted", message="interrupted before the reply ended")

    def error(self, exc: P2PNetError) -> None:
        self._event("error", code=exc.code, message=str(exc))

    def _event(self, event: str, **fields: Any) -> None:
        file = self._file if self._file is not None else sys.stdout
        file.write(json.dumps({"event": event, **fields}) + "\n")
        file.flush()


class Interrupts:
    """What Ctrl-C (SIGINT) does at each moment of a command that reads SIGINT itself
    (``run_interruptible``): ``handler`` is awaited for each one. Its default cancels
    ``scope`` (the whole command) and sets ``stopped``."""

    def __init__(self, scope: trio.CancelScope) -> None:
        self._scope = scope
        self.stopped = False
        self.handler: Callable[[], Awaitable[None]] = self.stop

    async def stop(self) -> None:
        """Stop the command."""
        self.stopped = True
        self._scope.cancel()

    async def watch(self, signals: Any) -> None:
        async for _ in signals:
            await self.handler()


def run_interruptible(command: Callable[[Interrupts], Awaitable[int]], *, verbose: int = 0) -> int:
    """``trio.run`` of ``command``, with Ctrl-C as its Interrupts say; the exit status is
    ``command``'s, or INTERRUPTED if Ctrl-C stopped the command.

    The command notes replays itself (``ReplyOutput.replay``), so the library's warning
    of one is logged with ``-v`` (``verbose``) only."""
    if not verbose:
        logging.getLogger(Generation.__module__).setLevel(logging.ERROR)

    async def main() -> int:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            status = INTERRUPTED  # unless the command returns
            async with trio.open_nursery() as nursery:
                interrupts = Interrupts(nursery.cancel_scope)
                nursery.start_soon(interrupts.watch, signals)
                status = await command(interrupts)
                nursery.cancel_scope.cancel()
        return INTERRUPTED if interrupts.stopped else status

    return trio.run(main)


async def stream_reply(
    generation: Generation,
    output: ReplyOutput,
    interrupts: Interrupts,
    *,
    shown: Offer | None = None,
) -> GenerationSummary | None:
    """Stream ``generation`` to ``output``: the provider first if it is not ``shown``
    (the one shown last), a replay if there was one, then each chunk, then how it ended.

    Ctrl-C during the reply asks the provider to stop (``Generation.cancel``): the reply
    ends with finish "cancelled" and what came before it. Ctrl-C before a provider
    answered, or a second one, drops the reply (``output.interrupted``; returns None).

    Raises:
        P2PNetError: the reply failed (what came before the error was written).
    """
    cancelling = False
    with trio.CancelScope() as scope:

        async def interrupt() -> None:
            nonlocal cancelling
            if generation.offer is None or cancelling:
                scope.cancel()
                return
            cancelling = True
            try:
                await generation.cancel()
            except P2PNetError:
                scope.cancel()

        previous, interrupts.handler = interrupts.handler, interrupt
        try:
            started = False
            async for chunk in generation:
                if not started:
                    started = True
                    _announce(generation, output, shown)
                output.chunk(chunk)
            if not started:
                _announce(generation, output, shown)
        finally:
            interrupts.handler = previous
    if scope.cancelled_caught:
        await generation.aclose()
        output.interrupted()
        return None
    summary = generation.summary
    assert summary is not None  # the iteration ended with the provider's Done
    output.done(summary, ReplyTiming.of(generation, summary, trio.current_time()))
    return summary


def _announce(generation: Generation, output: ReplyOutput, shown: Offer | None) -> None:
    """The replay and provider of a reply that started, before its text."""
    if generation.replay is not None:
        output.replay(generation.replay)
    offer = generation.offer
    if offer is not None and (
        shown is None
        or (offer.record.peer_id, offer.record.model_id)
        != (shown.record.peer_id, shown.record.model_id)
    ):
        output.provider(offer)
