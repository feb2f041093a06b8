"""ThreadExecutor: jobs in a worker thread that a stopping node does not have to wait for.

Real threads and real time (short: batches of 10-20 ms); every wait is bounded.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import trio

from fednode.actions import TrainJob, TrainResult
from fednode.errors import JobCancelled
from fednode.runner import ThreadExecutor, compute
from fednode.testing.slow_task import SlowTask
from fednode.training import cancel_point
from fednode.training.cancel import stoppable
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

    async def main() -> float:
        executor = ThreadExecutor(task, stop_grace_s=5.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, _job(task))
            await trio.sleep(0.2)
            t0 = trio.current_time()
            nursery.cancel_scope.cancel()
        return trio.current_time() - t0

    waited = trio.run(main)
    # the thread has ended (run waited for it): its record is written, it stopped early
    assert len(task.finished) == 1 and task.finished[0]["stopped"] is True
    assert 0 < task.finished[0]["batches"] < 200
    assert waited < 2.0  # one batch (20 ms) plus scheduling, on a busy 2-core machine
    assert task.running == 0


def test_a_job_without_cancel_points_is_waited_for_up_to_the_grace_then_left_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task = _slow(monkeypatch, batches=40, batch_s=0.02, coop=False)  # 0.8 s, cannot stop

    async def main() -> tuple[float, float]:
        executor = ThreadExecutor(task, stop_grace_s=0.1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, _job(task, 1))
            await trio.sleep(0.1)
            t0 = trio.current_time()
            nursery.cancel_scope.cancel()
        cancelled_after = trio.current_time() - t0
        # the next job waits for the left-behind one: the task never runs two at once
        t1 = trio.current_time()
        with trio.fail_after(10):
            await executor.run(_job(task, 2))
        return cancelled_after, trio.current_time() - t1

    with caplog.at_level(logging.WARNING, logger="fednode.runner"):
        cancelled_after, second = trio.run(main)
    assert cancelled_after < 0.6  # the grace (0.1 s), not the job's 0.8 s
    assert "did not stop within 0.1 s" in caplog.text and "round 1" in caplog.text
    assert task.most_at_once == 1
    assert [(r["round"], r["stopped"]) for r in task.finished] == [(1, False), (2, False)]
    assert second >= 0.8  # it also ran its own 40 batches after the first one's rest


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
def test_the_built_in_tasks_stop_at_a_cancel_point(spec: str) -> None:
    task = load_task(spec, client_index=0, num_clients=4, seed=0)
    params = task.init_params(0)
    config = {"round": 1, "local_epochs": 1, "batch_size": 32, "lr": 0.05}
    flag = threading.Event()
    flag.set()
    t0 = time.perf_counter()
    with stoppable(flag), pytest.raises(JobCancelled):
        task.train(params, config)
    assert time.perf_counter() - t0 < 5
    trained, n, _metrics = task.train(params, config)  # without the flag: trains normally
    assert n > 0 and not np.array_equal(trained, params)
