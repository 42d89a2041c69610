"""Forwarded pipelines, decided: what a peer on the way does with a ``Forward``.

A ``Forward`` message carries the remaining hops, in dependency order, and the tensors
they still need; a hop's inputs name tensors ``input.<name>`` or ``<step>.<output>``,
so the message carries the pipeline's graph. The peer that receives it runs the first
hop's model on ``hop_inputs(message)``. ``split_forward`` says which later hops need
nothing from that run (the branches: each a ``Forward`` of its own, for its first
hop's providers, sent while the first hop runs); once the run and every branch are
done, ``after_hop`` says what follows: the result, when no hop is left, or the
``Forward`` of the remaining hops (the join and what comes after it), carrying only
the tensors they need, which the peer splits again (``split_forward(...,
here=False)``: every hop whose inputs it now has is a branch) until none is left.
Executing it (running models, sending messages, failing over between providers) is
``p2pnet.invoke.local``'s job; nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pnet.core.messages import Forward, ForwardResult, Hop, TraceEntry
from p2pnet.errors import (
    DeadlineExceededError,
    InvalidInputError,
    P2PNetError,
    RemoteProtocolError,
)

__all__ = ["ForwardSplit", "after_hop", "hop_inputs", "split_forward", "step_error", "with_trace"]


@dataclass(frozen=True, slots=True)
class ForwardSplit:
    """How a peer runs a ``Forward``: its first hop here while each of ``branches`` (a
    ``Forward`` of hops needing nothing from that hop) runs from its own first hop's
    providers; then ``rest``, the hops that need the outputs of both, with
    ``returns``, the tensors the whole message is to give back.

    ``branch_returns[i]``: the tensors branch ``i`` gives back (what ``rest`` and
    ``returns`` need of its outputs).
    """

    branches: tuple[Forward, ...]
    branch_returns: tuple[tuple[str, ...], ...]
    rest: tuple[Hop, ...]
    returns: tuple[str, ...]


def split_forward(message: Forward, *, here: bool = True) -> ForwardSplit:
    """Split ``message`` after its first hop (``here``: the hop this peer runs; without
    it, every hop is sent on): the branches that can start now, and the rest.

    A hop (other than the one run here) whose inputs are all carried by the message
    starts a branch; a hop whose inputs come from one branch's hops (and the carried
    tensors) joins that branch, running after it on the branch's peers; every other
    hop waits for the join. Each branch, and the rest, carries exactly the tensors its hops and the
    results need; every hop's ``keep`` is worked out again from the graph, the last
    hop's ``keep`` of ``message`` being what it returns (a 1.0 sender's keep lists
    give the same results run one after another or split).

    Raises:
        InvalidInputError: a hop takes a tensor the message does not carry and no
            earlier hop produces, or a step appears twice.
    """
    carried = message.tensors
    seen: set[str] = set()
    for hop in message.hops:
        if hop.step in seen:
            raise InvalidInputError(f"step {hop.step!r} appears twice in the request")
        for tensor in hop.inputs.values():
            if tensor not in carried and _producer(tensor) not in seen:
                raise InvalidInputError(
                    f"step {hop.step!r} takes tensor {tensor!r}, which the request does not "
                    "carry and no earlier step produces"
                )
        seen.add(hop.step)
    later = message.hops[1:] if here else message.hops
    returns = message.hops[-1].keep
    groups: list[list[Hop]] = []
    group_of: dict[str, int] = {}
    rest: list[Hop] = []
    for hop in later:
        owners = {group_of.get(_producer(t)) for t in hop.inputs.values() if t not in carried}
        if not owners:
            group_of[hop.step] = len(groups)
            groups.append([hop])
        elif len(owners) == 1 and None not in owners:
            (index,) = owners
            assert index is not None
            group_of[hop.step] = index
            groups[index].append(hop)
        else:
            rest.append(hop)
    needed_after = {t for hop in rest for t in hop.inputs.values()} | set(returns)
    branches: list[Forward] = []
    branch_returns: list[tuple[str, ...]] = []
    for group in groups:
        steps = {hop.step for hop in group}
        gives = tuple(sorted(t for t in needed_after if t not in carried and _producer(t) in steps))
        takes = {t for hop in group for t in hop.inputs.values() if t in carried}
        branches.append(
            Forward(
                message.request_id,
                _chain(group, gives, takes),
                {t: carried[t] for t in sorted(takes)},
                message.deadline_ms,
            )
        )
        branch_returns.append(gives)
    return ForwardSplit(tuple(branches), tuple(branch_returns), tuple(rest), returns)


def hop_inputs(message: Forward) -> dict[str, Any]:
    """The first hop's model inputs (by the model's input names) from the message's tensors.

    Raises:
        InvalidInputError: the message does not carry a tensor the hop takes.
    """
    hop = message.hops[0]
    missing = [t for t in hop.inputs.values() if t not in message.tensors]
    if missing:
        raise InvalidInputError(
            f"step {hop.step!r} takes tensor {missing[0]!r}, which the request does not carry"
        )
    return {name: message.tensors[tensor] for name, tensor in hop.inputs.items()}


def after_hop(
    message: Forward,
    outputs: Mapping[str, Any],
    own: TraceEntry | None,
    *,
    remaining: float,
    split: ForwardSplit | None = None,
    branches: Sequence[ForwardResult] = (),
) -> ForwardResult | Forward:
    """What follows the first hop, which gave ``outputs`` (traced as ``own``; None
    when this peer ran no hop of ``message``, ``split`` being
    ``split_forward(message, here=False)``), and the branches of ``split``
    (``split_forward(message)`` unless given), which gave ``branches``, with
    ``remaining`` seconds of the deadline left: the result, if no hop is left, else a
    ``Forward`` of the remaining hops, carrying only the tensors they and the result
    need (to split again, or to send to the first one's providers). The result's
    trace is this hop's entry, then the branches' in order.

    Raises:
        InvalidInputError: the results name a tensor that no step produced.
        RemoteProtocolError: a branch's reply lacks a tensor it was to give back.
        DeadlineExceededError: hops remain and no time is left for them.
    """
    split = split or split_forward(message, here=own is not None)
    hop = message.hops[0]
    available = dict(message.tensors)
    if own is not None:
        available |= {f"{hop.step}.{k}": v for k, v in outputs.items()}
    for result, gives, branch in zip(branches, split.branch_returns, split.branches, strict=True):
        lacking = [t for t in gives if t not in result.outputs]
        if lacking:
            raise RemoteProtocolError(
                f"step {branch.hops[0].step!r}: the reply lacks tensor {lacking[0]!r}"
            )
        available |= {t: result.outputs[t] for t in gives}
    mine = (own,) if own is not None else ()
    trace = (*mine, *(entry for result in branches for entry in result.trace))
    rest = split.rest
    if not rest:
        unknown = [name for name in split.returns if name not in available]
        if unknown:
            raise InvalidInputError(
                f"step {hop.step!r} is to pass on {unknown[0]!r}, which no earlier step produced"
            )
        return ForwardResult(
            message.request_id, {name: available[name] for name in split.returns}, trace
        )
    rest_steps = {h.step for h in rest}
    takes = sorted(
        {t for h in rest for t in h.inputs.values() if _producer(t) not in rest_steps}
        | {t for t in split.returns if _producer(t) not in rest_steps}
    )
    unknown = [name for name in takes if name not in available]
    if unknown:
        raise InvalidInputError(
            f"step {hop.step!r} is to pass on {unknown[0]!r}, which no earlier step produced"
        )
    remaining_ms = math.ceil(remaining * 1000)
    if remaining_ms <= 0:
        raise DeadlineExceededError(
            f"the deadline passed at step {hop.step!r}, before step {rest[0].step!r}"
        )
    return Forward(
        message.request_id,
        _chain(rest, split.returns, takes),
        {name: available[name] for name in takes},
        remaining_ms,
    )


def with_trace(
    message: Forward,
    own: TraceEntry,
    downstream: ForwardResult,
    branches: Sequence[ForwardResult] = (),
) -> ForwardResult:
    """The reply to ``message``: the later hops' result, with this hop's trace entry
    first, then the branches' (in order), then the later hops'."""
    earlier = (own, *(entry for result in branches for entry in result.trace))
    return ForwardResult(message.request_id, downstream.outputs, (*earlier, *downstream.trace))


def step_error(step: str | Hop, exc: P2PNetError) -> P2PNetError:
    """``exc`` with the step named in its message (once), same class and reporting peer."""
    name = step.step if isinstance(step, Hop) else step
    if exc.message.startswith("step "):
        return exc
    return type(exc)(f"step {name!r}: {exc.message}", peer=exc.peer)


def _producer(tensor: str) -> str:
    """The step whose output ``tensor`` (``<step>.<output>``) is; ``input`` for inputs."""
    return tensor.split(".", 1)[0]


def _chain(hops: Sequence[Hop], returns: Iterable[str], carried: Iterable[str]) -> tuple[Hop, ...]:
    """``hops`` run one after another, each keeping what later hops and ``returns``
    need of the ``carried`` tensors and the outputs produced so far."""
    returns, carried = tuple(returns), set(carried)
    chained: list[Hop] = []
    produced: set[str] = set()
    for i, hop in enumerate(hops):
        produced.add(hop.step)
        if i == len(hops) - 1:
            keep = returns
        else:
            needed = {t for later in hops[i + 1 :] for t in later.inputs.values()} | set(returns)
            keep = tuple(sorted(t for t in needed if t in carried or _producer(t) in produced))
        chained.append(dataclasses.replace(hop, keep=keep))
    return tuple(chained)
