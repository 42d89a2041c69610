"""Calling a model wherever it is served: the ``Invoker`` interface, its local side, and
the execution of forwarded pipelines.

``Invoker`` has two implementations: ``LocalInvoker`` runs the models this peer serves
(no network), ``InvokeClient`` (``client.py``) calls another peer. ``Invokers`` picks
the one for a peer ID. A forwarded pipeline runs its hops where the providers are:
``LocalInvoker.forward`` runs the first hop here while the branches that need nothing
from it (``p2pnet.core.forwarding.split_forward``) run from their providers, then,
join after join, sends on the remaining hops whose inputs it has, as
``p2pnet.core.forwarding`` decides; ``send_forward`` tries a branch's providers in
order, through whichever invoker reaches each.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy.typing as npt
import trio

from p2pnet.core.access import AccessPolicy
from p2pnet.core.address import PeerAddress
from p2pnet.core.forwarding import after_hop, hop_inputs, split_forward, step_error
from p2pnet.core.messages import Forward, ForwardResult, TraceEntry
from p2pnet.core.model_id import parse_model_id
from p2pnet.core.records import CapabilityRecord
from p2pnet.errors import (
    DeadlineExceededError,
    InvalidInputError,
    NetworkError,
    P2PNetError,
    PeerBusyError,
    PermissionDeniedError,
    RemoteProtocolError,
    UnknownModelError,
)
from p2pnet.runtime.generative import GenerativeModel
from p2pnet.runtime.served import ServedModel

__all__ = ["Invoker", "Invokers", "LocalInvoker", "send_forward"]

log = logging.getLogger(__name__)


class Invoker(Protocol):
    """Runs a model on a peer, or a forwarded pipeline starting there."""

    async def invoke(
        self,
        peer: PeerAddress,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        timeout: float = 30.0,
        record: CapabilityRecord | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """The outputs of ``model_id`` on ``inputs``, run by ``peer`` (under ``record``,
        the provider's signed record, when the caller has it)."""
        ...

    async def forward(
        self, peer: PeerAddress, message: Forward, *, timeout: float = 30.0
    ) -> ForwardResult:
        """What the last hop of ``message`` keeps, ``peer`` running the first hop."""
        ...


class LocalInvoker:
    """Runs the models this peer serves, for itself or for a caller.

    Args:
        peer_id: this peer's ID (the caller of its own calls, and its trace entries).
        models: the served models by model ID; the mapping may change while serving.
        access: per-model access lists; None serves every model to everyone.
        onward: reaches other peers, for forwarded pipelines whose next hop is
            elsewhere; None: this peer passes no pipeline on (a forwarded step served
            here still runs when it is the last one).
        max_deadline: cap, in seconds, on the deadline a caller may ask for.
    """

    def __init__(
        self,
        peer_id: str,
        models: Mapping[str, ServedModel],
        *,
        access: AccessPolicy | None = None,
        onward: Invoker | None = None,
        max_deadline: float = 300.0,
    ) -> None:
        self.peer_id = peer_id
        self.models = models
        self.access = access
        self.max_deadline = max_deadline
        self._onward = Invokers(self, onward) if onward is not None else None

    async def invoke(
        self,
        peer: PeerAddress,
        model_id: str,
        inputs: Mapping[str, Any],
        *,
        timeout: float = 30.0,
        caller: str | None = None,
        record: CapabilityRecord | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run ``model_id`` here for ``caller`` (this peer unless given); ``record`` is
        not needed here (a peer's own calls carry no receipt).

        Raises:
            UnknownModelError, InvalidModelIdError: not served here.
            PermissionDeniedError: ``caller`` is not on the model's access list.
            InvalidInputError, ModelExecutionError, DeadlineExceededError,
            PeerBusyError: as ``ServedModel.run``.
        """
        model = self.model(model_id, caller or self.peer_id)
        return await model.run(inputs, timeout=min(timeout, self.max_deadline))

    async def forward(
        self,
        peer: PeerAddress,
        message: Forward,
        *,
        timeout: float = 30.0,
        caller: str | None = None,
    ) -> ForwardResult:
        """Run the first hop of ``message`` here for ``caller`` while its branches (the
        hops needing nothing from it) run from their providers (``send_forward``); after
        that join, and each later one, send on every remaining hop whose inputs are
        here, until none is left; return what the last hop keeps, traced.

        Raises:
            The failing step's error, its message naming the step;
            UnknownModelError when later hops remain and this peer passes nothing on.
        """
        hop = message.hops[0]
        started = trio.current_time()
        deadline = started + min(message.deadline_ms / 1000, timeout, self.max_deadline)
        split = split_forward(message)
        inputs = hop_inputs(message)
        try:
            model = self.model(hop.model_id, caller or self.peer_id)
        except PermissionDeniedError as exc:
            raise PermissionDeniedError(f"step {hop.step!r}: {exc.message}") from None
        onward = self._onward
        if onward is None and (split.branches or split.rest):
            raise UnknownModelError("this peer does not forward pipelines to other peers")
        branches: list[ForwardResult] = []
        if split.branches and onward is not None:
            outputs, ran_until, branches = await _run_with_branches(
                model, hop.step, inputs, deadline, onward, split.branches
            )
        else:
            outputs = await _run_hop(model, hop.step, inputs, deadline)
            ran_until = trio.current_time()
        # The trace tells this hop's run, not the time spent waiting for the branches.
        own = TraceEntry(hop.step, model.model_id, self.peer_id, (ran_until - started) * 1000)
        now = trio.current_time()
        following = after_hop(
            message, outputs, own, remaining=deadline - now, split=split, branches=branches
        )
        # After each join, every remaining hop whose inputs are here is sent on at once
        # (with the hops that read only from it): the pipeline's depth in round trips
        # is that of its graph, not its number of steps.
        trace = [own, *(entry for result in branches for entry in result.trace)]
        while isinstance(following, Forward):
            assert onward is not None  # checked above: there were hops to send on
            level = split_forward(following, here=False)
            _, _, branches = await _run_with_branches(
                None, "", {}, deadline, onward, level.branches
            )
            remaining = deadline - trio.current_time()
            following = after_hop(
                following, {}, None, remaining=remaining, split=level, branches=branches
            )
            trace += [entry for result in branches for entry in result.trace]
        return ForwardResult(message.request_id, following.outputs, tuple(trace))

    def generative(self, model_id: str, caller: str) -> GenerativeModel:
        """The served generative model ``model_id``, if ``caller`` may call it.

        Raises:
            As ``model``; InvalidInputError for a model that does not generate.
        """
        model = self.model(model_id, caller)
        if not isinstance(model, GenerativeModel):
            raise InvalidInputError(
                f"model {model.info.name} ({model.model_id}) does not generate text; "
                "call it with invoke"
            )
        return model

    def model(self, model_id: str, caller: str) -> ServedModel:
        """The served model ``model_id``, if ``caller`` may call it.

        Raises:
            InvalidModelIdError: ``model_id`` is not a model ID.
            UnknownModelError: not served here (the message lists what is, as far as
                ``caller`` may see).
            PermissionDeniedError: ``caller`` is not on the model's access list.
        """
        model = self.models.get(model_id)
        if model is None:
            canonical = parse_model_id(model_id)  # raises InvalidModelIdError for non-IDs
            model = self.models.get(canonical)
        if model is not None:
            if self.access is not None:
                self.access.check(model.model_id, caller, model.info.name)
            return model
        visible = [
            (mid, m)
            for mid, m in self.models.items()
            if self.access is None or self.access.permits(mid, caller)
        ]
        served = ", ".join(f"{m.info.name} {mid}" for mid, m in visible[:5])
        raise UnknownModelError(
            f"this peer does not serve model {canonical}; it serves: {served or 'nothing'}"
        )


async def _run_hop(
    model: ServedModel, step: str, inputs: Mapping[str, Any], deadline: float
) -> dict[str, npt.NDArray[Any]]:
    try:
        return await model.run(inputs, timeout=deadline - trio.current_time())
    except P2PNetError as exc:
        raise type(exc)(f"step {step!r}: {exc.message}") from None


async def _run_with_branches(
    model: ServedModel | None,
    step: str,
    inputs: Mapping[str, Any],
    deadline: float,
    onward: Invokers,
    branches: tuple[Forward, ...],
) -> tuple[dict[str, npt.NDArray[Any]], float, list[ForwardResult]]:
    """Run the hop here (unless ``model`` is None) while each branch runs from its
    providers: the hop's outputs, when its run ended, and the branches' results. The
    first failure (its message naming the step) cancels the others and is raised."""
    outputs: dict[str, npt.NDArray[Any]] = {}
    ran_until: list[float] = []
    results: list[ForwardResult | None] = [None] * len(branches)
    failures: list[P2PNetError] = []

    async def run_here(model: ServedModel, cancel: trio.CancelScope) -> None:
        try:
            outputs.update(await _run_hop(model, step, inputs, deadline))
            ran_until.append(trio.current_time())
        except P2PNetError as exc:
            failures.append(exc)
            cancel.cancel()

    async def run_branch(index: int, cancel: trio.CancelScope) -> None:
        remaining_ms = math.ceil((deadline - trio.current_time()) * 1000)
        branch = dataclasses.replace(branches[index], deadline_ms=max(1, remaining_ms))
        try:
            results[index] = await send_forward(onward, branch)
        except P2PNetError as exc:
            failures.append(step_error(branch.hops[0], exc))
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        for index in range(len(branches)):
            nursery.start_soon(run_branch, index, nursery.cancel_scope)
        if model is not None:
            nursery.start_soon(run_here, model, nursery.cancel_scope)
    if failures:
        raise failures[0]
    ended = ran_until[0] if ran_until else trio.current_time()
    return outputs, ended, [r for r in results if r is not None]


class Invokers:
    """The invoker for each peer: ``local`` for this peer, ``remote`` for the others."""

    def __init__(self, local: LocalInvoker, remote: Invoker) -> None:
        self.local = local
        self.remote = remote

    def to(self, peer_id: str) -> Invoker:
        return self.local if peer_id == self.local.peer_id else self.remote


async def send_forward(invokers: Invokers, message: Forward) -> ForwardResult:
    """Send ``message`` to the first provider of its first hop that answers (this peer
    itself when it is one), moving on after a failure another provider may not share
    (unreachable, connection lost, busy, a reply that breaks the protocol).

    Unlike ``ModelFinder.call_offers``, an attempt is not given a share of the time: the
    reply carries the work of every later hop, so each attempt may need all of it.

    A caller starts a forwarded pipeline with it, and each peer on the chain passes it on.

    Raises:
        The last provider's error, its message naming the step; DeadlineExceededError
        when the deadline passes before any provider answered.
    """
    hop = message.hops[0]
    deadline = trio.current_time() + message.deadline_ms / 1000
    last: P2PNetError | None = None
    for peer_id, addrs in hop.providers:
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            break
        try:
            return await invokers.to(peer_id).forward(
                PeerAddress(peer_id, addrs), message, timeout=remaining
            )
        except (NetworkError, PeerBusyError, RemoteProtocolError) as exc:
            log.info("step %r: provider %s failed, trying the next: %s", hop.step, peer_id, exc)
            last = step_error(hop, exc)
    raise last or DeadlineExceededError(
        f"step {hop.step!r}: the pipeline's deadline passed before it could run"
    )
