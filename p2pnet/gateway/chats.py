"""The conversations the local API holds for its clients (``POST /api/chat``): one
``ChatSession`` of the peer per chat ID, at most ``max_chats`` at once, each closed once
it has been idle ``idle_timeout`` seconds; and the replies streamed now, by reply ID, so
that a client can ask one to stop (docs/gateway.md, "Local HTTP API and metrics").

Idle chats are closed when the table is next used (any chat request), not by a timer:
a closed chat's ID is unknown from then on, and its provider's session is ended then
(the provider also ends it after its own idle time).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from p2pnet.discovery.generation import ChatSession, Generation
from p2pnet.discovery.service import Offer
from p2pnet.errors import SessionLimitError, UnknownSessionError

__all__ = ["CHAT_IDLE_TIMEOUT", "MAX_CHATS", "Chat", "ChatTable", "Replies"]

log = logging.getLogger(__name__)

# Chats held at once, and seconds a chat may stay idle, unless build_app says otherwise.
MAX_CHATS = 16
CHAT_IDLE_TIMEOUT = 600.0


@dataclass
class Chat:
    """A held conversation: its session, the offer last announced to its client (a turn
    announces its provider only when it changes, as ``p2pnet chat`` does), when it was
    last used (trio clock), and whether a reply is streaming."""

    session: ChatSession
    last_used: float
    shown: Offer | None = None
    busy: bool = False


@dataclass
class ChatTable:
    """The chats of one API, by ID. ``clock``: the time (trio's by default)."""

    max_chats: int = MAX_CHATS
    idle_timeout: float = CHAT_IDLE_TIMEOUT
    clock: Callable[[], float] = trio.current_time
    chats: dict[str, Chat] = field(default_factory=dict)

    async def expire(self) -> None:
        """Close the chats idle for ``idle_timeout`` or longer (not those replying)."""
        now = self.clock()
        for chat_id, chat in list(self.chats.items()):
            if not chat.busy and now - chat.last_used >= self.idle_timeout:
                del self.chats[chat_id]
                log.debug("chat %s idle for %.0f s: closed", chat_id, now - chat.last_used)
                await chat.session.close()

    async def open(self, session: ChatSession) -> str:
        """Hold ``session``; its new ID.

        Raises:
            SessionLimitError: ``max_chats`` held already (after closing idle ones).
        """
        await self.expire()
        if len(self.chats) >= self.max_chats:
            raise SessionLimitError(
                f"the peer holds {len(self.chats)} chats, its most; close one (DELETE "
                f"/api/chat/ID) or wait until one has been idle {self.idle_timeout:g} s"
            )
        chat_id = secrets.token_urlsafe(12)
        self.chats[chat_id] = Chat(session, self.clock())
        return chat_id

    async def get(self, chat_id: str) -> Chat:
        """The chat of ``chat_id``, marked used now.

        Raises:
            UnknownSessionError: no such chat: never opened, closed, or idle too long.
        """
        await self.expire()
        chat = self.chats.get(chat_id)
        if chat is None:
            raise UnknownSessionError(
                f"no chat {chat_id[:40]!r}: closed, idle over {self.idle_timeout:g} s, "
                "or never opened"
            )
        chat.last_used = self.clock()
        return chat

    async def close(self, chat_id: str) -> None:
        """Close the chat of ``chat_id`` and its session on its provider.

        Raises:
            UnknownSessionError: no such chat.
        """
        chat = await self.get(chat_id)
        del self.chats[chat_id]
        await chat.session.close()

    async def close_all(self) -> None:
        for chat_id in list(self.chats):
            await self.chats.pop(chat_id).session.close()


@dataclass
class Replies:
    """The generations streaming now, by reply ID (the ``P2PNet-Reply`` header)."""

    streaming: dict[str, Generation] = field(default_factory=dict)

    def add(self, generation: Generation) -> str:
        reply_id = secrets.token_urlsafe(12)
        self.streaming[reply_id] = generation
        return reply_id

    def remove(self, reply_id: str) -> None:
        self.streaming.pop(reply_id, None)

    async def cancel(self, reply_id: str) -> bool:
        """Ask the provider of reply ``reply_id`` to stop: True; False when no provider
        has answered it yet (the client then drops the reply).

        Raises:
            UnknownSessionError: no such reply streaming.
        """
        generation = self.streaming.get(reply_id)
        if generation is None:
            raise UnknownSessionError(f"no reply {reply_id[:40]!r} streaming")
        if generation.offer is None:
            return False
        await generation.cancel()
        return True
