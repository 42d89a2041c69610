"""``p2pnet chat``: a conversation with a generative model found in the swarm, one user
message per line of stdin, each reply streamed as it is generated; the provider keeps
the conversation's cache in a session between turns."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from rich.text import Text

from p2pnet.cli.options import (
    Command,
    DiscoveryOptions,
    ParentParsers,
    Subparsers,
    generation_params,
    load_identity,
    running_peer_api,
)
from p2pnet.cli.render import err, exit_status
from p2pnet.errors import P2PNetError

# trio and the streaming of replies are imported where they are used, a peer of the
# command's own only when there is no running peer to go through.
if TYPE_CHECKING:
    from p2pnet.cli.stream import Interrupts, JsonReplies, ReplyOutput, TextReplies
    from p2pnet.core.generation import GenerationParams
    from p2pnet.discovery.generation import ChatSession
    from p2pnet.discovery.service import Offer

__all__ = ["ChatOptions", "StdinLines", "add_chat_parser", "run_chat"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """The options of ``p2pnet chat``."""

    discovery: DiscoveryOptions
    system: str | None
    params: GenerationParams

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ChatOptions:
        """The parsed arguments as typed options.

        Raises:
            UsageError: a generation option out of range (the message names it).
        """
        return cls(DiscoveryOptions.from_args(args), args.system, generation_params(args))


def add_chat_parser(sub: Subparsers, parents: ParentParsers) -> None:
    p = sub.add_parser(
        "chat",
        parents=[parents.common, parents.finding, parents.generation],
        help="chat with a generative model found by task or ID: one message per line of "
        "stdin, replies streamed",
    )
    p.add_argument("--system", metavar="TEXT", help="a system message to open the conversation")
    p.set_defaults(handler=Command(ChatOptions.from_args, run_chat))


def run_chat(options: ChatOptions) -> int:
    """Chat until stdin ends (Ctrl-D) or Ctrl-C at the prompt; 0 then, INTERRUPTED after
    Ctrl-C. A failed turn ends a chat whose stdin is not a terminal with that error's
    status; at a terminal the chat goes on."""
    from p2pnet.cli.stream import run_interruptible

    return run_interruptible(functools.partial(_chat, options), verbose=options.discovery.verbose)


async def _chat(options: ChatOptions, interrupts: Interrupts) -> int:
    from p2pnet.cli.stream import JsonReplies, TextReplies, stream_remote_reply

    discovery = options.discovery
    output: TextReplies | JsonReplies = JsonReplies() if discovery.json else TextReplies()
    interactive = sys.stdin is not None and sys.stdin.isatty()
    try:
        task, model = discovery.wanted()  # the caller's mistakes before anything else
        api = await running_peer_api(discovery)
        if api is not None:
            async with api:
                chat = await api.chat(
                    task=task, model=model, system=options.system, timeout=discovery.timeout
                )
                async with chat:

                    async def remote_turn(line: str) -> None:
                        async with chat.send(line, options.params) as reply:
                            await stream_remote_reply(reply, output, interrupts)

                    return await _converse(remote_turn, output, interrupts, interactive)
        join = discovery.swarm.resolve()
        task, model = discovery.target(join)
        identity, _, _ = load_identity(discovery.identity)
        async with discovery.joining_peer(identity, join) as peer:
            session = peer.chat(
                task=task, model=model, system=options.system, timeout=discovery.timeout
            )
            async with session:
                return await _converse(
                    _local_turns(session, options.params, output, interrupts),
                    output,
                    interrupts,
                    interactive,
                )
    except P2PNetError as exc:
        output.error(exc)
        return exit_status(exc)


def _local_turns(
    session: ChatSession, params: GenerationParams, output: ReplyOutput, interrupts: Interrupts
) -> Callable[[str], Awaitable[None]]:
    """A turn of ``session``: send a message, stream its reply (the provider shown when
    it changes)."""
    from p2pnet.cli.stream import stream_reply

    shown: Offer | None = None

    async def turn(line: str) -> None:
        nonlocal shown
        async with session.send(line, params) as generation:
            try:
                await stream_reply(generation, output, interrupts, shown=shown)
            finally:
                shown = generation.offer or shown

    return turn


async def _converse(
    turn: Callable[[str], Awaitable[None]],
    output: ReplyOutput,
    interrupts: Interrupts,
    interactive: bool,
) -> int:
    """Send each line of stdin and stream the reply (``turn``), until stdin ends or
    Ctrl-C at the prompt."""
    from p2pnet.cli.stream import INTERRUPTED

    lines = StdinLines()
    if interactive:
        err.print(Text("Ctrl-C stops a reply; Ctrl-D or Ctrl-C at the prompt ends the chat", "dim"))
    while True:
        line = await _prompt(lines, interrupts, interactive)
        if line is None:
            return INTERRUPTED if lines.interrupted else 0
        if not line.strip():
            continue
        try:
            await turn(line)
        except P2PNetError as exc:
            output.error(exc)
            if not interactive:
                return exit_status(exc)


async def _prompt(lines: StdinLines, interrupts: Interrupts, interactive: bool) -> str | None:
    """The next message: a line of stdin after a prompt marker (on stderr, when stdin is
    a terminal); None at its end or after Ctrl-C."""
    import trio

    if interactive:
        err.print(Text("> ", style="bold"), end="")
    with trio.CancelScope() as scope:

        async def leave() -> None:
            lines.interrupted = True
            scope.cancel()

        previous, interrupts.handler = interrupts.handler, leave
        try:
            line = await lines.readline()
        finally:
            interrupts.handler = previous
    if scope.cancelled_caught or line is None:
        if interactive:
            err.print()  # the shell's prompt on a line of its own
        return None
    return line


class StdinLines:
    """Lines of stdin, read in a worker thread so that the command stays responsive:
    from its file descriptor with ``os.read`` (a read left blocked at exit holds no
    lock of Python's), decoded as UTF-8 (bytes that are not: U+FFFD); a last line
    without a line break counts. ``interrupted``: Ctrl-C ended the reading."""

    def __init__(self) -> None:
        self._buffer = b""
        self._eof = False
        self.interrupted = False

    async def readline(self) -> str | None:
        """The next line without its line break; None at the end of stdin."""
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):  # replaced by an object without one
            line = await _in_thread(sys.stdin.readline)
            return line.rstrip("\r\n") if line else None
        while b"\n" not in self._buffer and not self._eof:
            data = await _in_thread(functools.partial(os.read, fd, 1 << 16))
            self._eof = not data
            self._buffer += data
        if not self._buffer:
            return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace").rstrip("\r")


async def _in_thread(read: Callable[[], T]) -> T:
    """``read()`` in a worker thread, left to finish alone if the caller is cancelled (a
    read of stdin cannot be interrupted)."""
    import trio

    # (trio-typing's stubs, pulled in by py-libp2p, predate abandon_on_cancel)
    return await trio.to_thread.run_sync(read, abandon_on_cancel=True)  # type: ignore[call-arg]
