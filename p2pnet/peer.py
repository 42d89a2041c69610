"""``Peer``: the one object a user holds.

Identity + libp2p host + served models (invoke server) + DHT node + describe server +
discovery (find and call by task or model) + invoke client. No logic of its own:
it wires the services together and runs their background work.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy.typing as npt
import trio

from p2pnet.access import AccessPolicy
from p2pnet.core.address import PeerAddress, parse_peer_address, split_peer_id
from p2pnet.core.messages import Forward, WireLimits
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.records import CapabilityRecordValidator
from p2pnet.dht.node import DhtConfig, DhtNode
from p2pnet.discovery.describe import DESCRIBE_PROTOCOL, DescribeClient, DescribeServer
from p2pnet.discovery.service import ModelFinder, Offer, RecordPublisher
from p2pnet.errors import ConfigError, InvalidAddressError, PeerUnreachableError, UsageError
from p2pnet.invoke.client import InvokeClient
from p2pnet.invoke.protocol import INVOKE_PROTOCOL
from p2pnet.invoke.server import InvokeServer
from p2pnet.net.dnsaddr import is_dnsaddr, resolve_bootstrap
from p2pnet.net.host import Host, open_host
from p2pnet.net.identity import Identity, generate_identity
from p2pnet.net.nat import DEFAULT_NAT, NatConfig, Reachability
from p2pnet.net.pnet import SwarmKey, load_swarm_key
from p2pnet.pipeline.executor import forward_on
from p2pnet.runtime.callable_model import CallableModel
from p2pnet.runtime.onnx_model import OnnxModel
from p2pnet.runtime.served import ServedModel, run_served
from p2pnet.status import ConnectionStatus, PeerStatus, ServedModelStatus

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
        bootstrap: multiaddrs (with /p2p/) of peers to join the DHT through; none
            makes this peer the first of its swarm.
        dht: DHT parameters.
        shutdown_grace: seconds to wait, when the peer stops, for model runs still in
            progress (onnxruntime aborts the process if it exits during a run).
        forward: pass forwarded pipelines on to the next step's peer (see
            docs/pipelines.md); False still runs a forwarded step served here when it
            is the last one.
        nat: NAT traversal (docs/networking.md): whether this peer is reachable is asked
            of its bootstrap peers (AutoNAT); unless public it reserves a relay slot on
            them and announces the relayed address; relayed connections are upgraded to
            direct ones by hole punching. ``NatConfig(relay_service=True)`` makes it a
            relay (bootstrap peers); None turns all of it off.
        swarm_key: a private network's key (a SwarmKey, or the path of a swarm key
            file): only peers with the same key connect (docs/networking.md).
            Bootstrap addresses may be ``/dnsaddr/`` names, resolved when it starts.
        announce: multiaddrs to put in this peer's capability records instead of its
            listen addresses (e.g. a public address in front of a port forward);
            relayed addresses from NAT traversal are added to them.
        require_join: starting fails unless the peer joins the swarm through its bootstrap
            peers (for peers that only find and call: alone, they find nothing).
    """

    def __init__(
        self,
        identity: Identity | None = None,
        *,
        listen: list[str] | tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",),
        limits: WireLimits = WireLimits(),
        max_concurrency: int = 2,
        bootstrap: Sequence[str] = (),
        dht: DhtConfig = DhtConfig(),
        shutdown_grace: float = 30.0,
        forward: bool = True,
        nat: NatConfig | None = DEFAULT_NAT,
        swarm_key: SwarmKey | str | Path | None = None,
        announce: Sequence[str] = (),
        require_join: bool = False,
    ) -> None:
        self._identity = identity or generate_identity()
        self._listen = tuple(listen)
        self._limits = limits
        self._max_concurrency = max_concurrency
        self._models: dict[str, ServedModel] = {}
        self.access = AccessPolicy(self._identity.peer_id)
        self.server = InvokeServer(self._models, limits=limits, access=self.access)
        self.swarm_key = (
            swarm_key
            if swarm_key is None or isinstance(swarm_key, SwarmKey)
            else load_swarm_key(swarm_key)
        )
        self._announce = tuple(_announce_addr(a) for a in announce)
        self._host: Host | None = None
        self._client: InvokeClient | None = None
        self._stack: AsyncExitStack | None = None
        self.shutdown_grace = shutdown_grace
        self._forward = forward
        self._nat = nat
        self._bootstrap = [parse_peer_address(a) for a in bootstrap if not is_dnsaddr(a)]
        self._bootstrap_dns = [a for a in bootstrap if is_dnsaddr(a)]
        self._bootstrap_given = tuple(bootstrap)
        self._dht_config = dht
        self._require_join = require_join
        self.dht: DhtNode | None = None
        self.finder: ModelFinder | None = None
        self._nursery: trio.Nursery | None = None
        self.publisher = RecordPublisher(
            self._identity.signing_key, self.peer_id, lambda: self.announced_addrs
        )

    @property
    def peer_id(self) -> str:
        return self._identity.peer_id

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs of this peer (``.../p2p/<peer-id>``); empty until started."""
        return self._host.addrs if self._host else []

    @property
    def announced_addrs(self) -> list[str]:
        """The addresses this peer's records carry: ``announce`` (plus relayed addresses)
        if given, else ``addrs``."""
        if not self._announce:
            return self.addrs
        relayed = [a for a in self.addrs if "/p2p-circuit" in a]
        return [f"{a}/p2p/{self.peer_id}" for a in self._announce] + relayed

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
    def models(self) -> Mapping[str, ServedModel]:
        """Served models by model ID."""
        return self._models

    def serve(
        self,
        model: str | Path | ServedModel,
        *,
        tasks: Sequence[str] = (),
        max_concurrency: int | None = None,
        allow: Sequence[str] | None = None,
    ) -> ModelInfo:
        """Serve a model under its content ID: an ONNX file, an adapter manifest (a
        ``.json`` file naming a Python function, docs/adapters.md), or a model already
        loaded (OnnxModel, CallableModel); and publish a signed record of it for
        ``tasks`` (tags like "sentiment-analysis"; none given: an adapter's own).

        Works before and after the peer starts; once running, the model and its tasks
        are announced in the DHT in the background.

        ``allow`` (peer IDs) serves the model to those peers only (and to this one):
        others get PermissionDeniedError, and its record is described to allowed peers
        only (docs/networking.md). None serves it to everyone.

        Raises:
            ModelFileError: the file cannot be read or loaded.
            UsageError: a task tag that is not lower-case letters, digits and '-'.
        """
        if isinstance(model, str | Path):
            limit = max_concurrency or self._max_concurrency
            if Path(model).suffix.lower() == ".json":
                model = CallableModel.load(model, max_concurrency=limit)
            else:
                model = OnnxModel.load(model, max_concurrency=limit)
        if not tasks and isinstance(model, CallableModel):
            tasks = model.manifest.tasks
        if allow is not None:
            self.access.restrict(model.model_id, allow)
        self.publisher.add(model.info, tasks)
        self._models.setdefault(model.model_id, model)
        if self._nursery is not None:
            self._nursery.start_soon(self._announce_reachable)
        return model.info

    async def announce(self) -> int:
        """Announce every served model and task in the DHT now; returns the number of
        peers that took announcements. The DHT renews them before they expire."""
        if self.dht is None:
            raise UsageError("the peer is not running: use it inside 'async with Peer(...)'")
        return sum([await self.dht.provide(key) for key in self.publisher.keys()])

    async def find(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        count: int = 20,
        timeout: float = 10.0,
    ) -> list[Offer]:
        """Verified offers of ``task`` or ``model`` in the swarm, best first.

        Raises:
            UsageError: not running, or not exactly one of task and model.
        """
        return await self.running_finder.find(
            task=task, model=model, count=count, timeout=timeout
        )

    async def call(
        self,
        inputs: Mapping[str, Any],
        *,
        task: str | None = None,
        model: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, npt.NDArray[Any]]:
        """Find a provider of ``task`` or ``model`` and call it, failing over to the next
        provider if one cannot be reached, is busy or too slow.

        Raises:
            UnknownModelError: nobody offers it. Otherwise as ``invoke``.
        """
        _, outputs = await self.call_with_offer(inputs, task=task, model=model, timeout=timeout)
        return outputs

    async def call_with_offer(
        self,
        inputs: Mapping[str, Any],
        *,
        task: str | None = None,
        model: str | None = None,
        timeout: float = 30.0,
    ) -> tuple[Offer, dict[str, npt.NDArray[Any]]]:
        """As ``call``, also returning the offer (which model, which peer) that answered."""
        return await self.running_finder.call(inputs, task=task, model=model, timeout=timeout)

    @property
    def running_finder(self) -> ModelFinder:
        """The discovery service of the running peer.

        Raises:
            UsageError: the peer is not running.
        """
        if self.finder is None:
            raise UsageError("the peer is not running: use it inside 'async with Peer(...)'")
        return self.finder

    @property
    def client(self) -> InvokeClient:
        """The invoke client of the running peer.

        Raises:
            UsageError: the peer is not running.
        """
        if self._client is None:
            raise UsageError("the peer is not running: use it inside 'async with Peer(...)'")
        return self._client

    async def _run_local(
        self, model_id: str, inputs: Mapping[str, Any], timeout: float
    ) -> dict[str, npt.NDArray[Any]]:
        return await run_served(self._models, model_id, inputs, timeout)

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
            host = await stack.enter_async_context(
                open_host(self._identity, self._listen, nat=self._nat, swarm_key=self.swarm_key)
            )
            self._host = host
            host.set_stream_handler(INVOKE_PROTOCOL, self.server.handle_stream)
            describe_server = DescribeServer(self.publisher.envelopes, permits=self.access.permits)
            host.set_stream_handler(DESCRIBE_PROTOCOL, describe_server.handle_stream)
            client = self._client = InvokeClient(host, limits=self._limits)
            stack.push_async_callback(client.aclose)
            self.server.local_peer_id = self.peer_id

            async def answer_here(message: Forward) -> Any:
                return await self.server.answer(message, self.peer_id)

            if self._forward:
                self.server.forwarder = functools.partial(
                    forward_on,
                    local_peer_id=self.peer_id,
                    client=client,
                    answer_here=answer_here,
                )
            describer = DescribeClient(host)
            stack.push_async_callback(describer.aclose)
            dht_config = self._dht_config
            if self._nat is not None and self._nat.reachability == "private":
                # Known to be undialable: a DHT client from the start (see become_client).
                dht_config = dataclasses.replace(dht_config, client=True)
            self.dht = DhtNode(host, dht_config, validator=CapabilityRecordValidator(time.time))
            self.dht.start()
            stack.push_async_callback(self.dht.aclose)
            self.finder = ModelFinder(
                self.peer_id,
                self.dht,
                describer,
                self._client,
                lambda: [self.publisher.record(mid) for mid in self._models],
                self._run_local,
            )
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            self._nursery = nursery
            self.dht.attach(nursery)
            await nursery.start(self.dht.run_maintenance)
            if self._bootstrap_dns:
                self._bootstrap += await resolve_bootstrap(self._bootstrap_dns)
                self._bootstrap_dns = []
            if self._bootstrap:
                joined = await self.dht.bootstrap(self._bootstrap)
                log.info("joined the swarm: %d peers in the routing table", joined)
                await self._join_nat()
            if self._require_join and len(self.dht.table) == 0:
                self._raise_not_joined()
            if self._models:
                nursery.start_soon(self.announce)
            self._stack = stack.pop_all()
        return self

    def _raise_not_joined(self) -> None:
        """Why a peer that had to join did not.

        Raises:
            UsageError: no bootstrap peer given, or every one is this peer itself.
            PeerUnreachableError: no bootstrap peer answered (the log says why).
        """
        if not self._bootstrap and not self._bootstrap_given:
            raise UsageError(
                "finding models needs a swarm to ask: give a bootstrap peer "
                "(/ip4/.../tcp/PORT/p2p/12D3...) or a named swarm"
            )
        if all(
            not is_dnsaddr(a) and parse_peer_address(a).peer_id == self.peer_id
            for a in self._bootstrap_given
        ):
            raise UsageError(
                f"the bootstrap peer is this peer's own ID ({self.peer_id}): use another "
                "identity than the peer it is to join (--identity FILE)"
            )
        raise PeerUnreachableError(
            "could not join the swarm: no bootstrap peer answered (see the warnings above)"
        )

    async def _join_nat(self) -> None:
        """Reachability and relay slots through the bootstrap peers we are connected
        to, before anything is announced (the records carry the relayed address)."""
        host = self.host
        if host.nat is None:
            return
        connected = [b.peer_id for b in self._bootstrap if host.connection_count(b.peer_id)]
        with trio.move_on_after(10.0):
            # A peer that serves nothing (find, call) needs no relay slot: nobody
            # dials it. serve() reserves one later if needed.
            await host.nat.join(connected, reserve=bool(self._models))
        if self._nursery is not None:
            self._nursery.start_soon(self._announce_after_check, host.addrs)

    async def _announce_reachable(self) -> None:
        """Announce, after reserving relay slots if this is the first model served."""
        nat = self.host.nat if self._host else None
        if nat is not None:
            with trio.move_on_after(10.0):
                await nat.reserve_relays()
        await self.announce()

    async def _announce_after_check(self, announced: list[str]) -> None:
        """Announce again once AutoNAT answered, if that changed our addresses (a public
        peer drops its relayed ones): DHT provider records carry them."""
        nat = self.host.nat
        assert nat is not None
        await nat.checked.wait()
        if nat.reachability is Reachability.PRIVATE and self.dht is not None:
            # Others cannot dial us: as go-libp2p-kad-dht does, stay out of their routing
            # tables, where we would stall their lookups (simulations/nat.toml measures it).
            self.dht.become_client()
        if self._models and self.host.addrs != announced:
            await self.announce()

    def status(self) -> PeerStatus:
        """What this peer is doing now: addresses, models, connections, DHT, calls.

        Raises:
            UsageError: the peer is not running.
        """
        host = self.host
        models = tuple(
            ServedModelStatus(
                model_id,
                model.info.name,
                self.publisher.record(model_id).tasks,
                None
                if (allowed := self.access.allowed(model_id)) is None
                else tuple(sorted(allowed)),
            )
            for model_id, model in self._models.items()
        )
        connections = tuple(
            ConnectionStatus(
                peer_id,
                addr,
                host.path(peer_id) or ("relayed" if "/p2p-circuit" in addr else "direct"),
            )
            for peer_id, addr in host.connections()
        )
        dht = self.dht
        return PeerStatus(
            peer_id=self.peer_id,
            listen_addrs=tuple(self.addrs),
            announced_addrs=tuple(self.announced_addrs),
            reachability=host.reachability,
            swarm_key_fingerprint=self.swarm_key.fingerprint if self.swarm_key else None,
            models=models,
            connections=connections,
            routing_table=len(dht.table) if dht is not None else 0,
            dht_mode="client" if dht is not None and dht.config.client else "server",
            calls_served=self.server.stats.calls,
            call_errors=dict(self.server.stats.errors),
        )

    @property
    def reachability(self) -> str:
        """"public", "private" or "unknown" (before joining, or nobody answered)."""
        nat = self._host.nat if self._host else None
        return nat.reachability.value if nat else "unknown"

    def path(self, peer_id: str) -> str | None:
        """How this peer is connected to ``peer_id``: "direct", "relayed", or None."""
        return self.host.path(peer_id)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._client = None
        self._nursery = None
        self.finder = None
        self.dht = None
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


def _announce_addr(text: str) -> str:
    """An ``announce`` address without its /p2p/ part.

    Raises:
        InvalidAddressError: not a multiaddr.
    """
    import multiaddr

    text = split_peer_id(text.strip())[0]
    try:
        multiaddr.Multiaddr(text)
    except Exception as exc:
        raise InvalidAddressError(f"announce address {text!r} is not a multiaddr: {exc}") from None
    return text
