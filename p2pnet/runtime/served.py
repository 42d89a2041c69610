"""What every served model is, whatever runs it: the ``ServedModel`` interface that the
invoke server and ``Peer`` use; ``RunSlots``, the worker-thread runner with concurrency,
queue and deadline limits; and ``SlottedModel``, the shell around them (checked inputs,
runs in ``RunSlots``) that ONNX and Python models share.

Tiny runs on the event loop: handing a run to a worker thread and back costs ~0.1 ms
on an idle machine and more under load (the GIL changes hands twice), while iris or
digits run in ~0.015 ms. ``InlineRuns`` decides, from the model's own measured runs,
when a run is cheaper done where the call is: after ``INLINE_AFTER_RUNS`` runs in a
row with a median under ``inline_max_s`` (and none ten times over it), calls whose
inputs are no larger than those runs' (bytes of numbers, characters of strings) run
inline while a slot is free and nobody waits for one; runs that turn slow send the
model back to worker threads until it has shown again that it is fast.

Admission under load: while a model's runs fill its slots, the calls waiting for one
are admitted best ``caller_priority`` first (the caller's standing in this peer's
credit, set by the invoke server), first come first among equals; a model with a free
slot serves everyone at once. This is GNUnet's excess-based economy: serve everyone
while idle, and under load the most respected first.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import heapq
import itertools
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy.typing as npt
import trio

from p2pnet.core.schema import check_inputs
from p2pnet.errors import DeadlineExceededError, PeerBusyError

if TYPE_CHECKING:
    from p2pnet.core.model_info import ModelInfo

__all__ = [
    "DEFAULT_INLINE_MAX_S",
    "INLINE_AFTER_RUNS",
    "INLINE_MAX_STRINGS",
    "INLINE_SPIKE_FACTOR",
    "InlineRuns",
    "PriorityLimiter",
    "RunShare",
    "RunSlots",
    "ServedModel",
    "SlottedModel",
    "caller_priority",
    "run_share",
    "threads_per_run",
    "usable_cpus",
]

caller_priority: contextvars.ContextVar[int] = contextvars.ContextVar("caller_priority", default=0)
"""The priority of the calls the current task makes (higher is admitted first under
load): the invoke server sets it to the caller's credit standing for each call."""


@dataclass
class RunShare:
    """The seconds of model run one call accounts for, when its models tell: a batched
    model adds its share of the batch's run (split by rows); None: no model told, and
    the call's own time is used."""

    seconds: float | None = None


run_share: contextvars.ContextVar[RunShare | None] = contextvars.ContextVar(
    "run_share", default=None
)
"""Where the current task's call learns its share of a run (the invoke server sets a
fresh ``RunShare`` per call, for its receipt; a batched model fills it)."""

_A = TypeVar("_A")
_R = TypeVar("_R")

# Runs of at most this long may run on the event loop (seconds): below what a
# worker-thread hop costs, so that the loop is blocked no longer than the hop would take.
DEFAULT_INLINE_MAX_S = 0.0002
# Runs a model is judged on (the last ones) before its runs may go inline.
INLINE_AFTER_RUNS = 16
# No run of those may take longer than this many times the bound.
INLINE_SPIKE_FACTOR = 10
# A string tensor of more elements never runs inline (its size is counted element by
# element, in Python).
INLINE_MAX_STRINGS = 1024


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_run(max_concurrency: int, cpus: int) -> int:
    """Threads each run of a model may use when none are asked for: the ``cpus`` shared
    among the model's ``max_concurrency`` runs, at least one each. Runs at once then
    never ask for more threads than there are CPUs, which on two cores made every run of
    the customer-service models cheaper and no slower (docs/models.md, "Threads")."""
    return max(1, cpus // max(1, max_concurrency))


class InlineRuns:
    """Whether a model's next run may run on the event loop, from its measured runs.

    ``observe`` is told every run's duration (wall seconds) and input size; ``allows``
    says yes once the last ``INLINE_AFTER_RUNS`` runs took at most ``max_s`` seconds at
    the median and none over ``INLINE_SPIKE_FACTOR`` times that (a run stretched by the
    machine's load now and then does not send the model back to worker threads; a
    model that is slow sometimes does), for inputs no larger than the largest of those
    runs'. ``max_s`` 0 never allows.
    """

    def __init__(self, max_s: float = DEFAULT_INLINE_MAX_S) -> None:
        if not max_s >= 0:
            raise ValueError(f"inline max_s must be >= 0, got {max_s!r}")
        self.max_s = max_s
        self._runs: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=INLINE_AFTER_RUNS
        )
        self._largest_input = -1  # -1: not allowed

    def allows(self, input_bytes: int) -> bool:
        return input_bytes <= self._largest_input

    def observe(self, seconds: float, input_bytes: int) -> None:
        runs = self._runs
        runs.append((seconds, input_bytes))
        if len(runs) < INLINE_AFTER_RUNS or self.max_s <= 0:
            return
        durations = sorted(d for d, _ in runs)
        fast = (
            durations[len(durations) // 2] <= self.max_s
            and durations[-1] <= INLINE_SPIKE_FACTOR * self.max_s
        )
        self._largest_input = max(size for _, size in runs) if fast else -1


class ServedModel(Protocol):
    """A model a peer can serve: ``OnnxModel`` (onnxruntime) or ``CallableModel`` (Python)."""

    @property
    def info(self) -> ModelInfo:
        """ID, name, version, runtime and I/O schema: what the capability record says."""
        ...

    @property
    def model_id(self) -> str: ...

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = math.inf
    ) -> dict[str, npt.NDArray[Any]]:
        """Check ``inputs`` against the schema and run within ``timeout`` seconds.

        Raises:
            InvalidInputError, ModelExecutionError, DeadlineExceededError, PeerBusyError.
        """
        ...

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is in progress (abandoned ones included); False on timeout."""
        ...


@dataclass(order=True)
class _Waiter:
    """A borrower waiting for a slot; ordered by (-priority, arrival)."""

    rank: int
    arrival: int
    borrower: object = field(compare=False)
    admitted: trio.Event = field(default_factory=trio.Event, compare=False)
    state: str = field(default="waiting", compare=False)  # "granted" or "gone" later


class PriorityLimiter:
    """A ``trio.CapacityLimiter`` for ``trio.to_thread.run_sync`` (its borrowing
    methods) that admits the waiting borrowers by ``caller_priority``, highest first,
    then in arrival order, instead of in arrival order alone."""

    def __init__(self, total_tokens: int) -> None:
        self.total_tokens = total_tokens
        self._borrowers: set[object] = set()
        self._waiting: list[_Waiter] = []  # a heap: the best-placed first
        self._arrivals = itertools.count()

    @property
    def borrowed_tokens(self) -> int:
        return len(self._borrowers)

    @property
    def waiting(self) -> int:
        """Borrowers waiting for a slot now."""
        return sum(1 for waiter in self._waiting if waiter.state == "waiting")

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        """Take a slot for ``borrower``, waiting behind better-placed borrowers."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if len(self._borrowers) < self.total_tokens and not self._waiting:
            self._borrowers.add(borrower)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = _Waiter(-caller_priority.get(), next(self._arrivals), borrower)
        heapq.heappush(self._waiting, waiter)
        try:
            await waiter.admitted.wait()
        except BaseException:
            if waiter.state == "granted":  # admitted as it was cancelled: hand the slot on
                self.release_on_behalf_of(borrower)
            else:
                waiter.state = "gone"
            raise

    def take_free_slot(self, borrower: object) -> None:
        """Take a slot for ``borrower`` now; the caller checked that one is free and that
        nobody waits."""
        assert len(self._borrowers) < self.total_tokens and not self.waiting
        self._borrowers.add(borrower)

    def release_on_behalf_of(self, borrower: object) -> None:
        """Give ``borrower``'s slot to the best-placed waiting borrower, if any."""
        self._borrowers.remove(borrower)
        while self._waiting and len(self._borrowers) < self.total_tokens:
            waiter = heapq.heappop(self._waiting)
            if waiter.state == "gone":
                continue
            waiter.state = "granted"
            self._borrowers.add(waiter.borrower)
            waiter.admitted.set()


class RunSlots:
    """Runs calls in worker threads: at most ``max_concurrency`` at a time and at most
    ``max_queue`` more waiting for a slot; callers beyond that are refused as busy.
    """

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self._limiter = PriorityLimiter(max_concurrency)
        self._max_in_flight = max_concurrency + max_queue
        self._in_flight = 0

    @property
    def max_concurrency(self) -> int:
        """Runs at most at a time."""
        return self._limiter.total_tokens

    @property
    def running(self) -> int:
        """Runs holding a slot now (abandoned ones still in their thread included)."""
        return self._limiter.borrowed_tokens

    @property
    def waiting(self) -> int:
        """Calls waiting for a free slot now (the queue's depth)."""
        return self._limiter.waiting

    async def run(
        self,
        fn: Callable[[_A], _R],
        arg: _A,
        *,
        timeout: float,
        name: str,
        model_id: str,
        inline: bool = False,
    ) -> _R:
        """``fn(arg)`` in a worker thread within ``timeout`` seconds.

        The time spent waiting for a free slot counts toward the timeout. A run that
        overruns is abandoned: its thread finishes in the background and keeps its slot
        until then, so the concurrency limit holds. ``name`` and ``model_id`` name the
        model in error messages. ``inline``: the caller knows the run takes
        microseconds; it runs on the event loop, holding a slot, if one is free and
        nobody waits for one (else in a worker thread, as any run).

        Raises:
            DeadlineExceededError: no result within ``timeout``.
            PeerBusyError: ``max_queue`` calls are already waiting.
            Whatever ``fn`` raises.
        """
        if self._in_flight >= self._max_in_flight:
            raise PeerBusyError(
                f"model {name} has {self._in_flight} calls running or queued, its "
                "limit; retry later or call another peer serving it"
            )
        limiter = self._limiter
        if inline and timeout > 0 and limiter.borrowed_tokens < limiter.total_tokens:
            if not limiter.waiting:
                # A checkpoint like any trio operation that completes: cancellable
                # before the run, and other tasks get their turn after it (a caller
                # running a model in a loop must not keep the event loop to itself).
                await trio.lowlevel.checkpoint_if_cancelled()
                result = self._run_inline(fn, arg)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return result
        self._in_flight += 1
        try:
            with trio.move_on_after(timeout) as scope:
                # (trio-typing's stubs, pulled in by py-libp2p, predate abandon_on_cancel,
                # and name CapacityLimiter where trio takes anything with its borrowing
                # methods, as PriorityLimiter has)
                return await trio.to_thread.run_sync(  # type: ignore[call-arg]
                    fn,
                    arg,
                    abandon_on_cancel=True,
                    limiter=self._limiter,  # type: ignore[arg-type]
                )
        finally:
            self._in_flight -= 1
        assert scope.cancelled_caught
        raise DeadlineExceededError(
            f"model {name} ({model_id}) did not finish within "
            f"{timeout * 1000:.0f} ms (waiting for a free slot included)"
        )

    def _run_inline(self, fn: Callable[[_A], _R], arg: _A) -> _R:
        borrower = object()
        self._limiter.take_free_slot(borrower)
        try:
            return fn(arg)
        finally:
            self._limiter.release_on_behalf_of(borrower)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is in progress (abandoned ones included); False on timeout."""
        tokens = [object() for _ in range(self._limiter.total_tokens)]
        acquired = []
        with trio.move_on_after(timeout):
            for token in tokens:
                await self._limiter.acquire_on_behalf_of(token)
                acquired.append(token)
        for token in acquired:
            self._limiter.release_on_behalf_of(token)
        return len(acquired) == len(tokens)


class SlottedModel(ABC):
    """A loaded model served through ``RunSlots``: inputs checked against ``info.schema``,
    then at most ``max_concurrency`` runs at a time in worker threads and at most
    ``max_queue`` more waiting for a slot; callers beyond that are refused.

    Subclasses load the model and provide ``_run_checked``, the run on checked inputs,
    which raises ``ModelExecutionError`` when the model fails on them.
    """

    def __init__(
        self,
        info: ModelInfo,
        *,
        max_concurrency: int,
        max_queue: int,
        inline_max_s: float = DEFAULT_INLINE_MAX_S,
    ) -> None:
        self.info = info
        self._slots = RunSlots(max_concurrency, max_queue)
        self.inline = InlineRuns(inline_max_s)

    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def slots(self) -> RunSlots:
        """Where its runs wait and run (their number now: ``running``, ``waiting``)."""
        return self._slots

    @abstractmethod
    def _run_checked(self, inputs: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Run the model on inputs that passed ``check_inputs``, in the calling thread."""

    def run_sync(self, inputs: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
        """Check inputs and run the model in the calling thread.

        Raises:
            InvalidInputError: inputs that do not match the schema.
            ModelExecutionError: the model failed on them (the subclass says how).
        """
        return self._run_checked(check_inputs(self.info.schema, inputs))

    async def run(
        self, inputs: Mapping[str, Any], *, timeout: float = math.inf
    ) -> dict[str, npt.NDArray[Any]]:
        """Check inputs, then run the model in a worker thread within ``timeout`` seconds.

        The time spent waiting for a free slot counts toward the timeout. A run that
        overruns is abandoned (a Python thread cannot be stopped): its thread finishes
        in the background and keeps its slot until then, so the concurrency limit holds.

        Raises:
            InvalidInputError: inputs that do not match the schema.
            ModelExecutionError: the model failed on them (the subclass says how).
            DeadlineExceededError: no result within ``timeout``.
            PeerBusyError: ``max_queue`` calls are already waiting.
        """
        checked = check_inputs(self.info.schema, inputs)
        size = _input_size(checked)
        return await self._slots.run(
            functools.partial(self._run_timed, size),
            checked,
            timeout=timeout,
            name=self.info.name,
            model_id=self.model_id,
            inline=size >= 0 and self.inline.allows(size),
        )

    def _run_timed(
        self, input_bytes: int, inputs: dict[str, npt.NDArray[Any]]
    ) -> dict[str, npt.NDArray[Any]]:
        """``_run_checked``, its duration told to ``inline`` (in whatever thread it runs)."""
        started = time.perf_counter()
        outputs = self._run_checked(inputs)
        if input_bytes >= 0:
            self.inline.observe(time.perf_counter() - started, input_bytes)
        return outputs

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is in progress (abandoned ones included); False on timeout."""
        return await self._slots.wait_idle(timeout)


def _input_size(inputs: Mapping[str, npt.NDArray[Any]]) -> int:
    """What ``inputs`` weigh for ``InlineRuns``: the bytes of numeric tensors plus the
    characters of string tensors (an object array's own bytes are its pointers, which
    bound nothing). -1, never inline, with a string tensor of more than
    ``INLINE_MAX_STRINGS`` elements, whose counting would cost more than a hop saves."""
    total = 0
    for arr in inputs.values():
        if arr.dtype.kind == "O":
            if arr.size > INLINE_MAX_STRINGS:
                return -1
            total += sum(len(item) for item in arr.flat)
        else:
            total += arr.nbytes
    return total
