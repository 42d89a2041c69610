"""The trust workload on the memory engine: providers that lie, callers that spot-check
them, and pipelines run through the same providers (docs/simulations.md, "Liars";
docs/security.md, "Spot checks").

Every peer is a real ``Peer`` on a ``MemoryNetwork`` in virtual time (wall clock
``EPOCH`` plus trio time), with a ledger: results carry signed receipts, so two results
under the same runtime fingerprint are compared bitwise, as between real peers. Callers
also keep a trust store and spot-check at the scenario's rate. The files live in a
temporary directory removed at the end of the run.

Providers serve ``ArithmeticStandIn`` models, ``y = tanh(x W + b)`` in float32, a
deterministic function of the inputs and the model (``honest_outputs``). An honest
provider returns it. A noisy one runs under another runtime fingerprint (as another
machine would) whose results differ from it by ``noise`` (relative: a few float32
ulps). A liar adds an offset of its own, about ``lie``, to every output, whatever the
inputs: two liars never agree with each other.

The callers work at once, each making one call after another, in phases:

1. finder: ``calls`` calls through ``Peer.call_with_offer`` (discovery, ranking,
   failover, spot checks, marked providers skipped), a random model each time;
2. pairs: the caller finds the providers of every model and calls each in turn
   (``ModelFinder.call_offers`` on that provider's offer, then ``ModelFinder.answered``
   with every offer found, as ``ModelFinder.call`` does) until the provider has served
   it ``pipelines_after`` calls, phase 1's included, or is marked. Providers are
   visited round robin, so a check drawn on one call ends before the same provider is
   called again: the calls a liar had served when its mark was first seen are the
   calls it served before it was marked;
3. pipelines: ``pipeline_runs`` runs of a two-step pipeline (model 0, then model 1 on
   its output), planned each run (marked providers are not planned);
4. pairs again, up to ``pair_calls`` calls per provider (pipeline steps included);
5. trials: each checking caller forgets the mark of each liar (``TrustStore.forget``,
   as ``p2pnet trust forget`` does) and calls it again, waiting for each check drawn
   to end before the next call, until it is marked anew or has served ``pair_calls``
   calls; ``trials`` in all, the first being phases 1 to 4. The simulation knows who
   lies and calls only them here; the checks do not. A few dozen (caller, liar) pairs
   cannot tell 99% from 98% (one pair of 50 is 2%): the trials are the larger sample.

Each pair of peers has its own one-way delay, drawn once from the scenario's
``latency_ms`` (plus up to ``jitter_ms`` per message): each caller has its own nearest
providers, which its finder ranks first.

The last ``unchecked`` peers make the calls of phases 1 and 3 without a trust store, so
without spot checks: the baseline.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

from p2pnet.core.identity import Identity
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.schema import ModelSchema, TensorSpec, check_inputs
from p2pnet.core.spot_check import DEFAULT_TOLERANCE, SpotCheckPolicy, compare_outputs
from p2pnet.dht.node import DhtConfig
from p2pnet.discovery.service import Offer
from p2pnet.errors import DeadlineExceededError, P2PNetError
from p2pnet.net.memory import MemoryNetwork
from p2pnet.peer import Peer
from p2pnet.pipeline.executor import Pipeline
from p2pnet.simulate.scenario import Scenario, TrustLoad
from p2pnet.simulate.swarm import honest_key
from p2pnet.trust.checker import SpotChecker, SpotCheckStats

__all__ = [
    "HONEST",
    "LIAR",
    "NOISY",
    "ArithmeticStandIn",
    "honest_outputs",
    "pipeline_outputs",
    "provider_roles",
    "run_trust",
    "stand_in",
    "task_of",
]

WIDTH: Final = 4  # features in and out of every stand-in model
SCHEMA: Final = ModelSchema(
    (TensorSpec("x", "float32", ("n", WIDTH)),), (TensorSpec("y", "float32", ("n", WIDTH)),)
)
RUNTIME: Final = "stand-in/1"
OTHER_RUNTIME: Final = "stand-in/1 (another machine)"  # the noisy providers' fingerprint
HONEST: Final = "honest"
NOISY: Final = "noisy"
LIAR: Final = "liar"
# The issue's figures: liars marked after this many calls, and the shares to reach.
ISSUE_CALLS: Final = 100
ISSUE_MARKED: Final = 0.99
ISSUE_PIPELINES: Final = 0.99


def task_of(model: int) -> str:
    return f"liars-model-{model}"


def _info(model: int, runtime: str) -> ModelInfo:
    return ModelInfo(
        model_id=model_id_of_bytes(f"p2pnet trust stand-in {model}".encode()),
        path=Path(f"liars-{model}.standin"),
        size=0,
        schema=SCHEMA,
        name=task_of(model),
        version="1",
        runtime=runtime,
    )


def _weights(model: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(1_000 + model)
    return rng.normal(0.0, 0.5, (WIDTH, WIDTH)), rng.normal(0.0, 0.1, WIDTH)


def honest_outputs(model: int, x: npt.NDArray[Any]) -> dict[str, npt.NDArray[np.float32]]:
    """What every honest provider of ``model`` returns for ``x`` (float32 [n, 4])."""
    w, b = _weights(model)
    return {"y": np.tanh(np.asarray(x, dtype=np.float64) @ w + b).astype(np.float32)}


def pipeline_outputs(x: npt.NDArray[Any]) -> dict[str, npt.NDArray[np.float32]]:
    """What the two-step pipeline (model 0, then model 1) gives for ``x``, honestly run."""
    return honest_outputs(1, honest_outputs(0, x)["y"])


@dataclass(eq=False)
class ArithmeticStandIn:
    """A ``ServedModel``: ``honest_outputs`` of model ``model`` after ``run_s`` seconds of
    trio time; times ``1 + noise`` (a noisy provider) or plus ``offset`` (a liar)."""

    info: ModelInfo
    model: int
    run_s: float
    noise: float = 0.0
    offset: npt.NDArray[np.float64] | None = None
    calls: int = 0
    _in_flight: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    @property
    def model_id(self) -> str:
        return self.info.model_id

    def compute(self, x: npt.NDArray[Any]) -> dict[str, npt.NDArray[np.float32]]:
        y = honest_outputs(self.model, x)["y"]
        if self.noise:
            y = (y.astype(np.float64) * (1.0 + self.noise)).astype(np.float32)
        if self.offset is not None:
            y = (y + self.offset).astype(np.float32)
        return {"y": y}

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = math.inf
    ) -> dict[str, npt.NDArray[Any]]:
        arrays = check_inputs(self.info.schema, inputs)
        self.calls += 1
        self._in_flight += 1
        try:
            with trio.move_on_after(timeout):
                await trio.sleep(self.run_s)
                return self.compute(arrays["x"])
        finally:
            self._in_flight -= 1
            self._changed.set()
            self._changed = trio.Event()
        raise DeadlineExceededError(
            f"model {self.info.name} did not finish within {timeout * 1000:.0f} ms"
        )

    async def wait_idle(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while self._in_flight:
                await self._changed.wait()
            return True
        return False


def provider_roles(load: TrustLoad, seed: int) -> dict[int, str]:
    """Each provider's role: ``liars`` of them (rounded, at least one when the fraction
    is positive) lie, ``noisy`` of the others are noisy, drawn from ``seed``."""
    rng = random.Random(seed * 15_485_863 + load.providers)
    providers = list(range(load.providers))
    liars = round(load.liars * load.providers)
    if load.liars and not liars:
        liars = 1
    lying = set(rng.sample(providers, liars))
    honest = [p for p in providers if p not in lying]
    noisy = set(rng.sample(honest, round(load.noisy * len(honest))))
    return {p: LIAR if p in lying else NOISY if p in noisy else HONEST for p in providers}


def stand_in(load: TrustLoad, seed: int, provider: int, role: str) -> ArithmeticStandIn:
    """The model ``provider`` serves in the role it was given (``provider_roles``)."""
    model = provider % load.models
    run_s = load.run_ms / 1000
    if role == NOISY:
        return ArithmeticStandIn(_info(model, OTHER_RUNTIME), model, run_s, noise=load.noise)
    if role == LIAR:
        # Its own offset: between 1 and 2 x ``lie`` on each output, either sign.
        rng = np.random.default_rng([seed, provider])
        offset = load.lie * rng.uniform(1.0, 2.0, WIDTH) * rng.choice([-1.0, 1.0], WIDTH)
        return ArithmeticStandIn(_info(model, RUNTIME), model, run_s, offset=offset)
    return ArithmeticStandIn(_info(model, RUNTIME), model, run_s)


def _agree(outputs: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    return compare_outputs(outputs, expected, False, DEFAULT_TOLERANCE).agree


@dataclass(slots=True)
class _Caller:
    """What one caller did: its calls and wrong results per phase, the calls each
    provider served it, and when it was first seen marked (the calls served by then)."""

    index: int
    checks: bool
    rng: random.Random
    calls: Counter[str] = field(default_factory=Counter)
    finder_wrong: list[bool] = field(default_factory=list)  # phase 1, call by call
    failed: Counter[str] = field(default_factory=Counter)
    wrong: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    served: Counter[int] = field(default_factory=Counter)
    marked_at: dict[int, int] = field(default_factory=dict)
    offers: dict[int, list[Offer]] = field(default_factory=dict)  # by model
    found: set[int] = field(default_factory=set)  # the providers of those offers
    # Phase 5: per liar, the calls it served in each further trial and if it was marked.
    trials: list[tuple[int, int, bool]] = field(default_factory=list)
    # At the end of phase 4: its checker's stats, its last verdict, and how each liar
    # marked by then was (True: on its own result; False: giving another opinion).
    stats: SpotCheckStats = field(default_factory=SpotCheckStats)
    last_verdict: int = 0
    marked_own: dict[int, bool] = field(default_factory=dict)

    def inputs(self, rows: int) -> dict[str, npt.NDArray[np.float32]]:
        x = [[self.rng.uniform(-2.0, 2.0) for _ in range(WIDTH)] for _ in range(rows)]
        return {"x": np.array(x, dtype=np.float32)}


@dataclass(frozen=True, slots=True)
class _Run:
    """One pipeline run: by whom, whether it completed, whether its outputs were right,
    and whether a liar ran one of its steps."""

    caller: int
    completed: bool
    correct: bool
    through_a_liar: bool


PIPELINE: Final = {
    "pipeline": "liars-chain",
    "inputs": {"x": f"float32[N, {WIDTH}]"},
    "steps": {
        "first": {"task": task_of(0), "inputs": {"x": "input.x"}},
        "second": {"task": task_of(1), "inputs": {"x": "first.y"}},
    },
    "outputs": {"y": "second.y"},
}


async def run_trust(
    scenario: Scenario,
    n: int,
    seed: int,
    progress: Callable[[str, float, float], None],
    *,
    epoch: float,
) -> dict[str, Any]:
    """Run the trust workload of ``scenario`` with ``n`` peers (in a trio run on a
    ``MockClock``); the result as a JSON-ready dict."""
    load = scenario.trust
    assert load is not None
    wall0 = time.perf_counter()
    roles = provider_roles(load, seed)
    net = scenario.network
    net_rng = random.Random(seed * 31 + 7)
    delays = [[net.latency_ms.sample(net_rng) / 1e3 for _ in range(n)] for _ in range(n)]
    jitter = net.jitter_ms / 1e3
    hosts: dict[str, int] = {}

    def latency(src: str, dst: str) -> float:
        a, b = sorted((hosts[src], hosts[dst]))
        return delays[a][b] + (net_rng.uniform(0.0, jitter) if jitter else 0.0)

    def wall_clock() -> float:
        return epoch + trio.current_time()

    unchecked = n - load.unchecked
    callers = [
        _Caller(i, i < unchecked, random.Random(seed * 7_919 + i)) for i in range(load.providers, n)
    ]
    models: dict[int, ArithmeticStandIn] = {}
    runs: list[_Run] = []
    with tempfile.TemporaryDirectory(prefix="p2pnet-trust-") as folder:
        peers: dict[int, Peer] = {}
        async with MemoryNetwork(latency=latency, seed=seed) as network:
            async with trio.open_nursery() as nursery:
                progress("start", 0, n)
                for index in range(n):
                    identity = Identity(honest_key(seed, index))
                    hosts[identity.peer_id] = index
                    checking = load.providers <= index < unchecked
                    peer = Peer(
                        identity,
                        host=network.add_host(identity.peer_id),
                        nat=None,
                        clock=wall_clock,
                        upkeep=False,
                        shutdown_grace=0.0,
                        dht=DhtConfig(seed=seed * 100_003 + index),
                        ledger=Path(folder) / f"{index}.ledger",
                        trust_store=Path(folder) / f"{index}.trust" if checking else None,
                        spot_checks=SpotCheckPolicy(rate=load.rate, seed=seed * 1_000_003 + index),
                        bootstrap=[peers[0].addrs[0]] if index else (),
                    )
                    if index < load.providers:
                        model = stand_in(load, seed, index, roles[index])
                        models[index] = model
                        peer.serve(model, tasks=[task_of(model.model)])
                    await nursery.start(peer.run)
                    peers[index] = peer
                    progress("start", index + 1, n)

                # Announced again once every peer has joined: the closest peers to each
                # key are known by then.
                async with trio.open_nursery() as announcing:
                    for index in models:
                        announcing.start_soon(peers[index].announce)

                index_of = {peer.peer_id: index for index, peer in peers.items()}
                model_ids = [_info(k, RUNTIME).model_id for k in range(load.models)]
                phases = _Phases(load, peers, index_of, model_ids, roles, progress)
                await phases.run_all(callers, Pipeline.from_dict(PIPELINE), runs)
                out = _figures(load, roles, callers, runs, peers, index_of, models)
                nursery.cancel_scope.cancel()
    out["resources"] = {
        "wall_s": round(time.perf_counter() - wall0, 2),
        "virtual_s": round(trio.current_time(), 2),
    }
    return out


class _Phases:
    """The callers' work, phase after phase (see the module docstring)."""

    def __init__(
        self,
        load: TrustLoad,
        peers: dict[int, Peer],
        index_of: dict[str, int],
        model_ids: list[str],
        roles: dict[int, str],
        progress: Callable[[str, float, float], None],
    ) -> None:
        self.load = load
        self.peers = peers
        self.index_of = index_of
        self.model_ids = model_ids
        self.roles = roles
        self.progress = progress
        self.phase = ""
        self.done = 0
        self.total = 0

    def _checker(self, caller: _Caller) -> SpotChecker:
        checker = self.peers[caller.index].spot_checker
        assert checker is not None
        return checker

    async def run_all(self, callers: list[_Caller], pipeline: Pipeline, runs: list[_Run]) -> None:
        load = self.load
        checking = [c for c in callers if c.checks]
        await self._phase("finder", callers, load.calls, self.finder_calls)
        for caller in checking:
            self._note_marks(caller)
            await self.find_providers(caller)

        async def pairs_before(caller: _Caller) -> None:
            await self.pair_calls(caller, load.pipelines_after)

        async def pipelines(caller: _Caller) -> None:
            await self.pipeline_runs(caller, pipeline, runs)

        async def pairs_after(caller: _Caller) -> None:
            await self.pair_calls(caller, load.pair_calls)

        each = load.providers * load.pipelines_after
        await self._phase("pairs", checking, each, pairs_before)
        await self._phase("pipelines", callers, load.pipeline_runs, pipelines)
        for caller in checking:
            self._note_marks(caller)
        if load.pair_calls > load.pipelines_after:
            each = load.providers * (load.pair_calls - load.pipelines_after)
            await self._phase("more pairs", checking, each, pairs_after)
        for caller in checking:
            self._take_stock(caller)
        if load.trials > 1:
            liars = sum(1 for role in self.roles.values() if role == LIAR)
            each = liars * (load.trials - 1) * round(1 / load.rate) if load.rate else 0
            await self._phase("trials", checking, each, self.more_trials)

    async def _phase(
        self,
        name: str,
        callers: list[_Caller],
        each: int,
        work: Callable[[_Caller], Awaitable[None]],
    ) -> None:
        """Run ``work`` for every caller at once (at most ``each`` calls or runs each),
        then wait for their checks to end."""
        self.phase, self.done, self.total = name, 0, each * len(callers)
        self.progress(name, 0, self.total)
        async with trio.open_nursery() as nursery:
            for caller in callers:
                nursery.start_soon(work, caller)
        for caller in callers:
            if caller.checks:
                await self._checker(caller).wait_idle()
        self.progress(name, self.total, self.total)

    def _step(self) -> None:
        self.done += 1
        if self.done % 100 == 0:
            self.progress(self.phase, self.done, self.total)

    def _note_marks(self, caller: _Caller) -> None:
        """Note the providers marked since last looked, with the calls they served."""
        checker = self._checker(caller)
        for provider in self.roles:
            if provider not in caller.marked_at and checker.is_untrusted(
                self.peers[provider].peer_id
            ):
                caller.marked_at[provider] = caller.served[provider]

    def _take_stock(self, caller: _Caller) -> None:
        """What the caller's checks did in phases 1 to 4 (phase 5 forgets marks)."""
        checker = self._checker(caller)
        caller.stats = dataclasses.replace(checker.stats)
        verdicts = {v.id: v for v in checker.store.verdicts(limit=10_000_000)}
        caller.last_verdict = max(verdicts, default=0)
        for mark in checker.store.marks():
            provider = self.index_of[mark.peer]
            if self.roles[provider] == LIAR:
                caller.marked_own[provider] = verdicts[mark.verdict].provider == mark.peer

    async def _call_offer(
        self, caller: _Caller, offer: Offer, phase: str
    ) -> tuple[Offer, dict[str, npt.NDArray[np.float32]], Any] | None:
        """One call of ``phase`` to ``offer`` alone (``ModelFinder.call_offers``) with new
        inputs: (the offer that answered, the inputs, the outputs), or None when it
        failed (counted, with its error code)."""
        peer = self.peers[caller.index]
        inputs = caller.inputs(self.load.rows)
        try:
            answered, outputs = await peer.finder.call_offers(
                [offer], inputs, self.load.call_timeout
            )
        except P2PNetError as exc:
            caller.failed[phase] += 1
            caller.errors[exc.code] += 1
            return None
        finally:
            self._step()
        return answered, inputs, outputs

    def _tally(self, caller: _Caller, phase: str, model: int, x: Any, outputs: Any) -> bool:
        """Count a call of ``phase``; whether its outputs were wrong."""
        caller.calls[phase] += 1
        wrong = not _agree(outputs, honest_outputs(model, x))
        caller.wrong[phase] += wrong
        return wrong

    async def finder_calls(self, caller: _Caller) -> None:
        """Phase 1: calls through the finder, a random model each."""
        peer = self.peers[caller.index]
        for _ in range(self.load.calls):
            model = caller.rng.randrange(self.load.models)
            inputs = caller.inputs(self.load.rows)
            try:
                offer, outputs = await peer.call_with_offer(
                    inputs, model=self.model_ids[model], timeout=self.load.call_timeout
                )
            except P2PNetError as exc:
                caller.failed["finder"] += 1
                caller.errors[exc.code] += 1
                continue
            finally:
                self._step()
            caller.served[self.index_of[offer.record.peer_id]] += 1
            caller.finder_wrong.append(self._tally(caller, "finder", model, inputs["x"], outputs))

    async def find_providers(self, caller: _Caller) -> None:
        """The offers of every model, found once for the calls to each provider."""
        peer = self.peers[caller.index]
        for model, model_id in enumerate(self.model_ids):
            search = await peer.finder.search(model=model_id, timeout=self.load.call_timeout)
            caller.offers[model] = [o for o in search.offers if o.record.model_id == model_id]
            caller.found |= {self.index_of[o.record.peer_id] for o in caller.offers[model]}

    async def pair_calls(self, caller: _Caller, limit: int) -> None:
        """Phases 2 and 4: every provider found, called in turn until it has served
        ``limit`` calls or is marked."""
        peer = self.peers[caller.index]
        checker = self._checker(caller)
        for _ in range(limit):
            called = 0
            for model, offers in caller.offers.items():
                for offer in offers:
                    provider = self.index_of[offer.record.peer_id]
                    if provider in caller.marked_at or caller.served[provider] >= limit:
                        continue
                    if checker.is_untrusted(offer.record.peer_id):
                        caller.marked_at[provider] = caller.served[provider]
                        continue
                    called += 1
                    done = await self._call_offer(caller, offer, "pairs")
                    if done is None:
                        continue
                    answered, inputs, outputs = done
                    peer.finder.answered(answered, offers, inputs, outputs)
                    caller.served[provider] += 1
                    self._tally(caller, "pairs", model, inputs["x"], outputs)
            if not called:
                break
        await checker.wait_idle()
        self._note_marks(caller)

    async def more_trials(self, caller: _Caller) -> None:
        """Phase 5: each liar found, its mark forgotten, called until it is marked again
        or has served ``pair_calls`` calls, ``trials - 1`` times; round robin."""
        load = self.load
        peer = self.peers[caller.index]
        checker = self._checker(caller)
        for provider, role in self.roles.items():
            if role == LIAR:
                checker.store.forget(self.peers[provider].peer_id)
        await self.find_providers(caller)  # those marked before were not offered then
        offers = {
            self.index_of[o.record.peer_id]: (o, model_offers)
            for model_offers in caller.offers.values()
            for o in model_offers
            if self.roles[self.index_of[o.record.peer_id]] == LIAR
        }
        served = dict.fromkeys(offers, 0)
        left = dict.fromkeys(offers, load.trials - 1)
        while any(left.values()):
            for provider, (offer, model_offers) in offers.items():
                if not left[provider]:
                    continue
                marked = checker.is_untrusted(offer.record.peer_id)
                if marked or served[provider] >= load.pair_calls:
                    caller.trials.append((provider, served[provider], marked))
                    left[provider] -= 1
                    if left[provider]:  # the last trial's mark stays, as a real one would
                        checker.store.forget(offer.record.peer_id)
                    served[provider] = 0
                    continue
                done = await self._call_offer(caller, offer, "trials")
                if done is None:
                    continue
                answered, inputs, outputs = done
                served[provider] += 1
                self._tally(caller, "trials", provider % load.models, inputs["x"], outputs)
                if peer.finder.answered(answered, model_offers, inputs, outputs):
                    await checker.wait_idle()

    async def pipeline_runs(self, caller: _Caller, pipeline: Pipeline, runs: list[_Run]) -> None:
        """Phase 3: the two-step pipeline, planned each run."""
        load = self.load
        peer = self.peers[caller.index]
        for _ in range(load.pipeline_runs):
            inputs = caller.inputs(load.rows)
            completed = correct = through_a_liar = False
            with trio.move_on_after(load.call_timeout * 3):
                try:
                    result = await pipeline.run(peer, inputs)
                except P2PNetError as exc:
                    caller.errors[exc.code] += 1
                else:
                    completed = True
                    correct = _agree(result.outputs, pipeline_outputs(inputs["x"]))
                    ran = [self.index_of[s.peer_id] for s in result.steps]
                    through_a_liar = any(self.roles[p] == LIAR for p in ran)
                    caller.served.update(ran)
            self._step()
            runs.append(_Run(caller.index, completed, correct, through_a_liar))


def _stats(peers: dict[int, Peer], caller: _Caller) -> SpotCheckStats:
    checker = peers[caller.index].spot_checker
    assert checker is not None
    return checker.stats


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _checks_made(
    checking: list[_Caller], peers: dict[int, Peer], roles: dict[int, str], index_of: dict[str, int]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, dict[str, int]]]:
    """The checks of phases 1 to 4, from the checkers' stats and the verdicts in their
    trust stores then; every mark of an honest provider, in any phase; per caller, its
    honest marks and its checks."""
    totals: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    opinions: Counter[int] = Counter()
    largest_rel = largest_abs = 0.0
    honest_marks: list[dict[str, Any]] = []
    per_caller: dict[int, dict[str, int]] = {}
    for caller in checking:
        checker = peers[caller.index].spot_checker
        assert checker is not None
        stats = caller.stats
        for name in (
            "considered", "sampled", "skipped_busy", "no_checker", "agreed", "disagreed",
            "unresolved", "marked", "checker_failures", "extra_calls",
        ):  # fmt: skip
            totals[name] += getattr(stats, name)
        for verdict in checker.store.verdicts(limit=10_000_000):
            if verdict.id > caller.last_verdict:
                continue
            if verdict.outcome != "agree":
                opinions[len(verdict.opinions)] += 1
            for comparison in verdict.comparisons.values():
                modes[comparison["mode"]] += 1
            if verdict.outcome == "agree":
                (comparison,) = verdict.comparisons.values()
                largest_rel = max(largest_rel, float(comparison["max_rel_error"]))
                largest_abs = max(largest_abs, float(comparison["max_abs_error"]))
        honest = 0
        for mark in checker.store.marks():
            role = roles[index_of[mark.peer]]
            if role != LIAR:
                honest += 1
                honest_marks.append(
                    {"caller": caller.index, "provider": index_of[mark.peer], "role": role}
                )
        per_caller[caller.index] = {
            "honest_marked": honest,
            "checks": stats.sampled,
            "extra_calls": stats.extra_calls,
        }
    own = [own for c in checking for own in c.marked_own.values()]
    figures = {
        **{name: totals[name] for name in sorted(totals)},
        "comparisons": dict(sorted(modes.items())),
        "opinions_on_disagreement": {str(k): v for k, v in sorted(opinions.items())},
        "liars_marked_on_own_result": sum(own),
        "liars_marked_as_checker": len(own) - sum(own),
        "agreeing_max_rel_error": largest_rel,
        "agreeing_max_abs_error": largest_abs,
    }
    return figures, honest_marks, per_caller


def _figures(
    load: TrustLoad,
    roles: dict[int, str],
    callers: list[_Caller],
    runs: list[_Run],
    peers: dict[int, Peer],
    index_of: dict[str, int],
    models: dict[int, ArithmeticStandIn],
) -> dict[str, Any]:
    liars = sorted(p for p, r in roles.items() if r == LIAR)
    checking = [c for c in callers if c.checks]
    unchecked = [c for c in callers if not c.checks]
    pairs = [(c, p) for c in checking for p in liars]
    served_before_mark = sorted(c.marked_at[p] for c, p in pairs if p in c.marked_at)
    checks, honest_marks, checks_by_caller = _checks_made(checking, peers, roles, index_of)
    curve = {
        str(k): {
            "marked": _share(sum(1 for m in served_before_mark if m <= k), len(pairs)),
            # A liar checked on its own results only, each drawn with probability rate.
            "expected_own_results": round(1 - (1 - load.rate) ** k, 4),
        }
        for k in load.curve
    }
    per_caller: list[dict[str, Any]] = []
    for caller in checking:
        marked = [p for p in liars if p in caller.marked_at]
        per_caller.append(
            {
                "caller": caller.index,
                "calls": sum(n for phase, n in caller.calls.items() if phase != "trials"),
                "wrong_results": sum(n for phase, n in caller.wrong.items() if phase != "trials"),
                "liars_marked": len(marked),
                "liars_marked_within": {
                    str(k): sum(1 for p in marked if caller.marked_at[p] <= k) for k in load.curve
                },
                **checks_by_caller[caller.index],
            }
        )

    def finder(group: list[_Caller]) -> dict[str, Any]:
        calls = sum(c.calls["finder"] for c in group)
        wrong = sum(c.wrong["finder"] for c in group)
        # Each caller's answered calls in order: are the later ones wrong less often?
        first = [w for c in group for w in c.finder_wrong[: len(c.finder_wrong) // 2]]
        second = [w for c in group for w in c.finder_wrong[len(c.finder_wrong) // 2 :]]
        return {
            "callers": len(group),
            "calls": calls,
            "failed": sum(c.failed["finder"] for c in group),
            "wrong": wrong,
            "wrong_share": _share(wrong, calls),
            "wrong_share_first_half": _share(sum(first), len(first)),
            "wrong_share_second_half": _share(sum(second), len(second)),
        }

    def pipelines(group: list[_Caller]) -> dict[str, Any]:
        mine = [r for r in runs if r.caller in {c.index for c in group}]
        correct = sum(1 for r in mine if r.correct)
        return {
            "runs": len(mine),
            "completed": sum(1 for r in mine if r.completed),
            "correct": correct,
            "correct_share": _share(correct, len(mine)),
            "through_a_liar": sum(1 for r in mine if r.through_a_liar),
        }

    trials = [t for c in checking for t in c.trials]
    repeated_curve = {
        str(k): _share(sum(1 for _, n, marked in trials if marked and n <= k), len(trials))
        for k in load.curve
    }
    repeated = {
        "trials": len(trials),
        "marked": sum(1 for _, _, marked in trials if marked),
        "marked_after_calls": repeated_curve,
        "mean_calls_before_mark": round(
            sum(n for _, n, marked in trials if marked) / max(1, sum(m for *_, m in trials)), 1
        ),
        "calls": sum(c.calls["trials"] for c in checking),
        "checks": sum(_stats(peers, c).sampled - c.stats.sampled for c in checking),
        "extra_calls": sum(_stats(peers, c).extra_calls - c.stats.extra_calls for c in checking),
    }
    made = sum(row["calls"] for row in per_caller)
    # The issue's figure from the larger sample when there are further trials.
    point = str(ISSUE_CALLS)
    if trials:
        at_issue = repeated_curve.get(point)
    else:
        at_issue = curve[point]["marked"] if point in curve else None
    piped = pipelines(checking)
    targets: dict[str, dict[str, Any]] = {
        "liars_marked": {
            "ok": at_issue is not None and at_issue >= ISSUE_MARKED,
            "after_calls": ISSUE_CALLS,
            "marked": at_issue,
            "of": "trials" if trials else "pairs",
            "target": ISSUE_MARKED,
        },
        "honest_marked": {"ok": not honest_marks, "marked": len(honest_marks)},
        "pipelines_correct": {
            "ok": piped["correct_share"] is not None and piped["correct_share"] >= ISSUE_PIPELINES,
            "correct": piped["correct_share"],
            "target": ISSUE_PIPELINES,
        },
    }
    per_model = Counter(p % load.models for p in liars)
    errors: Counter[str] = Counter()
    for caller in callers:
        errors.update(caller.errors)
    return {
        "trust": {
            "providers": load.providers,
            "models": load.models,
            "liars": len(liars),
            "liars_per_model": [per_model.get(k, 0) for k in range(load.models)],
            "noisy": sum(1 for r in roles.values() if r == NOISY),
            "callers": len(checking),
            "unchecked_callers": len(unchecked),
            "rate": load.rate,
            "pair_calls": load.pair_calls,
            "pipelines_after": load.pipelines_after,
            "liar_pairs": len(pairs),
            "liar_pairs_found": sum(1 for c, p in pairs if p in c.found or p in c.marked_at),
            "liar_pairs_marked": len(served_before_mark),
            "marked_after_calls": curve,
            "calls_served_before_mark": served_before_mark,
            "trials": repeated,
            "honest_marked": len(honest_marks),
            "honest_marks": honest_marks,
            "checks": checks,
            "calls": made,
            # Every call offered to the checkers (pipeline steps included) may be checked.
            "extra_call_share": _share(checks["extra_calls"], checks["considered"]),
            "wrong_results": sum(row["wrong_results"] for row in per_caller),
            "errors": dict(sorted(errors.items())),
            "finder": {"checking": finder(checking), "unchecked": finder(unchecked)},
            "pipelines": {"checking": piped, "unchecked": pipelines(unchecked)},
            "per_caller": per_caller,
            "served_by_role": {
                role: sum(m.calls for p, m in models.items() if roles[p] == role)
                for role in (HONEST, NOISY, LIAR)
            },
            "targets": targets,
            "verdict": all(t["ok"] for t in targets.values()),
        }
    }
