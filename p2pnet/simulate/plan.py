"""The schedule of one simulation run, drawn from the scenario and the seed (pure).

Both engines execute the same ``Plan``: who joins through whom, who serves which model,
who misbehaves, and the timed events of the run phase (queries, joins, departures,
restarts, new records). Peers are numbered: ``0 .. n-1`` start the run (peer 0 first,
the others join in batches), then the sybils, then the peers that join later.
"""

from __future__ import annotations

import bisect
import heapq
import random
from dataclasses import dataclass, field
from typing import Final

from p2pnet.core.kad.region import DEFAULT_DENSITY_THRESHOLD
from p2pnet.simulate.adversaries import SybilPlacement, adaptive_sybil_placement
from p2pnet.simulate.scenario import Scenario

__all__ = ["Event", "ModelPlan", "Plan", "make_plan"]

HONEST: Final = "honest"
FORGER: Final = "forger"
DROPPER: Final = "dropper"
CORRUPTOR: Final = "corruptor"
SYBIL: Final = "sybil"


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happens at ``t`` seconds into the run phase.

    kind: ``query`` (peer looks for task), ``join`` / ``rejoin`` (peer joins through
    ``via``), ``leave`` (graceful), ``crash``, ``publish`` (peer starts serving new model
    ``model`` under a task of its own, then others probe for it), ``pipeline`` (peer runs
    the scenario's pipeline; ``model`` numbers the run).
    """

    t: float
    kind: str
    peer: int
    via: int = -1
    task: str = ""
    model: int = -1


@dataclass(frozen=True, slots=True)
class ModelPlan:
    index: int
    task: str
    providers: tuple[int, ...]
    step: str = ""  # the pipeline step this model serves (a stand-in), if any


@dataclass
class Plan:
    n: int  # initial peers, sybils excluded
    total: int  # every peer slot
    batches: list[list[int]]  # bootstrap batches, in order (peer 0 is not in any)
    via: dict[int, int]  # bootstrap peer of each peer in batches
    roles: dict[int, str]  # peers that are not honest
    models: list[ModelPlan]
    events: list[Event]
    target_task: str = ""
    sybils: list[int] = field(default_factory=list)
    sybil_bits: int = 0  # leading bits the sybils share with the target task's key
    sybil_placement: SybilPlacement | None = None  # the adaptive attacker's choice
    relays: list[int] = field(default_factory=list)  # public bootstrap peers that relay
    nat: dict[int, str] = field(default_factory=dict)  # peers behind a NAT: cone | symmetric
    # Further bootstrap peers of each peer in batches (``peers.bootstrap`` - 1 of them),
    # asked with ``via`` (drawn apart, so that a plan with one is the plan it always was).
    more_via: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def bootstrap_of(self, peer: int) -> tuple[int, ...]:
        """The bootstrap peers of a peer in the bootstrap batches."""
        return (self.via[peer], *self.more_via.get(peer, ()))

    def role(self, peer: int) -> str:
        return self.roles.get(peer, HONEST)

    @property
    def providers(self) -> set[int]:
        return {p for m in self.models for p in m.providers}


def make_plan(
    scenario: Scenario,
    n: int,
    seed: int | None = None,
    *,
    initial_via: bool = False,
    max_batch: int | None = None,
) -> Plan:
    """The plan of one run with ``n`` initial peers.

    initial_via: peers that join during the run do so through initial peers only (the
    libp2p engine's workers know the addresses of those alone).
    max_batch: at most this many peers join at once during the bootstrap.
    """
    seed = scenario.seed if seed is None else seed
    rng = random.Random(seed * 1_000_003 + n)
    adv = scenario.adversaries
    work = scenario.workload

    # With a NAT mix, the first peers are public bootstrap peers and relays; everyone
    # joins through them.
    relays = list(range(min(scenario.nat.relays, n))) if scenario.nat.modelled else []
    # Roles: adversaries among peers 1..n-1 (relays excepted); sybils are extra peers.
    others = list(range(max(1, len(relays)), n))
    rng.shuffle(others)
    roles: dict[int, str] = {}
    for role, count in (
        (FORGER, adv.forgers),
        (DROPPER, adv.droppers),
        (CORRUPTOR, adv.corruptors),
    ):
        for _ in range(count):
            roles[others.pop()] = role
    sybil_bits = adv.sybil_prefix_bits or (n.bit_length() + 6)
    placement = None
    sybil_count = adv.sybils
    if adv.sybils and adv.sybil_placement == "adaptive":
        placement = adaptive_sybil_placement(
            n,
            adv.sybils,
            k=scenario.dht.k,
            threshold=DEFAULT_DENSITY_THRESHOLD,
            rng=random.Random(seed * 3_000_017 + n),
        )
        sybil_count, sybil_bits = placement.count, placement.bits
    sybils = list(range(n, n + sybil_count))
    for s in sybils:
        roles[s] = SYBIL
    honest = sorted(p for p in range(n) if p not in roles)

    # Models: model j serves task j mod (number of tasks), on `providers` honest peers.
    tasks = [t for t, _ in scenario.workload.tasks]
    weights = [w for _, w in scenario.workload.tasks]
    models = [
        ModelPlan(j, tasks[j % len(tasks)], tuple(sorted(rng.sample(honest, work.providers))))
        for j in range(work.models)
    ]
    # The pipeline's steps: one stand-in model each, on their own providers.
    spec = scenario.pipeline.spec
    for step in spec.steps if spec is not None else ():
        chosen = tuple(sorted(rng.sample(honest, scenario.pipeline.providers)))
        models.append(ModelPlan(len(models), step.task or "", chosen, step.name))

    # Bootstrap: batches of join_batch; each peer through a random earlier peer.
    order = list(range(1, n)) + sybils
    width = min(scenario.join_batch, max_batch or scenario.join_batch)
    batches = [order[i : i + width] for i in range(0, len(order), width)]
    via: dict[int, int] = {}
    more_via: dict[int, tuple[int, ...]] = {}
    more = random.Random(seed * 5_000_011 + n)
    joined = [0]
    joined_relays = [0] if relays else []
    for batch in batches:
        pool = joined_relays or joined
        for p in batch:
            via[p] = pool[rng.randrange(len(pool))]
            if scenario.bootstrap_peers > 1:
                others = [q for q in pool if q != via[p]]
                count = min(scenario.bootstrap_peers - 1, len(others))
                more_via[p] = tuple(more.sample(others, count))
        joined += batch
        joined_relays += [p for p in batch if p < len(relays)]

    # Pipeline callers: honest peers serving no model, kept for the whole run.
    callers: list[int] = []
    if spec is not None and scenario.pipeline.callers:
        serving = {p for m in models for p in m.providers} | set(relays) | {0}
        pool = [p for p in honest if p not in serving]
        count = min(scenario.pipeline.callers, len(pool))
        callers = sorted(random.Random(seed * 9_000_011 + n).sample(pool, count))
    events = _run_events(
        scenario, rng, n, len(sybils), honest, roles, tasks, weights, models, initial_via,
        relays, callers,
    )  # fmt: skip
    total = n + len(sybils) + sum(1 for e in events if e.kind == "join")
    nat: dict[int, str] = {}
    if relays:
        mix = scenario.nat
        draw = random.Random(seed * 7_000_003 + n)
        public = set(relays) | set(sybils)
        for p in range(total):
            u = draw.random()
            if p in public:
                continue
            if u >= mix.public:
                nat[p] = "cone" if u < mix.public + mix.cone else "symmetric"
    return Plan(
        n=n,
        total=total,
        batches=batches,
        via=via,
        roles=roles,
        models=models,
        events=events,
        target_task=adv.sybil_target or tasks[0],
        sybils=sybils,
        sybil_bits=sybil_bits,
        sybil_placement=placement,
        relays=relays,
        nat=nat,
        more_via=more_via,
    )


def _poisson_times(rng: random.Random, rate: float, duration: float) -> list[float]:
    times: list[float] = []
    if rate <= 0:
        return times
    t = rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def _run_events(
    scenario: Scenario,
    rng: random.Random,
    n: int,
    n_sybils: int,
    honest: list[int],
    roles: dict[int, str],
    tasks: list[str],
    weights: list[float],
    models: list[ModelPlan],
    initial_via: bool,
    relays: list[int],
    callers: list[int],
) -> list[Event]:
    churn, work, fresh = scenario.churn, scenario.workload, scenario.freshness
    duration = scenario.duration
    # Raw times first (one stream of draws per process, so a change in one leaves the
    # others' times alone), then a pass in time order that picks peers among the live.
    queries = _poisson_times(random.Random(rng.random()), work.query_rate, duration)
    joins = _poisson_times(random.Random(rng.random()), churn.join_rate, duration)
    leaves = _poisson_times(random.Random(rng.random()), churn.leave_rate, duration)
    publishes = [duration * (i + 0.5) / fresh.new_records for i in range(fresh.new_records)]
    pick = random.Random(rng.random())
    pipelines = (
        _poisson_times(random.Random(rng.random()), scenario.pipeline.rate, duration)
        if scenario.pipeline.spec is not None
        else []
    )

    providers = {p for m in models for p in m.providers}
    alive_honest: list[int] = list(honest)  # sorted; queries come from these
    alive_any: list[int] = sorted(set(range(n)) | set(range(n, n + n_sybils)))
    next_peer = n + n_sybils
    timeline: list[tuple[float, int, str, int]] = []
    for t in queries:
        timeline.append((t, 3, "query", -1))
    for t in joins:
        timeline.append((t, 1, "join", -1))
    for t in leaves:
        timeline.append((t, 2, "leave", -1))
    for t in publishes:
        timeline.append((t, 0, "publish", -1))
    for t in pipelines:
        timeline.append((t, 4, "pipeline", -1))
    heapq.heapify(timeline)
    events: list[Event] = []
    fresh_index = len(models)
    runs = 0
    cumulative = []
    total_w = 0.0
    for w in weights:
        total_w += w
        cumulative.append(total_w)

    def remove(lst: list[int], p: int) -> None:
        i = bisect.bisect_left(lst, p)
        if i < len(lst) and lst[i] == p:
            lst.pop(i)

    while timeline:
        t, _, kind, peer = heapq.heappop(timeline)
        if kind == "query":
            if not alive_honest:
                continue
            peer = alive_honest[pick.randrange(len(alive_honest))]
            task = tasks[bisect.bisect_right(cumulative, pick.random() * total_w)]
            events.append(Event(t, "query", peer, task=task))
        elif kind == "pipeline":
            if callers:
                peer = callers[pick.randrange(len(callers))]
            elif alive_honest:
                peer = alive_honest[pick.randrange(len(alive_honest))]
            else:
                continue
            events.append(Event(t, "pipeline", peer, model=runs))
            runs += 1
        elif kind in ("join", "rejoin"):
            if kind == "join":
                peer = next_peer
                next_peer += 1
            if relays:
                pool = relays  # they never leave
            elif initial_via:
                pool = alive_any[: bisect.bisect_left(alive_any, n)]
            else:
                pool = alive_any
            via = pool[pick.randrange(len(pool))]  # never empty: peer 0 never leaves
            events.append(Event(t, kind, peer, via=via))
            bisect.insort(alive_any, peer)
            bisect.insort(alive_honest, peer)
        elif kind == "leave":
            candidates = [
                p
                for p in alive_honest
                if p != 0
                and p not in relays
                and p not in callers
                and (churn.providers_leave or p not in providers)
            ]
            if not candidates:
                continue
            peer = candidates[pick.randrange(len(candidates))]
            crash = pick.random() < churn.crash_fraction
            events.append(Event(t, "crash" if crash else "leave", peer))
            remove(alive_honest, peer)
            remove(alive_any, peer)
            if crash and churn.rejoin_after > 0 and t + churn.rejoin_after < duration:
                heapq.heappush(timeline, (t + churn.rejoin_after, 1, "rejoin", peer))
        elif kind == "publish":
            candidates = [p for p in alive_honest if p not in providers]
            if not candidates:
                continue
            peer = candidates[pick.randrange(len(candidates))]
            events.append(Event(t, "publish", peer, task=f"fresh-{fresh_index}", model=fresh_index))
            fresh_index += 1
    return events
