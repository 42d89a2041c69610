"""Forwarded pipelines decided in core (no network): a hop's inputs, the branches that
start with it, what follows the join, and the trace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.core.forwarding import after_hop, hop_inputs, split_forward, step_error, with_trace
from p2pnet.core.messages import Forward, ForwardResult, Hop, TraceEntry
from p2pnet.errors import (
    DeadlineExceededError,
    InvalidInputError,
    PeerBusyError,
    RemoteProtocolError,
)

A = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
X = np.arange(3, dtype=np.float32)
FIRST = Hop("first", A, (("12D3KooWfirst", ()),), {"x": "input.x"}, ("first.y", "input.x"))
SECOND = Hop(
    "second", A, (("12D3KooWsecond", ()),), {"a": "first.y", "b": "input.x"}, ("second.z",)
)
OWN = TraceEntry("first", A, "12D3KooWfirst", 1.5)


def hop(step: str, inputs: Mapping[str, str], keep: tuple[str, ...] = ()) -> Hop:
    return Hop(step, A, ((f"12D3KooW{step}", ()),), dict(inputs), keep)


def test_hop_inputs_are_renamed_from_the_tensors_carried() -> None:
    message = Forward(7, (FIRST, SECOND), {"input.x": X}, 1000)
    assert list(hop_inputs(message)) == ["x"] and hop_inputs(message)["x"] is X
    with pytest.raises(InvalidInputError, match=r"step 'first' takes tensor 'input\.x'"):
        hop_inputs(Forward(7, (FIRST,), {"input.z": X}, 1000))


def test_after_a_middle_hop_the_next_message_carries_only_what_is_needed() -> None:
    message = Forward(7, (FIRST, SECOND), {"input.x": X, "input.unused": X}, 1000)
    assert split_forward(message).branches == ()  # second needs first's output
    following = after_hop(message, {"y": X + 1}, OWN, remaining=0.25)
    assert isinstance(following, Forward)
    assert following.hops == (SECOND,) and following.request_id == 7
    assert sorted(following.tensors) == ["first.y", "input.x"]
    assert following.deadline_ms == 250
    done = ForwardResult(99, {"second.z": X}, (TraceEntry("second", A, "12D3KooWsecond", 2.0),))
    reply = with_trace(message, OWN, done)
    assert reply.request_id == 7 and [t.step for t in reply.trace] == ["first", "second"]


def test_after_the_last_hop_comes_the_result() -> None:
    message = Forward(7, (SECOND,), {"first.y": X, "input.x": X}, 1000)
    result = after_hop(message, {"z": X * 2}, OWN, remaining=0.0)
    assert isinstance(result, ForwardResult)
    assert list(result.outputs) == ["second.z"] and result.trace == (OWN,)


def test_a_result_nobody_produces_a_missing_tensor_or_no_time_left_stops_the_run() -> None:
    bad = hop("second", {"a": "first.y"}, ("first.nope",))
    with pytest.raises(InvalidInputError, match=r"'first\.nope', which no earlier step produced"):
        after_hop(Forward(1, (FIRST, bad), {"input.x": X}, 1000), {"y": X}, OWN, remaining=1)
    with pytest.raises(DeadlineExceededError, match="at step 'first', before step 'second'"):
        after_hop(Forward(1, (FIRST, SECOND), {"input.x": X}, 1000), {"y": X}, OWN, remaining=0)
    late = hop("second", {"a": "third.y"})
    with pytest.raises(InvalidInputError, match=r"step 'second' takes tensor 'third\.y'"):
        split_forward(Forward(1, (FIRST, late, hop("third", {"x": "input.x"})), {"input.x": X}, 9))
    with pytest.raises(InvalidInputError, match="step 'first' appears twice"):
        split_forward(Forward(1, (FIRST, FIRST), {"input.x": X}, 9))


# The customer-service pipeline: emotion and retrieve read the text; reply and route
# read both; the caller wants every step's outputs.
RETURNS = ("emotion.label", "reply.reply", "retrieve.answer", "retrieve.article", "route.queue")
EMOTION = hop("emotion", {"text": "input.text"})
RETRIEVE = hop("retrieve", {"text": "input.text"})
REPLY = hop("reply", {"emotion": "emotion.label", "answer": "retrieve.answer"})
ROUTE = hop("route", {"emotion": "emotion.label", "article": "retrieve.article"}, RETURNS)
TEXT = np.array(["where is my parcel?"], dtype=object)


def test_independent_steps_branch_off_and_join_at_the_next_step() -> None:
    message = Forward(3, (EMOTION, RETRIEVE, REPLY, ROUTE), {"input.text": TEXT}, 5000)
    split = split_forward(message)
    # retrieve runs on its own peer while emotion runs here, and gives back what the
    # join and the result need of it.
    (branch,) = split.branches
    assert [h.step for h in branch.hops] == ["retrieve"] and branch.request_id == 3
    assert list(branch.tensors) == ["input.text"] and branch.deadline_ms == 5000
    assert branch.hops[0].keep == ("retrieve.answer", "retrieve.article")
    assert split.branch_returns == (("retrieve.answer", "retrieve.article"),)
    assert [h.step for h in split.rest] == ["reply", "route"]

    label, answer, article = np.array(["anger"], object), np.array(["a"], object), TEXT
    retrieved = ForwardResult(
        3,
        {"retrieve.answer": answer, "retrieve.article": article},
        (TraceEntry("retrieve", A, "12D3KooWretrieve", 2.0),),
    )
    join = after_hop(message, {"label": label}, OWN, remaining=1.0, branches=[retrieved])
    assert isinstance(join, Forward) and join.deadline_ms == 1000
    assert sorted(join.tensors) == ["emotion.label", "retrieve.answer", "retrieve.article"]
    assert join.hops[-1].keep == RETURNS
    # The peer that joined sends reply and route on at once, each with what it reads.
    level = split_forward(join, here=False)
    assert [[h.step for h in b.hops] for b in level.branches] == [["reply"], ["route"]]
    assert [sorted(b.tensors) for b in level.branches] == [
        ["emotion.label", "retrieve.answer"],
        ["emotion.label", "retrieve.article"],
    ]
    assert level.rest == () and level.branch_returns == (("reply.reply",), ("route.queue",))
    # Sent on whole instead, the join's peer runs reply while route branches off.
    second = split_forward(join)
    assert [b.hops[0].step for b in second.branches] == ["route"] and second.rest == ()
    assert sorted(second.branches[0].tensors) == ["emotion.label", "retrieve.article"]
    assert second.branch_returns == (("route.queue",),)
    routed = ForwardResult(3, {"route.queue": TEXT}, (TraceEntry("route", A, "p", 1.0),))
    reply_entry = TraceEntry("reply", A, "12D3KooWreply", 1.0)
    done = after_hop(join, {"reply": TEXT}, reply_entry, remaining=0.5, branches=[routed])
    assert isinstance(done, ForwardResult) and tuple(sorted(done.outputs)) == RETURNS
    assert [t.step for t in done.trace] == ["reply", "route"]
    reply = with_trace(message, OWN, done, [retrieved])
    assert [t.step for t in reply.trace] == ["first", "retrieve", "reply", "route"]


def test_a_step_reading_only_a_branch_runs_along_that_branch() -> None:
    later = hop("later", {"a": "retrieve.answer"}, ("emotion.label", "later.y"))
    message = Forward(3, (EMOTION, RETRIEVE, later), {"input.text": TEXT}, 5000)
    split = split_forward(message)
    (branch,) = split.branches
    assert [h.step for h in branch.hops] == ["retrieve", "later"] and split.rest == ()
    assert branch.hops[0].keep == ("retrieve.answer",)
    assert branch.hops[1].keep == ("later.y",)


def test_a_branch_reply_lacking_a_tensor_breaks_the_protocol() -> None:
    message = Forward(3, (EMOTION, RETRIEVE, REPLY, ROUTE), {"input.text": TEXT}, 5000)
    short = ForwardResult(3, {"retrieve.answer": TEXT}, ())
    with pytest.raises(RemoteProtocolError, match=r"step 'retrieve'.*'retrieve\.article'"):
        after_hop(message, {"label": TEXT}, OWN, remaining=1.0, branches=[short])


def test_step_errors_name_their_step_once() -> None:
    named = step_error(SECOND, PeerBusyError("too many calls", peer="12D3KooWsecond"))
    assert named.message == "step 'second': too many calls" and named.peer == "12D3KooWsecond"
    assert step_error("second", named) is named


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[Hop], tuple[str, ...]]:
    """Up to 8 steps, each reading the input and/or earlier steps' outputs; the results
    are some steps' outputs (and perhaps the input), as a caller's plan lists them."""
    count = draw(st.integers(1, 8))
    hops: list[Hop] = []
    for i in range(count):
        sources = draw(st.sets(st.integers(-1, i - 1), min_size=1, max_size=3))
        hops.append(
            hop(f"s{i}", {f"a{j}": "input.x" if j < 0 else f"s{j}.y" for j in sorted(sources)})
        )
    wanted = draw(st.sets(st.integers(-1, count - 1), min_size=1))
    returns = tuple(sorted("input.x" if j < 0 else f"s{j}.y" for j in wanted))
    return hops, returns


def run_forward(message: Forward, ran: list[str], *, passed_on: bool) -> ForwardResult:
    """Run ``message`` as peers do, with step i computing i + the sum of its inputs: the
    hops left after a join are split again here, or (``passed_on``) sent on whole to
    the next peer, which splits them there."""
    split = split_forward(message)
    first = message.hops[0]
    inputs = hop_inputs(message)
    outputs = {"y": sum(inputs.values(), np.zeros(1)) + int(first.step[1:])}
    ran.append(first.step)
    branches = [run_forward(b, ran, passed_on=passed_on) for b in split.branches]
    own = TraceEntry(first.step, A, "p", 0.0)
    following = after_hop(message, outputs, own, remaining=1.0, split=split, branches=branches)
    if passed_on:
        if isinstance(following, ForwardResult):
            return following
        assert len(following.hops) < len(message.hops)
        downstream = run_forward(following, ran, passed_on=True)
        return with_trace(message, own, downstream, branches)
    trace = [own, *(t for b in branches for t in b.trace)]
    while isinstance(following, Forward):
        level = split_forward(following, here=False)
        assert level.branches  # the first remaining hop can always start
        branches = [run_forward(b, ran, passed_on=False) for b in level.branches]
        following = after_hop(following, {}, None, remaining=1.0, split=level, branches=branches)
        trace += [t for b in branches for t in b.trace]
    return ForwardResult(message.request_id, following.outputs, tuple(trace))


@settings(max_examples=150)
@given(graphs(), st.booleans())
def test_a_graph_split_at_every_peer_gives_the_results_of_running_it_in_order(
    graph: tuple[list[Hop], tuple[str, ...]], passed_on: bool
) -> None:
    hops, returns = graph
    values: dict[str, Any] = {"input.x": np.ones(1)}
    for h in hops:
        values[f"{h.step}.y"] = sum((values[t] for t in h.inputs.values()), np.zeros(1)) + int(
            h.step[1:]
        )
    hops[-1] = hop(hops[-1].step, hops[-1].inputs, returns)
    ran: list[str] = []
    message = Forward(1, tuple(hops), {"input.x": values["input.x"]}, 1000)
    result = run_forward(message, ran, passed_on=passed_on)
    assert sorted(ran) == sorted(h.step for h in hops)  # every step once
    assert sorted(t.step for t in result.trace) == sorted(ran)
    assert tuple(sorted(result.outputs)) == returns
    for name in returns:
        np.testing.assert_array_equal(result.outputs[name], values[name])


names = st.text("ab.", min_size=1, max_size=4)
any_hops = st.lists(
    st.builds(
        Hop,
        st.sampled_from(["a", "b", "c", "input"]),
        st.just(A),
        st.just((("p", ()),)),
        st.dictionaries(names, names, max_size=3),
        st.lists(names, max_size=3).map(tuple),
    ),
    min_size=1,
    max_size=6,
).map(tuple)


@settings(max_examples=200)
@given(any_hops, st.sets(names, max_size=3), st.booleans())
def test_any_hops_split_or_raise_a_precise_error(
    hops: tuple[Hop, ...], carried: set[str], here: bool
) -> None:
    """Whatever hops a Forward names, splitting it raises InvalidInputError or gives
    smaller Forwards that hold every hop once."""
    message = Forward(1, hops, dict.fromkeys(carried, X), 100)
    try:
        split = split_forward(message, here=here)
    except InvalidInputError:
        return
    sent = [h.step for b in split.branches for h in b.hops] + [h.step for h in split.rest]
    assert sorted(sent) == sorted(h.step for h in hops[1 if here else 0 :])
    assert all(len(b.hops) < len(hops) or not here for b in split.branches)
    for branch in split.branches:
        assert set(branch.tensors) <= carried
