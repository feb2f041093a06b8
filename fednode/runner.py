"""The trio driver of :class:`~fednode.loop.NodeLoop`, and the executors that run jobs.

:func:`run_role` carries out what the loop asks over a real :class:`Transport` (libp2p
sockets, or the memory transport in the trio simulator) in trio time: frames from the
transport's channel, peer events and finished jobs go to the loop from the task that
received them (trio runs one task at a time, so the role sees one input at a time); the
main task sleeps until the role's next deadline. A frame the loop sealed is handed to the
transport without a task when the transport can take it without waiting
(:meth:`Transport.send_nowait`: the memory transport), else a task sends it under
``send_timeout_s``; a send that fails or times out is reported back to the loop. What to
do with each input — open, hand to the role, poll, emit, seal, refuse, reject — is the
loop's (:mod:`fednode.loop`), shared with the discrete-event simulator.

Cancellation: cancelling :func:`run_role` cancels in-flight sends and jobs; nothing is
left behind (every task lives in the driver's nursery). A job running in a worker thread
stops at its task's next :func:`~fednode.training.cancel_point` (:class:`ThreadExecutor`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from .actions import EvalJob, EvalResult, Stop, TrainJob, TrainResult
from .errors import LocalProtocolError, PeerGone, TransportError
from .loop import NodeLoop
from .p2p.transport import Transport
from .training.cancel import stoppable
from .training.task import Task
from .wire.frames import Frame

__all__ = [
    "Executor",
    "InlineExecutor",
    "ThreadExecutor",
    "compute",
    "run_role",
]

log = logging.getLogger(__name__)


class Executor(Protocol):
    async def run(self, job: TrainJob | EvalJob) -> TrainResult | EvalResult: ...


def compute(task: Task, job: TrainJob | EvalJob) -> TrainResult | EvalResult:
    """Run one job on ``task`` synchronously."""
    if isinstance(job, TrainJob):
        params, n, metrics = task.train(job.params, job.config)
        return TrainResult(job.round, params, n, metrics)
    loss, n, metrics = task.evaluate(job.params)
    return EvalResult(job.round, loss, n, metrics)


class ThreadExecutor:
    """Real nodes: CPU work runs in a worker thread so the node stays responsive.

    Cancelling :meth:`run` (the node stopping) sets the job's stop flag: the job's next
    :func:`~fednode.training.cancel_point` raises and the thread ends; ``run`` waits for
    that, shielded, up to ``stop_grace_s``. A job that does not stop by then (its task
    never calls ``cancel_point``) is left to finish in its thread, with a warning; the
    next job on this executor waits for it, so the task's model never has two jobs.
    """

    def __init__(self, task: Task, *, stop_grace_s: float = 5.0) -> None:
        self.task = task
        self.stop_grace_s = stop_grace_s
        self._lock = trio.Lock()  # one model per task object: one job at a time
        self._abandoned: trio.Event | None = None  # set when a left-behind job ends

    async def run(self, job: TrainJob | EvalJob) -> TrainResult | EvalResult:
        async with self._lock:
            if self._abandoned is not None:
                await self._abandoned.wait()
                self._abandoned = None
            stop, ended = threading.Event(), trio.Event()
            trio_token = trio.lowlevel.current_trio_token()

            def work() -> TrainResult | EvalResult:
                try:
                    with stoppable(stop):
                        return compute(self.task, job)
                finally:
                    with contextlib.suppress(trio.RunFinishedError):
                        trio_token.run_sync_soon(ended.set)

            try:
                return await trio.to_thread.run_sync(work, abandon_on_cancel=True)  # type: ignore[call-arg]
            except trio.Cancelled:
                stop.set()
                with trio.move_on_after(self.stop_grace_s) as grace:
                    grace.shield = True
                    await ended.wait()
                if not ended.is_set():
                    self._abandoned = ended
                    log.warning(
                        "%s job of round %d did not stop within %.1f s (its task never calls "
                        "fednode.training.cancel_point); leaving it to finish in its thread",
                        "training" if isinstance(job, TrainJob) else "evaluation",
                        job.round,
                        self.stop_grace_s,
                    )
                raise


@dataclass
class InlineExecutor:
    """Simulation: compute inline, then charge a modelled duration of virtual time.

    Train time = ``train_cost_s`` x work (local epochs) x examples/100 x ``slowdown``;
    deterministic, so the same seed gives the same schedule and the same results.
    ``wall_compute_s`` / ``cpu_compute_s`` add up the wall-clock and thread CPU time spent
    computing (benchmarks subtract them to get the framework's own cost).
    """

    task: Task
    train_cost_s: float = 0.1
    eval_cost_s: float = 0.0
    slowdown: float = 1.0
    wall_compute_s: float = field(default=0.0, init=False)
    cpu_compute_s: float = field(default=0.0, init=False)

    def timed(self, job: TrainJob | EvalJob) -> TrainResult | EvalResult:
        """Run ``job`` now, adding its wall and thread CPU time to the counters (the
        discrete-event driver, which charges virtual time itself, calls this too)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        result = compute(self.task, job)
        self.cpu_compute_s += time.thread_time() - c0
        self.wall_compute_s += time.perf_counter() - t0
        return result

    async def run(self, job: TrainJob | EvalJob) -> TrainResult | EvalResult:
        result = self.timed(job)
        if isinstance(job, TrainJob):
            assert isinstance(result, TrainResult)
            charge = self.train_cost_s * job.work * result.num_examples / 100 * self.slowdown
        else:
            charge = self.eval_cost_s
        if charge > 0:
            await trio.sleep(charge)
        return result


async def run_role(
    loop: NodeLoop,
    transport: Transport,
    executor: Executor,
    *,
    send_timeout_s: float = 60.0,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> Stop:
    """Drive ``loop`` over ``transport`` and ``executor`` until its role stops; returns the
    :class:`Stop` action."""
    in_flight = 0  # sends running as tasks
    drained: trio.Event | None = None
    wakeup: trio.CancelScope | None = None  # the main task's wait for the next deadline
    nursery: trio.Nursery

    class TrioPort:
        __slots__ = ()

        def transmit(self, to: str, frame: Frame, addrs: tuple[str, ...], kind: str) -> None:
            nonlocal in_flight
            try:
                if transport.send_nowait(to, frame):
                    loop.sent(frame.nbytes)
                    return
            except LocalProtocolError as exc:
                loop.refused(to, kind, exc)
                return
            except (PeerGone, TransportError) as exc:
                loop.send_failed(to, kind, exc, trio.current_time())
                return
            in_flight += 1
            nursery.start_soon(send_later, to, frame, addrs, kind)

        def run_job(self, job: TrainJob | EvalJob) -> None:
            nursery.start_soon(run_job, job)

    async def send_later(to: str, frame: Frame, addrs: tuple[str, ...], kind: str) -> None:
        nonlocal in_flight
        try:
            with trio.fail_after(send_timeout_s):
                if addrs and to not in transport.peers():
                    await transport.connect(to, addrs)
                await transport.send(to, frame)
            loop.sent(frame.nbytes)
        except LocalProtocolError as exc:
            loop.refused(to, kind, exc)
        except (trio.TooSlowError, PeerGone, TransportError) as exc:
            loop.send_failed(to, kind, exc, trio.current_time())
            rearm()
        finally:
            in_flight -= 1
            if in_flight == 0 and drained is not None:
                drained.set()

    def rearm() -> None:
        """After an input: wake the main task at the role's next deadline, or at once if
        the role stopped."""
        if wakeup is not None:
            if not loop.active:
                wakeup.cancel()
            else:
                deadline = loop.next_deadline()
                deadline = math.inf if deadline is None else deadline
                if deadline != wakeup.deadline:  # setting it costs trio some bookkeeping
                    wakeup.deadline = deadline

    async def pump_frames() -> None:
        async for inbound in transport.incoming:
            loop.on_frame(inbound, trio.current_time())
            rearm()

    async def pump_events() -> None:
        async for event in transport.events:
            loop.on_peer(event.peer, event.up, trio.current_time())
            rearm()

    async def run_job(job: TrainJob | EvalJob) -> None:
        result = await executor.run(job)
        loop.on_result(result, trio.current_time())
        rearm()

    loop.port = TrioPort()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump_frames)
        nursery.start_soon(pump_events)
        task_status.started()
        loop.start(trio.current_time())
        while loop.active:
            deadline = loop.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as wakeup:
                await trio.sleep_forever()
            wakeup = None
            if loop.active:  # the role's deadline passed
                loop.on_timer(trio.current_time())
        if in_flight:  # a role's last messages (e.g. a final reply) must not be cancelled
            drained = trio.Event()
            with trio.move_on_after(send_timeout_s):
                await drained.wait()
        nursery.cancel_scope.cancel()
    if loop.stop is None:  # killed: only a simulated crash does that, and it cancels us too
        await trio.lowlevel.checkpoint()
        return Stop("killed")
    return loop.stop
