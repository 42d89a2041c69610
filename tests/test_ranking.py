"""Provider ranking: every ordering rule, on a fake clock (time is only ever an argument)."""

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from p2pnet.core.ranking import (
    ProviderStats,
    ProviderStatsTable,
    RankingPolicy,
    rank,
)

POLICY = RankingPolicy(alpha=0.5, failure_cooldown=60.0, unknown_latency=0.1)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table() -> ProviderStatsTable:
    return ProviderStatsTable(POLICY)


def order(table: ProviderStatsTable, candidates: list[str], now: float) -> list[str]:
    return [s.peer_id for s in table.rank(candidates, now)]


def test_no_measurements_keep_the_callers_order(table: ProviderStatsTable) -> None:
    assert order(table, ["c", "a", "b"], 0.0) == ["c", "a", "b"]


def test_measured_latency_orders_healthy_providers(
    table: ProviderStatsTable, clock: FakeClock
) -> None:
    table.record_success("slow", 0.050, clock.now)
    table.record_success("fast", 0.005, clock.now)
    table.record_success("mid", 0.020, clock.now)
    assert order(table, ["slow", "mid", "fast"], clock.now) == ["fast", "mid", "slow"]


def test_unknown_latency_ranks_after_known_fast_and_before_known_slow(
    table: ProviderStatsTable, clock: FakeClock
) -> None:
    table.record_success("fast", 0.010, clock.now)
    table.record_success("slow", 0.500, clock.now)
    ranked = table.rank(["slow", "new", "fast"], clock.now)
    assert [s.peer_id for s in ranked] == ["fast", "new", "slow"]
    new = ranked[1]
    assert not new.measured and new.expected_latency == POLICY.unknown_latency
    assert ranked[0].measured and ranked[0].healthy


def test_a_known_provider_exactly_at_the_prior_stays_in_the_callers_order(
    table: ProviderStatsTable, clock: FakeClock
) -> None:
    table.record_success("known", POLICY.unknown_latency, clock.now)
    assert order(table, ["new", "known"], clock.now) == ["new", "known"]
    assert order(table, ["known", "new"], clock.now) == ["known", "new"]


def test_a_failed_provider_goes_last_until_the_cooldown_passes(
    table: ProviderStatsTable, clock: FakeClock
) -> None:
    table.record_success("a", 0.001, clock.now)
    table.record_success("b", 0.300, clock.now)
    table.record_failure("a", clock.now)
    ranked = table.rank(["a", "b", "new"], clock.now)
    assert [s.peer_id for s in ranked] == ["new", "b", "a"]
    assert not ranked[2].healthy and ranked[2].recent_failures == 1
    assert ranked[2].cooling_until == clock.now + 60.0
    clock.advance(59.9)
    assert order(table, ["a", "b"], clock.now) == ["b", "a"]
    clock.advance(0.1)  # 60 s after the failure: forgotten
    ranked = table.rank(["a", "b"], clock.now)
    assert [s.peer_id for s in ranked] == ["a", "b"]
    assert ranked[0].healthy and ranked[0].cooling_until is None


def test_a_success_clears_failures_at_once(table: ProviderStatsTable, clock: FakeClock) -> None:
    table.record_failure("a", clock.now)
    table.record_failure("a", clock.advance(1))
    table.record_success("a", 0.002, clock.advance(1))
    assert table["a"].failures == ()
    assert order(table, ["b", "a"], clock.now) == ["a", "b"]


def test_among_failed_providers_fewest_failures_then_oldest_failure_first(
    table: ProviderStatsTable, clock: FakeClock
) -> None:
    table.record_failure("twice", clock.now)
    table.record_failure("twice", clock.advance(1))
    table.record_failure("old", clock.advance(1))
    table.record_failure("recent", clock.advance(10))
    assert order(table, ["twice", "recent", "old"], clock.now) == ["old", "recent", "twice"]


def test_failures_decay_one_by_one(table: ProviderStatsTable, clock: FakeClock) -> None:
    start = clock.now
    table.record_failure("a", start)
    table.record_failure("a", start + 30)
    assert table["a"].recent_failures(start + 31, POLICY) == 2
    assert table["a"].recent_failures(start + 61, POLICY) == 1
    assert table["a"].recent_failures(start + 90, POLICY) == 0
    assert table["a"].cooling_until(start + 61, POLICY) == start + 90


def test_every_provider_failed_still_gives_an_order(
    table: ProviderStatsTable, clock: FakeClock
) -> None:
    for peer in ("a", "b", "c"):
        table.record_failure(peer, clock.advance(1))
    ranked = table.rank(["c", "b", "a"], clock.now)
    assert [s.peer_id for s in ranked] == ["a", "b", "c"]
    assert not any(s.healthy for s in ranked)


def test_ewma_weights_new_samples_by_alpha() -> None:
    stats = ProviderStats().after_success(0.100, 0.0, POLICY)
    assert stats.latency == 0.100 and stats.samples == 1
    stats = stats.after_success(0.020, 1.0, POLICY)
    assert stats.latency == pytest.approx(0.060)
    stats = stats.after_success(0.020, 2.0, POLICY)
    assert stats.latency == pytest.approx(0.040)
    assert stats.samples == 3 and stats.last_success == 2.0


def test_a_failure_is_not_a_latency_sample() -> None:
    stats = ProviderStats().after_success(0.010, 0.0, POLICY).after_failure(1.0, POLICY)
    assert stats.latency == 0.010 and stats.samples == 1 and stats.failures == (1.0,)


def test_failure_timestamps_are_bounded() -> None:
    policy = RankingPolicy(max_failures_kept=3)
    stats = ProviderStats()
    for t in range(10):
        stats = stats.after_failure(float(t), policy)
    assert stats.failures == (7.0, 8.0, 9.0)


@pytest.mark.parametrize("latency", [-0.001, math.inf, math.nan])
def test_impossible_latencies_are_refused(latency: float) -> None:
    with pytest.raises(ValueError, match="latency must be finite"):
        ProviderStats().after_success(latency, 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"failure_cooldown": -1.0},
        {"unknown_latency": math.inf},
        {"max_failures_kept": 0},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RankingPolicy(**kwargs)  # type: ignore[arg-type]


def test_duplicates_are_ranked_once(table: ProviderStatsTable) -> None:
    assert order(table, ["a", "b", "a"], 0.0) == ["a", "b"]


def test_the_table_forgets_the_least_recently_updated(clock: FakeClock) -> None:
    table = ProviderStatsTable(POLICY, max_peers=2)
    table.record_success("a", 0.01, clock.now)
    table.record_success("b", 0.01, clock.now)
    table.record_failure("a", clock.now)  # a is now the most recently updated
    table.record_success("c", 0.01, clock.now)
    assert set(table) == {"a", "c"} and len(table) == 2
    table.forget("a")
    assert list(table) == ["c"]


def test_rank_takes_any_mapping() -> None:
    stats = {"a": ProviderStats(latency=0.5), "b": ProviderStats(latency=0.01)}
    assert [s.peer_id for s in rank(["a", "b"], stats, 0.0)] == ["b", "a"]


events = st.lists(
    st.tuples(
        st.sampled_from("abcd"),
        st.one_of(st.none(), st.floats(0.0, 2.0)),  # None: a failure
        st.floats(0.0, 100.0),  # time advanced before the event
    ),
    max_size=30,
)


@settings(max_examples=200)
@given(events, st.floats(0.0, 200.0))
# A failure whose cooldown ends exactly now, where now - t < cooldown held in floating
# point while t + cooldown == now: it counted as recent but cooled.
@example([("a", None, 97.0), ("a", None, 99.48572547226777)], 60.0)
def test_ranking_invariants(history: list[tuple[str, float | None, float]], later: float) -> None:
    table = ProviderStatsTable(POLICY)
    now = 0.0
    for peer, latency, step in history:
        now += step
        if latency is None:
            table.record_failure(peer, now)
        else:
            table.record_success(peer, latency, now)
    now += later
    ranked = table.rank(list("dcba"), now)
    assert sorted(s.peer_id for s in ranked) == list("abcd")
    healthy = [s.healthy for s in ranked]
    assert healthy == sorted(healthy, reverse=True)  # every healthy one before any cooling one
    fine = [s.expected_latency for s in ranked if s.healthy]
    assert fine == sorted(fine)
    for s in ranked:
        assert s.healthy == (s.cooling_until is None) == (s.recent_failures == 0)
        if s.cooling_until is not None:
            assert now < s.cooling_until <= now + POLICY.failure_cooldown


def test_a_latency_sample_keeps_failures() -> None:
    table = ProviderStatsTable()
    table.record_failure("a", 10.0)
    stats = table.record_latency("a", 0.005)
    assert stats.latency == 0.005 and stats.failures == (10.0,)
    assert [s.peer_id for s in table.rank(["a", "b"], 11.0)] == ["b", "a"]
