"""Forwarded pipelines decided in core (no network): a hop's inputs, what follows it,
and the trace."""

from __future__ import annotations

import numpy as np
import pytest

from p2pnet.core.forwarding import after_hop, hop_inputs, step_error, with_trace
from p2pnet.core.messages import Forward, ForwardResult, Hop, TraceEntry
from p2pnet.errors import DeadlineExceededError, InvalidInputError, PeerBusyError

A = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
X = np.arange(3, dtype=np.float32)
FIRST = Hop("first", A, (("12D3KooWfirst", ()),), {"x": "input.x"}, ("first.y", "input.x"))
SECOND = Hop(
    "second", A, (("12D3KooWsecond", ()),), {"a": "first.y", "b": "input.x"}, ("second.z",)
)
OWN = TraceEntry("first", A, "12D3KooWfirst", 1.5)


def test_hop_inputs_are_renamed_from_the_tensors_carried() -> None:
    message = Forward(7, (FIRST, SECOND), {"input.x": X}, 1000)
    assert list(hop_inputs(message)) == ["x"] and hop_inputs(message)["x"] is X
    with pytest.raises(InvalidInputError, match=r"step 'first' takes tensor 'input\.x'"):
        hop_inputs(Forward(7, (FIRST,), {"input.z": X}, 1000))


def test_after_a_middle_hop_the_next_message_carries_only_what_is_kept() -> None:
    message = Forward(7, (FIRST, SECOND), {"input.x": X, "input.unused": X}, 1000)
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


def test_a_bad_keep_list_or_no_time_left_stops_the_chain() -> None:
    bad = Hop("first", A, (), {"x": "input.x"}, ("first.nope",))
    with pytest.raises(InvalidInputError, match=r"'first\.nope', which no earlier step produced"):
        after_hop(Forward(1, (bad, SECOND), {"input.x": X}, 1000), {"y": X}, OWN, remaining=1)
    with pytest.raises(DeadlineExceededError, match="at step 'first', before step 'second'"):
        after_hop(Forward(1, (FIRST, SECOND), {"input.x": X}, 1000), {"y": X}, OWN, remaining=0)


def test_step_errors_name_their_step_once() -> None:
    named = step_error(SECOND, PeerBusyError("too many calls", peer="12D3KooWsecond"))
    assert named.message == "step 'second': too many calls" and named.peer == "12D3KooWsecond"
    assert step_error("second", named) is named
