"""Forwarded pipelines, decided: what a peer on the chain does after running its hop.

A ``Forward`` message carries the remaining hops and the tensors they still need. The
peer that receives it runs the first hop's model on ``hop_inputs(message)``, then
``after_hop`` says what happens next: the pipeline's result, when that was the last
hop, or the ``Forward`` message for the next hop's providers. Executing it (running
models, sending messages, failing over between providers) is
``p2pnet.invoke.local``'s job; nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from p2pnet.core.messages import Forward, ForwardResult, Hop, TraceEntry
from p2pnet.errors import DeadlineExceededError, InvalidInputError, P2PNetError

__all__ = ["after_hop", "hop_inputs", "step_error", "with_trace"]


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
    message: Forward, outputs: Mapping[str, Any], own: TraceEntry, *, remaining: float
) -> ForwardResult | Forward:
    """What follows the first hop, which gave ``outputs`` (traced as ``own``) with
    ``remaining`` seconds of the deadline left: the result, if it was the last hop,
    else the message to send to the next hop's providers, carrying only the tensors
    the hop was told to keep.

    Raises:
        InvalidInputError: the hop is to keep a tensor that no earlier step produced.
        DeadlineExceededError: later hops remain and no time is left for them.
    """
    hop, *rest = message.hops
    available = {**message.tensors, **{f"{hop.step}.{k}": v for k, v in outputs.items()}}
    unknown = [name for name in hop.keep if name not in available]
    if unknown:
        raise InvalidInputError(
            f"step {hop.step!r} is to pass on {unknown[0]!r}, which no earlier step produced"
        )
    kept = {name: available[name] for name in hop.keep}
    if not rest:
        return ForwardResult(message.request_id, kept, (own,))
    remaining_ms = math.ceil(remaining * 1000)
    if remaining_ms <= 0:
        raise DeadlineExceededError(
            f"the deadline passed at step {hop.step!r}, before step {rest[0].step!r}"
        )
    return Forward(message.request_id, tuple(rest), kept, remaining_ms)


def with_trace(message: Forward, own: TraceEntry, downstream: ForwardResult) -> ForwardResult:
    """The reply to ``message``: the later hops' result, with this hop's trace entry first."""
    return ForwardResult(message.request_id, downstream.outputs, (own, *downstream.trace))


def step_error(step: str | Hop, exc: P2PNetError) -> P2PNetError:
    """``exc`` with the step named in its message (once), same class and reporting peer."""
    name = step.step if isinstance(step, Hop) else step
    if exc.message.startswith("step "):
        return exc
    return type(exc)(f"step {name!r}: {exc.message}", peer=exc.peer)
