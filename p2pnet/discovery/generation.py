"""Generation by task or model across the swarm: find the providers, stream from the first
that answers, and keep a conversation going in a session, moving it to another provider
of the same model (by replaying it) when its provider is gone.

``Generation`` is what ``Peer.generate`` and ``ChatSession.send`` return: an async
iterator of the reply's chunks that finds its provider on first use. A provider that
fails before its first chunk (unreachable, busy, no room for a session, gone) is
passed over for the next; once chunks flow, a failure ends the reply with that error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from p2pnet.core.failover import failure_report, is_provider_failure
from p2pnet.core.generation import GenerationParams, GenerationSummary, Prompt
from p2pnet.core.messages import Chunk
from p2pnet.discovery.service import Offer
from p2pnet.errors import (
    DeadlineExceededError,
    P2PNetError,
    UnknownModelError,
    UnknownSessionError,
)
from p2pnet.invoke.client import GenerationStream

__all__ = ["ChatSession", "Generation", "Replay", "StreamOpener", "first_answer"]

log = logging.getLogger(__name__)

StreamOpener = Callable[..., GenerationStream]
"""``open(offer, prompt, params, session=, keep=, timeout=)``: a stream to the offer's
peer (``InvokeClient.generate`` on its address and model)."""


async def first_answer(
    offers: Sequence[Offer], open_stream: Callable[[Offer], GenerationStream]
) -> tuple[Offer, GenerationStream, Chunk | None]:
    """The first of ``offers`` whose stream answers: the offer, its stream, and its first
    chunk (None when the reply ended at once). Providers that fail on their side are
    passed over.

    Raises:
        UnknownModelError: no offers.
        The caller's own errors at once (invalid input, an unknown session); the most
        telling provider error when all fail (``failure_report``).
    """
    if not offers:
        raise UnknownModelError("no provider offers it")
    attempts: list[tuple[str, P2PNetError]] = []
    for offer in offers:
        try:
            return offer, *await _first_chunk(open_stream(offer))
        except P2PNetError as exc:
            if not is_provider_failure(exc):
                raise
            log.info("provider %s failed before its first chunk: %s", offer.record.peer_id, exc)
            attempts.append((offer.record.peer_id, exc))
    raise failure_report(attempts)


async def _first_chunk(stream: GenerationStream) -> tuple[GenerationStream, Chunk | None]:
    """``stream`` and its first chunk (None when the reply ended at once).

    Raises:
        What the stream raises, the stream dropped first.
    """
    try:
        return stream, await stream.__anext__()
    except StopAsyncIteration:
        return stream, None
    except P2PNetError:
        await stream.aclose()
        raise


@dataclass(frozen=True, slots=True)
class Replay:
    """A session moved: ``from_peer`` (None if the conversation had no session yet) lost
    it, for ``reason``; ``to_peer`` holds it now, the conversation replayed there."""

    from_peer: str | None
    to_peer: str
    reason: str


class Generation:
    """One reply, streamed: ``async for chunk in generation`` (see the module docstring).

    After the iteration, ``summary`` says how it ended, ``offer`` who answered, and
    ``text`` the whole reply; ``replay`` is set when a session had to move. ``cancel()``
    stops the provider within a token; ``aclose()`` (or leaving ``async with``) drops the
    stream.
    """

    def __init__(
        self,
        start: Callable[[Generation], Awaitable[tuple[Offer, GenerationStream, Chunk | None]]],
        on_done: Callable[[Generation], None] | None = None,
    ) -> None:
        self._start = start
        self._on_done = on_done
        self._stream: GenerationStream | None = None
        self._first: Chunk | None = None
        self._ended = False
        self._pieces: list[str] = []
        self.offer: Offer | None = None
        self.replay: Replay | None = None
        self.started_at: float | None = None
        self.first_chunk_at: float | None = None

    @property
    def summary(self) -> GenerationSummary | None:
        return self._stream.summary if self._stream is not None else None

    @property
    def text(self) -> str:
        """The reply's text so far."""
        return "".join(self._pieces)

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Chunk:
        if self._ended:
            raise StopAsyncIteration
        if self._stream is None:
            self.started_at = trio.current_time()
            self.offer, self._stream, self._first = await self._start(self)
            if self._first is None:
                return await self._end()
        if self._first is not None:
            chunk, self._first = self._first, None
        else:
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                return await self._end()
        if self.first_chunk_at is None:
            self.first_chunk_at = trio.current_time()
        self._pieces.append(chunk.text)
        return chunk

    async def _end(self) -> Chunk:
        self._ended = True
        if self._on_done is not None:
            self._on_done(self)
        raise StopAsyncIteration

    async def cancel(self) -> None:
        """Ask the provider to stop; the iteration then ends (finish "cancelled")."""
        if self._stream is not None:
            await self._stream.cancel()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
        self._ended = True

    async def collect(self) -> str:
        """Wait for the whole reply; its text."""
        async for _ in self:
            pass
        return self.text


@dataclass
class ChatSession:
    """A conversation with a generative model of ``task`` or ``model`` somewhere in the
    swarm, its cache kept by the provider between turns.

    ``send(text)`` streams the reply to one more user message. The first turn finds a
    provider and opens a session there; later turns send only the new message. When the
    provider is gone or has dropped the session (expired, restarted), the turn replays
    the whole conversation on another provider of the same model (or on the same one,
    in a new session) and records it in ``replays`` (and the Generation's ``replay``).

    Args:
        find: the offers of a task or model, best first (``ModelFinder.find``).
        open_stream: see StreamOpener.
        close_stream: drops a session on a provider (``InvokeClient.close_session``).
    """

    find: Callable[..., Awaitable[list[Offer]]]
    open_stream: StreamOpener
    close_remote: Callable[[Offer, str], Awaitable[None]]
    task: str | None = None
    model: str | None = None
    system: str | None = None
    timeout: float = 60.0
    messages: list[tuple[str, str]] = field(default_factory=list)
    replays: list[Replay] = field(default_factory=list)
    offer: Offer | None = None
    session_id: str | None = None

    def send(self, text: str, params: GenerationParams | None = None) -> Generation:
        """The reply to the user message ``text``, streamed (see ``Generation``)."""
        params = params or GenerationParams()
        turn = ("user", text)

        async def start(generation: Generation) -> tuple[Offer, GenerationStream, Chunk | None]:
            deadline = trio.current_time() + self.timeout
            if self.offer is not None and self.session_id is not None:
                offer, session_id = self.offer, self.session_id
                stream = self.open_stream(
                    offer,
                    Prompt(messages=(turn,)),
                    params,
                    session=session_id,
                    timeout=self.timeout,
                )
                try:
                    return offer, *await _first_chunk(stream)
                except P2PNetError as exc:
                    if not (is_provider_failure(exc) or isinstance(exc, UnknownSessionError)):
                        raise
                    reason = f"{exc.code}: {exc.message}"
                    log.warning(
                        "session on %s lost (%s); replaying %d messages elsewhere",
                        offer.record.peer_id,
                        reason,
                        len(self.messages),
                    )
                    generation.replay = Replay(offer.record.peer_id, "", reason)
            offers = await self._offers(deadline)
            conversation = (
                [("system", self.system)] if self.system and not self.messages else []
            ) + [*self.messages, turn]

            def open_new(offer: Offer) -> GenerationStream:
                return self.open_stream(
                    offer,
                    Prompt(messages=tuple(conversation)),
                    params,
                    keep=True,
                    timeout=max(0.001, deadline - trio.current_time()),
                )

            offer, stream, first = await first_answer(offers, open_new)
            if generation.replay is not None:
                generation.replay = Replay(
                    generation.replay.from_peer, offer.record.peer_id, generation.replay.reason
                )
                self.replays.append(generation.replay)
            if self.system and not self.messages:
                self.messages.append(("system", self.system))
            self.offer = offer
            return offer, stream, first

        def done(generation: Generation) -> None:
            summary = generation.summary
            self.messages += [turn, ("assistant", generation.text)]
            self.session_id = summary.session if summary is not None else None

        return Generation(start, done)

    async def _offers(self, deadline: float) -> list[Offer]:
        """Providers to (re)open the session on: the same model once one answered (the
        one that failed last), else the task's or model's offers."""
        model = self.offer.record.model_id if self.offer is not None else self.model
        task = None if model is not None else self.task
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            raise DeadlineExceededError("no time left to find a provider")
        offers = await self.find(task=task, model=model, timeout=remaining / 2)
        if self.offer is not None:
            failed = self.offer.record.peer_id
            offers.sort(key=lambda o: o.record.peer_id == failed)
        return offers

    async def close(self) -> None:
        """End the session on its provider (if it still holds it)."""
        offer, session_id = self.offer, self.session_id
        self.session_id = None
        if offer is not None and session_id is not None:
            try:
                await self.close_remote(offer, session_id)
            except P2PNetError as exc:
                log.debug("closing session on %s: %s", offer.record.peer_id, exc)

    async def __aenter__(self) -> ChatSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
