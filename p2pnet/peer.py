"""``Peer``: the one object a user holds.

A peer is an identity, a host and the services ``p2pnet.services.PeerServices`` builds
on it. ``Peer`` opens the host (a libp2p host unless given one, e.g. a memory host),
has the services built, runs their background work, joins the swarm and announces
what it serves. It has no logic of its own beyond that lifecycle.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy.typing as npt
import trio

from p2pnet.accounting import DEFAULT_ACCOUNTING, AccountingConfig
from p2pnet.core.address import PeerAddress, parse_peer_address, split_peer_id
from p2pnet.core.batching import Batching
from p2pnet.core.connections import DEFAULT_CONNECTION_LIMITS, ConnectionLimits
from p2pnet.core.generation import (
    DEFAULT_SESSION_LIMITS,
    GenerationParams,
    Prompt,
    SessionLimits,
)
from p2pnet.core.identity import Identity
from p2pnet.core.join import DEFAULT_JOINING, Attempt, JoinPlan, JoinPolicy, Wait
from p2pnet.core.messages import WireLimits
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.pricing import FREE, Price
from p2pnet.core.records import CapabilityRecord
from p2pnet.core.spot_check import DEFAULT_SPOT_CHECKS, SpotCheckPolicy
from p2pnet.dht.node import DhtConfig
from p2pnet.discovery.generation import ChatSession, Generation, first_answer
from p2pnet.discovery.service import (
    DEFAULT_FINDER_POLICY,
    FinderPolicy,
    ModelFinder,
    Offer,
)
from p2pnet.errors import (
    ConfigError,
    InvalidAddressError,
    PeerUnreachableError,
    UnknownModelError,
    UsageError,
)
from p2pnet.invoke.local import Invokers
from p2pnet.net.dnsaddr import is_dnsaddr, resolve_bootstrap
from p2pnet.net.identity import generate_identity
from p2pnet.net.interfaces import StreamHost
from p2pnet.net.nat_config import DEFAULT_NAT, NatConfig, Reachability
from p2pnet.net.resources import DEFAULT_RESOURCES, ResourceLimits
from p2pnet.net.swarm_key import SwarmKey, load_swarm_key
from p2pnet.runtime.batching import BatchedModel
from p2pnet.runtime.catalogue import ModelCatalogue
from p2pnet.runtime.served import ServedModel, SlottedModel
from p2pnet.services import DEFAULT_LISTEN, PeerConfig, PeerHooks, PeerServices
from p2pnet.status import JoinState, PeerStatus
from p2pnet.trust.checker import SpotChecker

if TYPE_CHECKING:
    # py-libp2p pulls in trio-typing, whose stubs mypy reads instead of trio's own types.
    from trio_typing import TaskStatus

    from p2pnet.net.nat import NatTraversal

__all__ = ["Peer"]

log = logging.getLogger(__name__)

_NOT_RUNNING = "the peer is not running: use it inside 'async with Peer(...)'"
# DHT keys announced at once (each announcement is a lookup, then one message per peer).
ANNOUNCE_CONCURRENCY = 8
# Peers of the routing table a joined peer remembers, to rejoin through if left alone.
LEARN_FROM_TABLE = 20
# Seconds after which a joined peer remembers peers of an unchanged routing table again.
RELEARN_AFTER = 60.0


class Peer:
    """A p2pnet peer: serves models to others and calls theirs.

    Use it as an async context manager (trio), or run it in a nursery with
    ``await nursery.start(peer.run)``::

        async with Peer(listen=["/ip4/127.0.0.1/tcp/0"]) as peer:
            peer.serve("iris.onnx")
            outputs = await peer.invoke(address, model_id, {"x": array})

    Args:
        identity: the peer's key; None makes a new one for this run only (the CLI
            passes the persistent one from the config directory).
        listen: multiaddrs to listen on. The default listens on loopback only.
        limits: message and frame sizes, for requests and replies alike.
        max_concurrency: default number of concurrent runs per served model.
        threads: default onnxruntime threads per run of a served ONNX model (None: the
            CPUs shared among its ``max_concurrency`` runs; 0: onnxruntime chooses, a
            thread per core for every run; docs/models.md, "Threads").
        bootstrap: multiaddrs (with /p2p/) of peers to join the DHT through, or
            ``/dnsaddr/`` names, resolved when it starts; none makes this peer the first
            of its swarm.
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
        announce: multiaddrs to put in this peer's capability records instead of its
            listen addresses (e.g. a public address in front of a port forward);
            relayed addresses from NAT traversal are added to them.
        require_join: starting fails unless the peer joins the swarm through its bootstrap
            peers (for peers that only find and call: alone, they find nothing).
        host: a running host to use instead of opening a libp2p host (``listen``,
            ``nat`` and ``swarm_key`` are then the host's business): a memory host
            (``p2pnet.net.memory``) runs the same peer in tests and simulations.
        clock: the wall clock (unix seconds) records are signed and checked with.
        hooks: observers and simulated adversaries (``p2pnet.services.PeerHooks``).
        upkeep: run the DHT's upkeep (expiry, republishing, refresh) from the start;
            False leaves it to ``start_upkeep`` (simulations start it once their swarm
            is built).
        idle_streams: finished streams kept per peer for reuse by the invoke and
            describe clients (None: 8 and 2).
        resources: limits on what other peers may hold here: inbound streams and bytes
            of requests in progress, per peer and in total, and stall and idle timeouts
            (``p2pnet.net.resources.ResourceLimits``; docs/networking.md).
        finding: how much one provider may take of this peer's finds and calls: offers
            kept per provider, how long the describe phase lasts, each attempt's share
            of a call's time (``p2pnet.discovery.service.FinderPolicy``).
        ledger: the SQLite file where this peer keeps its usage receipts and balances
            (``p2pnet ledger`` reads it; ``p2pnet.ledger.default_ledger_path``); with
            one, its results carry signed receipts, callers are admitted by credit, and
            providers' receipts are checked. None: no accounting.
        accounting: credit thresholds and how often a caller acknowledges what it owes
            (``p2pnet.accounting.AccountingConfig``; docs/incentives.md).
        trust_store: the SQLite file where this peer keeps the verdicts of its spot
            checks and the providers it marked untrusted (``p2pnet trust`` reads it;
            ``p2pnet.trust.default_trust_path``); with one, a sample of the calls made
            through ``call`` is re-run elsewhere and compared, and providers found lying
            are skipped (docs/security.md, "Spot checks"). None: no spot checks.
        spot_checks: the rate, tolerances and limits of spot checks
            (``p2pnet.core.spot_check.SpotCheckPolicy``; the ``[trust]`` table of
            config.toml, ``p2pnet.config.load_trust``).
        joining: how it joins: each peer asked for a few seconds at most, a few at once,
            bootstrap peers first and then peers learned; alone (an empty routing table)
            it keeps asking them, each with its own backoff (1 s doubling to 60 s by
            default), and ``status()`` says so (``p2pnet.core.join.JoinPolicy``;
            docs/networking.md, "Joining").
        sessions: what each generative model this peer serves keeps for generation
            sessions: how many at once, cache memory per session, idle time
            (``p2pnet.core.generation.SessionLimits``; the ``[sessions]`` table of
            config.toml; docs/models.md, "Sessions").
        connections: how many connections a libp2p host keeps open: above the high water
            mark, idle ones are closed, least recently used first, down to the low water
            mark; bootstrap peers are kept (``p2pnet.core.connections.ConnectionLimits``;
            the ``[connections]`` table of config.toml; docs/networking.md,
            "Connections"). None: no limit. Not used with a given ``host``.
    """

    def __init__(
        self,
        identity: Identity | None = None,
        *,
        listen: Sequence[str] = DEFAULT_LISTEN,
        limits: WireLimits = WireLimits(),
        max_concurrency: int = 2,
        threads: int | None = None,
        bootstrap: Sequence[str] = (),
        dht: DhtConfig = DhtConfig(),
        shutdown_grace: float = 30.0,
        forward: bool = True,
        nat: NatConfig | None = DEFAULT_NAT,
        swarm_key: SwarmKey | str | Path | None = None,
        announce: Sequence[str] = (),
        require_join: bool = False,
        host: StreamHost | None = None,
        clock: Callable[[], float] = time.time,
        hooks: PeerHooks | None = None,
        upkeep: bool = True,
        idle_streams: int | None = None,
        resources: ResourceLimits = DEFAULT_RESOURCES,
        finding: FinderPolicy = DEFAULT_FINDER_POLICY,
        ledger: str | Path | None = None,
        accounting: AccountingConfig = DEFAULT_ACCOUNTING,
        trust_store: str | Path | None = None,
        spot_checks: SpotCheckPolicy = DEFAULT_SPOT_CHECKS,
        joining: JoinPolicy = DEFAULT_JOINING,
        sessions: SessionLimits = DEFAULT_SESSION_LIMITS,
        connections: ConnectionLimits | None = DEFAULT_CONNECTION_LIMITS,
    ) -> None:
        self._identity = identity or generate_identity()
        if swarm_key is not None and not isinstance(swarm_key, SwarmKey):
            swarm_key = load_swarm_key(swarm_key)
        self.config = PeerConfig(
            listen=tuple(listen),
            bootstrap=tuple(bootstrap),
            announce=tuple(_announce_addr(a) for a in announce),
            limits=limits,
            max_concurrency=max_concurrency,
            threads=threads,
            dht=dht,
            shutdown_grace=shutdown_grace,
            forward=forward,
            nat=nat,
            swarm_key=swarm_key,
            require_join=require_join,
            clock=clock,
            upkeep=upkeep,
            idle_streams=idle_streams,
            resources=resources,
            finding=finding,
            ledger=Path(ledger) if ledger is not None else None,
            accounting=accounting,
            trust_store=Path(trust_store) if trust_store is not None else None,
            spot_checks=spot_checks,
            joining=joining,
            sessions=sessions,
            connections=connections,
        )
        self._bootstrap = [parse_peer_address(a) for a in bootstrap if not is_dnsaddr(a)]
        self._given_host = host
        self._hooks = hooks or PeerHooks()
        self.catalogue = ModelCatalogue(self._identity.peer_id)
        self._services: PeerServices | None = None
        self._nat: NatTraversal | None = None
        self._nursery: trio.Nursery | None = None
        self._stack: AsyncExitStack | None = None
        self._join_plan: JoinPlan | None = None
        self._join_wakeup = trio.Event()
        # The URL of this peer's local HTTP API while one serves it (set by
        # ``p2pnet.gateway.serve_http``); shown in ``status()``.
        self.http_url: str | None = None
        # Where its OIP gRPC endpoint listens (host:port), set by serve_grpc while it does.
        self.grpc_address: str | None = None

    # --- what it is ----------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self._identity.peer_id

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def swarm_key(self) -> SwarmKey | None:
        return self.config.swarm_key

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs of this peer (``.../p2p/<peer-id>``); empty until started."""
        return self._services.host.addrs if self._services else []

    @property
    def announced_addrs(self) -> list[str]:
        """The addresses this peer's records carry: ``announce`` (plus relayed addresses)
        if given, else ``addrs``."""
        return self._services.addresses.current() if self._services else []

    @property
    def models(self) -> Mapping[str, ServedModel]:
        """Served models by model ID."""
        return self.catalogue.models

    @property
    def services(self) -> PeerServices:
        """The services of the running peer (for programs that embed a peer).

        Raises:
            UsageError: the peer is not running.
        """
        if self._services is None:
            raise UsageError(_NOT_RUNNING)
        return self._services

    @property
    def host(self) -> StreamHost:
        """The running host.

        Raises:
            UsageError: the peer is not running.
        """
        return self.services.host

    @property
    def finder(self) -> ModelFinder:
        """The running peer's discovery: find models, call them with failover.

        Raises:
            UsageError: the peer is not running.
        """
        return self.services.finder

    @property
    def spot_checker(self) -> SpotChecker | None:
        """The running peer's spot checks (None without a trust store): their stats, the
        trust store, and waits for checks to finish.

        Raises:
            UsageError: the peer is not running.
        """
        return self.services.spot_checker

    @property
    def invokers(self) -> Invokers:
        """The running peer's invokers: its own models, or another peer's.

        Raises:
            UsageError: the peer is not running.
        """
        return self.services.invokers

    def status(self) -> PeerStatus:
        """What this peer is doing now: addresses, models, connections, DHT, calls.

        Raises:
            UsageError: the peer is not running.
        """
        status = self.services.status()
        if self.http_url is not None or self.grpc_address is not None:
            status = dataclasses.replace(status, http=self.http_url, grpc=self.grpc_address)
        plan = self._join_plan
        if plan is None:
            return status
        join = plan.status()
        now, wall = trio.current_time(), self.config.clock()
        if status.routing_table:
            state = JoinState("joined", attempts=join.attempts)
        else:  # alone, whatever the plan last saw: it sees it at its next check
            since = now if join.alone_since is None else join.alone_since
            after = join.next_attempt_at
            state = JoinState(
                "alone" if join.state == "joined" else join.state,
                wall - (now - since),
                join.attempts,
                None if after is None else max(0.0, after - now),
            )
        return dataclasses.replace(status, join=state)

    @property
    def reachability(self) -> str:
        """ "public", "private" or "unknown" (before joining, or nobody answered)."""
        return self._services.host.reachability if self._services else "unknown"

    def path(self, peer_id: str) -> str | None:
        """How this peer is connected to ``peer_id``: "direct", "relayed", or None."""
        return self.host.path(peer_id)

    # --- serving -------------------------------------------------------------------------

    def serve(
        self,
        model: str | Path | ServedModel,
        *,
        tasks: Sequence[str] = (),
        max_concurrency: int | None = None,
        threads: int | None = None,
        allow: Sequence[str] | None = None,
        price: Price = FREE,
        batching: Batching | None = None,
    ) -> ModelInfo:
        """Serve a model under its content ID: an ONNX file (a generative one too:
        docs/models.md), an adapter manifest (a ``.json`` file naming a Python function,
        docs/adapters.md), or a model already loaded (OnnxModel, GenerativeModel,
        CallableModel); and publish a signed record of it for
        ``tasks`` (tags like "sentiment-analysis"; none given: an adapter's own).

        Works before and after the peer starts; once running, the model and its tasks
        are announced in the DHT in the background.

        ``max_concurrency`` and ``threads`` (runs at once, onnxruntime threads per run
        of an ONNX file) override the peer's defaults for this model.

        ``allow`` (peer IDs) serves the model to those peers only (and to this one):
        others get PermissionDeniedError, and its record is described to allowed peers
        only (docs/networking.md). None serves it to everyone.

        ``price`` is what a call costs (per call, per MB moved, per CPU second, in
        micro-units; docs/incentives.md); the record states it, and the receipts of a
        peer with a ledger charge it.

        ``batching`` runs concurrent calls of the model together, up to
        ``max_batch`` rows per run, holding a call at most ``max_delay_ms`` for others
        (``BatchedModel``; docs/models.md, "Dynamic batching"). None: one run per call.

        Raises:
            ModelFileError: the file cannot be read or loaded.
            UsageError: a task tag that is not lower-case letters, digits and '-'; with
                ``batching``, a model whose inputs or outputs have a fixed first
                dimension, or a generative model.
        """
        from p2pnet.runtime.callable_model import CallableModel

        if isinstance(model, str | Path):
            limit = max_concurrency or self.config.max_concurrency
            if Path(model).suffix.lower() == ".json":
                model = CallableModel.load(model, max_concurrency=limit)
            else:
                from p2pnet.runtime.generative import load_model_file

                model = load_model_file(
                    model,
                    max_concurrency=limit,
                    threads=self.config.threads if threads is None else threads,
                    sessions=self.config.sessions,
                )
        if not tasks and isinstance(model, CallableModel):
            tasks = model.manifest.tasks
        if batching is not None and not isinstance(model, BatchedModel):
            if not isinstance(model, SlottedModel):
                raise UsageError(
                    f"model {model.info.name} cannot be batched: only ONNX and adapter "
                    "models are (a generative model streams its tokens call by call)"
                )
            model = BatchedModel(model, batching)
        info = self.catalogue.add(model, tasks, allow, price)
        if self._nursery is not None:
            self._nursery.start_soon(self._announce_reachable, info.model_id)
        return info

    def known_records(self, now: float | None = None) -> list[CapabilityRecord]:
        """The capability records this peer knows without a search: its own, then the
        verified ones other providers sent it lately (``ModelFinder.seen``), not expired at
        ``now`` (unix seconds; default: the clock). The gateways list the network's tasks
        and models from these (MCP tools, ``/v1/models``)."""
        now = time.time() if now is None else now
        own = [r for r in self.services.publisher.records() if now < r.expires_at]
        return own + self.finder.seen.current(now)

    async def announce(self, model_id: str | None = None) -> int:
        """Announce served models and their tasks in the DHT now: ``model_id``'s, or every
        one's; returns the number of peers that took announcements. The DHT renews them
        before they expire.

        Raises:
            UsageError: the peer is not running.
        """
        dht = self.services.dht
        taken: list[int] = []
        # Concurrently: in a swarm with slow peers each announcement takes a lookup's
        # worth of timeouts, and a model is findable by task only once its task key is
        # announced too.
        limiter = trio.CapacityLimiter(ANNOUNCE_CONCURRENCY)

        async def provide(key: bytes) -> None:
            async with limiter:
                taken.append(await dht.provide(key))

        async with trio.open_nursery() as nursery:
            for key in self.catalogue.keys(model_id):
                nursery.start_soon(provide, key)
        return sum(taken)

    # --- calling -------------------------------------------------------------------------

    async def find(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        count: int = 20,
        timeout: float = 10.0,
        max_price: Price | None = None,
    ) -> list[Offer]:
        """Verified offers of ``task`` or ``model`` in the swarm, best first (with
        ``max_price``, those at most that price in every part).

        Raises:
            UsageError: not running, or not exactly one of task and model.
        """
        return await self.finder.find(
            task=task, model=model, count=count, timeout=timeout, max_price=max_price
        )

    async def call(
        self,
        inputs: Mapping[str, Any],
        *,
        task: str | None = None,
        model: str | None = None,
        timeout: float = 30.0,
        max_price: Price | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Find a provider of ``task`` or ``model`` and call it, failing over to the next
        provider if one cannot be reached, is busy or too slow. With ``max_price``, only
        providers at most that price in every part are called (docs/incentives.md).

        Raises:
            UnknownModelError: nobody offers it (at that price). Otherwise as ``invoke``.
        """
        _, outputs = await self.call_with_offer(
            inputs, task=task, model=model, timeout=timeout, max_price=max_price
        )
        return outputs

    async def call_with_offer(
        self,
        inputs: Mapping[str, Any],
        *,
        task: str | None = None,
        model: str | None = None,
        timeout: float = 30.0,
        max_price: Price | None = None,
    ) -> tuple[Offer, dict[str, npt.NDArray[Any]]]:
        """As ``call``, also returning the offer (which model, which peer) that answered."""
        return await self.finder.call(
            inputs, task=task, model=model, timeout=timeout, max_price=max_price
        )

    async def invoke(
        self,
        peer: str | PeerAddress,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        timeout: float = 30.0,
    ) -> dict[str, npt.NDArray[Any]]:
        """Call ``model_id`` on ``peer`` (a multiaddr with /p2p/, or a connected peer's ID),
        over the network.

        Raises:
            See InvokeClient.invoke; also InvalidAddressError for a bad address and
            UsageError when the peer is not started.
        """
        remote = self.services.remote
        address = peer if isinstance(peer, PeerAddress) else parse_peer_address(peer)
        return await remote.invoke(address, model_id, inputs, timeout=timeout)

    def generate(
        self,
        prompt: str | Sequence[tuple[str, str]] | Prompt,
        *,
        task: str | None = None,
        model: str | None = None,
        peer: str | PeerAddress | None = None,
        params: GenerationParams | None = None,
        timeout: float = 60.0,
    ) -> Generation:
        """A reply from a generative model of ``task`` or ``model`` (on ``peer`` if
        given, else found in the swarm), streamed: ``async for chunk in
        peer.generate("Hi", task="chat")``. ``prompt``: a user message, (role, content)
        turns, or a Prompt (text, tokens, or the model's own prompt fields).

        Nothing happens before the iteration starts; a provider that fails before its
        first chunk is passed over for the next (docs/models.md).

        Raises (from the iteration):
            UnknownModelError: nobody offers it. Otherwise as ``InvokeClient.generate``.
        """
        if isinstance(prompt, str):
            prompt = Prompt(messages=(("user", prompt),))
        elif not isinstance(prompt, Prompt):
            prompt = Prompt(messages=tuple((role, text) for role, text in prompt))
        chosen = prompt
        settings = params or GenerationParams()

        async def start(generation: Generation) -> Any:
            deadline = trio.current_time() + timeout
            offers = await self._generation_offers(task, model, peer, timeout / 2)
            return await first_answer(
                offers,
                lambda offer: self.services.remote.generate(
                    offer.address,
                    offer.record.model_id,
                    chosen,
                    settings,
                    timeout=max(0.001, deadline - trio.current_time()),
                    record=offer.record,
                ),
            )

        return Generation(start)

    def chat(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        system: str | None = None,
        timeout: float = 60.0,
    ) -> ChatSession:
        """A conversation with a generative model of ``task`` or ``model`` in the swarm,
        kept in a session on its provider: ``async with peer.chat(task="chat") as chat:
        async for chunk in chat.send("Hi")``. See ChatSession (replay on another
        provider when the session's is gone).

        Raises:
            UsageError: not exactly one of task and model.
        """
        if (task is None) == (model is None):
            raise UsageError("chat with exactly one of task and model")
        remote = self.services.remote

        def open_stream(offer: Offer, prompt: Prompt, params: GenerationParams, **kw: Any) -> Any:
            return remote.generate(
                offer.address, offer.record.model_id, prompt, params, record=offer.record, **kw
            )

        async def close_remote(offer: Offer, session_id: str) -> None:
            await remote.close_session(offer.address, offer.record.model_id, session_id)

        return ChatSession(
            self.finder.find,
            open_stream,
            close_remote,
            task=task,
            model=model,
            system=system,
            timeout=timeout,
        )

    async def _generation_offers(
        self,
        task: str | None,
        model: str | None,
        peer: str | PeerAddress | None,
        timeout: float,
    ) -> list[Offer]:
        """Who to ask for a generation: ``peer`` for ``model`` (asked for its record
        directly, as ``invoke`` calls it: no swarm needed), or the swarm's offers of
        ``task`` or ``model`` (this peer's own among them: it streams to itself through
        ``LoopbackHost``)."""
        if peer is not None:
            if model is None:
                raise UsageError("generate on a given peer needs the model ID")
            address = peer if isinstance(peer, PeerAddress) else parse_peer_address(peer)
            described = await self.services.describer.describe(
                address, models=[model], timeout=timeout
            )
            if described.records:
                return [Offer(record, address, described.rtt) for record in described.records]
            raise UnknownModelError(f"peer {address.peer_id} does not offer model {model}")
        return await self.finder.find(task=task, model=model, timeout=timeout)

    # --- running -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[Peer] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the peer until cancelled: ``await nursery.start(peer.run)`` returns once it
        has started (joined, listening) and gives the peer back."""
        async with self:
            task_status.started(self)
            await trio.sleep_forever()

    async def __aenter__(self) -> Peer:
        if self._stack is not None:
            raise ConfigError("this Peer is already running")
        config = self.config
        async with AsyncExitStack() as stack:
            host = self._given_host
            # Peers whose connections the connection limits never close (a given host
            # keeps its own connections).
            protect: Callable[[str], None] = _keep_nothing
            if host is None:
                from p2pnet.net.host import open_host

                opened = await stack.enter_async_context(
                    open_host(
                        self._identity,
                        config.listen,
                        nat=config.nat,
                        swarm_key=config.swarm_key,
                        connections=config.connections,
                    )
                )
                self._nat = opened.nat
                protect = opened.protect_peer
                host = opened
            # Closed after the background work below has stopped.
            stack.push_async_callback(self._close_services)
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            services = PeerServices(
                host, self._identity, config, self.catalogue, nursery, self._hooks
            )
            services.start()
            self._services = services
            self._nursery = nursery
            if config.upkeep:
                await nursery.start(services.dht.run_maintenance)
            self._join_plan = JoinPlan(config.joining, self.peer_id, trio.current_time())
            bootstrap = list(self._bootstrap)
            dns = [a for a in config.bootstrap if is_dnsaddr(a)]
            if dns:
                bootstrap += await resolve_bootstrap(dns)
            for address in bootstrap:  # the swarm's way in, and its relays: kept connected
                protect(address.peer_id)
            if bootstrap:
                joined = await self.join(bootstrap)
                log.info("joined the swarm: %d peers in the routing table", joined)
            if config.require_join and len(services.dht.table) == 0:
                self._raise_not_joined()
            nursery.start_soon(self._keep_joined, self._join_plan)
            if self.catalogue.models:
                nursery.start_soon(self.announce)
            self._stack = stack.pop_all()
        return self

    async def join(self, peers: Sequence[PeerAddress]) -> int:
        """Join the swarm through ``peers``: fill the DHT routing table through them and,
        with NAT traversal, learn whether others can dial this peer (reserving relay slots
        on them if not). Returns the number of peers in the routing table.

        Peers are asked a few at once, each for ``joining.request_timeout`` seconds at
        most; one that does not answer, or answers with no peer new to this one, sends it
        on to the others and to the peers learned from answers. Left alone (nobody
        answered), the peer keeps asking them in the background, with backoff.

        Raises:
            UsageError: the peer is not running.
        """
        dht = self.services.dht
        plan = self._join_plan
        assert plan is not None
        plan.add(peers)
        if plan.joined:  # already in a swarm: these peers may still know others
            await self._ask(plan, [p for p in peers if p.peer_id != self.peer_id])
        else:
            while isinstance(decision := plan.next(trio.current_time()), Attempt):
                await self._ask(plan, decision.peers, warn=True)
            if not plan.joined:
                log.warning(
                    "no bootstrap peer answered (%d asked): alone, this peer keeps trying "
                    "(p2pnet status shows it)",
                    len(peers),
                )
        self._wake_join()
        await self._join_nat(peers)
        return len(dht.table)

    async def _ask(
        self, plan: JoinPlan, peers: Sequence[PeerAddress], *, warn: bool = False
    ) -> None:
        """Ask ``peers`` to join through them, and tell ``plan`` how each did; log why a
        peer did not answer (a warning if ``warn``: the join the peer starts with)."""
        answers = await self.services.dht.join_through(
            peers, timeout=self.config.joining.request_timeout
        )
        now = trio.current_time()
        for peer_id, why in answers.failed:
            log.log(
                logging.WARNING if warn else logging.INFO,
                "bootstrap peer %s did not answer: %s",
                peer_id,
                why,
            )
            plan.on_failure(peer_id, now)
        for peer_id in answers.answered:
            plan.on_answer(peer_id, answers.useful, now)
        plan.learn(answers.named)

    async def _keep_joined(self, plan: JoinPlan) -> None:
        """While the peer runs: alone, ask the plan's peers again when their backoff ends;
        joined, wake when the routing table empties (the DHT tells) and, at the latest,
        every ``RELEARN_AFTER`` seconds to remember some of its peers to rejoin through."""
        dht = self.services.dht
        table = dht.table
        check = self.config.joining.check_interval
        # A joined peer is woken by the DHT when its table empties rather than by polling:
        # in a simulated swarm of 100,000 peers, every joined peer's wake-up every
        # check_interval was a large share of the bootstrap's CPU.
        dht.on_table_empty = self._wake_join
        learned_size, relearn_at = -1, -math.inf
        while True:
            now = trio.current_time()
            if len(table):
                if not plan.joined:
                    # Others joined through this one (the first peer of a swarm), or a
                    # join through our bootstrap peers happened elsewhere.
                    plan.has_peers()
                # Remember peers again when the table grew or shrank, else once every
                # RELEARN_AFTER: a check costs little, the learning ~0.1 ms (in a
                # simulated swarm of thousands, every peer's every 10 s added up).
                # (One sum for the test and the wait: with ``now - learned_at`` in the test,
                # rounding could leave the wait's end at ``now``, a loop that never waits.)
                if len(table) != learned_size or now >= relearn_at:
                    plan.learn(
                        PeerAddress(p.peer_id, p.addrs) for p in islice(table, LEARN_FROM_TABLE)
                    )
                    learned_size, relearn_at = len(table), now + RELEARN_AFTER
                until = relearn_at
            elif plan.joined:
                log.warning("the routing table is empty: this peer is alone, rejoining")
                plan.alone(now)
                continue
            else:
                decision = plan.next(now)
                if isinstance(decision, Attempt):
                    await self._ask(plan, decision.peers)
                    if plan.joined:
                        log.info("joined the swarm: %d peers in the routing table", len(table))
                    continue
                assert isinstance(decision, Wait)
                until = min(
                    now + check, decision.until if decision.until is not None else now + check
                )
            with trio.move_on_at(until):
                await self._join_wakeup.wait()
            self._join_wakeup = trio.Event()

    def _wake_join(self) -> None:
        """Wake ``_keep_joined`` now (the routing table emptied, or a join ended)."""
        self._join_wakeup.set()

    def start_upkeep(self, delay: float = 0.0) -> None:
        """Start the DHT's upkeep ``delay`` seconds from now (peers made with
        ``upkeep=False``).

        Raises:
            UsageError: the peer is not running.
        """
        dht = self.services.dht
        assert self._nursery is not None

        async def upkeep() -> None:
            await trio.sleep(delay)
            await dht.run_maintenance()

        self._nursery.start_soon(upkeep)

    async def _close_services(self) -> None:
        if self._services is not None:
            await self._services.aclose()

    def _raise_not_joined(self) -> None:
        """Why a peer that had to join did not.

        Raises:
            UsageError: no bootstrap peer given, or every one is this peer itself.
            PeerUnreachableError: no bootstrap peer answered (the log says why).
        """
        given = self.config.bootstrap
        if not given:
            raise UsageError(
                "finding models needs a swarm to ask: give a bootstrap peer "
                "(/ip4/.../tcp/PORT/p2p/12D3...) or a named swarm"
            )
        if all(not is_dnsaddr(a) and parse_peer_address(a).peer_id == self.peer_id for a in given):
            raise UsageError(
                f"the bootstrap peer is this peer's own ID ({self.peer_id}): use another "
                "identity than the peer it is to join (--identity FILE)"
            )
        raise PeerUnreachableError(
            "could not join the swarm: no bootstrap peer answered (see the warnings above)"
        )

    async def _join_nat(self, peers: Sequence[PeerAddress]) -> None:
        """Reachability and relay slots through the given peers we are connected to,
        before anything is announced (the records carry the relayed address)."""
        nat = self._nat
        if nat is None:
            return
        host = self.host
        connected = [p.peer_id for p in peers if host.connection_count(p.peer_id)]
        with trio.move_on_after(10.0):
            # A peer that serves nothing (find, call) needs no relay slot: nobody
            # dials it. serve() reserves one later if needed.
            await nat.join(connected, reserve=bool(self.catalogue.models))
        if self._nursery is not None:
            self._nursery.start_soon(self._announce_after_check, nat, host.addrs)

    async def _announce_reachable(self, model_id: str) -> None:
        """Announce a newly served model, after reserving relay slots if it is the first."""
        if self._nat is not None:
            with trio.move_on_after(10.0):
                await self._nat.reserve_relays()
        await self.announce(model_id)

    async def _announce_after_check(self, nat: NatTraversal, announced: list[str]) -> None:
        """Announce again once AutoNAT answered, if that changed our addresses (a public
        peer drops its relayed ones): DHT provider records carry them."""
        await nat.checked.wait()
        services = self.services
        if nat.reachability is Reachability.PRIVATE:
            # Others cannot dial us: as go-libp2p-kad-dht does, stay out of their routing
            # tables, where we would stall their lookups (simulations/nat.toml measures it).
            services.dht.become_client()
        if self.catalogue.models and services.host.addrs != announced:
            await self.announce()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._nursery = None
        try:
            if stack is not None:
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            self._services = None
            self._nat = None
            with trio.CancelScope(shield=True):
                for model in self.catalogue.models.values():
                    if not await model.wait_idle(self.config.shutdown_grace):
                        log.warning(
                            "model %s is still running after %.0f s; exiting now may abort it",
                            model.info.name,
                            self.config.shutdown_grace,
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


def _keep_nothing(peer_id: str) -> None:
    """No connection limits to exempt ``peer_id`` from (the peer was given its host)."""
