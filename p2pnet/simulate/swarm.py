"""Simulated peers over any ``StreamHost``: real ``Peer``s, honest or adversarial, the
code users run; what both engines run (memory: all peers in one process; libp2p: each
worker process runs its share).

Every peer but a sybil is a ``p2pnet.Peer`` on the engine's host. Adversaries are built
around it, never inside it (``p2pnet.simulate.adversaries``): droppers and corruptors
run on a host wrapper that spoils the DHT streams they serve, forgers serve forged
records through the peer's ``describe_records`` hook, and sybils (peer IDs ground
without keys, so no ``Peer``) are bare DHT nodes whose ``intercept`` hook lies about
one key. A discovery query is ``ModelFinder.search``, the code behind ``Peer.find``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pnet.core.address import PeerAddress, transport_part
from p2pnet.core.identity import Identity
from p2pnet.core.kad.diversity import DiversityLimits
from p2pnet.core.kad.keys import key_for_task
from p2pnet.core.kad.wire import KadMessage, KadPeer, KadRecord, MessageType
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.records import CapabilityRecord, CapabilityRecordValidator, record_key
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.dht.node import DhtConfig, DhtDefences, DhtNode, LookupResult
from p2pnet.errors import P2PNetError
from p2pnet.net.interfaces import StreamHost
from p2pnet.peer import Peer
from p2pnet.pipeline.executor import Mode, Pipeline
from p2pnet.pipeline.executor import Plan as PipelinePlan
from p2pnet.runtime.served import ServedModel
from p2pnet.services import PeerHooks
from p2pnet.simulate.adversaries import (
    MisbehavingHost,
    SybilAnswers,
    forged_envelope,
    tampered_envelope,
)
from p2pnet.simulate.groups import PeerGroups
from p2pnet.simulate.metrics import (
    ChurnRecord,
    FreshRecord,
    InvocationRecord,
    PipelineRecord,
    QueryRecord,
)
from p2pnet.simulate.plan import CORRUPTOR, DROPPER, FORGER, HONEST, SYBIL, ModelPlan, Plan
from p2pnet.simulate.scenario import Scenario
from p2pnet.simulate.standins import CatalogueModel, StandInModel, expected_outputs, stand_in_info

if TYPE_CHECKING:
    # py-libp2p pulls in trio-typing, whose stubs mypy reads instead of trio's own types.
    from trio_typing import TaskStatus

__all__ = ["SimPeer", "SimSwarm", "honest_key", "kad_peer", "model_id"]

log = logging.getLogger(__name__)

SCHEMA: Final = ModelSchema(
    (TensorSpec("text", "string", (None,)),), (TensorSpec("label", "int64", (None,)),)
)
RECORD_TTL: Final = 30 * 86400  # seconds; longer than any run
LATE_JOIN_CHECK: Final = 0.5  # seconds between two looks at a late joiner's table


def honest_key(seed: int, peer: int) -> Ed25519PrivateKey:
    """The identity key of simulated peer ``peer`` (every engine derives the same)."""
    material = hashlib.sha256(b"p2pnet simulation peer %d %d" % (seed, peer)).digest()
    return Ed25519PrivateKey.from_private_bytes(material)


def model_id(index: int) -> str:
    """The model ID of simulated model ``index`` (the CID of a made-up file)."""
    return model_id_of_bytes(b"p2pnet simulation model %d" % index)


@dataclass(eq=False, slots=True)
class SimPeer:
    """One simulated peer: a ``Peer`` (None for a sybil) and its DHT node, what it serves
    (kept across restarts), and the task it runs in."""

    index: int
    role: str
    host: StreamHost
    peer: Peer | None = None
    node: DhtNode | None = None  # the peer's (kept once it stopped), or a sybil's own
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: trio.Event = field(default_factory=trio.Event)
    alive: bool = True
    served: list[tuple[ServedModel, tuple[str, ...]]] = field(default_factory=list)
    forgeries: list[bytes] = field(default_factory=list)  # a forger's forged records
    forged_tasks: list[str] = field(default_factory=list)  # and the tasks it claims
    pipeline_plan: tuple[PipelinePlan, float] | None = None  # (plan, made at)


@dataclass(slots=True)
class LookupCounts:
    """Lookups for one task's key: provider lookups and their requests; lookups of any
    kind (provider, closest peers) the density detector judged (those that ran their
    course) and called suspicious."""

    lookups: int = 0
    messages: int = 0
    judged: int = 0
    suspicious: int = 0


class SimSwarm:
    """The peers of one run that live in this process, and what they record.

    ``on_serve(peer)`` is called when a peer starts serving (the memory engine reserves
    a relay slot for a NATed one there, as its NAT model has it).
    """

    def __init__(
        self,
        scenario: Scenario,
        plan: Plan,
        seed: int,
        nursery: trio.Nursery,
        *,
        wall_clock: Callable[[], float],
        maintenance: bool = True,
        join_timeout: float = 120.0,
        sybil_ids: dict[int, str] | None = None,
        on_serve: Callable[[SimPeer], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.plan = plan
        self.seed = seed
        self.nursery = nursery
        self.wall_clock = wall_clock
        self.maintenance = maintenance
        self.join_timeout = join_timeout  # a join is a dozen lookups: seconds of CPU on real hosts
        self.on_serve = on_serve
        self.rng = random.Random(seed * 7919 + plan.n)
        self.probe_rng = random.Random(seed * 7927 + plan.n)  # which queries get a probe
        dht = scenario.dht
        self.config = DhtConfig(
            k=dht.k,
            alpha=dht.alpha,
            rpc_timeout=dht.rpc_timeout,
            defences=DhtDefences(
                region=dht.region,
                diversity=DiversityLimits() if dht.diversity else None,
                paths=dht.paths,
            ),
        )
        # Every peer's IP group, for the DHT's limits (the engines' addresses have none).
        self.groups = PeerGroups(seed, plan.sybils, scenario.adversaries.sybil_groups)
        # Lookups of honest peers, by task ("" for keys of no task, e.g. refreshes): counted
        # once the run starts, for the density detector's figures and their cost.
        self.task_of_key = {key_for_task(task): task for task, _ in scenario.workload.tasks}
        self.lookups: dict[str, LookupCounts] = {}
        self.count_lookups = False
        self.peers: dict[int, SimPeer] = {}
        self.addresses: dict[int, PeerAddress] = {}  # every peer's, local or not
        self.queries: list[QueryRecord] = []
        self.churn: list[ChurnRecord] = []
        self.fresh: list[FreshRecord] = []
        self.run_started = 0.0  # trio time of the run phase's start (for invocation times)
        self.pipelines: list[PipelineRecord] = []
        # Joins during the run whose first attempt failed, as (peer, seconds from the
        # failed attempt until the peer's own retries filled its table, seconds into the
        # run then): recorded when the retries work, if ``watch_late_joins`` (the libp2p
        # engine, where time passes for real).
        self.watch_late_joins = False
        self.late_joins: list[tuple[int, float, float]] = []
        self.invocations: list[InvocationRecord] = []
        spec = scenario.pipeline.spec
        self.pipeline = Pipeline(spec) if spec is not None else None
        self.forged_values_sent = 0
        self.forged_values_stored = 0
        self.sybil_answers = SybilAnswers(key_for_task(plan.target_task), self.config.k)
        # Who may legitimately be found for a task: (peer ID, model ID) signed by them.
        self.task_providers: dict[str, set[str]] = {}
        self.legit: set[tuple[str, str]] = set()
        for m in plan.models:
            for p in m.providers:
                self._legit(p, self._model_id(m), m.task)
        for e in plan.events:
            if e.kind == "publish":
                self._legit(e.peer, model_id(e.model), e.task)

    def _legit(self, peer: int, model: str, task: str) -> None:
        pid = self.peer_id(peer)
        self.task_providers.setdefault(task, set()).add(pid)
        self.legit.add((pid, model))

    def _model_id(self, m: ModelPlan) -> str:
        if m.step and self.pipeline is not None:
            return stand_in_info(self.pipeline.spec, self.pipeline.spec.step(m.step)).model_id
        return model_id(m.index)

    def peer_id(self, peer: int) -> str:
        return Identity(honest_key(self.seed, peer)).peer_id

    # --- peers ---------------------------------------------------------------------------

    async def add(self, index: int, host: StreamHost) -> SimPeer:
        """Start peer ``index`` on ``host`` (not yet joined): it answers the DHT protocol
        from now on."""
        return await self._start(index, self.plan.role(index), host)

    async def _start(
        self, index: int, role: str, host: StreamHost, old: SimPeer | None = None
    ) -> SimPeer:
        # NATed peers run the DHT in client mode if the scenario says so.
        client = self.scenario.nat.dht_client and index in self.plan.nat
        config = dataclasses.replace(self.config, client=client, seed=self.seed * 100_003 + index)
        sim = SimPeer(index, role, host)
        if role == SYBIL:
            sim.node = DhtNode(
                host,
                config,
                validator=CapabilityRecordValidator(self.wall_clock),
                rng=random.Random(config.seed),
                nursery=self.nursery,
                intercept=self.sybil_answers,
                group_of=self.groups,
            )
            sim.node.start()
        else:
            if old is not None:
                sim.served, sim.forgeries, sim.forged_tasks = (
                    old.served,
                    old.forgeries,
                    old.forged_tasks,
                )
            peer = self._peer(sim, config)
            for model, tasks in sim.served:
                peer.catalogue.add(model, tasks)
            await self.nursery.start(self._live, sim, peer)
            sim.peer, sim.node = peer, peer.services.dht
        self.peers[index] = sim
        self.locate(index, PeerAddress.of(host.peer_id, host.addrs))
        if self.maintenance:
            self._start_upkeep(sim)
        return sim

    def locate(self, index: int, address: PeerAddress) -> None:
        """Peer ``index`` (of this process or another) is at ``address``."""
        self.addresses[index] = address
        self.groups.place(index, address.addrs)

    def _peer(self, sim: SimPeer, config: DhtConfig) -> Peer:
        """The ``Peer`` of ``sim``: on a spoiling host if it drops or corrupts DHT
        answers, serving its forgeries if it forges."""
        index = sim.index

        def observe(kind: str, ok: bool, seconds: float, error: str) -> None:
            t = trio.current_time() - seconds - self.run_started
            self.invocations.append(InvocationRecord(t, index, kind, ok, seconds, error))

        def with_forgeries(own: Any) -> list[bytes]:
            return [*own, *sim.forgeries]

        host = sim.host
        if sim.role in (DROPPER, CORRUPTOR):
            host = MisbehavingHost(host, sim.role)
        return Peer(
            Identity(honest_key(self.seed, index)),
            host=host,
            dht=config,
            nat=None,
            clock=self.wall_clock,
            upkeep=False,
            idle_streams=1,
            shutdown_grace=0.0,
            hooks=PeerHooks(
                observe_lookup=self._observe_lookup,
                observe_calls=observe,
                describe_records=with_forgeries if sim.role == FORGER else None,
                dht_groups=self.groups,
            ),
        )

    def _observe_lookup(self, kind: MessageType, key: bytes, result: LookupResult) -> None:
        if not self.count_lookups:
            return
        counts = self.lookups.setdefault(self.task_of_key.get(key, ""), LookupCounts())
        if kind is MessageType.GET_PROVIDERS:
            counts.lookups += 1
            counts.messages += result.stats.queries
        if result.density is not None:
            counts.judged += 1
            counts.suspicious += result.density.suspicious

    async def _live(
        self, sim: SimPeer, peer: Peer, *, task_status: TaskStatus[Peer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``peer`` until its scope is cancelled (it leaves or crashes)."""
        try:
            with sim.scope:
                await peer.run(task_status=task_status)
        except Exception as exc:  # a peer failing is a result of the run, not a crash of it
            log.info("peer %d stopped: %r", sim.index, exc)
        finally:
            sim.stopped.set()

    def _start_upkeep(self, sim: SimPeer) -> None:
        offset = self.rng.uniform(0, self.config.maintenance_interval)
        if sim.peer is not None:
            sim.peer.start_upkeep(offset)
        else:
            self.nursery.start_soon(self._sybil_upkeep, sim, offset)

    async def _sybil_upkeep(self, sim: SimPeer, offset: float) -> None:
        assert sim.node is not None
        with sim.scope:
            await trio.sleep(offset)
            await sim.node.run_maintenance()

    def start_maintenance(self) -> None:
        """Start the upkeep of every live peer (those added with ``maintenance=False``)
        and of every peer added from now on, each at a random offset in the interval."""
        self.maintenance = True
        for sim in self.peers.values():
            if sim.alive:
                self._start_upkeep(sim)

    def set_fellows(self, fellows: tuple[KadPeer, ...]) -> None:
        """The sybils, known to each other once all exist."""
        self.sybil_answers.fellows = fellows

    async def join(
        self, index: int, via: int | Sequence[int], *, kind: str = "", t: float = 0.0
    ) -> bool:
        """Bootstrap peer ``index`` through peer ``via`` (or these peers); records a churn
        event if ``kind``."""
        sim = self.peers[index]
        assert sim.node is not None
        ok = False
        bootstrap = [self.addresses[v] for v in ((via,) if isinstance(via, int) else via)]
        with trio.move_on_after(self.join_timeout):
            try:
                if sim.peer is not None:
                    await sim.peer.join(bootstrap)
                else:
                    await sim.node.bootstrap(bootstrap)
                ok = len(sim.node.table) > 0
            except P2PNetError as exc:
                log.info("peer %d did not join: %s", index, exc)
        if kind:
            self.churn.append(ChurnRecord(t, kind, index, ok))
            if not ok and self.watch_late_joins:
                self.nursery.start_soon(self._watch_late_join, sim)
        return ok

    async def _watch_late_join(self, sim: SimPeer) -> None:
        """Record when peer ``sim``, whose join failed, fills its table through its own
        retries (``Peer.join`` keeps asking); give up once it stops."""
        assert sim.node is not None
        start = trio.current_time()
        while sim.alive and self.peers.get(sim.index) is sim:
            now = trio.current_time()
            if len(sim.node.table) > 0:
                self.late_joins.append((sim.index, now - start, now - self.run_started))
                return
            await trio.sleep(LATE_JOIN_CHECK)

    async def leave(
        self, index: int, *, crash: bool, t: float, stop: Callable[[], Awaitable[None]]
    ) -> None:
        """Peer ``index`` leaves: gracefully (the peer closes its streams, then its host
        stops) or by crashing (the host stops first); ``stop`` stops its host."""
        sim = self.peers[index]
        sim.alive = False
        self.churn.append(ChurnRecord(t, "crash" if crash else "leave", index))
        if crash:
            await stop()
            sim.scope.cancel()
            return
        sim.scope.cancel()
        with trio.move_on_after(5.0):
            await sim.stopped.wait()
        await stop()

    async def restart(self, index: int, host: StreamHost, via: int, t: float) -> bool:
        """Peer ``index`` comes back on ``host`` (same identity and models, empty tables),
        rejoins and announces what it serves again."""
        old = self.peers[index]
        sim = await self._start(index, old.role, host, old)
        if (sim.served or sim.forgeries) and self.on_serve is not None:
            self.on_serve(sim)
        ok = await self.join(index, via, kind="rejoin", t=t)
        assert sim.peer is not None and sim.node is not None
        with trio.move_on_after(60.0):
            if sim.served:
                await self._announce(sim)
            for task in dict.fromkeys(sim.forged_tasks):
                await sim.node.provide(key_for_task(task))
        return ok

    # --- serving -------------------------------------------------------------------------

    def _serve(self, sim: SimPeer, model: ServedModel, tasks: tuple[str, ...]) -> None:
        assert sim.peer is not None
        sim.peer.catalogue.add(model, tasks)
        sim.served.append((model, tasks))

    async def _announce(self, sim: SimPeer, model_id: str | None = None) -> int:
        """``Peer.announce`` unless the peer has left (a crash may come at any time)."""
        if not sim.alive or sim.peer is None:
            return 0
        return await sim.peer.announce(model_id)

    def _catalogue_model(self, index: int) -> CatalogueModel:
        return CatalogueModel.of(model_id(index), f"sim-model-{index}", SCHEMA)

    def _add_stand_in(self, sim: SimPeer, m: ModelPlan) -> None:
        """Peer serves the stand-in model of pipeline step ``m.step``."""
        assert self.pipeline is not None
        spec = self.pipeline.spec
        info = stand_in_info(spec, spec.step(m.step))
        run_s = self.scenario.pipeline.run_s(m.step)
        self._serve(sim, StandInModel(info, m.step, run_s), (m.task,) if m.task else ())

    async def publish(self, index: int) -> int:
        """Peer ``index`` serves its planned models (or, a forger, its forgeries) and
        announces them; returns how many announcements were taken."""
        sim = self.peers[index]
        assert sim.peer is not None
        if sim.role == HONEST:
            for m in self.plan.models:
                if index in m.providers:
                    if m.step:
                        self._add_stand_in(sim, m)
                    else:
                        self._serve(sim, self._catalogue_model(m.index), (m.task,))
            if not sim.served:
                return 0
            if self.on_serve is not None:
                self.on_serve(sim)
            with trio.move_on_after(120.0):
                return await self._announce(sim)
            return 0
        if sim.role != FORGER:
            return 0
        assert sim.node is not None
        sim.forged_tasks = [t for t, _ in self.scenario.workload.tasks]
        sim.forgeries.extend(self._forgeries(sim))
        if self.on_serve is not None:
            self.on_serve(sim)
        taken = 0
        for task in dict.fromkeys(sim.forged_tasks):
            with trio.move_on_after(120.0):
                taken += await sim.node.provide(key_for_task(task))
        await self._put_forged_values(sim)
        return taken

    def _victims(self) -> list[tuple[int, int, str]]:
        """(honest peer, model, task) of the first provider of each model."""
        return [(m.providers[0], m.index, m.task) for m in self.plan.models]

    def _forgeries(self, forger: SimPeer) -> list[bytes]:
        """Two forged records per victim model: a record naming the victim signed with
        the forger's key, and the forger's own record with a broken signature."""
        key = honest_key(self.seed, forger.index)
        expires = int(self.wall_clock()) + RECORD_TTL
        out = []
        for victim, model, task in self._victims()[:5]:
            claim = _record(model, self.peer_id(victim), task, expires)
            out.append(forged_envelope(claim, key))
            out.append(tampered_envelope(_record(model, forger.host.peer_id, task, expires), key))
        return out

    async def _put_forged_values(self, forger: SimPeer) -> None:
        """PUT_VALUE forged records of victims under their record keys to the peers closest
        to each key; a peer that stores one echoes the request (counted)."""
        assert forger.node is not None
        key = honest_key(self.seed, forger.index)
        expires = int(self.wall_clock()) + RECORD_TTL
        for victim, model, task in self._victims()[:3]:
            victim_id = self.peer_id(victim)
            dht_key = record_key(model_id(model), victim_id)
            value = forged_envelope(_record(model, victim_id, task, expires), key)
            request = KadMessage(MessageType.PUT_VALUE, dht_key, KadRecord(dht_key, value))
            with trio.move_on_after(60.0):
                closest = (await forger.node.find_closest(dht_key)).peers
                for target in closest:
                    self.forged_values_sent += 1
                    try:
                        await forger.node.request(target, request)
                    except (P2PNetError, trio.TooSlowError):
                        continue  # refused: the peer reset the stream
                    self.forged_values_stored += 1

    # --- queries ---------------------------------------------------------------------------

    async def query(self, index: int, task: str, t: float, *, probe: bool = False) -> QueryRecord:
        """One discovery of ``task`` from peer ``index`` (``ModelFinder.search``), its
        figures recorded and returned."""
        peer = self.peers[index].peer
        assert peer is not None
        work = self.scenario.workload
        start = trio.current_time()
        honest = self.task_providers.get(task, set())
        hops = queries = providers = offers = rejected = forged = 0
        ok = False
        error = "timeout"
        try:
            found = await peer.finder.search(
                task=task, count=work.providers_sought, timeout=work.query_timeout
            )
        except P2PNetError as exc:
            error = type(exc).__name__
        else:
            if found.lookup is not None:
                hops, queries = found.lookup.hops, found.lookup.queries
            records = [o.record for o in found.offers]
            providers, offers, rejected = found.providers, len(records), len(found.rejected)
            forged = sum(1 for r in records if (r.peer_id, r.model_id) not in self.legit)
            ok = any(r.peer_id in honest and task in r.tasks for r in records)
            if ok:
                error = ""
            elif found.complete:
                error = "no provider found" if not providers else "no valid record"
        latency = trio.current_time() - start
        if not probe and self.probe_rng.random() < work.density_probes:
            with trio.move_on_after(work.query_timeout):
                await peer.services.dht.find_closest(key_for_task(task))  # judged, counted
        record = QueryRecord(
            t, index, task, ok, latency, hops, queries, providers, offers, rejected, forged,
            error, probe,
        )  # fmt: skip
        self.queries.append(record)
        return record

    async def publish_fresh(
        self, index: int, model: int, task: str, t: float, prober: Callable[[], int | None]
    ) -> None:
        """Peer ``index`` starts serving a new model under ``task``; other peers (from
        ``prober``) look for it every probe interval until one finds it."""
        sim = self.peers[index]
        assert sim.peer is not None
        fresh = self.scenario.freshness
        start = trio.current_time()
        fresh_model = self._catalogue_model(model)
        self._serve(sim, fresh_model, (task,))
        if self.on_serve is not None:
            self.on_serve(sim)
        announced = 0
        with trio.move_on_after(fresh.probe_timeout):
            announced = await self._announce(sim, fresh_model.model_id)
        findable: float | None = None
        probes = 0
        while trio.current_time() - start < fresh.probe_timeout:
            who = prober()
            if who is not None and who != index:
                probes += 1
                result = await self.query(who, task, t + trio.current_time() - start, probe=True)
                if result.ok:
                    findable = trio.current_time() - start
                    break
            await trio.sleep(fresh.probe_interval)
        self.fresh.append(FreshRecord(t, index, task, announced, findable, probes))

    async def run_pipeline(self, index: int, run: int, t: float) -> PipelineRecord:
        """Peer ``index`` runs the scenario's pipeline (run number ``run``: the inputs);
        recorded and returned."""
        assert self.pipeline is not None
        load = self.scenario.pipeline
        inputs = pipeline_inputs(self.pipeline, run, load.rows)
        sim = self.peers[index]
        peer = sim.peer
        assert peer is not None
        start = trio.current_time()
        ok = correct = False
        failovers = 0
        error = "timeout"
        # A plan younger than plan_ttl is reused, as a service that plans once and runs
        # many inputs would; one that fails is dropped.
        cached = sim.pipeline_plan
        if cached is not None and start - cached[1] >= load.plan_ttl:
            cached = sim.pipeline_plan = None
        with trio.move_on_after(load.timeout):
            try:
                mode: Mode = "forwarded" if load.mode == "forwarded" else "orchestrated"
                if cached is None and load.plan_ttl > 0:
                    cached = sim.pipeline_plan = (await self.pipeline.plan(peer), start)
                plan = cached[0] if cached is not None else None
                result = await self.pipeline.run(peer, inputs, mode=mode, plan=plan)
            except P2PNetError as exc:
                error = exc.code
                sim.pipeline_plan = None
            else:
                ok, error = True, ""
                failovers = sum(len(s.failed) for s in result.steps)
                expected = expected_outputs(self.pipeline.spec, inputs)
                correct = all(
                    np.array_equal(result.outputs[name], value) for name, value in expected.items()
                )
        record = PipelineRecord(
            t, index, ok, trio.current_time() - start, correct, failovers, error
        )
        self.pipelines.append(record)
        return record

    def alive_local(self, *, honest: bool = True) -> list[int]:
        return sorted(
            i for i, p in self.peers.items() if p.alive and (not honest or p.role == HONEST)
        )


def pipeline_inputs(pipeline: Pipeline, run: int, rows: int) -> dict[str, np.ndarray]:
    """The inputs of run ``run``: ``rows`` rows per declared input; strings name the run,
    numbers are the run number."""
    out: dict[str, np.ndarray] = {}
    for name, declared in pipeline.spec.inputs.items():
        if declared is None or declared.dtype == "string":
            out[name] = np.array([f"{name} {run}.{i}" for i in range(rows)], dtype=np.str_)
        else:
            shape = tuple(rows if d is None or isinstance(d, str) else d for d in declared.shape)
            out[name] = np.full(shape, run % 128, dtype=declared.dtype)
    return out


def _record(model: int, peer_id: str, task: str, expires_at: int) -> CapabilityRecord:
    return CapabilityRecord(
        model_id=model_id(model), peer_id=peer_id, schema=SCHEMA, tasks=(task,),
        name=f"sim-model-{model}", version="1", runtime="onnxruntime", addrs=(), seq=2,
        expires_at=expires_at,
    )  # fmt: skip


def kad_peer(host: StreamHost) -> KadPeer:
    """How a DHT message names ``host``'s peer."""
    return KadPeer(host.peer_id, tuple(transport_part(a) for a in host.addrs))
