"""Dynamic batching of a served model: concurrent calls wait in a queue, the ones that
fit together run as one batch (their inputs concatenated along the first axis), and
each call gets its own rows of the outputs back.

``BatchedModel`` wraps a ``SlottedModel`` (an ONNX or Python model) and is served in
its place. What goes together and when is ``p2pnet.core.batching``'s decision; here the
clock is read, callers wait (trio), and a dispatcher task runs each due batch through
the model's ``RunSlots``, at most ``max_concurrency`` batches at a time: while every
slot is busy, calls keep queueing, so batches grow with the load.

- A call is checked against the schema before it joins the queue: a bad call is
  refused on its own and never spoils a batch.
- A batch whose run fails fails each of its calls with the model's error.
- A caller cancelled (or out of time) while queued leaves the queue; the others stay.
  One cancelled after its batch started lets the batch finish for the others.
- A call is not held past the point where it could still finish before its deadline
  (its batch starts twice the runs' usual length, plus 20 ms, before the nearest
  deadline).
- A call whose inputs differ in their first size (a model with unnamed first
  dimensions allows that) runs alone, as without batching.
- Its record's runtime is marked batched: results depend on which calls share a
  batch (float rounding), so spot checks compare them within a tolerance, never
  bitwise.
- Each call's share of the batch's run time (split by rows) goes to its receipt
  through ``run_share``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt
import trio

from p2pnet.core.batching import (
    Batching,
    QueuedCall,
    batch_rows,
    batched_runtime,
    check_batchable,
    concatenate_rows,
    next_due,
    shape_key,
    split_rows,
    take_batch,
)
from p2pnet.core.model_info import ModelInfo
from p2pnet.core.schema import check_inputs
from p2pnet.errors import (
    DeadlineExceededError,
    InternalPeerError,
    P2PNetError,
    PeerBusyError,
    UsageError,
)
from p2pnet.runtime.served import RunSlots, SlottedModel, caller_priority, run_share

__all__ = ["BatchStats", "BatchedModel", "Batching"]

log = logging.getLogger(__name__)

# Weight of the newest run in the running estimate of a batch's run time.
_RUN_TIME_WEIGHT = 0.2
# A batch starts this long before its nearest deadline, beyond twice the estimated run
# time: its reply must still reach the caller.
_MIN_RESERVE = 0.02


@dataclass
class BatchStats:
    """What a batched model has done: ``batches`` run (a call that ran alone counts as
    one), the ``calls`` and ``rows`` they held, ``largest`` batch in rows, ``failed``
    batches, and ``queued`` calls waiting to join a batch now."""

    batches: int = 0
    calls: int = 0
    rows: int = 0
    largest: int = 0
    failed: int = 0
    queued: int = 0

    @property
    def rows_per_batch(self) -> float:
        return self.rows / self.batches if self.batches else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "batches": self.batches,
            "calls": self.calls,
            "rows": self.rows,
            "largest": self.largest,
            "failed": self.failed,
            "queued": self.queued,
            "rows_per_batch": round(self.rows_per_batch, 3),
        }


@dataclass(eq=False)
class _Pending:
    """One queued call: its checked inputs, and what its batch gave it."""

    inputs: dict[str, npt.NDArray[Any]]
    done: trio.Event = field(default_factory=trio.Event)
    taken: bool = False  # in a batch that started (no longer in the queue)
    outputs: dict[str, npt.NDArray[Any]] | None = None
    error: P2PNetError | None = None
    seconds: float = 0.0  # its share of the batch's run


class BatchedModel:
    """``model`` served with dynamic batching under ``policy`` (a ``ServedModel``).

    Raises:
        UsageError: the model cannot be batched (``check_batchable``: an input or
            output whose first dimension is fixed), or it is not a model run through
            run slots (a generative model streams token by token and is not batched).
    """

    def __init__(self, model: SlottedModel, policy: Batching) -> None:
        if not isinstance(model, SlottedModel):
            raise UsageError(
                f"model {model.info.name} cannot be batched: only ONNX and adapter models "
                "are (a generative model streams its tokens call by call)"
            )
        check_batchable(model.info.schema, model.info.name)
        self.model = model
        # Its record says so: its results depend on which calls share a batch.
        self._info = dataclasses.replace(model.info, runtime=batched_runtime(model.info.runtime))
        self.policy = policy
        self.stats = BatchStats()
        self._queue: list[QueuedCall[_Pending]] = []
        self._arrivals = itertools.count()
        self._changed = trio.lowlevel.ParkingLot()
        self._running = 0
        self._dispatching = False
        self._run_time = 0.0  # a batch run's expected seconds (a running estimate)

    @property
    def info(self) -> ModelInfo:
        """The wrapped model's, its runtime marked batched ("onnxruntime/1.32.0 batched")."""
        return self._info

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def slots(self) -> RunSlots:
        """The wrapped model's run slots (where the batches run)."""
        return self.model.slots

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = math.inf
    ) -> dict[str, npt.NDArray[Any]]:
        """Check ``inputs``, wait for a batch to take them, and return this call's rows
        of the batch's outputs, within ``timeout`` seconds (queueing included).

        Raises:
            InvalidInputError: inputs that do not match the schema (refused at once).
            ModelExecutionError: the batch's run failed (every call in it gets it).
            DeadlineExceededError: no result within ``timeout``.
            PeerBusyError: ``max_queue`` calls are already waiting for a batch.
        """
        checked = check_inputs(self.info.schema, inputs)
        rows = batch_rows(checked)
        if rows is None:  # inputs of different first sizes (unnamed first dimensions)
            return await self.model.run(checked, timeout=timeout)
        now = trio.current_time()
        if len(self._queue) >= self.policy.max_queue:
            raise PeerBusyError(
                f"model {self.info.name} has {len(self._queue)} calls waiting for a batch, "
                "its limit; retry later or call another peer serving it"
            )
        pending = _Pending(checked)
        call = QueuedCall(
            pending,
            rows,
            shape_key(checked),
            now,
            now + timeout,
            caller_priority.get(),
            next(self._arrivals),
        )
        self._queue.append(call)
        self.stats.queued = len(self._queue)
        self._changed.unpark_all()
        self._start_dispatcher()
        try:
            with trio.move_on_at(call.deadline):
                await pending.done.wait()
        finally:
            if not pending.taken:  # cancelled or out of time while queued
                self._queue.remove(call)
                self.stats.queued = len(self._queue)
                self._changed.unpark_all()
        if not pending.done.is_set():
            raise DeadlineExceededError(
                f"model {self.info.name} ({self.model_id}) did not finish within "
                f"{timeout * 1000:.0f} ms (waiting for a batch included)"
            )
        if pending.error is not None:
            raise pending.error
        assert pending.outputs is not None
        share = run_share.get()
        if share is not None:  # added up: a forwarded pipeline may run several hops here
            share.seconds = (share.seconds or 0.0) + pending.seconds
        return pending.outputs

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is queued and no run is in progress (abandoned ones
        included); False on timeout."""
        with trio.move_on_after(timeout) as scope:
            while self._queue or self._running:
                await self._changed.park()
            return await self.model.wait_idle(max(0.0, scope.deadline - trio.current_time()))
        return False

    @property
    def _reserve(self) -> float:
        """Seconds before a call's deadline its batch must start."""
        return 2 * self._run_time + _MIN_RESERVE

    def _start_dispatcher(self) -> None:
        if not self._dispatching:
            self._dispatching = True
            # A task of the trio run, not of a caller: a caller that goes away must not
            # take the batch it is in (and the others' results) with it.
            trio.lowlevel.spawn_system_task(self._dispatch, name=f"batcher {self.model_id}")

    async def _dispatch(self) -> None:
        """Start each batch as it falls due while a run slot is free; return once
        nothing is queued or running."""
        try:
            async with trio.open_nursery() as nursery:
                while self._queue or self._running:
                    due = math.inf
                    if self._running < self.slots.max_concurrency and self._queue:
                        now = trio.current_time()
                        batch = take_batch(self._queue, now, self.policy, self._reserve)
                        if batch is not None:
                            for call in batch:
                                call.item.taken = True
                                self._queue.remove(call)
                            self.stats.queued = len(self._queue)
                            self._running += 1
                            nursery.start_soon(self._run_batch, batch)
                            continue
                        due = next_due(self._queue, self.policy, self._reserve)
                    with trio.move_on_at(due):
                        await self._changed.park()
        finally:
            self._dispatching = False
        if self._queue:  # queued while the last batch was ending
            self._start_dispatcher()

    async def _run_batch(self, batch: list[QueuedCall[_Pending]]) -> None:
        """Run ``batch`` once and hand each call its rows (or the run's error)."""
        rows = [call.rows for call in batch]
        total = sum(rows)
        try:
            inputs = concatenate_rows([call.item.inputs for call in batch])
            timeout = max(0.0, max(call.deadline for call in batch) - trio.current_time())
            outputs, seconds = await self.slots.run(
                self._timed_run, inputs, timeout=timeout, name=self.info.name,
                model_id=self.model_id,
            )  # fmt: skip
            parts = split_rows(outputs, rows, self.info.name)
        except P2PNetError as exc:
            self.stats.failed += 1
            for call in batch:  # an exception of its own each: each is raised in its task
                call.item.error = type(exc)(exc.message)
        except Exception as exc:
            log.exception("a batch of model %s hit a bug", self.info.name)
            self.stats.failed += 1
            for call in batch:
                call.item.error = InternalPeerError(f"internal error: {exc!r}")
        else:
            self._run_time += _RUN_TIME_WEIGHT * (seconds - self._run_time)
            for call, part in zip(batch, parts, strict=True):
                call.item.outputs = part
                call.item.seconds = seconds * call.rows / total if total else 0.0
        finally:
            self.stats.batches += 1
            self.stats.calls += len(batch)
            self.stats.rows += total
            self.stats.largest = max(self.stats.largest, total)
            self._running -= 1
            for call in batch:
                call.item.done.set()
            self._changed.unpark_all()

    def _timed_run(
        self, inputs: dict[str, npt.NDArray[Any]]
    ) -> tuple[dict[str, npt.NDArray[Any]], float]:
        """The wrapped model's run on checked ``inputs`` (in a worker thread), and its
        seconds."""
        started = time.perf_counter()
        outputs = self.model._run_checked(inputs)
        return outputs, time.perf_counter() - started
