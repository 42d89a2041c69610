"""Admission under load: while a model's slots are full, waiting calls are admitted by
``caller_priority`` (the caller's credit standing), best first, first come among
equals; a model with a free slot serves everyone at once."""

from __future__ import annotations

import threading

import trio
import trio.testing

from p2pnet.runtime.served import RunSlots, caller_priority


async def test_waiting_calls_are_admitted_best_standing_first() -> None:
    slots = RunSlots(max_concurrency=1, max_queue=8)
    release = threading.Event()
    order: list[str] = []

    def hold(name: str) -> str:
        if name == "first":
            release.wait(10)
        order.append(name)
        return name

    async def call(name: str, priority: int) -> None:
        caller_priority.set(priority)  # this task's calls
        await slots.run(hold, name, timeout=10, name="m", model_id="m")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "first", 0)  # takes the only slot, then holds it
        await trio.testing.wait_all_tasks_blocked()
        for name, priority in (("free-rider", -5_000), ("newcomer", 0), ("contributor", 9_000),
                               ("second-newcomer", 0)):  # fmt: skip
            nursery.start_soon(call, name, priority)
            await trio.testing.wait_all_tasks_blocked()  # arrival order as listed
        release.set()
    assert order == ["first", "contributor", "newcomer", "second-newcomer", "free-rider"]


async def test_a_free_slot_serves_anyone_at_once() -> None:
    slots = RunSlots(max_concurrency=2, max_queue=0)
    caller_priority.set(-(10**9))  # the worst standing there is
    assert await slots.run(str.upper, "x", timeout=10, name="m", model_id="m") == "X"


async def test_a_waiting_call_that_gives_up_leaves_its_place() -> None:
    slots = RunSlots(max_concurrency=1, max_queue=8)
    release = threading.Event()
    done: list[str] = []

    def hold(name: str) -> str:
        if name == "first":
            release.wait(10)
        done.append(name)
        return name

    async def call(name: str, priority: int, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        caller_priority.set(priority)
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await slots.run(hold, name, timeout=10, name="m", model_id="m")

    async with trio.open_nursery() as nursery:
        await nursery.start(call, "first", 0)
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(call, "late", 0)
        gave_up = await nursery.start(call, "gave-up", 100)  # best placed...
        await trio.testing.wait_all_tasks_blocked()
        gave_up.cancel()  # ...but it stops waiting
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert done == ["first", "late"]
    assert await slots.wait_idle(5)
