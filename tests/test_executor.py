"""ThreadExecutor: jobs in a worker thread that a stopping node does not have to wait for.

Real threads (short batches of 10-20 ms); every wait is bounded and waits for a positive
signal (the job started, a cancel point saw the stop flag); no assertion on elapsed time.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import pytest
import trio

from fednode.actions import TrainJob, TrainResult
from fednode.errors import JobCancelled
from fednode.runner import ThreadExecutor, compute
from fednode.testing import slow_task
from fednode.testing.slow_task import SlowTask
from fednode.training import cancel_point, digits, linear
from fednode.training.cancel import _STOP, stoppable
from fednode.training.task import load_task


def _slow(monkeypatch: pytest.MonkeyPatch, *, batches: int, batch_s: float, coop: bool) -> SlowTask:
    monkeypatch.setenv("FEDNODE_SLOW_BATCHES", str(batches))
    monkeypatch.setenv("FEDNODE_SLOW_BATCH_S", str(batch_s))
    monkeypatch.setenv("FEDNODE_SLOW_COOPERATIVE", "1" if coop else "0")
    return SlowTask()


def _job(task: SlowTask, rnd: int = 1) -> TrainJob:
    return TrainJob(rnd, task.init_params(0), {"round": rnd})


def test_a_job_that_is_not_cancelled_returns_what_compute_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = _slow(monkeypatch, batches=3, batch_s=0.01, coop=True)

    async def main() -> TrainResult:
        result = await ThreadExecutor(task).run(_job(task))
        assert isinstance(result, TrainResult)
        return result

    result = trio.run(main)
    direct = compute(task, _job(task))
    assert isinstance(direct, TrainResult)
    np.testing.assert_array_equal(result.params, direct.params)
    assert result.num_examples == direct.num_examples == 10
    assert [r["stopped"] for r in task.finished] == [False, False]


def test_cancelling_a_job_stops_it_at_its_next_cancel_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = _slow(monkeypatch, batches=1000, batch_s=0.02, coop=True)  # 20 s if not stopped
    # per cancel_point call: (stop flag already set when it was called, it raised)
    calls: list[tuple[bool, bool]] = []
    started = trio.Event()

    def spied_cancel_point() -> None:
        flag = _STOP.get()
        set_before = flag is not None and flag.is_set()
        if len(calls) == 1:  # one batch done: the job is under way
            trio.from_thread.run_sync(started.set)
        try:
            cancel_point()
        except JobCancelled:
            calls.append((set_before, True))
            raise
        calls.append((set_before, False))

    monkeypatch.setattr(slow_task, "cancel_point", spied_cancel_point)

    async def main() -> None:
        executor = ThreadExecutor(task, stop_grace_s=5.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, _job(task))
            with trio.fail_after(10):
                await started.wait()
            nursery.cancel_scope.cancel()

    trio.run(main)
    # run waited for the thread: its record is written. The last cancel point raised; no
    # earlier one was called with the flag set (none let the job go on after the stop),
    # and each earlier one was followed by one batch.
    assert len(task.finished) == 1 and task.finished[0]["stopped"] is True
    assert calls[-1][1] is True and not any(raised for _, raised in calls[:-1])
    assert not any(set_before for set_before, _ in calls[:-1])
    assert task.finished[0]["batches"] == len(calls) - 1 >= 1
    assert task.running == 0


def test_a_job_without_cancel_points_is_waited_for_up_to_the_grace_then_left_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task = _slow(monkeypatch, batches=3, batch_s=0.01, coop=False)  # cannot stop
    release = threading.Event()  # holds the first job until the test lets it go
    started = trio.Event()
    train = task.train

    def held_train(params: Any, config: Any) -> Any:
        if config["round"] == 1:
            trio.from_thread.run_sync(started.set)
            assert release.wait(timeout=30), "the test never released the first job"
        return train(params, config)

    monkeypatch.setattr(task, "train", held_train)

    async def main() -> list[dict[str, Any]]:
        executor = ThreadExecutor(task, stop_grace_s=0.1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, _job(task, 1))
            with trio.fail_after(10):
                await started.wait()
            nursery.cancel_scope.cancel()
        finished_when_cancelled = list(task.finished)  # the held job is still running
        release.set()
        # the next job waits for the left-behind one: the task never runs two at once
        with trio.fail_after(10):
            await executor.run(_job(task, 2))
        return finished_when_cancelled

    with caplog.at_level(logging.WARNING, logger="fednode.runner"):
        finished_when_cancelled = trio.run(main)
    assert finished_when_cancelled == []  # cancelling returned after the grace, not the job
    assert "did not stop within 0.1 s" in caplog.text and "round 1" in caplog.text
    assert task.most_at_once == 1
    assert [(r["round"], r["stopped"]) for r in task.finished] == [(1, False), (2, False)]


def test_cancel_point_is_a_no_op_outside_a_job_and_raises_once_the_stop_flag_is_set() -> None:
    cancel_point()  # not inside an executor's job: nothing happens
    flag = threading.Event()
    with stoppable(flag):
        cancel_point()
        flag.set()
        with pytest.raises(JobCancelled):
            cancel_point()
    cancel_point()  # the flag belonged to that job only


@pytest.mark.parametrize("spec", ["digits", "digits:numpy"])
def test_the_built_in_tasks_stop_at_a_cancel_point(
    spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = load_task(spec, client_index=0, num_clients=4, seed=0)
    params = task.init_params(0)
    config = {"round": 1, "local_epochs": 1, "batch_size": 32, "lr": 0.05}
    calls: list[None] = []

    def counted_cancel_point() -> None:
        calls.append(None)
        cancel_point()

    for module in (digits, linear):
        monkeypatch.setattr(module, "cancel_point", counted_cancel_point)
    flag = threading.Event()
    flag.set()
    with stoppable(flag), pytest.raises(JobCancelled):
        task.train(params, config)
    assert len(calls) == 1  # it stopped at its first cancel point, before any batch
    trained, n, _metrics = task.train(params, config)  # without the flag: trains normally
    assert n > 0 and not np.array_equal(trained, params)
