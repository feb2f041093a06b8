"""The trio adapter that runs a role's state machine: the one I/O loop of every node.

It feeds four inputs to the role — verified messages, peer events, job results, timers —
and executes the actions it returns: seal and send, run compute jobs, emit events, stop.
Real nodes and the simulator run this same loop; they differ only in the transport and
the executor (threads vs. inline with virtual time charged).

Each input is handed to the role by the task that received it (the frame pump, the
peer-event pump, a job, the timer), synchronously: trio runs one task at a time, so the
role still sees one input at a time, and no input waits in a second queue behind the
transport's own. The role's actions run in order before the next input: events are
emitted first, then messages are sealed and sent, then jobs start (a :class:`Stop`
drops whatever follows it). A message is sealed at once; it is handed to the transport
without a task when the transport can take it without waiting
(:meth:`Transport.send_nowait`: the memory transport), else a task sends it under
``send_timeout_s``.

Errors: anything a peer causes (bad frame, protocol violation) is counted, emitted as a
``rejected`` event and dropped; the loop goes on. A message this node may not send
(:class:`~fednode.errors.LocalProtocolError`: e.g. a NaN/Inf update or metric, a frame
over the size limit) is refused the same way: counted in :attr:`RunStats.refused`,
emitted as ``send_refused`` (or ``local_error`` when the role itself raised it while
building the message) and dropped. A :class:`Stop` action ends the loop and its error,
if any, is returned to the caller.

Cancellation: cancelling :func:`run_role` cancels in-flight sends and jobs; nothing is
left behind (every task lives in the loop's nursery). A job running in a worker thread
stops at its task's next :func:`~fednode.training.cancel_point` (:class:`ThreadExecutor`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from .actions import Action, Compute, Emit, EvalJob, EvalResult, Send, Stop, TrainJob, TrainResult
from .crypto.envelope import Receiver, Sealer
from .errors import FednodeError, LocalProtocolError, PeerGone, TransportError
from .p2p.transport import Transport
from .role import Role
from .training.task import Task, stoppable
from .wire import messages as m
from .wire.frames import Frame

log = logging.getLogger(__name__)

EventSink = Callable[[str, str, dict[str, Any]], None]


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


@dataclass
class RunStats:
    sent_frames: int = 0
    sent_bytes: int = 0
    received_frames: int = 0
    #: inbound frames and messages dropped, by error type (blame: the peer)
    rejected: Counter[str] = field(default_factory=Counter)
    send_failures: int = 0
    #: outbound messages this node refused to send, by error type (blame: us)
    refused: Counter[str] = field(default_factory=Counter)


async def run_role(
    role: Role,
    transport: Transport,
    sealer: Sealer,
    receiver: Receiver,
    executor: Executor,
    *,
    on_event: EventSink | None = None,
    send_timeout_s: float = 60.0,
    stats: RunStats | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> Stop:
    """Run ``role`` until it stops; returns the :class:`Stop` action."""
    me = transport.local_peer
    emit = on_event or (lambda peer, event, data: None)
    stats = stats if stats is not None else RunStats()
    stop: Stop | None = None
    pending: deque[tuple[str, Any]] = deque()  # inputs raised while a batch executes
    wakeup: trio.CancelScope | None = None  # the main task's wait for the next deadline
    in_flight = 0  # sends running as tasks
    drained: trio.Event | None = None
    nursery: trio.Nursery

    def refuse(to: str, msg: m.Message, exc: FednodeError) -> None:
        stats.refused[type(exc).__name__] += 1
        emit(
            me,
            "send_refused",
            {"peer": to, "kind": msg.KIND.name, "error": type(exc).__name__, "detail": str(exc)},
        )

    def failed(to: str, msg: m.Message, exc: BaseException) -> None:
        stats.send_failures += 1
        emit(me, "send_failed", {"peer": to, "kind": msg.KIND.name, "error": type(exc).__name__})
        pending.append(("send_failed", to))

    def send(action: Send) -> None:
        nonlocal in_flight
        to, msg = action.to, action.msg
        try:
            frame = sealer.seal(msg, to)
            if transport.send_nowait(to, frame):
                stats.sent_frames += 1
                stats.sent_bytes += frame.nbytes
                return
        except LocalProtocolError as exc:
            refuse(to, msg, exc)
            return
        except (PeerGone, TransportError) as exc:
            failed(to, msg, exc)
            return
        in_flight += 1
        nursery.start_soon(send_later, to, msg, frame, action.addrs)

    async def send_later(to: str, msg: m.Message, frame: Frame, addrs: tuple[str, ...]) -> None:
        nonlocal in_flight
        try:
            with trio.fail_after(send_timeout_s):
                if addrs and to not in transport.peers():
                    await transport.connect(to, addrs)
                await transport.send(to, frame)
            stats.sent_frames += 1
            stats.sent_bytes += frame.nbytes
        except LocalProtocolError as exc:
            refuse(to, msg, exc)
        except (trio.TooSlowError, PeerGone, TransportError) as exc:
            failed(to, msg, exc)
            feed()
        finally:
            in_flight -= 1
            if in_flight == 0 and drained is not None:
                drained.set()

    def execute(actions: list[Action]) -> None:
        """Emits in order, then sends and jobs; a Stop drops the rest of the batch."""
        nonlocal stop
        later: list[Action] = []
        emitted = False
        for action in actions:
            if isinstance(action, Emit):
                emit(me, action.event, action.data)
                emitted = True
            elif isinstance(action, Send | Compute):
                later.append(action)
            elif isinstance(action, Stop):
                stop = action
                break
        if emitted and trio.current_effective_deadline() == -math.inf:
            return  # an event hook cancelled this node (a simulated crash): do nothing more
        for action in later:
            if isinstance(action, Send):
                send(action)
            else:
                assert isinstance(action, Compute)
                nursery.start_soon(run_job, action.job)

    def local_error(exc: LocalProtocolError) -> list[Action]:
        """The role refused to build a message (e.g. a NaN update): drop it, go on."""
        stats.refused[type(exc).__name__] += 1
        emit(me, "local_error", {"error": type(exc).__name__, "detail": str(exc)})
        return []

    def react(kind: str, value: Any, now: float) -> list[Action]:
        try:
            if kind == "msg":
                try:
                    return role.handle(value, now)
                except LocalProtocolError:
                    raise
                except FednodeError as exc:  # blame the peer, keep running
                    stats.rejected[type(exc).__name__] += 1
                    data = {
                        "peer": exc.peer or value.sender,
                        "error": type(exc).__name__,
                        "detail": str(exc),
                    }
                    emit(me, "rejected", data)
                    return []
            if kind == "peer":
                return role.on_peer(value.peer, value.up, now)
            if kind == "send_failed":
                return role.on_peer(value, False, now)
            return role.on_result(value, now)
        except LocalProtocolError as exc:
            return local_error(exc)

    def feed(kind: str | None = None, value: Any = None) -> None:
        """Hand an input (and any raised while executing) to the role; run its actions."""
        nonlocal wakeup
        if kind is not None:
            pending.append((kind, value))
        while pending and stop is None:
            kind, value = pending.popleft()
            now = trio.current_time()
            if kind == "poll":
                actions = role.poll(now)
            else:
                actions = react(kind, value, now)
                actions = actions + role.poll(now)
            execute(actions)
        pending.clear()
        if wakeup is not None:
            if stop is not None:
                wakeup.cancel()
            else:
                deadline = role.next_deadline()
                deadline = math.inf if deadline is None else deadline
                if deadline != wakeup.deadline:  # setting it costs trio some bookkeeping
                    wakeup.deadline = deadline

    async def pump_frames() -> None:
        async for inbound in transport.incoming:
            stats.received_frames += 1
            try:
                msg = receiver.open(inbound)
            except FednodeError as exc:
                stats.rejected[type(exc).__name__] += 1
                emit(
                    me,
                    "rejected",
                    {"peer": inbound.peer, "error": type(exc).__name__, "detail": str(exc)},
                )
                continue
            feed("msg", msg)

    async def pump_events() -> None:
        async for event in transport.events:
            feed("peer", event)

    async def run_job(job: TrainJob | EvalJob) -> None:
        result = await executor.run(job)
        feed("result", result)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump_frames)
        nursery.start_soon(pump_events)
        task_status.started()
        execute(role.start(trio.current_time()))
        feed()
        while stop is None:
            deadline = role.next_deadline()
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as wakeup:
                await trio.sleep_forever()
            wakeup = None
            if stop is None:  # the role's deadline passed
                feed("poll")
        if in_flight:  # a role's last messages (e.g. a final reply) must not be cancelled
            drained = trio.Event()
            with trio.move_on_after(send_timeout_s):
                await drained.wait()
        nursery.cancel_scope.cancel()
    return stop
