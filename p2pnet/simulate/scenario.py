"""Scenario files: what a simulation runs, parsed from TOML and checked (pure).

The format is described in docs/simulations.md; ``load_scenario(path)`` reads a file,
``parse_scenario(dict)`` checks a parsed table. Every mistake is a ``ScenarioError``
naming the field (``peers.count``, ``network.latency_ms.sigma``...).
"""

from __future__ import annotations

import copy
import math
import random
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from p2pnet.core.kad.lookup import DEFAULT_LOOKUP_PATHS
from p2pnet.core.spot_check import DEFAULT_RATE
from p2pnet.errors import UsageError

if TYPE_CHECKING:
    from p2pnet.core.pipeline import PipelineSpec

__all__ = [
    "ENGINES",
    "Adversaries",
    "Churn",
    "DhtParams",
    "Distribution",
    "Freshness",
    "Incentives",
    "NatMix",
    "NetworkModel",
    "PipelineLoad",
    "Scenario",
    "ScenarioError",
    "TrustLoad",
    "Workload",
    "apply_overrides",
    "load_scenario",
    "parse_scenario",
]

ENGINES: Final = ("memory", "libp2p")
_TASK_CHARS: Final = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class ScenarioError(UsageError):
    """A scenario file that cannot be run as written; the message names the field."""


@dataclass(frozen=True, slots=True)
class Distribution:
    """A random quantity: ``fixed`` (value), ``uniform`` (low, high), ``normal`` (mean, sd;
    clamped at 0) or ``lognormal`` (median, sigma). A bare number in the file is fixed."""

    kind: str = "fixed"
    a: float = 0.0  # value | low | mean | median
    b: float = 0.0  # - | high | sd | sigma

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "normal":
            return max(0.0, rng.gauss(self.a, self.b))
        return self.a * math.exp(rng.gauss(0.0, self.b))  # lognormal

    @property
    def mean(self) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        if self.kind == "normal":
            return self.a
        return self.a * math.exp(self.b * self.b / 2)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.a:g}"
        if self.kind == "uniform":
            return f"uniform {self.a:g}..{self.b:g}"
        if self.kind == "normal":
            return f"normal {self.a:g}±{self.b:g}"
        return f"lognormal median {self.a:g}, sigma {self.b:g}"


@dataclass(frozen=True, slots=True)
class NetworkModel:
    """Links. Each peer draws a one-way access delay from ``latency_ms``; a message from a
    to b takes (d_a + d_b) / 2 plus up to ``jitter_ms``; with probability ``loss`` it is
    lost once and resent ``retransmit_ms`` later (streams are reliable, as TCP).
    ``bandwidth_mbps`` (per peer, drawn once) adds size / min(bw_a, bw_b) to a message."""

    latency_ms: Distribution = Distribution("fixed", 10.0)
    jitter_ms: float = 0.0
    loss: float = 0.0
    retransmit_ms: float = 200.0
    bandwidth_mbps: Distribution | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """Models served and the discovery queries made."""

    models: int = 10
    providers: int = 3  # peers serving each model
    tasks: tuple[tuple[str, float], ...] = (("sentiment-analysis", 1.0),)  # name, weight
    query_rate: float = 1.0  # discovery queries per second, whole swarm (Poisson)
    query_timeout: float = 10.0
    providers_sought: int = 20  # find_providers(count=...)
    # Share of queries followed by a full closest-peers lookup of the task's key, for the
    # density detector's figures (a provider lookup stops once it has what it wants, and
    # only a lookup that ran its course is judged).
    density_probes: float = 0.0


@dataclass(frozen=True, slots=True)
class Churn:
    """Peers joining and leaving during the run (Poisson processes, whole swarm)."""

    join_rate: float = 0.0  # new peers per second
    leave_rate: float = 0.0  # departures per second
    crash_fraction: float = 1.0  # of departures: crashes (the rest leave gracefully)
    rejoin_after: float = 0.0  # crashed peers come back after this long (0: never)
    providers_leave: bool = True  # providers may leave too


@dataclass(frozen=True, slots=True)
class NatMix:
    """Fractions of peers behind each kind of NAT, and how NAT traversal behaves (the
    memory engine's model: p2pnet.net.memory). The first ``relays`` peers are public
    bootstrap peers that relay; a NATed peer that serves models reserves a slot on one."""

    public: float = 1.0
    cone: float = 0.0
    symmetric: float = 0.0
    relays: int = 3
    holepunch_success: float = 1.0  # between peers neither behind a symmetric NAT
    holepunch_s: float = 1.3  # from relayed to direct
    dht_client: bool = True  # NATed peers run the DHT in client mode (as Peer does)

    @property
    def modelled(self) -> bool:
        return bool(self.cone or self.symmetric)


@dataclass(frozen=True, slots=True)
class Adversaries:
    """Misbehaving peers, chosen among the initial peers (sybils are added)."""

    forgers: int = 0  # announce tasks, serve forged records, PUT_VALUE forged records
    droppers: int = 0  # accept DHT requests and never answer
    corruptors: int = 0  # answer DHT requests with corrupted bytes
    sybils: int = 0  # extra peers with IDs ground near sybil_target's key; hide providers
    sybil_target: str = ""  # a task (default: the first task)
    sybil_prefix_bits: int = 0  # 0: log2(peers) + 6
    # fixed: ``sybils`` at ``sybil_prefix_bits``; adaptive: at most ``sybils``, placed to
    # stay just under the density detector (simulate.adversaries.adaptive_sybil_placement)
    sybil_placement: str = "fixed"
    sybil_groups: int = 0  # IPv4 /16s the sybils are spread over (0: one each)


@dataclass(frozen=True, slots=True)
class Freshness:
    """New records published during the run, and how often peers look for them."""

    new_records: int = 0
    probe_interval: float = 1.0
    probe_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class PipelineLoad:
    """A pipeline run from random live peers during the run phase, each of its steps
    served by a stand-in model (p2pnet.simulate.standins) on ``providers`` peers."""

    spec_path: str = ""  # empty: no pipeline load
    spec: PipelineSpec | None = None  # read by load_scenario
    rate: float = 1.0  # runs per second, whole swarm (Poisson)
    mode: str = "orchestrated"  # or "forwarded"
    providers: int = 3  # peers serving each step's model
    run_ms: tuple[tuple[str, float], ...] = ()  # a step's model run time; others: default
    default_run_ms: float = 5.0
    rows: int = 1  # rows (messages) per run
    timeout: float = 30.0  # a whole run: plan and steps
    plan_ttl: float = 0.0  # a peer reuses its plan this long (0: plans every run)
    callers: int = 0  # runs come from this many peers, which stay (0: any live peer)

    def run_s(self, step: str) -> float:
        return dict(self.run_ms).get(step, self.default_run_ms) / 1000


@dataclass(frozen=True, slots=True)
class Incentives:
    """The incentives workload (docs/simulations.md, "Incentives"): ``providers`` peers
    serve a stand-in model of ``run_ms`` with ``max_concurrency`` slots at
    ``price_per_call``; every other peer calls it (``call_rate`` calls per second each, a
    random provider each time). A ``free_riders`` fraction of the callers never serve
    and never acknowledge; the rest (contributors) serve a model of their own at
    ``serve_price_per_call``, which each provider calls ``serve_rate`` times a second,
    so that providers owe them. Providers grant callers credit by ``allowance_rate``,
    ``soft_threshold`` and ``hard_threshold`` (micro-units)."""

    providers: int = 2
    free_riders: float = 0.2
    max_concurrency: int = 2
    max_queue: int = 64
    run_ms: float = 200.0
    price_per_call: int = 10_000
    call_rate: float = 2.0
    call_timeout: float = 10.0
    serve_price_per_call: int = 30_000
    serve_rate: float = 0.5
    serve_run_ms: float = 10.0
    warmup: float = 2.0  # providers call contributors this long before callers start
    allowance_rate: int = 2_000
    soft_threshold: int = 40_000
    hard_threshold: int = 50_000


@dataclass(frozen=True, slots=True)
class TrustLoad:
    """The trust workload (docs/simulations.md, "Liars"): ``providers`` peers serve
    ``models`` stand-in models (provider i serves model i mod ``models``); a ``liars``
    fraction of them always return outputs off by about ``lie``, and a ``noisy``
    fraction of the honest ones run under another runtime fingerprint whose results
    differ by ``noise`` (relative). Every other peer calls, with spot checks at
    ``rate``, except the last ``unchecked``, which call without spot checks (the
    baseline). Each caller makes ``calls`` calls through the finder; each checking
    caller then calls every provider it finds
    until that provider has served it ``pair_calls`` calls or is marked; once each has
    served it ``pipelines_after`` calls, every caller runs a two-step pipeline
    ``pipeline_runs`` times. Then each checking caller forgets each liar's mark and
    calls it again until it is marked anew (or has served ``pair_calls``), ``trials``
    times in all counting the first: more samples of the calls a liar serves before
    its mark. ``curve``: the call counts at which the share of liars marked is
    reported."""

    providers: int = 50
    models: int = 5
    liars: float = 0.1
    noisy: float = 0.5
    noise: float = 1e-7
    lie: float = 0.01
    rate: float = DEFAULT_RATE
    unchecked: int = 1
    calls: int = 100
    pair_calls: int = 200
    curve: tuple[int, ...] = (25, 50, 100, 200)
    trials: int = 1
    pipeline_runs: int = 100
    pipelines_after: int = 100
    run_ms: float = 5.0
    rows: int = 2
    call_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class DhtParams:
    k: int = 20
    alpha: int = 3
    rpc_timeout: float = 5.0
    region: bool = True  # store to and look up from a key's region (DhtDefences.region)
    diversity: bool = True  # IP-group limits (DhtDefences.diversity)
    paths: int = DEFAULT_LOOKUP_PATHS  # disjoint lookup paths (DhtDefences.paths)
    settle: bool = False  # after the bootstrap, every peer refreshes every bucket once


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulation: a swarm (or several sizes of it), a workload, faults, a duration."""

    name: str
    description: str = ""
    seed: int = 1
    peers: tuple[int, ...] = (100,)  # one run per size
    join_batch: int = 100
    bootstrap_peers: int = 1  # bootstrap peers each peer of the bootstrap batches is given
    duration: float = 60.0  # seconds of the run phase, after bootstrap and publishing
    interval: float = 10.0  # width of the per-interval metrics
    network: NetworkModel = field(default_factory=NetworkModel)
    workload: Workload = field(default_factory=Workload)
    churn: Churn = field(default_factory=Churn)
    nat: NatMix = field(default_factory=NatMix)
    adversaries: Adversaries = field(default_factory=Adversaries)
    freshness: Freshness = field(default_factory=Freshness)
    dht: DhtParams = field(default_factory=DhtParams)
    pipeline: PipelineLoad = field(default_factory=PipelineLoad)
    incentives: Incentives | None = None  # the incentives workload instead of discovery
    trust: TrustLoad | None = None  # the trust workload (liars, spot checks) instead
    libp2p_peers: int = 0  # the libp2p engine's swarm size (0: the smallest of ``peers``)
    source: str = ""
    overrides: tuple[str, ...] = ()  # ``section.key=value`` applied over ``source``

    def with_seed(self, seed: int | None) -> Scenario:
        return self if seed is None else replace(self, seed=seed)

    def unsupported(self, engine: str) -> list[str]:
        """Why ``engine`` cannot run this scenario as written (empty: it can)."""
        why = []
        if engine == "libp2p" and self.incentives is not None:
            why.append("incentives: run the incentives workload with --engine memory")
        if engine == "libp2p" and self.trust is not None:
            why.append("trust: run the trust workload with --engine memory")
        if engine == "libp2p":
            if self.nat.modelled:
                why.append(
                    "nat: the libp2p engine runs every peer on 127.0.0.1, where nothing is "
                    "behind a NAT; run NAT mixes with --engine memory (real NAT traversal "
                    "is measured in network namespaces: scripts/bench/nat.py)"
                )
            if self.adversaries.sybils:
                why.append(
                    "adversaries.sybils: the libp2p engine cannot grind real key pairs near "
                    "a key in reasonable time; run sybil scenarios with --engine memory"
                )
        return why

    def notes(self, engine: str) -> list[str]:
        """Parts of the scenario that ``engine`` runs without (reported, not refused)."""
        net = self.network
        if engine == "libp2p" and (
            net.loss or net.jitter_ms or net.bandwidth_mbps or net.latency_ms.mean
        ):
            return [
                "network: the libp2p engine runs on loopback; latency_ms, jitter_ms, loss "
                "and bandwidth_mbps are not applied"
            ]
        return []


# --- parsing ---------------------------------------------------------------------------------


def load_scenario(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read and check a scenario file, with ``overrides`` (``section.key=value``, see
    ``apply_overrides``) set over it.

    Raises:
        ScenarioError: unreadable, not TOML, an override malformed, or a field out of
            range (named).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path} is not valid TOML: {exc}") from None
    data = apply_overrides(data, overrides)
    scenario = parse_scenario(data, default_name=path.stem, base_dir=path.parent)
    return replace(scenario, source=str(path), overrides=tuple(overrides))


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of the parsed scenario ``data`` with each override set: ``a.b=value`` sets
    key ``b`` of table ``a`` (created if absent); the value is read as TOML (``3``,
    ``0.5``, ``true``, ``"text"``, ``[1, 2]``), and a value that is not TOML is taken as
    a string. The result is checked by ``parse_scenario`` like the file itself.

    Raises:
        ScenarioError: an override without ``=`` or a key, or one that sets a key inside
            a value that is not a table.
    """
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for override in overrides:
        dotted, sep, raw = override.partition("=")
        names = [name.strip() for name in dotted.split(".")]
        if not sep or not all(names):
            raise ScenarioError(
                f"override {override!r}: write section.key=value, e.g. adversaries.sybils=0"
            )
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        table = out
        for depth, name in enumerate(names[:-1]):
            inner = table.setdefault(name, {})
            if not isinstance(inner, dict):
                where = ".".join(names[: depth + 1])
                raise ScenarioError(f"override {override!r}: {where} is not a table")
            table = inner
        table[names[-1]] = value
    return out


def _read_pipeline(load: PipelineLoad, base: Path) -> PipelineLoad:
    """``load`` with its spec read (a path relative to the scenario's folder) and checked
    against the other pipeline fields."""
    from p2pnet.errors import PipelineSpecError
    from p2pnet.pipeline.executor import Pipeline

    spec_file = base / load.spec_path
    try:
        spec = Pipeline.from_file(spec_file).spec
    except PipelineSpecError as exc:
        raise ScenarioError(f"pipeline.spec: {exc.message}") from None
    by_model = [s.name for s in spec.steps if s.task is None]
    if by_model:
        raise ScenarioError(
            f"pipeline.spec: step {by_model[0]!r} names a model ID; a simulated pipeline "
            "finds each step's stand-in model by task"
        )
    steps = {s.name for s in spec.steps}
    unknown = sorted(set(dict(load.run_ms)) - steps)
    if unknown:
        raise ScenarioError(
            f"pipeline.run_ms: {', '.join(unknown)} is not a step of {spec_file} "
            f"(its steps: {', '.join(sorted(steps))})"
        )
    return replace(load, spec=spec)


def parse_scenario(
    data: Mapping[str, Any], *, default_name: str = "scenario", base_dir: Path = Path(".")
) -> Scenario:
    """Check a parsed scenario table; see docs/simulations.md for the fields. A pipeline
    spec (``pipeline.spec``) is read from its path relative to ``base_dir``."""
    top = _Table(data, "")
    peers_t = top.table("peers")
    counts = peers_t.get("steps")
    if counts is None:
        sizes: tuple[int, ...] = (peers_t.get_int("count", 100, 2, 100_000),)
    else:
        if not isinstance(counts, list) or not counts:
            raise ScenarioError("peers.steps must be a non-empty list of peer counts")
        sizes = tuple(_int_in(f"peers.steps[{i}]", c, 2, 100_000) for i, c in enumerate(counts))
    net_t = top.table("network")
    latency = net_t.dist("latency_ms", None) or Distribution("fixed", 10.0)
    bandwidth = net_t.dist("bandwidth_mbps", None)
    network = NetworkModel(
        latency_ms=latency,
        jitter_ms=net_t.get_float("jitter_ms", 0.0, 0.0, 10_000.0),
        loss=net_t.get_float("loss", 0.0, 0.0, 0.5),
        retransmit_ms=net_t.get_float("retransmit_ms", 200.0, 0.0, 60_000.0),
        bandwidth_mbps=bandwidth,
    )
    if bandwidth is not None and bandwidth.kind != "fixed" and bandwidth.a <= 0:
        raise ScenarioError("network.bandwidth_mbps must be positive")
    work_t = top.table("workload")
    tasks = work_t.tasks()
    workload = Workload(
        models=work_t.get_int("models", 10, 1, 10_000),
        providers=work_t.get_int("providers", 3, 1, 1_000),
        tasks=tasks,
        query_rate=work_t.get_float("query_rate", 1.0, 0.0, 10_000.0),
        query_timeout=work_t.get_float("query_timeout", 10.0, 0.1, 3600.0),
        providers_sought=work_t.get_int("providers_sought", 20, 1, 100),
        density_probes=work_t.get_float("density_probes", 0.0, 0.0, 1.0),
    )
    churn_t = top.table("churn")
    churn = Churn(
        join_rate=churn_t.get_float("join_rate", 0.0, 0.0, 1000.0),
        leave_rate=churn_t.get_float("leave_rate", 0.0, 0.0, 1000.0),
        crash_fraction=churn_t.get_float("crash_fraction", 1.0, 0.0, 1.0),
        rejoin_after=churn_t.get_float("rejoin_after", 0.0, 0.0, 1e6),
        providers_leave=churn_t.get_bool("providers_leave", True),
    )
    nat_t = top.table("nat")
    nat = NatMix(
        public=nat_t.get_float("public", 1.0, 0.0, 1.0),
        cone=nat_t.get_float("cone", 0.0, 0.0, 1.0),
        symmetric=nat_t.get_float("symmetric", 0.0, 0.0, 1.0),
        relays=nat_t.get_int("relays", 3, 1, 1_000),
        holepunch_success=nat_t.get_float("holepunch_success", 1.0, 0.0, 1.0),
        holepunch_s=nat_t.get_float("holepunch_s", 1.3, 0.0, 600.0),
        dht_client=nat_t.get_bool("dht_client", True),
    )
    if abs(nat.public + nat.cone + nat.symmetric - 1.0) > 1e-9:
        raise ScenarioError("nat: public + cone + symmetric must add up to 1")
    adv_t = top.table("adversaries")
    adversaries = Adversaries(
        forgers=adv_t.get_int("forgers", 0, 0, 10_000),
        droppers=adv_t.get_int("droppers", 0, 0, 10_000),
        corruptors=adv_t.get_int("corruptors", 0, 0, 10_000),
        sybils=adv_t.get_int("sybils", 0, 0, 1_000),
        sybil_target=adv_t.get_str("sybil_target", tasks[0][0]),
        sybil_prefix_bits=adv_t.get_int("sybil_prefix_bits", 0, 0, 28),
        sybil_placement=adv_t.get_str("sybil_placement", "fixed"),
        sybil_groups=adv_t.get_int("sybil_groups", 0, 0, 1_000),
    )
    if adversaries.sybil_placement not in ("fixed", "adaptive"):
        raise ScenarioError(
            "adversaries.sybil_placement must be fixed or adaptive, "
            f"not {adversaries.sybil_placement!r}"
        )
    if adversaries.sybils and adversaries.sybil_target not in dict(tasks):
        raise ScenarioError(
            f"adversaries.sybil_target {adversaries.sybil_target!r} is not one of the "
            f"workload's tasks ({', '.join(dict(tasks))})"
        )
    fresh_t = top.table("freshness")
    freshness = Freshness(
        new_records=fresh_t.get_int("new_records", 0, 0, 1000),
        probe_interval=fresh_t.get_float("probe_interval", 1.0, 0.01, 3600.0),
        probe_timeout=fresh_t.get_float("probe_timeout", 60.0, 0.1, 36_000.0),
    )
    pipe_t = top.table("pipeline")
    pipeline = PipelineLoad(
        spec_path=pipe_t.get_str("spec", ""),
        rate=pipe_t.get_float("rate", 1.0, 0.0, 10_000.0),
        mode=pipe_t.get_str("mode", "orchestrated"),
        providers=pipe_t.get_int("providers", 3, 1, 1_000),
        run_ms=pipe_t.run_times(),
        default_run_ms=pipe_t.get_float("default_run_ms", 5.0, 0.0, 3_600_000.0),
        rows=pipe_t.get_int("rows", 1, 1, 10_000),
        timeout=pipe_t.get_float("timeout", 30.0, 0.1, 3600.0),
        plan_ttl=pipe_t.get_float("plan_ttl", 0.0, 0.0, 86400.0),
        callers=pipe_t.get_int("callers", 0, 0, 100_000),
    )
    if pipe_t.data and not pipeline.spec_path:
        raise ScenarioError("pipeline.spec is missing: the pipeline file to run (YAML/JSON)")
    if pipeline.mode not in ("orchestrated", "forwarded"):
        raise ScenarioError(
            f"pipeline.mode must be orchestrated or forwarded, not {pipeline.mode!r}"
        )
    if pipeline.spec_path:
        pipeline = _read_pipeline(pipeline, base_dir)
    incentives = _incentives(top) if "incentives" in data else None
    trust = _trust(top) if "trust" in data else None
    if incentives is not None and trust is not None:
        raise ScenarioError("a scenario runs one workload: [incentives] or [trust], not both")
    dht_t = top.table("dht")
    dht = DhtParams(
        k=dht_t.get_int("k", 20, 2, 100),
        alpha=dht_t.get_int("alpha", 3, 1, 20),
        rpc_timeout=dht_t.get_float("rpc_timeout", 5.0, 0.1, 600.0),
        region=dht_t.get_bool("region", True),
        diversity=dht_t.get_bool("diversity", True),
        paths=dht_t.get_int("paths", DEFAULT_LOOKUP_PATHS, 1, 16),
        settle=dht_t.get_bool("settle", False),
    )
    scenario = Scenario(
        name=top.get_str("name", default_name),
        description=top.get_str("description", ""),
        seed=top.get_int("seed", 1, 0, 2**63 - 1),
        peers=sizes,
        join_batch=peers_t.get_int("join_batch", 100, 1, 100_000),
        bootstrap_peers=peers_t.get_int("bootstrap", 1, 1, 100),
        duration=top.get_float("duration", 60.0, 0.0, 7 * 86400.0),
        interval=top.get_float("interval", 10.0, 0.1, 86400.0),
        network=network,
        workload=workload,
        churn=churn,
        nat=nat,
        adversaries=adversaries,
        freshness=freshness,
        dht=dht,
        pipeline=pipeline,
        incentives=incentives,
        trust=trust,
        libp2p_peers=peers_t.get_int("libp2p", 0, 0, 10_000),
    )
    smallest = min(sizes)
    if incentives is not None and incentives.providers + 2 > smallest:
        raise ScenarioError(
            f"peers: {smallest} peers leave fewer than 2 callers besides "
            f"{incentives.providers} providers; add peers"
        )
    if trust is not None and trust.providers + trust.unchecked + 1 > smallest:
        raise ScenarioError(
            f"peers: {smallest} peers leave no checking caller besides {trust.providers} "
            f"providers and {trust.unchecked} unchecked callers; add peers"
        )
    bad = adversaries.forgers + adversaries.droppers + adversaries.corruptors
    providers = max(workload.providers, pipeline.providers if pipeline.spec_path else 0)
    if nat.modelled and nat.relays >= smallest:
        raise ScenarioError(f"nat.relays = {nat.relays} leaves no other peer of {smallest}")
    if bad + providers >= smallest:
        raise ScenarioError(
            f"peers: {smallest} peers cannot hold {bad} adversaries and {providers} "
            "providers per model besides the first peer; add peers"
        )
    for t in (top, peers_t, net_t, work_t, churn_t, nat_t, adv_t, fresh_t, dht_t, pipe_t):
        t.check_unknown()
    return scenario


def _incentives(top: _Table) -> Incentives:
    table = top.table("incentives")
    incentives = Incentives(
        providers=table.get_int("providers", 2, 1, 1_000),
        free_riders=table.get_float("free_riders", 0.2, 0.0, 1.0),
        max_concurrency=table.get_int("max_concurrency", 2, 1, 1_000),
        max_queue=table.get_int("max_queue", 64, 0, 100_000),
        run_ms=table.get_float("run_ms", 200.0, 0.0, 3_600_000.0),
        price_per_call=table.get_int("price_per_call", 10_000, 0, 10**12),
        call_rate=table.get_float("call_rate", 2.0, 0.0, 10_000.0),
        call_timeout=table.get_float("call_timeout", 10.0, 0.1, 3600.0),
        serve_price_per_call=table.get_int("serve_price_per_call", 30_000, 0, 10**12),
        serve_rate=table.get_float("serve_rate", 0.5, 0.0, 10_000.0),
        serve_run_ms=table.get_float("serve_run_ms", 10.0, 0.0, 3_600_000.0),
        warmup=table.get_float("warmup", 2.0, 0.0, 3600.0),
        allowance_rate=table.get_int("allowance_rate", 2_000, 0, 10**12),
        soft_threshold=table.get_int("soft_threshold", 40_000, 0, 10**15),
        hard_threshold=table.get_int("hard_threshold", 50_000, 0, 10**15),
    )
    if incentives.hard_threshold < incentives.soft_threshold:
        raise ScenarioError("incentives.hard_threshold must be at least soft_threshold")
    table.check_unknown()
    return incentives


def _trust(top: _Table) -> TrustLoad:
    table = top.table("trust")
    default = TrustLoad()
    pair_calls = table.get_int("pair_calls", default.pair_calls, 0, 100_000)
    curve = table.get("curve")
    if curve is None:
        points = tuple(c for c in default.curve if c <= pair_calls)
    elif not isinstance(curve, list) or not curve:
        raise ScenarioError("trust.curve must be a non-empty list of call counts")
    else:
        points = tuple(
            _int_in(f"trust.curve[{i}]", c, 1, max(1, pair_calls)) for i, c in enumerate(curve)
        )
        if list(points) != sorted(set(points)):
            raise ScenarioError("trust.curve must list call counts in increasing order")
    trust = TrustLoad(
        providers=table.get_int("providers", default.providers, 3, 1_000),
        models=table.get_int("models", default.models, 1, 100),
        liars=table.get_float("liars", default.liars, 0.0, 1.0),
        noisy=table.get_float("noisy", default.noisy, 0.0, 1.0),
        noise=table.get_float("noise", default.noise, 0.0, 1e-3),
        lie=table.get_float("lie", default.lie, 0.0, 1e6),
        rate=table.get_float("rate", default.rate, 0.0, 1.0),
        unchecked=table.get_int("unchecked", default.unchecked, 0, 100_000),
        calls=table.get_int("calls", default.calls, 0, 100_000),
        pair_calls=pair_calls,
        curve=points,
        trials=table.get_int("trials", default.trials, 1, 10_000),
        pipeline_runs=table.get_int("pipeline_runs", default.pipeline_runs, 0, 100_000),
        pipelines_after=table.get_int(
            "pipelines_after", min(default.pipelines_after, pair_calls), 0, pair_calls
        ),
        run_ms=table.get_float("run_ms", default.run_ms, 0.0, 3_600_000.0),
        rows=table.get_int("rows", default.rows, 1, 10_000),
        call_timeout=table.get_float("call_timeout", default.call_timeout, 0.1, 3600.0),
    )
    if trust.providers < 3 * trust.models:
        raise ScenarioError(
            f"trust: {trust.providers} providers for {trust.models} models leave a model "
            "fewer than 3 providers: a disagreement needs a third opinion"
        )
    if trust.pipeline_runs and trust.models < 2:
        raise ScenarioError("trust: the pipeline chains two models; give models >= 2")
    table.check_unknown()
    return trust


class _Table:
    """A TOML table with typed, bounded getters that name the field in their errors."""

    def __init__(self, data: Mapping[str, Any], prefix: str) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(f"{prefix.rstrip('.')} must be a table")
        self.data = data
        self.prefix = prefix
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def table(self, key: str) -> _Table:
        value = self.get(key)
        return _Table({} if value is None else value, f"{self.prefix}{key}.")

    def get_int(self, key: str, default: int, low: int, high: int) -> int:
        value = self.get(key)
        return default if value is None else _int_in(self.name(key), value, low, high)

    def get_float(self, key: str, default: float, low: float, high: float) -> float:
        value = self.get(key)
        return default if value is None else _float_in(self.name(key), value, low, high)

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.name(key)} must be true or false, not {value!r}")
        return value

    def get_str(self, key: str, default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ScenarioError(f"{self.name(key)} must be a string, not {value!r}")
        return value

    def dist(self, key: str, default: Distribution | None) -> Distribution | None:
        value = self.get(key)
        where = self.name(key)
        if value is None:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return Distribution("fixed", _float_in(where, value, 0.0, 1e9))
        if not isinstance(value, Mapping):
            raise ScenarioError(
                f"{where} must be a number or a table such as "
                '{ dist = "lognormal", median = 40, sigma = 0.5 }'
            )
        kind = value.get("dist", "fixed")
        fields = {
            "fixed": ("value",),
            "uniform": ("low", "high"),
            "normal": ("mean", "sd"),
            "lognormal": ("median", "sigma"),
        }
        if kind not in fields:
            raise ScenarioError(f"{where}.dist must be one of {', '.join(fields)}, not {kind!r}")
        unknown = set(value) - {"dist", *fields[kind]}
        if unknown:
            raise ScenarioError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        args = []
        for name in fields[kind]:
            if name not in value:
                raise ScenarioError(f"{where}.{name} is missing (dist = {kind!r})")
            args.append(_float_in(f"{where}.{name}", value[name], 0.0, 1e9))
        if kind == "uniform" and args[0] > args[1]:
            raise ScenarioError(f"{where}: low must not exceed high")
        return Distribution(kind, args[0], args[1] if len(args) > 1 else 0.0)

    def tasks(self) -> tuple[tuple[str, float], ...]:
        value = self.get("tasks")
        where = self.name("tasks")
        if value is None:
            return Workload().tasks
        if isinstance(value, list):
            value = dict.fromkeys(value, 1.0)
        if not isinstance(value, Mapping) or not value:
            raise ScenarioError(
                f'{where} must be a table of task = weight, e.g. {{ "sentiment-analysis" = 2 }}'
            )
        out = []
        for name, weight in value.items():
            if not name or not set(name) <= _TASK_CHARS or name[0] == "-":
                raise ScenarioError(
                    f"{where}: {name!r} is not a task tag (lower case letters, digits, '-')"
                )
            out.append((name, _float_in(f"{where}.{name}", weight, 0.0, 1e9)))
        if sum(w for _, w in out) <= 0:
            raise ScenarioError(f"{where}: at least one weight must be positive")
        return tuple(out)

    def run_times(self) -> tuple[tuple[str, float], ...]:
        """``run_ms``: a step's model run time in milliseconds, as step = ms."""
        value = self.get("run_ms")
        where = self.name("run_ms")
        if value is None:
            return ()
        if not isinstance(value, Mapping):
            raise ScenarioError(f"{where} must be a table of step = milliseconds")
        return tuple(
            (str(step), _float_in(f"{where}.{step}", ms, 0.0, 3_600_000.0))
            for step, ms in value.items()
        )

    def check_unknown(self) -> None:
        unknown = set(self.data) - self.used
        if unknown:
            raise ScenarioError(
                f"unknown field(s) in {self.prefix.rstrip('.') or 'the scenario'}: "
                f"{', '.join(sorted(unknown))}"
            )


def _int_in(where: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ScenarioError(f"{where} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise ScenarioError(f"{where} = {value} is out of range {low}..{high}")
    return value


def _float_in(where: str, value: Any, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ScenarioError(f"{where} must be a number, not {value!r}")
    number = float(value)
    if not (low <= number <= high):
        raise ScenarioError(f"{where} = {number:g} is out of range {low:g}..{high:g}")
    return number
