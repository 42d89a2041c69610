"""The incentives workload on the memory engine: providers near saturation, contributors
and free riders calling them, every peer a real ``Peer`` with a ledger; per-class figures
and the three checks of docs/incentives.md ("Simulation").

Peers run in virtual time: their wall clock is ``EPOCH`` plus trio time, and so is the
clock their credit forgives debt by. Ledgers live in a temporary directory removed at the
end of the run; what the checks read is read from them (receipts per pair).
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import trio

from p2pnet.accounting import AccountingConfig
from p2pnet.core.address import PeerAddress
from p2pnet.core.credit import CreditPolicy
from p2pnet.core.identity import Identity
from p2pnet.core.model_id import model_id_of_bytes
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.pricing import Price
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.errors import P2PNetError
from p2pnet.ledger.store import Ledger
from p2pnet.net.memory import MemoryNetwork
from p2pnet.peer import Peer
from p2pnet.simulate.metrics import PaidCallRecord, class_figures
from p2pnet.simulate.scenario import Incentives, Scenario
from p2pnet.simulate.standins import StandInModel
from p2pnet.simulate.swarm import honest_key

__all__ = ["CONTRIBUTOR", "FREE_RIDER", "run_incentives"]

log = logging.getLogger(__name__)

CONTRIBUTOR: Final = "contributor"
FREE_RIDER: Final = "free_rider"
SCHEMA: Final = ModelSchema(
    (TensorSpec("text", "string", ("n",)),), (TensorSpec("out", "string", ("n",)),)
)
# A free rider never serves and never acknowledges what it owes.
FREE_RIDER_ACCOUNTING: Final = AccountingConfig(ack_every_calls=0, ack_every_units=0)


def _model(name: str) -> ModelInfo:
    return ModelInfo(
        model_id=model_id_of_bytes(f"p2pnet incentives stand-in {name}".encode()),
        path=Path(f"{name}.standin"),
        size=0,
        schema=SCHEMA,
        name=f"incentives-{name}",
        version="1",
        runtime="stand-in",
    )


def caller_classes(load: Incentives, n: int) -> dict[int, str]:
    """Peers ``load.providers``..n-1 call; the last ``free_riders`` fraction of them
    (rounded, at least one when the fraction is positive) are free riders."""
    callers = list(range(load.providers, n))
    riders = round(load.free_riders * len(callers))
    if load.free_riders and not riders:
        riders = 1
    return {
        index: FREE_RIDER if k >= len(callers) - riders else CONTRIBUTOR
        for k, index in enumerate(callers)
    }


async def run_incentives(
    scenario: Scenario,
    n: int,
    seed: int,
    progress: Callable[[str, float, float], None],
    *,
    epoch: float,
) -> dict[str, Any]:
    """Run the incentives workload of ``scenario`` with ``n`` peers (in a trio run on a
    ``MockClock``); the result as a JSON-ready dict."""
    load = scenario.incentives
    assert load is not None
    wall0 = time.perf_counter()
    rng = random.Random(seed * 104_729 + n)
    classes = caller_classes(load, n)
    providers = list(range(load.providers))
    contributors = [i for i, c in classes.items() if c == CONTRIBUTOR]
    work, give = _model("work"), _model("serve-back")
    provider_policy = CreditPolicy(load.allowance_rate, load.soft_threshold, load.hard_threshold)
    records: list[PaidCallRecord] = []
    serve_back = {"calls": 0, "succeeded": 0}

    def wall_clock() -> float:
        return epoch + trio.current_time()

    with tempfile.TemporaryDirectory(prefix="p2pnet-incentives-") as folder:
        peers: dict[int, Peer] = {}
        addresses: dict[int, PeerAddress] = {}
        async with MemoryNetwork(latency=lambda a, b: 0.005, seed=seed) as network:
            async with trio.open_nursery() as nursery:
                for index in range(n):
                    identity = Identity(honest_key(seed, index))
                    host = network.add_host(identity.peer_id)
                    if index in classes and classes[index] == FREE_RIDER:
                        accounting = FREE_RIDER_ACCOUNTING
                    elif index in classes:
                        accounting = AccountingConfig(ack_every_calls=4)
                    else:
                        accounting = AccountingConfig(credit=provider_policy)
                    peer = Peer(
                        identity,
                        host=host,
                        nat=None,
                        clock=wall_clock,
                        upkeep=False,
                        shutdown_grace=0.0,
                        ledger=Path(folder) / f"{index}.sqlite3",
                        accounting=accounting,
                    )
                    if index in providers:
                        peer.serve(
                            StandInModel(
                                work,
                                "work",
                                load.run_ms / 1000,
                                max_concurrency=load.max_concurrency,
                                max_queue=load.max_queue,
                            ),
                            price=Price(per_call=load.price_per_call),
                        )
                    elif classes[index] == CONTRIBUTOR:
                        peer.serve(
                            StandInModel(give, "serve-back", load.serve_run_ms / 1000),
                            price=Price(per_call=load.serve_price_per_call),
                        )
                    await nursery.start(peer.run)
                    peers[index] = peer
                    addresses[index] = PeerAddress.of(host.peer_id, host.addrs)

                start = trio.current_time()
                calls_start = start + load.warmup
                end = calls_start + scenario.duration
                inputs = {"text": np.array(["a question"], dtype=np.str_)}

                async def call(index: int, provider: int, t: float) -> None:
                    began = trio.current_time()
                    try:
                        await peers[index].invoke(
                            addresses[provider], work.model_id, inputs, timeout=load.call_timeout
                        )
                    except P2PNetError as exc:
                        ok, error = False, exc.code
                    else:
                        ok, error = True, ""
                    records.append(
                        PaidCallRecord(
                            t,
                            index,
                            classes[index],
                            provider,
                            ok,
                            trio.current_time() - began,
                            load.price_per_call if ok else 0,
                            error,
                        )
                    )

                async def serve_back_call(provider: int, contributor: int) -> None:
                    serve_back["calls"] += 1
                    try:
                        await peers[provider].invoke(
                            addresses[contributor], give.model_id, inputs, timeout=load.call_timeout
                        )
                    except P2PNetError as exc:
                        log.info("serve-back call failed: %r", exc)
                    else:
                        serve_back["succeeded"] += 1

                async with trio.open_nursery() as calls:
                    events: list[tuple[float, int, int]] = []  # (t, caller, provider)
                    for index in classes:
                        t = rng.expovariate(load.call_rate) if load.call_rate else end
                        while calls_start + t < end:
                            events.append((calls_start + t, index, rng.choice(providers)))
                            t += rng.expovariate(load.call_rate)
                    for provider in providers:
                        for contributor in contributors:
                            t = rng.uniform(0, 1 / load.serve_rate) if load.serve_rate else end
                            while start + t < end:
                                events.append((start + t, -1 - provider, contributor))
                                t += 1 / load.serve_rate
                    events.sort()
                    next_report = 0.0
                    for when, who, whom in events:
                        await trio.sleep_until(when)
                        if who < 0:
                            calls.start_soon(serve_back_call, -1 - who, whom)
                        else:
                            calls.start_soon(call, who, whom, when - calls_start)
                        if when >= next_report:
                            progress("run", when - start, end - start)
                            next_report = when + 1.0
                elapsed = trio.current_time() - calls_start
                progress("run", end - start, end - start)
                nursery.cancel_scope.cancel()
        out = _figures(load, classes, providers, records, peers, Path(folder), elapsed, serve_back)
    out["resources"] = {
        "wall_s": round(time.perf_counter() - wall0, 2),
        "virtual_s": round(trio.current_time(), 2),
    }
    return out


def _most_at_once(records: list[PaidCallRecord], provider: int, caller: int) -> int:
    """The most successful calls of ``caller`` to ``provider`` in flight at one time."""
    edges = sorted(
        edge
        for r in records
        if r.ok and r.provider == provider and r.peer == caller
        for edge in ((r.t, 1), (r.t + r.latency, -1))
    )
    most = now = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        now += step
        most = max(most, now)
    return most


def _figures(
    load: Incentives,
    classes: dict[int, str],
    providers: list[int],
    records: list[PaidCallRecord],
    peers: dict[int, Peer],
    folder: Path,
    elapsed: float,
    serve_back: dict[str, int],
) -> dict[str, Any]:
    ids = {index: peer.peer_id for index, peer in peers.items()}
    index_of = {pid: index for index, pid in ids.items()}
    issued: dict[tuple[int, int], int] = {}  # (provider, caller): units, provider's ledger
    held: dict[tuple[int, int], int] = {}  # the same, the caller's ledger
    for index in range(len(peers)):
        with Ledger.open(folder / f"{index}.sqlite3", owner=ids[index]) as ledger:
            for receipt in ledger.receipts():
                if receipt.model_id != _model("work").model_id:
                    continue
                pair = (index_of[receipt.provider], index_of[receipt.caller])
                if index in providers and receipt.provider == ids[index]:
                    issued[pair] = issued.get(pair, 0) + receipt.units
                elif index in classes and receipt.caller == ids[index]:
                    held[pair] = held.get(pair, 0) + receipt.units
    served: dict[tuple[int, int], int] = {}
    for r in records:
        if r.ok:
            served[(r.provider, r.peer)] = served.get((r.provider, r.peer), 0) + r.units
    bound = load.allowance_rate * elapsed + load.hard_threshold
    rider_pairs = {pair: units for pair, units in issued.items() if classes[pair[1]] == FREE_RIDER}
    rider_max = max(rider_pairs.values(), default=0)
    # Admission checks a caller's credit before the run and charges after it, so calls
    # admitted together are not counted against each other: the bound the code keeps is
    # the strict one plus (calls of the pair in flight at once - 1) x the call's price.
    overlap = {pair: _most_at_once(records, *pair) for pair in rider_pairs}
    slack_ok = all(
        units <= bound + (overlap[pair] - 1) * load.price_per_call
        for pair, units in rider_pairs.items()
    )
    figures = class_figures(records)
    contributors = figures.get(CONTRIBUTOR, {}).get("success_rate") or 0.0
    riders = figures.get(FREE_RIDER, {}).get("success_rate")
    checks: dict[str, dict[str, Any]] = {
        "free_rider_bound": {
            "ok": rider_max <= bound,
            "largest_units_from_one_provider": rider_max,
            "bound_units": round(bound),
            "elapsed_s": round(elapsed, 3),
            "issue_bound_units": round(load.allowance_rate * elapsed + 1.25 * load.hard_threshold),
            "issue_bound_ok": rider_max
            <= load.allowance_rate * elapsed + 1.25 * load.hard_threshold,
            "most_calls_in_flight": max(overlap.values(), default=0),
            "bound_with_calls_in_flight_ok": slack_ok,
        },
        "contributors_served": {
            "ok": contributors >= 0.95 and (riders is None or contributors > riders),
            "contributor_success": contributors,
            "free_rider_success": riders,
        },
        "nothing_unaccounted": {
            "ok": issued == held == served,
            "provider_ledgers_units": sum(issued.values()),
            "caller_ledgers_units": sum(held.values()),
            "successful_call_units": sum(served.values()),
            "pairs_differing": sorted(
                f"{p}->{c}"
                for p, c in set(issued) | set(held) | set(served)
                if not issued.get((p, c)) == held.get((p, c)) == served.get((p, c))
            ),
        },
    }
    return {
        "incentives": {
            "providers": len(providers),
            "contributors": sum(1 for c in classes.values() if c == CONTRIBUTOR),
            "free_riders": sum(1 for c in classes.values() if c == FREE_RIDER),
            "classes": figures,
            "latencies_ms": {
                name: sorted(
                    round(r.latency * 1e3, 3) for r in records if r.ok and r.caller_class == name
                )
                for name in figures
            },
            "serve_back_calls": serve_back,
            "checks": checks,
            "verdict": all(c["ok"] for c in checks.values()),
        }
    }
