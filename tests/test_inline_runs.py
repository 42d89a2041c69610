"""Tiny model runs go on the event loop once the model has shown it is fast
(p2pnet/runtime/served.py, InlineRuns); slow or large runs, and runs while others wait
for a slot, stay in worker threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from p2pnet import OnnxModel
from p2pnet.runtime.served import (
    INLINE_AFTER_RUNS,
    INLINE_MAX_STRINGS,
    INLINE_SPIKE_FACTOR,
    InlineRuns,
)


def test_inline_after_enough_fast_runs_for_inputs_no_larger_than_theirs() -> None:
    runs = InlineRuns(max_s=0.001)
    for _ in range(INLINE_AFTER_RUNS - 1):
        runs.observe(0.0001, 64)
    assert not runs.allows(64)
    runs.observe(0.0001, 256)
    assert runs.allows(64) and runs.allows(256)
    assert not runs.allows(257)
    # A run stretched by load now and then: still inline.
    runs.observe(0.005, 64)
    assert runs.allows(64)
    # One run over INLINE_SPIKE_FACTOR times the bound: back to worker threads, until it
    # has left the window of runs judged.
    runs.observe(0.001 * INLINE_SPIKE_FACTOR + 0.001, 64)
    assert not runs.allows(64)
    for _ in range(INLINE_AFTER_RUNS - 1):
        runs.observe(0.0001, 64)
    assert not runs.allows(64)
    runs.observe(0.0001, 64)
    assert runs.allows(64) and not runs.allows(256)
    # Slow at the median: worker threads.
    for _ in range(INLINE_AFTER_RUNS // 2 + 1):
        runs.observe(0.002, 64)
    assert not runs.allows(64)
    assert not InlineRuns(max_s=0).allows(0)
    with pytest.raises(ValueError):
        InlineRuns(max_s=-1)


async def test_a_fast_model_runs_on_the_event_loop_unless_a_run_waits(
    models: dict[str, Path],
) -> None:
    model = OnnxModel.load(models["identity"], max_concurrency=1)
    model.inline = InlineRuns(max_s=10.0)  # every run counts as fast, however loaded the machine
    original = model._run_checked
    threads: list[bool] = []
    release = threading.Event()

    def tracked(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        on_loop = threading.current_thread() is threading.main_thread()
        threads.append(on_loop)
        if not on_loop and inputs["x"][0] == -1:
            release.wait(10)
        return original(inputs)

    model._run_checked = tracked  # type: ignore[method-assign]
    small = {"x": np.ones(4, np.float32)}
    for _ in range(INLINE_AFTER_RUNS + 3):
        assert (await model.run(small))["y"].tolist() == [1, 1, 1, 1]
    assert threads[:INLINE_AFTER_RUNS] == [False] * INLINE_AFTER_RUNS
    assert threads[INLINE_AFTER_RUNS:] == [True, True, True]
    # Larger inputs than any measured run: a worker thread.
    await model.run({"x": np.ones(64, np.float32)})
    assert threads[-1] is False
    # The only slot is taken (a larger run, blocked in its thread): the next call waits
    # for it in the queue, and runs in a thread too.
    threads.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(model.run, {"x": np.full(1024, -1, np.float32)})
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(model.run, small)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert threads == [False, False]


async def test_a_fast_string_model_runs_inline_for_strings_no_longer_than_its_runs(
    models: dict[str, Path],
) -> None:
    # A string tensor's run time follows its characters, not its array's bytes (which
    # are pointers): those are what a call is compared with.
    model = OnnxModel.load(models["sentiment"], max_concurrency=1)
    model.inline = InlineRuns(max_s=10.0)  # every run counts as fast
    original = model._run_checked
    on_loop: list[bool] = []

    def tracked(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return original(inputs)

    model._run_checked = tracked  # type: ignore[method-assign]
    seen = np.array(["great product", "terrible service"], dtype=object)
    for _ in range(INLINE_AFTER_RUNS):
        await model.run({"text": seen})
    assert not any(on_loop)
    await model.run({"text": np.array(["fine", "so so", "bad"], dtype=object)})  # 12 chars
    assert on_loop[-1] is True
    await model.run({"text": np.array(["great product" * 3], dtype=object)})  # longer
    assert on_loop[-1] is False
    # Too many strings to count: a worker thread, however short.
    many = np.array([""] * (INLINE_MAX_STRINGS + 1), dtype=object)
    await model.run({"text": many})
    assert on_loop[-1] is False


async def test_calls_run_on_the_event_loop_still_let_other_tasks_run(
    models: dict[str, Path],
) -> None:
    model = OnnxModel.load(models["identity"])
    model.inline = InlineRuns(max_s=10.0)
    x = {"x": np.ones(4, np.float32)}
    for _ in range(INLINE_AFTER_RUNS):
        await model.run(x)
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(3):
            await model.run(x)
            order.append("run")
    assert order.index("other") < len(order) - 1
