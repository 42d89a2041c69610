"""The application services of a simulated peer: what ``p2pnet.Peer`` builds on its libp2p
host (invoke server and client, model finder, forwarding), built here on any
``StreamHost`` and the simulated peer's own DHT node, so the pipeline executor runs
from simulated peers exactly as from real ones.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy.typing as npt
import trio

from p2pnet.core.address import PeerAddress
from p2pnet.core.messages import Forward, ForwardResult, Hop, Result
from p2pnet.core.records import CapabilityRecord
from p2pnet.dht.node import DhtNode
from p2pnet.discovery.describe import DescribeClient
from p2pnet.discovery.service import ModelFinder, Offer
from p2pnet.errors import P2PNetError
from p2pnet.invoke.client import InvokeClient
from p2pnet.invoke.server import InvokeServer
from p2pnet.net.interfaces import StreamHost
from p2pnet.pipeline.executor import forward_on
from p2pnet.runtime.served import ServedModel, run_served

__all__ = ["CallRecorder", "RecordingInvokeClient", "SimApp"]

_T = TypeVar("_T")

CallRecorder = Callable[[str, bool, float, str], None]
"""record(kind, ok, seconds, error code): one call to another peer's invoke server."""


class RecordingInvokeClient(InvokeClient):
    """An ``InvokeClient`` that reports every call's outcome and duration to ``record``."""

    def __init__(self, host: StreamHost, record: CallRecorder) -> None:
        super().__init__(host, max_idle_streams=1)
        self._record = record

    async def invoke(
        self,
        peer: PeerAddress,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        timeout: float = 30.0,
    ) -> dict[str, npt.NDArray[Any]]:
        return await self._recorded(
            "invoke", super().invoke(peer, model_id, inputs, timeout=timeout)
        )

    async def forward(
        self,
        peer: PeerAddress,
        hops: tuple[Hop, ...],
        tensors: Mapping[str, Any],
        *,
        timeout: float = 30.0,
    ) -> ForwardResult:
        return await self._recorded(
            "forward", super().forward(peer, hops, tensors, timeout=timeout)
        )

    async def _recorded(self, kind: str, call: Awaitable[_T]) -> _T:
        start = trio.current_time()
        try:
            result = await call
        except P2PNetError as exc:
            self._record(kind, False, trio.current_time() - start, exc.code)
            raise
        self._record(kind, True, trio.current_time() - start, "")
        return result


class SimApp:
    """Invoke server (serving ``models``, forwarding pipelines), recording invoke client
    and model finder of one simulated peer: a ``PipelinePeer``."""

    def __init__(
        self,
        host: StreamHost,
        node: DhtNode,
        models: Mapping[str, ServedModel],
        records: Callable[[], Sequence[CapabilityRecord]],
        *,
        wall_clock: Callable[[], float],
        record: CallRecorder,
    ) -> None:
        self.peer_id = host.peer_id
        self._models = models
        self.client: InvokeClient = RecordingInvokeClient(host, record)
        self.server = InvokeServer(models, local_peer_id=self.peer_id)
        self.server.forwarder = functools.partial(
            forward_on,
            local_peer_id=self.peer_id,
            client=self.client,
            answer_here=self._answer_here,
        )
        self._describer = DescribeClient(host, clock=wall_clock, max_idle_streams=1)
        self.running_finder = ModelFinder(
            self.peer_id, node, self._describer, self.client, records, self._run_local
        )

    async def find(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        count: int = 20,
        timeout: float = 10.0,
    ) -> list[Offer]:
        return await self.running_finder.find(task=task, model=model, count=count, timeout=timeout)

    async def _answer_here(self, message: Forward) -> Result | ForwardResult | Any:
        return await self.server.answer(message, self.peer_id)

    async def _run_local(
        self, model_id: str, inputs: Mapping[str, Any], timeout: float
    ) -> dict[str, npt.NDArray[Any]]:
        return await run_served(self._models, model_id, inputs, timeout)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._describer.aclose()
