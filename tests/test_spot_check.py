"""The pure part of spot checks: sampling, comparing two results, the odd one out of
three or more, when to ask another opinion, IP groups and the order of checkers
(p2pnet/core/spot_check.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pnet.core.spot_check import (
    MAX_OPINIONS,
    Sampler,
    ThreeWay,
    Tolerance,
    TolerancePolicy,
    checker_order,
    compare_outputs,
    odd_one_out,
    three_way,
    wants_another_opinion,
)

FLOAT_DTYPES = st.sampled_from([np.float32, np.float64])
FINITE = {"allow_nan": False, "allow_infinity": False, "min_value": -1e6, "max_value": 1e6}


@st.composite
def float_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(FLOAT_DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5))
    return draw(hnp.arrays(dtype, shape, elements=st.floats(width=32, **FINITE)))


@given(float_arrays(), st.booleans())
def test_a_result_agrees_with_itself(x: np.ndarray, bitwise: bool) -> None:
    verdict = compare_outputs({"y": x}, {"y": x.copy()}, bitwise)
    assert verdict.agree and verdict.how == "equal" and verdict.max_abs_error == 0.0


@given(float_arrays(), st.floats(min_value=0, max_value=0.5))
def test_noise_well_inside_the_tolerance_agrees(x: np.ndarray, fraction: float) -> None:
    tolerance = Tolerance()
    # At most half of what the tolerance allows, per element.
    noise = (fraction * (tolerance.atol + tolerance.rtol * np.abs(x.astype(np.float64)))) / 2
    y = (x.astype(np.float64) + noise).astype(x.dtype)
    assert compare_outputs({"y": y}, {"y": x}, False, tolerance).agree


@given(float_arrays(), st.floats(min_value=2.0, max_value=1e3))
def test_a_change_beyond_the_tolerance_is_found_and_measured(x: np.ndarray, factor: float) -> None:
    if x.size == 0:
        return
    tolerance = Tolerance()
    y = x.astype(np.float64).copy()
    flat = y.reshape(-1)
    flat[0] += factor * (tolerance.atol + tolerance.rtol * abs(flat[0])) + 1.0
    y = y.astype(x.dtype)
    for bitwise in (False, True):
        verdict = compare_outputs({"a": x, "y": y}, {"a": x, "y": x}, bitwise, tolerance)
        assert not verdict.agree and verdict.how == "values" and verdict.tensor == "y"
        assert verdict.max_abs_error > tolerance.atol
        assert verdict.mode == ("bitwise" if bitwise else "tolerance")


def test_bitwise_under_the_same_runtime_tolerance_otherwise() -> None:
    x = np.array([1.0, 2.0], np.float32)
    y = np.nextafter(x, np.float32(3))
    assert compare_outputs({"y": y}, {"y": x}, False).agree
    verdict = compare_outputs({"y": y}, {"y": x}, True)
    assert not verdict.agree and verdict.how == "not_bitwise" and verdict.tensor == "y"
    assert 0 < verdict.max_abs_error < 1e-6


@given(hnp.arrays(np.int64, hnp.array_shapes(max_dims=2), elements=st.integers(-100, 100)))
def test_integers_are_compared_exactly(x: np.ndarray) -> None:
    assert compare_outputs({"label": x}, {"label": x.copy()}, False).agree
    if x.size:
        y = x.copy()
        y.reshape(-1)[-1] += 1
        verdict = compare_outputs({"label": y}, {"label": x}, False, Tolerance(atol=10, rtol=1))
        assert not verdict.agree and verdict.how == "values" and "1 of" in verdict.detail


def test_strings_dtypes_shapes_and_names() -> None:
    words = np.array(["joy", "anger"], dtype=object)
    assert compare_outputs({"w": words}, {"w": words.copy()}, False).agree
    other = np.array(["joy", "fear"], dtype=object)
    assert compare_outputs({"w": other}, {"w": words}, False).how == "values"
    f32, f64 = np.zeros(3, np.float32), np.zeros(3, np.float64)
    assert compare_outputs({"y": f32}, {"y": f64}, False).how == "dtype"
    assert compare_outputs({"y": f32}, {"y": np.zeros(4, np.float32)}, False).how == "shape"
    verdict = compare_outputs({"y": f32}, {"z": f32}, False)
    assert verdict.how == "names" and verdict.tensor is None and "'y'" in verdict.detail


def test_nan_matches_nan_and_infinities_match_exactly() -> None:
    x = np.array([np.nan, np.inf, 1.0], np.float32)
    assert compare_outputs({"y": x}, {"y": x.copy()}, False).agree
    y = np.array([0.0, np.inf, 1.0], np.float32)
    verdict = compare_outputs({"y": y}, {"y": x}, False)
    assert not verdict.agree and verdict.max_abs_error == float("inf")
    assert verdict.to_dict()["max_abs_error"] == "inf"


def test_the_first_differing_output_by_name_is_named() -> None:
    good, bad = np.zeros(2, np.float32), np.ones(2, np.float32)
    verdict = compare_outputs({"b": bad, "a": bad}, {"a": good, "b": good}, False)
    assert verdict.tensor == "a"


def test_tolerances_per_model_and_their_checks() -> None:
    loose = Tolerance(atol=1.0, rtol=0.0)
    policy = TolerancePolicy(per_model={"m1": loose})
    assert policy.for_model("m1") == loose and policy.for_model("m2") == Tolerance()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="atol"):
            Tolerance(atol=bad)


@given(st.booleans(), st.booleans(), st.booleans())
def test_the_odd_one_disagrees_with_two_who_agree(ab: bool, ac: bool, bc: bool) -> None:
    verdict = three_way(ab, ac, bc)
    agree = {(0, 1): ab, (0, 2): ac, (1, 2): bc}
    odd = {ThreeWay.FIRST_ODD: 0, ThreeWay.SECOND_ODD: 1, ThreeWay.THIRD_ODD: 2}.get(verdict)
    if odd is not None:
        others = [p for p in agree if odd not in p]
        mine = [p for p in agree if odd in p]
        assert all(agree[p] for p in others) and not any(agree[p] for p in mine)
    elif verdict is ThreeWay.ALL_AGREE:
        assert ab and ac and bc
    else:  # no majority: no pattern of one against two agreeing
        assert not (ab and ac and bc)
        assert [ab, ac, bc].count(True) != 1


@given(st.booleans(), st.booleans(), st.booleans())
def test_of_three_the_odd_one_out_is_three_ways(ab: bool, ac: bool, bc: bool) -> None:
    odd = {ThreeWay.FIRST_ODD: 0, ThreeWay.SECOND_ODD: 1, ThreeWay.THIRD_ODD: 2}
    agree = {(0, 1): ab, (0, 2): ac, (1, 2): bc}
    assert odd_one_out(agree, 3) == odd.get(three_way(ab, ac, bc))


@st.composite
def agreements(draw: st.DrawFn) -> tuple[dict[tuple[int, int], bool], int]:
    count = draw(st.integers(2, MAX_OPINIONS))
    pairs = [(i, j) for j in range(count) for i in range(j)]
    return {pair: draw(st.booleans()) for pair in pairs}, count


@given(agreements())
def test_the_odd_one_out_agrees_with_nobody_while_two_others_agree(
    drawn: tuple[dict[tuple[int, int], bool], int],
) -> None:
    agree, count = drawn
    odd = odd_one_out(agree, count)
    lonely = [i for i in range(count) if not any(agree[p] for p in agree if i in p)]
    if odd is None:
        assert lonely == [] or not any(agree.values())
    else:
        assert odd == lonely[0]  # the provider checked first, then in the order heard
        assert any(agree[p] for p in agree if odd not in p)


def test_another_opinion_is_asked_while_no_two_results_agree() -> None:
    # Two wrong results, each its own, and a right one: three with no majority.
    three = {(0, 1): False, (0, 2): False, (1, 2): False}
    assert odd_one_out(three, 3) is None and wants_another_opinion(three, 3)
    # A fourth agrees with the right one: the first wrong one (the provider checked) is out.
    four = three | {(0, 3): False, (1, 3): False, (2, 3): True}
    assert odd_one_out(four, 4) == 0 and not wants_another_opinion(four, 4)
    # Checking the right one: the first liar heard is out.
    honest_first = three | {(0, 3): True, (1, 3): False, (2, 3): False}
    assert odd_one_out(honest_first, 4) == 1
    # Once two agree, or MAX_OPINIONS were heard, nobody more is asked.
    assert not wants_another_opinion({(0, 1): False, (0, 2): True, (1, 2): False}, 3)
    nobody_agrees = {(i, j): False for j in range(MAX_OPINIONS) for i in range(j)}
    assert not wants_another_opinion(nobody_agrees, MAX_OPINIONS)
    assert odd_one_out(nobody_agrees, MAX_OPINIONS) is None


@given(st.floats(min_value=0, max_value=1), st.integers(0, 2**32))
def test_the_sampler_is_reproducible_and_near_its_rate(rate: float, seed: int) -> None:
    first = Sampler(rate, random.Random(seed))
    second = Sampler(rate, random.Random(seed))
    draws = [first.should_check() for _ in range(2000)]
    assert draws == [second.should_check() for _ in range(2000)]
    assert abs(sum(draws) / 2000 - rate) < 0.06
    if rate == 0:
        assert not any(draws)


def test_the_sampler_refuses_a_rate_outside_zero_to_one() -> None:
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            Sampler(bad, random.Random(1))
    assert all(Sampler(1, random.Random(1)).should_check() for _ in range(10))


def test_checkers_in_other_ip_groups_come_first() -> None:
    near, far = frozenset({"ip4:10.1"}), frozenset({"ip4:10.2"})
    candidates = [("a", near), ("b", far), ("c", frozenset()), ("d", near | far)]
    assert checker_order(candidates, near) == ["b", "c", "a", "d"]
    assert checker_order(candidates, frozenset()) == ["a", "b", "c", "d"]


@given(
    st.lists(
        st.tuples(st.text(max_size=3), st.frozensets(st.sampled_from("wxyz"), max_size=2)),
        max_size=8,
    ),
    st.frozensets(st.sampled_from("wxyz"), max_size=2),
)
def test_checker_order_keeps_every_candidate_once(
    candidates: list[tuple[str, frozenset[str]]], avoid: frozenset[str]
) -> None:
    order = checker_order(candidates, avoid)
    assert sorted(order) == sorted(set(p for p, _ in candidates))
