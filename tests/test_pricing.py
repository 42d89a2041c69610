"""Prices and units: the units formula, its rounding, the record's price field, ranking
by price as well as latency."""

import math
from fractions import Fraction

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.core.pricing import (
    FREE,
    MAX_PRICE_PART,
    REFERENCE_PRICE,
    CostRankingPolicy,
    Price,
    Usage,
    expected_cost,
    max_units,
    price_from_wire,
    price_to_wire,
    rank_by_cost_and_latency,
    tensor_bytes,
    units_for,
    within_max_price,
)
from p2pnet.core.ranking import ProviderStatsTable

parts = st.integers(min_value=0, max_value=MAX_PRICE_PART)
prices = st.builds(Price, parts, parts, parts)
byte_counts = st.integers(min_value=0, max_value=10**12)
cpu_seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
usages = st.builds(Usage, byte_counts, byte_counts, cpu_seconds)


def exact_units(price: Price, usage: Usage) -> int:
    """The formula of the module docstring, computed independently with fractions."""
    cpu_ms = round(Fraction(usage.cpu_s * 1000))  # Fraction rounds ties to even, too
    cost = (
        Fraction(price.per_call)
        + Fraction(price.per_mb * (usage.bytes_in + usage.bytes_out), 10**6)
        + Fraction(price.per_cpu_s * cpu_ms, 1000)
    )
    return math.ceil(cost)


def test_free_and_reference_prices() -> None:
    assert FREE.is_free and Price() == FREE
    assert not REFERENCE_PRICE.is_free
    assert units_for(FREE, Usage(10**9, 10**9, 100.0)) == 0


def test_an_iris_call_at_the_reference_price() -> None:
    request = {"x": np.zeros((1, 4), np.float32)}
    reply = {"label": np.zeros(1, np.int64), "probabilities": np.zeros((1, 3), np.float32)}
    usage = Usage(tensor_bytes(request), tensor_bytes(reply), 0.0003)
    assert (usage.bytes_in, usage.bytes_out, usage.cpu_ms) == (16, 20, 0)
    # 1,000 per call + 36 bytes at 10,000 per MB = 1,000.36, rounded up.
    assert units_for(REFERENCE_PRICE, usage) == 1001


def test_cpu_time_is_counted_in_milliseconds_rounded_to_nearest() -> None:
    price = Price(per_cpu_s=1_000_000)
    assert units_for(price, Usage(cpu_s=0.0004)) == 0
    assert units_for(price, Usage(cpu_s=0.0006)) == 1000
    assert units_for(price, Usage(cpu_s=2.0)) == 2_000_000


def test_one_rounding_of_the_whole_sum() -> None:
    # Two parts of half a micro-unit each make one, not two.
    price = Price(per_mb=1, per_cpu_s=1)
    assert units_for(price, Usage(bytes_in=500_000, cpu_s=0.5)) == 1


@given(prices, usages)
def test_units_match_the_documented_formula(price: Price, usage: Usage) -> None:
    assert units_for(price, usage) == exact_units(price, usage)


@given(prices, byte_counts, byte_counts, cpu_seconds)
def test_both_sides_count_the_same_from_the_same_bytes(
    price: Price, request: int, reply: int, cpu_s: float
) -> None:
    # Which side of the call the bytes were on does not matter, only their sum.
    assert units_for(price, Usage(request, reply, cpu_s)) == units_for(
        price, Usage(reply, request, cpu_s)
    )


@given(prices, usages, byte_counts, byte_counts, cpu_seconds)
def test_units_are_monotone_in_usage(
    price: Price, usage: Usage, more_in: int, more_out: int, more_cpu: float
) -> None:
    bigger = Usage(usage.bytes_in + more_in, usage.bytes_out + more_out, usage.cpu_s + more_cpu)
    assert units_for(price, usage) <= units_for(price, bigger)
    assert units_for(price, usage) >= price.per_call


@given(usages, prices, prices)
def test_units_are_monotone_in_price(usage: Usage, low: Price, extra: Price) -> None:
    high = Price(
        min(low.per_call + extra.per_call, MAX_PRICE_PART),
        min(low.per_mb + extra.per_mb, MAX_PRICE_PART),
        min(low.per_cpu_s + extra.per_cpu_s, MAX_PRICE_PART),
    )
    assert units_for(low, usage) <= units_for(high, usage)


@pytest.mark.parametrize(
    "kwargs",
    [{"per_call": -1}, {"per_mb": MAX_PRICE_PART + 1}, {"per_cpu_s": 1.5}, {"per_call": True}],
)
def test_a_bad_price_part_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="price"):
        Price(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"bytes_in": -1}, {"bytes_out": -5}, {"cpu_s": -0.1}, {"cpu_s": math.inf}]
)
def test_bad_usage_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Usage(**kwargs)  # type: ignore[arg-type]


def test_the_caller_catches_a_charge_over_the_price() -> None:
    # The call took 50 ms on a 2-thread runtime: at most 100 ms of CPU.
    ceiling = max_units(REFERENCE_PRICE, 16, 20, 0.050, threads=2)
    honest = units_for(REFERENCE_PRICE, Usage(16, 20, 0.080))
    assert honest <= ceiling
    assert ceiling == 1_000 + 1 + 100_000  # per call, 36 bytes rounded up, 100 ms
    assert units_for(REFERENCE_PRICE, Usage(16, 20, 0.150)) > ceiling
    with pytest.raises(ValueError, match="threads"):
        max_units(REFERENCE_PRICE, 0, 0, 0.01, threads=0)


@given(prices, byte_counts, byte_counts, cpu_seconds, st.integers(1, 64), cpu_seconds)
def test_an_honest_charge_is_never_over_the_ceiling(
    price: Price, request: int, reply: int, wall_s: float, threads: int, fraction: float
) -> None:
    cpu_s = wall_s * threads * (fraction / 1e6)  # anything from 0 to wall_s * threads
    assert units_for(price, Usage(request, reply, cpu_s)) <= max_units(
        price, request, reply, wall_s, threads
    )


def test_expected_cost_is_units_of_the_estimate() -> None:
    assert expected_cost(REFERENCE_PRICE, 1_000_000, 0, 0.5) == 1_000 + 10_000 + 500_000


def test_max_price_is_checked_part_by_part() -> None:
    limit = Price(per_call=10, per_mb=10, per_cpu_s=10)
    assert within_max_price(Price(10, 0, 10), limit)
    assert not within_max_price(Price(0, 11, 0), limit)
    assert within_max_price(Price(10**9, 10**9, 10**9), None)
    assert within_max_price(FREE, FREE)
    assert not within_max_price(Price(per_call=1), FREE)


@given(prices, prices)
def test_within_max_price_means_no_part_above(price: Price, limit: Price) -> None:
    assert within_max_price(price, price)
    assert within_max_price(price, limit) == all(
        getattr(price, name) <= getattr(limit, name) for name in ("per_call", "per_mb", "per_cpu_s")
    )


@given(prices)
def test_price_round_trips_through_the_wire(price: Price) -> None:
    wire = msgpack.unpackb(msgpack.packb(price_to_wire(price)))
    assert price_from_wire(wire) == price


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2, 3], "must be a map"),
        ({"per_call": 1, "per_mb": 2}, "lacks per_cpu_s"),
        ({"per_call": 1, "per_mb": 2, "per_cpu_s": 3, "tip": 4}, "unknown keys: 'tip'"),
        ({"per_call": -1, "per_mb": 0, "per_cpu_s": 0}, "per_call must be in"),
        ({"per_call": 0, "per_mb": 2**64, "per_cpu_s": 0}, "per_mb must be in"),
        ({"per_call": 0, "per_mb": 0, "per_cpu_s": 1.0}, "per_cpu_s must be an integer"),
        ({"per_call": False, "per_mb": 0, "per_cpu_s": 0}, "per_call must be an integer"),
    ],
)
def test_a_malformed_price_field_is_refused_with_a_reason(obj: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        price_from_wire(obj)


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)


@given(wire_values)
def test_any_field_value_gives_a_price_or_a_value_error(obj: object) -> None:
    try:
        price = price_from_wire(obj)
    except ValueError:
        return
    assert price_to_wire(price) == obj


# --- ranking by price as well as latency -------------------------------------------------

NOW = 1000.0
USAGE = Usage(16, 20, 0.001)


def ranked(table: ProviderStatsTable, prices: dict[str, Price], candidates: list[str]) -> list[str]:
    scores = table.rank(candidates, NOW)
    return [s.peer_id for s in rank_by_cost_and_latency(scores, prices, USAGE)]


def test_the_cheapest_of_comparably_fast_providers_comes_first() -> None:
    table = ProviderStatsTable()
    table.record_success("fast_dear", 0.010, NOW)
    table.record_success("fast_cheap", 0.012, NOW)
    prices = {"fast_dear": Price(per_call=5_000), "fast_cheap": Price(per_call=1_000)}
    assert ranked(table, prices, ["fast_dear", "fast_cheap"]) == ["fast_cheap", "fast_dear"]


def test_a_cheap_but_much_slower_provider_comes_after_a_fast_one() -> None:
    table = ProviderStatsTable()
    table.record_success("fast_dear", 0.010, NOW)
    table.record_success("slow_free", 0.100, NOW)  # over 2 x 10 ms + 5 ms
    prices = {"fast_dear": Price(per_call=5_000)}  # slow_free has no price: free
    assert ranked(table, prices, ["slow_free", "fast_dear"]) == ["fast_dear", "slow_free"]


def test_a_cheap_failing_provider_stays_last() -> None:
    table = ProviderStatsTable()
    table.record_success("dear", 0.010, NOW)
    table.record_failure("cheap", NOW - 1)
    assert ranked(table, {"dear": Price(per_call=9)}, ["cheap", "dear"]) == ["dear", "cheap"]


def test_equal_prices_keep_the_latency_order() -> None:
    table = ProviderStatsTable()
    table.record_success("b", 0.004, NOW)
    table.record_success("a", 0.003, NOW)
    assert ranked(table, {}, ["b", "a"]) == ["a", "b"]


def test_cost_ranking_policy_is_checked() -> None:
    with pytest.raises(ValueError):
        CostRankingPolicy(max_slowdown=0.5)
    with pytest.raises(ValueError):
        CostRankingPolicy(latency_slack=-1.0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcdefgh"),
            st.one_of(st.none(), st.floats(0.0, 1.0)),
            st.booleans(),
            st.integers(0, 10_000),
        ),
        max_size=8,
    )
)
def test_price_ranking_reorders_without_losing_or_promoting_the_unhealthy(
    providers: list[tuple[str, float | None, bool, int]],
) -> None:
    table = ProviderStatsTable()
    prices = {}
    for peer, latency, failed, per_call in providers:
        if latency is not None:
            table.record_success(peer, latency, NOW - 10)
        if failed:
            table.record_failure(peer, NOW - 5)
        prices[peer] = Price(per_call=per_call)
    scores = table.rank([p for p, *_ in providers], NOW)
    result = rank_by_cost_and_latency(scores, prices, USAGE)
    assert sorted(s.peer_id for s in result) == sorted(s.peer_id for s in scores)
    healthy = [s.healthy for s in result]
    assert healthy == sorted(healthy, reverse=True)  # healthy ones first
    assert [s for s in result if not s.healthy] == [s for s in scores if not s.healthy]
