"""Simulated peers over any ``StreamHost``: the real DHT node, signed records and describe
protocol, honest or adversarial; what both engines run (memory: all peers in one
process; libp2p: each worker process runs its share).

A discovery query is what ``ModelFinder.find(task=...)`` does, with its figures kept:
one ``find_providers`` lookup for the task key, then one describe round trip per
provider found, keeping only records that verify.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import msgpack
import numpy as np
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pnet.core.address import PeerAddress, transport_part
from p2pnet.core.kad.keys import PeerInfo, key_for_task, key_of
from p2pnet.core.kad.wire import (
    KadMessage,
    KadMessageReader,
    KadPeer,
    KadRecord,
    MessageType,
    encode_kad_message,
)
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.peer_id import ED25519_KEY_PREFIX, peer_id_from_public_key
from p2pnet.core.records import CapabilityRecord, encode_record, record_key, sign_record
from p2pnet.core.records import CapabilityRecordValidator as _Validator
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.dht.node import DhtConfig, DhtNode
from p2pnet.discovery.describe import DESCRIBE_PROTOCOL, DescribeClient, DescribeServer
from p2pnet.errors import ConnectionLostError, P2PNetError, PayloadTooLargeError, ProtocolError
from p2pnet.invoke.protocol import INVOKE_PROTOCOL
from p2pnet.net.channels import read_request
from p2pnet.net.interfaces import ByteStream, StreamHost
from p2pnet.pipeline.executor import Mode, Pipeline
from p2pnet.pipeline.executor import Plan as PipelinePlan
from p2pnet.runtime.served import ServedModel
from p2pnet.simulate.app import SimApp
from p2pnet.simulate.metrics import (
    ChurnRecord,
    FreshRecord,
    InvocationRecord,
    PipelineRecord,
    QueryRecord,
)
from p2pnet.simulate.plan import CORRUPTOR, DROPPER, FORGER, HONEST, SYBIL, ModelPlan, Plan
from p2pnet.simulate.scenario import Scenario
from p2pnet.simulate.standins import StandInModel, expected_outputs, stand_in_info

__all__ = ["SimPeer", "SimSwarm", "grind_peer_ids", "honest_key", "model_id"]

log = logging.getLogger(__name__)

SCHEMA: Final = ModelSchema(
    (TensorSpec("text", "string", (None,)),), (TensorSpec("label", "int64", (None,)),)
)
RECORD_TTL: Final = 30 * 86400  # seconds; longer than any run
IDENTITY_MULTIHASH_PREFIX: Final = b"\x00\x24" + ED25519_KEY_PREFIX  # identity, 36 bytes


def honest_key(seed: int, peer: int) -> Ed25519PrivateKey:
    """The identity key of simulated peer ``peer`` (every engine derives the same)."""
    material = hashlib.sha256(b"p2pnet simulation peer %d %d" % (seed, peer)).digest()
    return Ed25519PrivateKey.from_private_bytes(material)


def peer_id_of_key(key: Ed25519PrivateKey) -> str:
    return peer_id_from_public_key(key.public_key().public_bytes_raw())


def model_id(index: int) -> str:
    """The model ID of simulated model ``index`` (the CID of a made-up file)."""
    return model_id_of_bytes(b"p2pnet simulation model %d" % index)


def grind_peer_ids(target: bytes, count: int, bits: int, rng: random.Random) -> list[str]:
    """``count`` peer IDs whose DHT position shares at least ``bits`` leading bits with
    ``target``'s: random 32-byte "public keys" (no private key) tried until one fits,
    2**bits tries each on average. This is what an attacker does to surround a key."""
    goal = key_of(target) >> (256 - bits) if bits else 0
    found: list[str] = []
    while len(found) < count:
        public = rng.randbytes(32)
        position = int.from_bytes(hashlib.sha256(IDENTITY_MULTIHASH_PREFIX + public).digest())
        if bits == 0 or position >> (256 - bits) == goal:
            peer_id = peer_id_from_public_key(public)
            if peer_id not in found:
                found.append(peer_id)
    return found


# --- adversarial DHT nodes --------------------------------------------------------------


class DropperNode(DhtNode):
    """Takes requests and never answers: callers wait for their RPC timeout."""

    async def handle_stream(self, stream: ByteStream) -> None:
        try:
            while await stream.read():
                pass
        except ConnectionLostError:
            pass
        await stream.reset()


class CorruptorNode(DhtNode):
    """Answers every request with its real response's bytes scrambled."""

    async def handle_stream(self, stream: ByteStream) -> None:
        reader = KadMessageReader()
        while True:
            try:
                request = await read_request(stream, reader, self.config.stream_idle_timeout)
            except (ProtocolError, PayloadTooLargeError, ConnectionLostError):
                await stream.reset()
                return
            if request is None:
                return
            response = self.answer(request, stream.peer_id, trio.current_time())
            if response is None:
                continue
            frame = encode_kad_message(response)
            scrambled = frame[:2] + bytes(b ^ 0xA5 for b in frame[2:])
            try:
                await stream.write(scrambled)
            except ConnectionLostError:
                await stream.reset()
                return


class SybilNode(DhtNode):
    """One of many peers placed near ``target``: swallows announcements for it, answers
    lookups for it with no provider and only fellow sybils as closer peers."""

    target: bytes = b""
    fellows: tuple[KadPeer, ...] = ()

    def answer(self, request: KadMessage, sender: str, now: float) -> KadMessage | None:
        if request.key == self.target:
            if request.type is MessageType.ADD_PROVIDER:
                self.requests_dropped += 1
                return None
            if request.type in (MessageType.FIND_NODE, MessageType.GET_PROVIDERS):
                closer = tuple(p for p in self.fellows if p.peer_id != sender)[: self.config.k]
                return KadMessage(request.type, request.key, closer_peers=closer)
        return super().answer(request, sender, now)


# --- the swarm ------------------------------------------------------------------------------


@dataclass(eq=False)
class SimPeer:
    index: int
    role: str
    host: StreamHost
    node: DhtNode
    key: Ed25519PrivateKey | None
    envelopes: list[bytes] = field(default_factory=list)
    describer: DescribeClient | None = None
    scope: trio.CancelScope | None = None  # its background work
    alive: bool = True
    models: dict[str, ServedModel] = field(default_factory=dict)  # served (stand-ins)
    records: list[CapabilityRecord] = field(default_factory=list)  # of ``models``
    app: SimApp | None = None  # invoke server and client, finder: made when first needed
    pipeline_plan: tuple[PipelinePlan, float] | None = None  # (plan, made at)


class SimSwarm:
    """The peers of one run that live in this process, and what they record."""

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
    ) -> None:
        self.scenario = scenario
        self.plan = plan
        self.seed = seed
        self.nursery = nursery
        self.wall_clock = wall_clock
        self.maintenance = maintenance
        self.join_timeout = join_timeout  # a join is a dozen lookups: seconds of CPU on real hosts
        self.rng = random.Random(seed * 7919 + plan.n)
        dht = scenario.dht
        self.config = DhtConfig(k=dht.k, alpha=dht.alpha, rpc_timeout=dht.rpc_timeout)
        self.validator = _Validator(wall_clock)
        self.peers: dict[int, SimPeer] = {}
        self.addresses: dict[int, PeerAddress] = {}  # every peer's, local or not
        self.queries: list[QueryRecord] = []
        self.churn: list[ChurnRecord] = []
        self.fresh: list[FreshRecord] = []
        self.run_started = 0.0  # trio time of the run phase's start (for invocation times)
        # Called when a peer starts serving (records, models): e.g. to reserve a relay.
        self.on_serve: Callable[[SimPeer], None] | None = None
        self.pipelines: list[PipelineRecord] = []
        self.invocations: list[InvocationRecord] = []
        spec = scenario.pipeline.spec
        self.pipeline = Pipeline(spec) if spec is not None else None
        self.forged_values_sent = 0
        self.forged_values_stored = 0
        self.forged_served = 0
        self.sybil_fellows: tuple[KadPeer, ...] = ()
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
        return peer_id_of_key(honest_key(self.seed, peer))

    # --- peers ---------------------------------------------------------------------------

    def add(self, index: int, host: StreamHost) -> SimPeer:
        """A peer on ``host`` (not yet joined); it answers the DHT protocol from now on."""
        role = self.plan.role(index)
        node = self._node(role, host, index)
        key = honest_key(self.seed, index) if role != SYBIL else None
        peer = SimPeer(index, role, host, node, key)
        self.peers[index] = peer
        self.addresses[index] = _address(host)
        self._start(peer)
        return peer

    def _node(self, role: str, host: StreamHost, index: int) -> DhtNode:
        cls: type[DhtNode] = {
            DROPPER: DropperNode, CORRUPTOR: CorruptorNode, SYBIL: SybilNode,
        }.get(role, DhtNode)  # fmt: skip
        # NATed peers run the DHT in client mode if the scenario says so.
        client = self.scenario.nat.dht_client and index in self.plan.nat
        node = cls(
            host,
            dataclasses.replace(self.config, client=True) if client else self.config,
            validator=self.validator,
            rng=random.Random(self.seed * 100_003 + index),
        )
        if isinstance(node, SybilNode):
            node.target = key_for_task(self.plan.target_task)
            node.fellows = self.sybil_fellows
        return node

    def _start(self, peer: SimPeer) -> None:
        peer.node.start()
        peer.node.attach(self.nursery)
        if peer.envelopes:
            self._serve(peer)
        if self.maintenance:
            self._start_maintenance(peer)

    def _start_maintenance(self, peer: SimPeer) -> None:
        scope = trio.CancelScope()
        peer.scope = scope
        offset = self.rng.uniform(0, self.config.maintenance_interval)
        self.nursery.start_soon(self._maintain, peer.node, scope, offset)

    def start_maintenance(self) -> None:
        """Start the upkeep of every live peer (those added with ``maintenance=False``)
        and of every peer added from now on."""
        self.maintenance = True
        for peer in self.peers.values():
            if peer.alive and peer.scope is None:
                self._start_maintenance(peer)

    async def _maintain(self, node: DhtNode, scope: trio.CancelScope, offset: float) -> None:
        with scope:
            await trio.sleep(offset)  # spread the peers' upkeep over the interval
            try:
                await node.run_maintenance()
            except Exception as exc:  # a peer's upkeep failing is a result, not a crash
                log.info("maintenance of %s stopped: %s", node.local.peer_id, exc)

    def set_fellows(self, fellows: tuple[KadPeer, ...]) -> None:
        self.sybil_fellows = fellows
        for peer in self.peers.values():
            if isinstance(peer.node, SybilNode):
                peer.node.fellows = fellows

    async def join(self, index: int, via: int, *, kind: str = "", t: float = 0.0) -> bool:
        """Bootstrap peer ``index`` through peer ``via``; records a churn event if ``kind``."""
        ok = False
        with trio.move_on_after(self.join_timeout):
            try:
                await self.peers[index].node.bootstrap([self.addresses[via]])
                ok = len(self.peers[index].node.table) > 0
            except P2PNetError as exc:
                log.info("peer %d did not join: %s", index, exc)
        if kind:
            self.churn.append(ChurnRecord(t, kind, index, ok))
        return ok

    async def leave(
        self, index: int, *, crash: bool, t: float, stop: Callable[[], Awaitable[None]]
    ) -> None:
        """Peer ``index`` leaves: gracefully (closes its streams) or by crashing; ``stop``
        stops its host."""
        peer = self.peers[index]
        peer.alive = False
        if peer.scope is not None:
            peer.scope.cancel()
        self.churn.append(ChurnRecord(t, "crash" if crash else "leave", index))
        if not crash:
            with trio.move_on_after(5.0):
                await peer.node.aclose()
                if peer.describer is not None:
                    await peer.describer.aclose()
                if peer.app is not None:
                    await peer.app.aclose()
        await stop()

    async def restart(self, index: int, host: StreamHost, via: int, t: float) -> bool:
        """Peer ``index`` comes back on ``host`` (same identity, empty tables) and rejoins."""
        old = self.peers[index]
        node = self._node(old.role, host, index)
        peer = SimPeer(
            index, old.role, host, node, old.key, old.envelopes, models=old.models,
            records=old.records,
        )  # fmt: skip
        self.peers[index] = peer
        self.addresses[index] = _address(host)
        self._start(peer)
        ok = await self.join(index, via, kind="rejoin", t=t)
        for envelope in peer.envelopes:  # a restarted provider announces itself again
            task = _task_of(envelope)
            with trio.move_on_after(60.0):
                await peer.node.provide(key_for_task(task))
        return ok

    # --- records ---------------------------------------------------------------------------

    def _sign(self, peer: SimPeer, model: int, task: str) -> bytes:
        assert peer.key is not None
        record = self._own_record(
            peer, model_id(model), SCHEMA, (task,), f"sim-model-{model}", "1", "onnxruntime"
        )
        return sign_record(record, peer.key)

    def _own_record(
        self,
        peer: SimPeer,
        model: str,
        schema: ModelSchema,
        tasks: tuple[str, ...],
        name: str,
        version: str,
        runtime: str,
    ) -> CapabilityRecord:
        """The capability record ``peer`` publishes for ``model`` (unsigned)."""
        return CapabilityRecord(
            model_id=model,
            peer_id=peer.host.peer_id,
            schema=schema,
            tasks=tasks,
            name=name,
            version=version,
            runtime=runtime,
            addrs=tuple(transport_part(a) for a in peer.host.addrs),
            seq=1,
            expires_at=int(self.wall_clock()) + RECORD_TTL,
        )

    def _add_stand_in(self, peer: SimPeer, m: ModelPlan) -> None:
        """Peer serves the stand-in model of pipeline step ``m.step``: signed record and
        the model itself."""
        assert peer.key is not None and self.pipeline is not None
        spec = self.pipeline.spec
        info = stand_in_info(spec, spec.step(m.step))
        tasks = (m.task,) if m.task else ()
        record = self._own_record(
            peer, info.model_id, info.schema, tasks, info.name, info.version, info.runtime
        )
        peer.envelopes.append(sign_record(record, peer.key))
        peer.records.append(record)
        run_s = self.scenario.pipeline.run_s(m.step)
        peer.models[info.model_id] = StandInModel(info, m.step, run_s)

    def _serve(self, peer: SimPeer) -> None:
        """Answer describe requests with the peer's records and, if it serves models,
        invoke requests."""
        envelopes = peer.envelopes
        server = DescribeServer(lambda: envelopes)
        peer.host.set_stream_handler(DESCRIBE_PROTOCOL, server.handle_stream)
        if peer.models:
            peer.host.set_stream_handler(INVOKE_PROTOCOL, self._app(peer).server.handle_stream)
        if self.on_serve is not None:
            self.on_serve(peer)

    def _app(self, peer: SimPeer) -> SimApp:
        if peer.app is None:
            records = peer.records

            def record(kind: str, ok: bool, seconds: float, error: str) -> None:
                t = trio.current_time() - seconds - self.run_started
                self.invocations.append(InvocationRecord(t, peer.index, kind, ok, seconds, error))

            peer.app = SimApp(
                peer.host,
                peer.node,
                peer.models,
                lambda: records,
                wall_clock=self.wall_clock,
                record=record,
            )
        return peer.app

    async def publish(self, index: int) -> int:
        """Peer ``index`` serves its planned models (or, a forger, its forgeries) and
        announces the task keys; returns how many announcements were taken."""
        peer = self.peers[index]
        tasks: list[str] = []
        if peer.role == HONEST:
            for m in self.plan.models:
                if index in m.providers:
                    if m.step:
                        self._add_stand_in(peer, m)
                    else:
                        peer.envelopes.append(self._sign(peer, m.index, m.task))
                    if m.task:
                        tasks.append(m.task)
        elif peer.role == FORGER:
            tasks = [t for t, _ in self.scenario.workload.tasks]
            peer.envelopes.extend(self._forgeries(peer))
        if not tasks:
            return 0
        self._serve(peer)
        taken = 0
        for task in dict.fromkeys(tasks):
            with trio.move_on_after(120.0):
                taken += await peer.node.provide(key_for_task(task))
        if peer.role == FORGER:
            await self._put_forged_values(peer)
        return taken

    def _victims(self) -> list[tuple[int, int, str]]:
        """(honest peer, model, task) of the first provider of each model."""
        return [(m.providers[0], m.index, m.task) for m in self.plan.models]

    def _forgeries(self, forger: SimPeer) -> list[bytes]:
        """Three forged records per victim model: a record naming the victim signed with
        the forger's key; the forger's own record with a broken signature; and the
        victim's record with the signature of another message."""
        assert forger.key is not None
        out = []
        public = forger.key.public_key().public_bytes_raw()
        for victim, model, task in self._victims()[:5]:
            victim_id = self.peer_id(victim)
            claim = _record(model, victim_id, task, int(self.wall_clock()) + RECORD_TTL)
            payload = encode_record(claim)
            signature = forger.key.sign(payload)
            out.append(msgpack.packb([payload, public, signature], use_bin_type=True))
            own = sign_record(
                _record(model, forger.host.peer_id, task, int(self.wall_clock()) + RECORD_TTL),
                forger.key,
            )
            out.append(own[:-1] + bytes([own[-1] ^ 1]))
        return out

    async def _put_forged_values(self, forger: SimPeer) -> None:
        """PUT_VALUE forged records of victims under their record keys to the peers closest
        to each key; a peer that stores one echoes the request (counted)."""
        assert forger.key is not None
        public = forger.key.public_key().public_bytes_raw()
        for victim, model, task in self._victims()[:3]:
            victim_id = self.peer_id(victim)
            key = record_key(model_id(model), victim_id)
            payload = encode_record(
                _record(model, victim_id, task, int(self.wall_clock()) + RECORD_TTL)
            )
            value = msgpack.packb([payload, public, forger.key.sign(payload)], use_bin_type=True)
            request = KadMessage(MessageType.PUT_VALUE, key, KadRecord(key, value))
            with trio.move_on_after(60.0):
                closest = (await forger.node.find_closest(key)).peers
                for target in closest:
                    self.forged_values_sent += 1
                    try:
                        await forger.node._rpc(target, request)
                    except (P2PNetError, trio.TooSlowError):
                        continue  # refused: the peer reset the stream
                    self.forged_values_stored += 1

    # --- queries ---------------------------------------------------------------------------

    async def query(self, index: int, task: str, t: float, *, probe: bool = False) -> QueryRecord:
        """One discovery of ``task`` from peer ``index``; recorded and returned."""
        peer = self.peers[index]
        work = self.scenario.workload
        if peer.describer is None:
            peer.describer = DescribeClient(peer.host, clock=self.wall_clock, max_idle_streams=1)
        describer = peer.describer
        start = trio.current_time()
        honest = self.task_providers.get(task, set())
        hops = queries = providers = offers = rejected = forged = 0
        ok = False
        error = "timeout"
        with trio.move_on_after(work.query_timeout):
            try:
                found = await peer.node.find_providers(
                    key_for_task(task), work.providers_sought, timeout=work.query_timeout / 2
                )
            except P2PNetError as exc:
                error = type(exc).__name__
            else:
                hops, queries = found.stats.hops, found.stats.queries
                providers = len(found.providers)
                results: list[tuple[int, int, int, bool]] = []

                async def ask(provider: PeerInfo) -> None:
                    address = PeerAddress(provider.peer_id, provider.addrs)
                    try:
                        answer = await describer.describe(
                            address, tasks=(task,), timeout=work.query_timeout
                        )
                    except P2PNetError:
                        return
                    bad = sum(
                        1 for r in answer.records if (r.peer_id, r.model_id) not in self.legit
                    )
                    good = any(r.peer_id in honest and task in r.tasks for r in answer.records)
                    results.append((len(answer.records), len(answer.rejected), bad, good))

                async with trio.open_nursery() as nursery:
                    for provider in found.providers:
                        if provider.peer_id != peer.host.peer_id:
                            nursery.start_soon(ask, provider)
                        elif peer.envelopes:
                            results.append((1, 0, 0, peer.host.peer_id in honest))
                offers = sum(r[0] for r in results)
                rejected = sum(r[1] for r in results)
                forged = sum(r[2] for r in results)
                ok = any(r[3] for r in results)
                error = "" if ok else ("no provider found" if not providers else "no valid record")
        latency = trio.current_time() - start
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
        peer = self.peers[index]
        fresh = self.scenario.freshness
        start = trio.current_time()
        peer.envelopes.append(self._sign(peer, model, task))
        self._serve(peer)
        announced = 0
        with trio.move_on_after(fresh.probe_timeout):
            announced = await peer.node.provide(key_for_task(task))
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
        peer = self.peers[index]
        app = self._app(peer)
        start = trio.current_time()
        ok = correct = False
        failovers = 0
        error = "timeout"
        # A plan younger than plan_ttl is reused, as a service that plans once and runs
        # many inputs would; one that fails is dropped.
        cached = peer.pipeline_plan
        if cached is not None and start - cached[1] >= load.plan_ttl:
            cached = peer.pipeline_plan = None
        with trio.move_on_after(load.timeout):
            try:
                mode: Mode = "forwarded" if load.mode == "forwarded" else "orchestrated"
                if cached is None and load.plan_ttl > 0:
                    cached = peer.pipeline_plan = (await self.pipeline.plan(app), start)
                plan = cached[0] if cached is not None else None
                result = await self.pipeline.run(app, inputs, mode=mode, plan=plan)
            except P2PNetError as exc:
                error = exc.code
                peer.pipeline_plan = None
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


def _task_of(envelope: bytes) -> str:
    from p2pnet.core.records import decode_record

    payload = msgpack.unpackb(envelope, use_list=False)[0]
    return decode_record(payload).tasks[0]


def _address(host: StreamHost) -> PeerAddress:
    return PeerAddress(host.peer_id, tuple(transport_part(a) for a in host.addrs))


def kad_peer(host: StreamHost) -> KadPeer:
    return KadPeer(host.peer_id, tuple(transport_part(a) for a in host.addrs))
