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

import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import trio
from rich.console import Console
from rich.text import Text

from p2pnet.cli.render import err, error_text, peer_text, reply_safe
from p2pnet.errors import P2PNetError
from p2pnet.gateway.events import (
    ReplyTiming,
    chunk_event,
    done_event,
    encode_event,
    error_event,
    provider_event,
    replay_event,
)

# A reply streamed by the running peer's API needs none of what a peer of the command's
# own streams its replies with.
if TYPE_CHECKING:
    from p2pnet.core.generation import GenerationSummary
    from p2pnet.core.messages import Chunk
    from p2pnet.discovery.generation import Generation, Replay
    from p2pnet.discovery.service import Offer

__all__ = [
    "INTERRUPTED",
    "Interrupts",
    "JsonReplies",
    "RemoteReply",
    "ReplyOutput",
    "ReplyTiming",
    "TextReplies",
    "run_interruptible",
    "stream_remote_reply",
    "stream_reply",
]

INTERRUPTED = 130
"""The exit status of a command that Ctrl-C stopped."""

# The logger of p2pnet.discovery.generation (Generation), named so as not to load it.
_GENERATION_LOGGER = "p2pnet.discovery.generation"


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
    (names, IDs, reasons) is ``terminal_safe``, one line each.

    ``event`` shows one event of the ``--json`` form (p2pnet.gateway.events), as the
    local API streams them; the other methods are that for a reply of this process."""

    def __init__(self, file: TextIO | None = None, notes: Console = err) -> None:
        self._file = file
        self._notes = notes
        self._line_open = False  # reply text written since its last line break

    @property
    def file(self) -> TextIO:
        return self._file if self._file is not None else sys.stdout

    def provider(self, offer: Offer) -> None:
        record = offer.record
        self._provider(record.name, record.model_id, record.peer_id)

    def replay(self, replay: Replay) -> None:
        self.event(replay_event(replay))

    def chunk(self, chunk: Chunk) -> None:
        self.event(chunk_event(chunk))

    def done(self, summary: GenerationSummary, timing: ReplyTiming) -> None:
        self.event(done_event(summary, timing))

    def event(self, event: dict[str, Any]) -> None:
        """Show a provider, replay, chunk or done event (others are ignored)."""
        kind = event.get("event")
        if kind == "provider":
            self._provider(str(event["name"]), str(event["model_id"]), str(event["peer_id"]))
        elif kind == "replay":
            lost = (
                Text("session on ") + peer_text(str(event["from_peer"])) + " lost"
                if event["from_peer"] is not None
                else Text("session lost")
            )
            self._note(
                lost
                + " ("
                + peer_text(str(event["reason"]))
                + "); conversation replayed on "
                + peer_text(str(event["to_peer"]))
            )
        elif kind == "chunk":
            text = str(event["text"])
            if not text:
                return
            self.file.write(reply_safe(text))
            self.file.flush()
            self._line_open = not text.endswith("\n")
        elif kind == "done":
            self._done(event)

    def _provider(self, name: str, model_id: str, peer_id: str) -> None:
        self._note(peer_text(name) + " " + peer_text(model_id) + " on " + peer_text(peer_id))

    def _done(self, event: dict[str, Any]) -> None:
        self.end_line()
        parts = [str(event["finish"]), f"{event['completion_tokens']} tokens"]
        if event["ttft_ms"] is not None:
            parts.append(f"first after {event['ttft_ms']:.0f} ms")
        if event["tokens_per_s"] is not None:
            parts.append(f"{event['tokens_per_s']:.0f} tokens/s")
        prompt = f"prompt {event['prompt_tokens']} tokens"
        if event["cached_tokens"]:
            prompt += f" + {event['cached_tokens']} cached"
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
    line (p2pnet.gateway.events). JSON escapes control characters itself; values are
    exactly as they came."""

    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file

    def provider(self, offer: Offer) -> None:
        self.event(provider_event(offer))

    def replay(self, replay: Replay) -> None:
        self.event(replay_event(replay))

    def chunk(self, chunk: Chunk) -> None:
        self.event(chunk_event(chunk))

    def done(self, summary: GenerationSummary, timing: ReplyTiming) -> None:
        self.event(done_event(summary, timing))

    def interrupted(self) -> None:
        self.event(error_event("interrupted", "interrupted before the reply ended"))

    def error(self, exc: P2PNetError) -> None:
        self.event(error_event(exc.code, str(exc)))

    def event(self, event: dict[str, Any]) -> None:
        """Write one event as its line."""
        file = self._file if self._file is not None else sys.stdout
        file.write(encode_event(event))
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
        logging.getLogger(_GENERATION_LOGGER).setLevel(logging.ERROR)

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


class RemoteReply(Protocol):
    """A reply streamed by the running peer's local API (``ApiClient.generate``,
    ``ApiChat.send``): its events, and a way to ask for its end."""

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """The events (p2pnet.gateway.events) but errors, which it raises as P2PNetError."""
        ...

    async def cancel(self) -> bool:
        """Ask the provider to stop the reply; False when no provider answered yet."""
        ...

    async def aclose(self) -> None:
        """Drop the reply (the running peer then drops its generation)."""
        ...


async def stream_remote_reply(
    reply: RemoteReply, output: TextReplies | JsonReplies, interrupts: Interrupts
) -> dict[str, Any] | None:
    """``stream_reply`` for a reply of the running peer's API: each event to ``output``;
    the done event, or None when Ctrl-C dropped the reply. Ctrl-C does what it does in
    ``stream_reply``: once a provider answered it asks it to stop (the reply ends with
    finish "cancelled"); before that, or a second time, it drops the reply.

    Raises:
        P2PNetError: the reply failed (what came before the error was written).
    """
    cancelling = False
    done: dict[str, Any] | None = None
    with trio.CancelScope() as scope:

        async def interrupt() -> None:
            nonlocal cancelling
            if cancelling:
                scope.cancel()
                return
            cancelling = True
            try:
                if not await reply.cancel():
                    scope.cancel()
            except P2PNetError:
                scope.cancel()

        previous, interrupts.handler = interrupts.handler, interrupt
        try:
            async for event in reply:
                output.event(event)
                if event.get("event") == "done":
                    done = event
        finally:
            interrupts.handler = previous
    if scope.cancelled_caught:
        with trio.CancelScope(shield=True):
            await reply.aclose()
        output.interrupted()
        return None
    return done
