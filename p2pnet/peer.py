"""``Peer``: the one object a user holds. Identity + host + served models + invoke client."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy.typing as npt
import trio

from p2pnet.core.messages import WireLimits
from p2pnet.errors import ConfigError, UsageError
from p2pnet.invoke.client import InvokeClient
from p2pnet.invoke.protocol import INVOKE_PROTOCOL
from p2pnet.invoke.server import InvokeServer
from p2pnet.net.host import Host, PeerAddress, open_host, parse_peer_address
from p2pnet.net.identity import KeyPair, generate_identity, peer_id_of
from p2pnet.runtime.onnx_model import ModelInfo, OnnxModel

__all__ = ["Peer"]

log = logging.getLogger(__name__)


class Peer:
    """A p2pnet peer: serves models to others and calls theirs.

    Use it as an async context manager (trio)::

        async with Peer(listen=["/ip4/127.0.0.1/tcp/0"]) as peer:
            peer.serve("iris.onnx")
            outputs = await peer.invoke(address, model_id, {"x": array})

    Args:
        identity: the peer's key pair; None makes a new one for this run only
            (the CLI passes the persistent one from the config directory).
        listen: multiaddrs to listen on. The default listens on loopback only.
        limits: message and frame sizes, for requests and replies alike.
        max_concurrency: default number of concurrent runs per served model.
        shutdown_grace: seconds to wait, when the peer stops, for model runs still in
            progress (onnxruntime aborts the process if it exits during a run).
    """

    def __init__(
        self,
        identity: KeyPair | None = None,
        *,
        listen: list[str] | tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",),
        limits: WireLimits = WireLimits(),
        max_concurrency: int = 2,
        shutdown_grace: float = 30.0,
    ) -> None:
        self._identity = identity or generate_identity()
        self._listen = tuple(listen)
        self._limits = limits
        self._max_concurrency = max_concurrency
        self._models: dict[str, OnnxModel] = {}
        self.server = InvokeServer(self._models, limits=limits)
        self._host: Host | None = None
        self._client: InvokeClient | None = None
        self._stack: AsyncExitStack | None = None
        self.shutdown_grace = shutdown_grace

    @property
    def peer_id(self) -> str:
        return peer_id_of(self._identity)

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs of this peer (``.../p2p/<peer-id>``); empty until started."""
        return self._host.addrs if self._host else []

    @property
    def host(self) -> Host:
        """The running libp2p host.

        Raises:
            UsageError: the peer is not running.
        """
        if self._host is None:
            raise UsageError("the peer is not running: use it inside 'async with Peer(...)'")
        return self._host

    @property
    def models(self) -> Mapping[str, OnnxModel]:
        """Served models by model ID."""
        return self._models

    def serve(
        self, model: str | Path | OnnxModel, *, max_concurrency: int | None = None
    ) -> ModelInfo:
        """Serve a model (an ONNX file, or one already loaded) under its content ID.

        Serving the same file twice is a no-op. Works before and after the peer starts.

        Raises:
            ModelFileError: the file cannot be read or loaded.
        """
        if not isinstance(model, OnnxModel):
            model = OnnxModel.load(model, max_concurrency=max_concurrency or self._max_concurrency)
        self._models.setdefault(model.model_id, model)
        return model.info

    async def invoke(
        self,
        peer: str | PeerAddress,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        timeout: float = 30.0,
    ) -> dict[str, npt.NDArray[Any]]:
        """Call ``model_id`` on ``peer`` (a multiaddr with /p2p/, or a connected peer's ID).

        Raises:
            See InvokeClient.invoke; also InvalidAddressError for a bad address and
            UsageError when the peer is not started.
        """
        if self._client is None:
            raise UsageError("the peer is not running: use it inside 'async with Peer(...)'")
        address = peer if isinstance(peer, PeerAddress) else parse_peer_address(peer)
        return await self._client.invoke(address, model_id, inputs, timeout=timeout)

    async def __aenter__(self) -> Peer:
        if self._stack is not None:
            raise ConfigError("this Peer is already running")
        async with AsyncExitStack() as stack:
            self._host = await stack.enter_async_context(open_host(self._identity, self._listen))
            self._host.set_stream_handler(INVOKE_PROTOCOL, self.server.handle_stream)
            self._client = InvokeClient(self._host, limits=self._limits)
            stack.push_async_callback(self._client.aclose)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._client = None
        try:
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            self._host = None
            with trio.CancelScope(shield=True):
                for model in self._models.values():
                    if not await model.wait_idle(self.shutdown_grace):
                        log.warning(
                            "model %s is still running after %.0f s; exiting now may abort it",
                            model.info.name,
                            self.shutdown_grace,
                        )
