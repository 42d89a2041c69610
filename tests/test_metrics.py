"""Call statistics (p2pnet/core/callstats.py), the run slots' queue depth, and the
Prometheus metrics a peer exports (p2pnet/gateway/metrics.py), scraped after real calls
in a memory swarm and read back with prometheus_client's parser."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from memory_peers import memory_peer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from p2pnet.core.callstats import LATENCY_BUCKETS, OTHER, CallRecord, CallStats, tensor_bytes
from p2pnet.core.pricing import Price
from p2pnet.core.spot_check import SpotCheckPolicy
from p2pnet.errors import InvalidInputError
from p2pnet.gateway.metrics import peer_registry
from p2pnet.net.memory import MemoryNetwork
from p2pnet.peer import Peer
from p2pnet.runtime.served import RunSlots

TASK = "iris-species"
IRIS_X = {"x": np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)}

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(peer: Peer) -> Samples:
    """Sample name -> labels -> value of ``peer``'s metrics, as a scraper reads them."""
    samples: Samples = {}
    text = generate_latest(peer_registry(peer)).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def call(at: float, model: str, seconds: float, code: str = "", side: str = "made") -> CallRecord:
    return CallRecord(at, side, model, "", None, "peer", code, seconds, 16, 8)  # type: ignore[arg-type]


def test_call_stats_count_by_model_bucket_latency_and_stay_bounded() -> None:
    stats = CallStats(100.0, max_models=2, recent=3)
    stats.record(call(101, "a", 0.0005))  # on a bucket's bound: in that bucket ("le")
    stats.record(call(102, "a", 0.0006, code="deadline_exceeded"))
    stats.record(call(103, "b", 45.0))  # above the last bound: only in +Inf
    stats.record(call(104, "c", 0.01))  # a third model: "other"
    stats.record(call(105, "a", 0.02, side="served"))  # sides have labels of their own

    assert stats.counts == {
        ("made", "a", ""): 1,
        ("made", "a", "deadline_exceeded"): 1,
        ("made", "b", ""): 1,
        ("made", OTHER, ""): 1,
        ("served", "a", ""): 1,
    }
    assert stats.calls("made") == 4 and stats.calls("served") == 1
    a = dict(stats.latency[("made", "a")].cumulative())
    assert a[0.0005] == 1 and a[0.001] == 2 and a[float("inf")] == 2
    assert stats.latency[("made", "a")].sum == pytest.approx(0.0011)
    b = stats.latency[("made", "b")].cumulative()
    assert [count for _, count in b] == [0] * len(LATENCY_BUCKETS) + [1]
    assert stats.bytes == {
        ("made", "in"): 64,
        ("made", "out"): 32,
        ("served", "in"): 16,
        ("served", "out"): 8,
    }
    # The ring keeps the newest three, newest first.
    assert [c.at for c in stats.recent()] == [105, 104, 103]
    assert [c.at for c in stats.recent(1)] == [105]
    assert stats.recent(0) == []


def test_tensor_bytes_counts_numbers_by_size_and_text_by_its_length() -> None:
    assert tensor_bytes({"x": np.zeros((2, 4), np.float32), "y": np.zeros(3, np.int64)}) == 56
    assert tensor_bytes({"t": np.array(["ab", "é", b"xyz"], dtype=object)}) == 6
    assert tensor_bytes({"t": np.array([["ab"], ["é"]])}) == 3


async def test_run_slots_report_the_runs_waiting_and_running() -> None:
    slots = RunSlots(1, 4)
    release = threading.Event()
    assert (slots.running, slots.waiting) == (0, 0)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(
                lambda: slots.run(release.wait, 10.0, timeout=10, name="m", model_id="id")
            )
        await trio.testing.wait_all_tasks_blocked()
        assert (slots.running, slots.waiting) == (1, 2)
        release.set()
    assert (slots.running, slots.waiting) == (0, 0)


@pytest.mark.slow  # two providers, spot checks and ledgers: ~2 s
async def test_metrics_after_real_calls(models: dict[str, Path], tmp_path: Path) -> None:
    async with MemoryNetwork() as network, memory_peer(network) as boot:
        providers = [
            memory_peer(network, bootstrap=[boot.addrs[0]], ledger=tmp_path / f"p{i}.sqlite3")
            for i in range(2)
        ]
        for provider in providers:
            provider.serve(models["iris"], tasks=[TASK], price=Price(per_call=1_000))
        caller = memory_peer(
            network,
            bootstrap=[boot.addrs[0]],
            ledger=tmp_path / "caller.sqlite3",
            trust_store=tmp_path / "trust.sqlite3",
            spot_checks=SpotCheckPolicy(rate=1.0, seed=1),
        )
        async with providers[0], providers[1], caller:
            for provider in providers:
                assert await provider.announce() > 0
            (iris,) = providers[0].models
            served_before = scrape(providers[0])
            ok = (("code", ""), ("model", iris), ("outcome", "ok"))
            assert served_before["p2pnet_calls_served_total"] == {ok: 0.0}
            assert served_before["p2pnet_model_queue_depth"] == {(("model", iris),): 0.0}

            calls = 3
            answered = []
            checker = caller.spot_checker
            assert checker is not None
            for done in range(1, calls + 1):
                offer, outputs = await caller.call_with_offer(IRIS_X, task=TASK)
                answered.append(offer.record.peer_id)
                # One check at a time (a call while one runs would skip its check).
                await checker.wait_until(done)
            # A call the provider refuses: inputs of the wrong shape, sent to it directly.
            with pytest.raises(InvalidInputError):
                await caller.invoke(providers[0].peer_id, iris, {"x": np.zeros((1, 3), np.float32)})

            made = scrape(caller)
            refused = (("code", "invalid_input"), ("model", iris), ("outcome", "error"))
            assert made["p2pnet_calls_made_total"][ok] == calls + checker.stats.extra_calls
            assert made["p2pnet_calls_made_total"][refused] == 1
            total = sum(made["p2pnet_calls_made_total"].values())
            assert total == caller.status().calls_made
            _check_histogram(made, "p2pnet_call_made_seconds", iris, total)
            in_out = tensor_bytes(IRIS_X), tensor_bytes(outputs)
            ok_calls = made["p2pnet_calls_made_total"][ok]
            assert (
                made["p2pnet_payload_bytes_total"][(("direction", "out"), ("side", "made"))]
                == ok_calls * in_out[0]
                > 0
            )
            assert (
                made["p2pnet_payload_bytes_total"][(("direction", "in"), ("side", "made"))]
                == ok_calls * in_out[1]
                > 0
            )
            assert made["p2pnet_invoke_errors_total"] == {
                (("code", "invalid_input"), ("side", "made")): 1.0
            }
            verdicts = made["p2pnet_spot_check_verdicts_total"]
            assert verdicts[(("verdict", "agreed"),)] == calls
            assert verdicts[(("verdict", "disagreed"),)] == 0
            assert made["p2pnet_spot_checks_sampled_total"] == {(): calls}
            # The caller owes each provider it called: negative balances, by peer.
            balances = made["p2pnet_credit_balance"]
            assert set(balances) == {(("peer", p.peer_id),) for p in providers}
            assert all(value < 0 for value in balances.values())
            assert made["p2pnet_start_time_seconds"][()] <= caller.config.clock()

            served = [scrape(p) for p in providers]
            served_ok = sum(s["p2pnet_calls_served_total"][ok] for s in served)
            assert served_ok == made["p2pnet_calls_made_total"][ok]
            first = served[0]
            assert first["p2pnet_calls_served_total"][refused] == 1
            count = sum(first["p2pnet_calls_served_total"].values())
            assert count == providers[0].status().calls_served
            _check_histogram(first, "p2pnet_call_served_seconds", iris, count)
            assert first["p2pnet_credit_balance"] == {
                (("peer", caller.peer_id),): -balances[(("peer", providers[0].peer_id),)]
            }
            assert first["p2pnet_model_runs_active"] == {(("model", iris),): 0.0}

            # The recent calls: what the status page lists.
            recent = caller.services.call_stats.recent()
            assert recent[0].code == "invalid_input" and recent[0].task is None
            tasks = {c.task for c in recent[1:] if c.side == "made"}
            assert TASK in tasks
            assert {c.name for c in recent if c.task == TASK} == {"iris"}  # their records'
            assert recent[0].name == ""  # called by model ID, without a record
            (served_call, *_) = providers[0].services.call_stats.recent()
            assert served_call.side == "served" and served_call.peer_id == caller.peer_id


def _check_histogram(samples: Samples, name: str, model: str, count: float) -> None:
    """Cumulative buckets that never fall, +Inf equal to the count, a positive sum."""
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for labels, value in samples[f"{name}_bucket"].items()
        if dict(labels)["model"] == model
    )
    assert [bound for bound, _ in buckets] == [*LATENCY_BUCKETS, float("inf")]
    values = [value for _, value in buckets]
    assert values == sorted(values)
    assert values[-1] == samples[f"{name}_count"][(("model", model),)] == count
    assert samples[f"{name}_sum"][(("model", model),)] > 0
