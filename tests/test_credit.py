"""Per-peer credit: allowance, thresholds, netting, refusal, admission order. Time is only
ever an argument."""

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.core.credit import (
    DEFAULT_CREDIT_POLICY,
    ChargeOutcome,
    CreditLedger,
    CreditPolicy,
    admission_order,
)
from p2pnet.core.failover import is_provider_failure
from p2pnet.errors import CreditExceededError, PeerError, error_from_wire, wire_code_for

# Small figures so that examples read easily: 10 micro-units forgiven per second.
POLICY = CreditPolicy(allowance_rate=10, soft_threshold=1_000, hard_threshold=1_250)
T0 = 5_000.0

policies = st.builds(
    CreditPolicy.from_soft_threshold, st.integers(0, 10_000), st.integers(0, 1_000)
)
steps = st.floats(min_value=0.0, max_value=500.0, allow_nan=False)


def test_default_policy_figures() -> None:
    policy = DEFAULT_CREDIT_POLICY
    assert policy.allowance_rate == 10_000  # 1% of a core at the reference price
    assert policy.soft_threshold == 10_000_000  # 10 units
    assert policy.hard_threshold == policy.soft_threshold * 5 // 4  # Swarm's 1.25x


def test_policy_from_soft_threshold_and_checks() -> None:
    policy = CreditPolicy.from_soft_threshold(1_000, allowance_rate=7)
    assert (policy.allowance_rate, policy.soft_threshold, policy.hard_threshold) == (
        7,
        1_000,
        1_250,
    )
    with pytest.raises(ValueError, match="at least soft_threshold"):
        CreditPolicy(allowance_rate=1, soft_threshold=10, hard_threshold=9)
    with pytest.raises(ValueError, match="allowance_rate"):
        CreditPolicy(allowance_rate=-1)
    with pytest.raises(ValueError, match="soft_threshold"):
        CreditPolicy(soft_threshold=1.5)  # type: ignore[arg-type]


def test_charges_are_admitted_then_asked_to_settle_then_refused() -> None:
    ledger = CreditLedger(POLICY)
    first = ledger.charge("p", 900, T0)
    assert (first.outcome, first.balance, first.retry_after) == (ChargeOutcome.ADMITTED, 900, None)
    second = ledger.charge("p", 200, T0)
    assert (second.outcome, second.balance) == (ChargeOutcome.SETTLE_REQUESTED, 1_100)
    third = ledger.charge("p", 200, T0)  # 1,300 > 1,250
    assert third.outcome is ChargeOutcome.REFUSED and not third.admitted
    assert third.balance == 1_100
    assert ledger.balance("p", T0) == 1_100  # a refused call costs nothing
    assert ledger.charge("p", 150, T0).outcome is ChargeOutcome.SETTLE_REQUESTED  # exactly 1,250


def test_a_refusal_says_balance_limit_and_when_room_is_made() -> None:
    ledger = CreditLedger(POLICY)
    ledger.charge("p", 1_200, T0)
    decision = ledger.charge("p", 100, T0)  # 50 over: 5 s of allowance
    assert decision.retry_after == 5.0
    error = decision.error()
    assert isinstance(error, CreditExceededError) and isinstance(error, PeerError)
    assert (error.balance, error.limit, error.retry_after) == (1_200, 1_250, 5.0)
    assert "owes 1200 micro-units" in error.message
    assert "the limit is 1250" in error.message
    assert "in 5.000 s" in error.message
    assert ledger.charge("p", 100, T0 + 4.999).outcome is ChargeOutcome.REFUSED
    assert ledger.charge("p", 100, T0 + decision.retry_after).admitted


def test_a_refusal_that_time_cannot_cure_says_so() -> None:
    ledger = CreditLedger(POLICY)
    too_big = ledger.charge("p", 1_251, T0)
    assert too_big.retry_after is None
    assert "the call alone costs more than the limit" in too_big.error().message
    stingy = CreditLedger(CreditPolicy(allowance_rate=0, soft_threshold=10, hard_threshold=10))
    stingy.charge("p", 10, T0)
    refused = stingy.charge("p", 1, T0 + 1e6)
    assert refused.retry_after is None
    assert "settle by serving it" in refused.error().message


def test_credit_exceeded_travels_to_the_caller_and_moves_it_on() -> None:
    error = CreditLedger(POLICY).charge("p", 2_000, T0).error()
    assert wire_code_for(error) == "credit_exceeded"
    received = error_from_wire(wire_code_for(error), error.message, "12D3KooWprovider")
    assert type(received) is CreditExceededError
    assert received.peer == "12D3KooWprovider" and received.message == error.message
    assert is_provider_failure(received)  # the caller tries another provider


def test_debt_is_forgiven_at_the_allowance_rate_and_stops_at_zero() -> None:
    ledger = CreditLedger(POLICY)
    ledger.charge("p", 100, T0)
    assert ledger.balance("p", T0 + 3.0) == 70
    assert ledger.balance("p", T0 + 10.0) == 0
    assert ledger.balance("p", T0 + 10.3) == 0  # 103 forgiven of 100: no credit
    assert ledger.balance("p", T0 + 1e6) == 0
    assert len(ledger) == 1  # balance() reads; it does not store
    ledger.charge("p", 0, T0 + 20.0)
    assert len(ledger) == 0  # a zero balance is not kept


def test_allowance_below_a_micro_unit_per_update_is_not_lost() -> None:
    ledger = CreditLedger(POLICY)
    ledger.charge("p", 100, T0)
    for step in range(1, 21):  # 20 updates 50 ms apart: half a micro-unit each
        ledger.charge("p", 0, T0 + step * 0.05)
    assert ledger.balance("p", T0 + 1.0) == 90


def test_what_this_node_owes_decays_toward_zero_too() -> None:
    ledger = CreditLedger(POLICY)
    assert ledger.earn("q", 100, T0) == -100
    assert ledger.balance("q", T0 + 3.0) == -70
    assert ledger.balance("q", T0 + 10.3) == 0
    assert ledger.balance("q", T0 + 50.0) == 0


def test_time_running_backwards_forgives_nothing() -> None:
    ledger = CreditLedger(POLICY)
    ledger.charge("p", 100, T0)
    assert ledger.balance("p", T0 - 100.0) == 100
    ledger.charge("p", 10, T0 - 100.0)
    assert ledger.balance("p", T0 + 1.0) == 100  # 110 - 10: counted from T0, not T0 - 100


def test_earning_nets_out_against_charges() -> None:
    ledger = CreditLedger(POLICY)
    ledger.earn("p", 500, T0)  # p served this node 500
    assert ledger.standing("p", T0) == 500
    assert ledger.charge("p", 600, T0).balance == 100
    # p can now be served its 500 of credit plus the hard threshold before refusal.
    fresh = CreditLedger(POLICY)
    fresh.earn("p", 500, T0)
    assert fresh.charge("p", 1_750, T0).admitted
    assert not fresh.charge("p", 1, T0).admitted


def test_settling_is_always_accepted_and_is_not_a_prepayment() -> None:
    ledger = CreditLedger(POLICY)
    ledger.charge_served("p", 2_000, T0)  # a served call took it past the hard threshold
    assert ledger.balance("p", T0) == 2_000
    assert ledger.settle("p", 900, T0) == 900
    assert ledger.charge("p", 100, T0).admitted
    assert ledger.settle("p", 10_000, T0) == 1_200
    assert ledger.balance("p", T0) == 0
    assert ledger.settle("nobody", 5, T0) == 0


def test_charge_served_records_past_the_hard_threshold() -> None:
    ledger = CreditLedger(POLICY)
    assert ledger.charge_served("p", 900, T0).outcome is ChargeOutcome.ADMITTED
    assert ledger.charge_served("p", 200, T0).outcome is ChargeOutcome.SETTLE_REQUESTED
    past = ledger.charge_served("p", 500, T0)
    assert (past.outcome, past.balance) == (ChargeOutcome.REFUSED, 1_600)
    assert ledger.check("p", 0, T0).outcome is ChargeOutcome.REFUSED


def test_check_charges_nothing() -> None:
    ledger = CreditLedger(POLICY)
    assert ledger.check("p", 1_000, T0).balance == 1_000
    assert ledger.balance("p", T0) == 0


@pytest.mark.parametrize("units", [-1, 1.5, True])
def test_bad_units_are_refused(units: object) -> None:
    with pytest.raises(ValueError, match="units"):
        CreditLedger(POLICY).charge("p", units, T0)  # type: ignore[arg-type]


def test_a_time_that_is_not_finite_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        CreditLedger(POLICY).balance("p", float("nan"))


operations = st.lists(
    st.tuples(
        st.sampled_from(["charge", "charge_served", "earn", "settle"]),
        st.sampled_from(["a", "b"]),
        st.integers(0, 3_000),
        steps,
    ),
    max_size=30,
)


def run(ledger: CreditLedger, ops: list[tuple[str, str, int, float]]) -> float:
    now = T0
    for name, peer, units, step in ops:
        now += step
        getattr(ledger, name)(peer, units, now)
    return now


@given(policies, operations, st.lists(steps, min_size=1, max_size=10))
def test_forgiveness_never_creates_credit(
    policy: CreditPolicy, ops: list[tuple[str, str, int, float]], waits: list[float]
) -> None:
    ledger = CreditLedger(policy)
    now = run(ledger, ops)
    for peer in ("a", "b"):
        first = before = ledger.balance(peer, now)
        later = now
        for wait in waits:
            later += wait
            after = ledger.balance(peer, later)
            assert abs(after) <= abs(before)  # time only shrinks a balance...
            assert after * before >= 0  # ...and never carries it across zero
            before = after
            # At most the allowance of the time passed, plus what had accrued below one
            # micro-unit before `now` (under 1).
            forgiven = abs(first) - abs(after)
            assert forgiven <= policy.allowance_rate * (Fraction(later) - Fraction(now)) + 1


@given(policies, st.integers(1, 10_000), st.lists(steps, min_size=1, max_size=20))
def test_many_small_steps_forgive_what_one_long_step_does(
    policy: CreditPolicy, debt: int, waits: list[float]
) -> None:
    stepped = CreditLedger(policy)
    stepped.charge_served("p", debt, T0)
    whole = CreditLedger(policy)
    whole.charge_served("p", debt, T0)
    now = T0
    for wait in waits:
        now += wait
        stepped.charge_served("p", 0, now)  # stores the forgiven balance at every step
    assert stepped.balance("p", now) == whole.balance("p", now)


def elapsed(now: float) -> Fraction:
    """Seconds since T0, exactly (a float subtraction may round)."""
    return Fraction(now) - Fraction(T0)


@given(
    policies,
    st.lists(st.tuples(steps, st.integers(0, 20_000)), min_size=1, max_size=60),
)
def test_a_free_rider_gets_at_most_allowance_times_time_plus_the_hard_threshold(
    policy: CreditPolicy, calls: list[tuple[float, int]]
) -> None:
    """Issue 13, item 7: a caller that never serves nor settles, over any sequence of
    calls charged before serving, is served at most allowance_rate x elapsed +
    hard_threshold."""
    ledger = CreditLedger(policy)
    now = T0
    served = 0
    for step, units in calls:
        now += step
        if ledger.charge("rider", units, now).admitted:
            served += units
        assert served <= policy.allowance_rate * elapsed(now) + policy.hard_threshold
    # And for any span that starts later too: what it owed at the start only helps us.
    assert ledger.balance("rider", now) <= policy.hard_threshold


@given(policies, st.lists(steps, min_size=1, max_size=40))
def test_a_greedy_free_rider_gets_the_bound_and_no_more(
    policy: CreditPolicy, waits: list[float]
) -> None:
    """A rider that takes all the room there is at every call: served the hard threshold
    plus what the allowance forgave since (up to the debt) between its calls."""
    ledger = CreditLedger(policy)
    now = T0
    served = 0
    least = policy.hard_threshold
    for wait in [0.0, *waits]:
        # The time between calls as the ledger sees it: a difference of float clock
        # readings (T0 + 0.2 - T0 is a little under 0.2), not the wait itself.
        seen = Fraction((now + wait) - now)
        least += min(math.floor(policy.allowance_rate * seen), policy.hard_threshold)
        now += wait
        room = policy.hard_threshold - ledger.balance("rider", now)
        assert ledger.charge("rider", room, now).admitted
        assert not ledger.charge("rider", 1, now).admitted
        served += room
    bound = policy.allowance_rate * elapsed(now) + policy.hard_threshold
    assert least <= served <= bound


@given(policies, operations)
def test_snapshot_restores_the_balances(
    policy: CreditPolicy, ops: list[tuple[str, str, int, float]]
) -> None:
    ledger = CreditLedger(policy)
    now = run(ledger, ops)
    restored = CreditLedger.restore(ledger.snapshot(), policy)
    assert restored.peers() == ledger.peers()
    for later in (now, now + 0.37, now + 100.0):
        for peer in ("a", "b"):
            original, copy = ledger.balance(peer, later), restored.balance(peer, later)
            # Allowance accrued below one micro-unit is not kept: at most one less forgiven.
            assert original * copy >= 0
            assert 0 <= abs(copy) - abs(original) <= 1


@pytest.mark.parametrize(
    "snapshot",
    [
        [],
        {"p": 5},
        {"p": {"balance": "5", "updated_at": 1.0}},
        {"p": {"balance": True, "updated_at": 1.0}},
        {"p": {"balance": 5, "updated_at": float("inf")}},
        {"p": {"balance": 5}},
        {7: {"balance": 5, "updated_at": 1.0}},
    ],
)
def test_a_bad_snapshot_is_refused(snapshot: object) -> None:
    with pytest.raises(ValueError, match="credit snapshot"):
        CreditLedger.restore(snapshot)  # type: ignore[arg-type]


# --- admission order ---------------------------------------------------------------------


def test_an_idle_provider_serves_in_arrival_order() -> None:
    ledger = CreditLedger(POLICY)
    ledger.earn("contributor", 500, T0)
    ledger.charge("rider", 900, T0)
    waiting = [("rider", 3.0), ("contributor", 4.0), ("stranger", 1.0)]
    assert admission_order(waiting, T0, ledger, under_load=False) == [
        ("stranger", 1.0),
        ("rider", 3.0),
        ("contributor", 4.0),
    ]


def test_under_load_the_best_standing_goes_first() -> None:
    ledger = CreditLedger(POLICY)
    ledger.earn("contributor", 500, T0)
    ledger.charge("rider", 900, T0)
    waiting = [("rider", 1.0), ("stranger", 3.0), ("contributor", 4.0), ("stranger2", 2.0)]
    assert admission_order(waiting, T0, ledger, under_load=True) == [
        ("contributor", 4.0),
        ("stranger2", 2.0),  # equal standing (0): arrival order
        ("stranger", 3.0),
        ("rider", 1.0),
    ]


waiting_calls = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.floats(0.0, 100.0)), max_size=20
)


@given(operations, waiting_calls, st.booleans())
def test_admission_order_serves_everyone_once_in_the_promised_order(
    ops: list[tuple[str, str, int, float]], waiting: list[tuple[str, float]], under_load: bool
) -> None:
    ledger = CreditLedger(POLICY)
    now = run(ledger, ops)
    order = admission_order(waiting, now, ledger, under_load)
    assert sorted(order) == sorted(waiting)
    if under_load:
        keys = [(-ledger.standing(peer, now), arrived) for peer, arrived in order]
    else:
        keys = [(arrived, 0) for _, arrived in order]
    assert keys == sorted(keys)
