"""Failover decisions, with no I/O: the deadline split, the order of attempts (backoff),
which errors move on, which error is reported, and the output check."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.core.failover import (
    attempt_order,
    attempt_timeout,
    failure_report,
    is_provider_failure,
    most_telling,
    output_mismatch,
)
from p2pnet.core.ranking import ProviderStatsTable, RankingPolicy
from p2pnet.core.schema import ModelSchema, TensorSpec
from p2pnet.errors import (
    ConnectionLostError,
    DeadlineExceededError,
    InternalPeerError,
    InvalidInputError,
    LocalProtocolError,
    ModelExecutionError,
    OutputSchemaError,
    P2PNetError,
    PayloadTooLargeError,
    PeerBusyError,
    PeerUnreachableError,
    PermissionDeniedError,
    RemoteProtocolError,
    ReplyTooLargeError,
    UnknownModelError,
    error_from_wire,
)

# --- deadline split ------------------------------------------------------------------------


def test_the_first_of_several_attempts_gets_half_the_time() -> None:
    assert attempt_timeout(30.0, 3) == 15.0
    assert attempt_timeout(15.0, 2) == 7.5
    assert attempt_timeout(7.5, 1) == 7.5  # the last planned attempt gets all that is left


def test_an_attempt_gets_at_least_the_floor_when_that_much_is_left() -> None:
    assert attempt_timeout(1.5, 4, floor=1.0) == 1.0
    assert attempt_timeout(0.4, 4, floor=1.0) == 0.4
    assert attempt_timeout(0.0, 4) == 0.0
    assert attempt_timeout(-1.0, 1) == 0.0


def test_bad_split_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        attempt_timeout(1.0, 2, share=0.0)
    with pytest.raises(ValueError):
        attempt_timeout(1.0, 2, floor=-1.0)


@given(
    # Not subnormal: 5e-324 s times a share rounds back to 5e-324 s.
    remaining=st.floats(min_value=-10, max_value=1e6, allow_nan=False, allow_subnormal=False),
    attempts=st.integers(min_value=0, max_value=100),
    share=st.floats(min_value=0.01, max_value=1.0),
    floor=st.floats(min_value=0.0, max_value=100.0),
)
def test_an_attempt_never_gets_more_than_is_left_nor_all_of_it_unless_last(
    remaining: float, attempts: int, share: float, floor: float
) -> None:
    budget = attempt_timeout(remaining, attempts, share=share, floor=floor)
    assert 0.0 <= budget <= max(remaining, 0.0)
    if remaining > 0 and attempts <= 1:
        assert budget == remaining
    if remaining > floor and attempts > 1 and share < 1.0:
        assert budget < remaining  # one stalled provider cannot take the whole budget
        assert budget >= min(floor, remaining)


@given(
    total=st.floats(min_value=2.0, max_value=1e4),
    attempts=st.integers(min_value=2, max_value=20),
)
def test_after_stalled_attempts_the_next_still_gets_time(total: float, attempts: int) -> None:
    # Every attempt but the last times out; the last still gets a share of the budget.
    remaining = total
    for left in range(attempts, 1, -1):
        remaining -= attempt_timeout(remaining, left, floor=0.0)
    assert remaining >= total / 2 ** (attempts - 1) - 1e-9
    assert math.isclose(attempt_timeout(remaining, 1), remaining)


# --- order and backoff ---------------------------------------------------------------------

POLICY = RankingPolicy(failure_cooldown=60.0, backoff_base=1.0, backoff_cap=8.0)


def test_providers_in_backoff_go_last_the_soonest_out_first() -> None:
    table = ProviderStatsTable(POLICY)
    table.record_failure("dead", 100.0)
    table.record_failure("dead", 100.5)  # two failures: 2 s of backoff
    table.record_failure("busy", 100.5)  # one failure: 1 s
    order = attempt_order(["dead", "busy", "ok", "new"], table, 101.0, POLICY)
    assert order == [2, 3, 1, 0]


def test_backoff_doubles_with_each_failure_up_to_the_cap() -> None:
    table = ProviderStatsTable(POLICY)
    now = 0.0
    waits = []
    for _ in range(6):
        table.record_failure("dead", now)
        until = table.backoff_until("dead", now)
        assert until is not None
        waits.append(until - now)
        now = until
        assert table.backoff_until("dead", now) is None  # may be tried again now
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_success_ends_the_backoff() -> None:
    table = ProviderStatsTable(POLICY)
    table.record_failure("p", 0.0)
    assert table.backoff_until("p", 0.5) == 1.0
    table.record_success("p", 0.01, 0.6)
    assert table.backoff_until("p", 0.6) is None
    assert attempt_order(["p"], table, 0.6, POLICY) == [0]


@given(
    failures=st.dictionaries(
        st.sampled_from("abcdef"), st.lists(st.floats(0, 100), max_size=5), max_size=6
    ),
    now=st.floats(0, 200),
)
def test_the_order_is_a_permutation_with_free_providers_first(
    failures: dict[str, list[float]], now: float
) -> None:
    table = ProviderStatsTable(POLICY)
    for peer, times in failures.items():
        for t in sorted(times):
            table.record_failure(peer, t)
    candidates = list("abcdef")
    order = attempt_order(candidates, table, now, POLICY)
    assert sorted(order) == list(range(len(candidates)))
    waiting = [table.backoff_until(candidates[i], now) is not None for i in order]
    assert waiting == sorted(waiting)  # no free provider after one in backoff


# --- which errors move on ------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        DeadlineExceededError("slow"),
        RemoteProtocolError("garbage"),
        ReplyTooLargeError("too big"),
        OutputSchemaError("float64 label"),
        PeerBusyError("busy"),
        PeerUnreachableError("refused"),
        ConnectionLostError("reset"),
        InternalPeerError("bug"),
        ModelExecutionError("failed"),
        UnknownModelError("not here"),
        PermissionDeniedError("not you"),
    ],
)
def test_provider_side_failures_fail_over(error: P2PNetError) -> None:
    assert is_provider_failure(error)


@pytest.mark.parametrize(
    "error",
    [InvalidInputError("bad x"), PayloadTooLargeError("too big"), LocalProtocolError("we broke")],
)
def test_the_callers_own_faults_do_not(error: P2PNetError) -> None:
    assert not is_provider_failure(error)


def test_a_reply_too_large_is_the_providers_fault_not_the_callers() -> None:
    assert isinstance(ReplyTooLargeError("x"), RemoteProtocolError)
    assert not isinstance(ReplyTooLargeError("x"), PayloadTooLargeError)


# --- which error is reported ---------------------------------------------------------------


def test_busy_then_dead_reports_busy() -> None:
    attempts = [("A", PeerBusyError("at its limit")), ("B", PeerUnreachableError("refused"))]
    assert most_telling(attempts)[0] == "A"
    report = failure_report(attempts)
    assert isinstance(report, PeerBusyError)
    assert report.peer == "A"
    assert report.attempts == tuple(attempts)
    assert "A: busy" in str(report) and "B: unreachable" in str(report)


def test_a_broken_reply_says_more_than_a_later_timeout() -> None:
    attempts = [
        ("A", DeadlineExceededError("slow")),
        ("B", OutputSchemaError("float64 label")),
        ("C", DeadlineExceededError("slow")),
    ]
    report = failure_report(attempts)
    assert isinstance(report, OutputSchemaError) and report.peer == "B"
    assert "3 tried" in report.message


def test_a_deadline_when_every_provider_timed_out() -> None:
    attempts = [("A", DeadlineExceededError("a")), ("B", DeadlineExceededError("b"))]
    report = failure_report(attempts)
    assert type(report) is DeadlineExceededError and report.peer == "A"


def test_one_attempt_is_reported_as_it_was() -> None:
    report = failure_report([("A", ConnectionLostError("reset"))])
    assert type(report) is ConnectionLostError
    assert report.message == "reset" and report.peer == "A"
    with pytest.raises(ValueError):
        failure_report([])


@given(
    st.lists(
        st.tuples(
            st.sampled_from("ABC"),
            st.sampled_from(
                [
                    DeadlineExceededError("d"),
                    PeerBusyError("b"),
                    PeerUnreachableError("u"),
                    RemoteProtocolError("r"),
                    InvalidInputError("i"),
                ]
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_report_is_one_of_the_attempts_errors(attempts: list[tuple[str, P2PNetError]]) -> None:
    report = failure_report(attempts)
    assert any(type(report) is type(e) and report.peer == p for p, e in attempts)
    assert report.attempts == tuple(attempts)
    if any(not isinstance(e, DeadlineExceededError) for _, e in attempts):
        assert not isinstance(report, DeadlineExceededError)


# --- the output check ----------------------------------------------------------------------

IRIS = ModelSchema(
    (TensorSpec("input", "float32", ("N", 4)),),
    (TensorSpec("label", "int64", ("N",)), TensorSpec("probabilities", "float32", ("N", 3))),
)
INPUTS = {"input": np.zeros((2, 4), np.float32)}


def test_outputs_that_fit_pass() -> None:
    outputs = {"label": np.zeros(2, np.int64), "probabilities": np.zeros((2, 3), np.float32)}
    assert output_mismatch(IRIS, outputs, INPUTS) is None


@pytest.mark.parametrize(
    ("outputs", "why"),
    [
        ({"label": np.zeros(2, np.int64)}, "'probabilities' is missing"),
        (
            {
                "label": np.zeros(2, np.int64),
                "probabilities": np.zeros((2, 3), np.float32),
                "bogus": np.zeros(1),
            },
            "'bogus' is not declared",
        ),
        (
            {"label": np.zeros((2, 2)), "probabilities": np.zeros((2, 3), np.float32)},
            "dtype float64",
        ),
        (
            {"label": np.zeros((2, 2), np.int64), "probabilities": np.zeros((2, 3), np.float32)},
            "rank",
        ),
        (
            {"label": np.zeros(2, np.int64), "probabilities": np.zeros((2, 5), np.float32)},
            "size 5 on axis 1",
        ),
        (
            {"label": np.zeros(3, np.int64), "probabilities": np.zeros((3, 3), np.float32)},
            "dimension 'N' is 2",
        ),
    ],
)
def test_outputs_that_do_not_fit_say_why(outputs: dict[str, np.ndarray], why: str) -> None:
    mismatch = output_mismatch(IRIS, outputs, INPUTS)
    assert mismatch is not None and why in mismatch


# --- whose fault ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (InvalidInputError("x"), "caller"),
        (PayloadTooLargeError("x"), "caller"),
        (LocalProtocolError("x"), "caller"),
        (ModelExecutionError("x"), "peer"),
        (OutputSchemaError("x"), "peer"),
        (RemoteProtocolError("x"), "peer"),
        (ReplyTooLargeError("x"), "peer"),
        (PeerBusyError("x"), "peer"),
        (PeerUnreachableError("x"), "network"),
        (ConnectionLostError("x"), "network"),
        (DeadlineExceededError("x"), ""),
    ],
)
def test_every_error_says_whose_fault_it_is(error: P2PNetError, fault: str) -> None:
    assert error.fault == fault
    # The same when the error arrived from another peer under its wire code.
    received = error_from_wire(error.code, "x", "12D3KooW")
    if type(received) is type(error):
        assert received.fault == fault
