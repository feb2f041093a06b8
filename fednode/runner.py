"""The trio adapter that runs a role's state machine: the one I/O loop of every node.

It merges four inputs into one bounded channel — verified messages, peer events, job
results, timers — feeds them to the role, and executes the actions it returns: seal and
send (concurrently, each under a deadline), run compute jobs, emit events, stop. Real
nodes and the simulator run this same loop; they differ only in the transport and the
executor (threads vs. inline with virtual time charged).

Errors: anything a peer causes (bad frame, protocol violation) is counted, emitted as a
``rejected`` event and dropped; the loop goes on. A :class:`Stop` action ends the loop and
its error, if any, is returned to the caller.

Cancellation: cancelling :func:`run_role` cancels in-flight sends and jobs; nothing is
left behind (every task lives in the loop's nursery).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import trio

from .actions import Action, Compute, Emit, EvalJob, EvalResult, Send, Stop, TrainJob, TrainResult
from .crypto.envelope import Receiver, Sealer
from .errors import FednodeError, PeerGone, TransportError
from .p2p.transport import Transport
from .training.task import Task
from .wire import messages as m

EventSink = Callable[[str, str, dict[str, Any]], None]


class Role(Protocol):
    role: str
    done: bool

    def start(self, now: float) -> list[Action]: ...
    def handle(self, msg: m.Message, now: float) -> list[Action]: ...
    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]: ...
    def on_result(self, result: TrainResult | EvalResult, now: float) -> list[Action]: ...
    def poll(self, now: float) -> list[Action]: ...
    def next_deadline(self) -> float | None: ...


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
    """Real nodes: CPU work runs in a worker thread so the node stays responsive."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self._lock = trio.Lock()  # one model per task object: one job at a time

    async def run(self, job: TrainJob | EvalJob) -> TrainResult | EvalResult:
        async with self._lock:
            return await trio.to_thread.run_sync(compute, self.task, job)


@dataclass
class InlineExecutor:
    """Simulation: compute inline, then charge a modelled duration of virtual time.

    Train time = ``train_cost_s`` x work (local epochs) x examples/100 x ``slowdown``;
    deterministic, so the same seed gives the same schedule and the same results.
    """

    task: Task
    train_cost_s: float = 0.1
    eval_cost_s: float = 0.0
    slowdown: float = 1.0
    wall_compute_s: float = field(default=0.0, init=False)

    async def run(self, job: TrainJob | EvalJob) -> TrainResult | EvalResult:
        t0 = time.perf_counter()
        result = compute(self.task, job)
        self.wall_compute_s += time.perf_counter() - t0
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
    rejected: Counter[str] = field(default_factory=Counter)
    send_failures: int = 0


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
    to_loop, inbox = trio.open_memory_channel[tuple[str, Any]](256)

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
            await to_loop.send(("msg", msg))

    async def pump_events() -> None:
        async for event in transport.events:
            await to_loop.send(("peer", event))

    in_flight = 0
    drained: trio.Event | None = None

    async def send_one(action: Send) -> None:
        nonlocal in_flight
        try:
            frame = sealer.seal(replace(action.msg, recipient=action.to))
            with trio.fail_after(send_timeout_s):
                await transport.send(action.to, frame)
            stats.sent_frames += 1
            stats.sent_bytes += frame.nbytes
        except (trio.TooSlowError, PeerGone, TransportError) as exc:
            stats.send_failures += 1
            emit(
                me,
                "send_failed",
                {"peer": action.to, "kind": action.msg.KIND.name, "error": type(exc).__name__},
            )
            await to_loop.send(("send_failed", action.to))
        finally:
            in_flight -= 1
            if in_flight == 0 and drained is not None:
                drained.set()

    async def run_job(job: TrainJob | EvalJob) -> None:
        result = await executor.run(job)
        await to_loop.send(("result", result))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump_frames)
        nursery.start_soon(pump_events)

        def execute(actions: list[Action]) -> Stop | None:
            nonlocal in_flight
            for action in actions:
                if isinstance(action, Send):
                    in_flight += 1
                    nursery.start_soon(send_one, action)
                elif isinstance(action, Compute):
                    nursery.start_soon(run_job, action.job)
                elif isinstance(action, Emit):
                    emit(me, action.event, action.data)
                elif isinstance(action, Stop):
                    return action
            return None

        def guarded(
            handle: Callable[[m.Message, float], list[Action]], msg: m.Message, now: float
        ) -> list[Action]:
            try:
                return handle(msg, now)
            except FednodeError as exc:  # blame the peer, keep running
                stats.rejected[type(exc).__name__] += 1
                emit(
                    me,
                    "rejected",
                    {
                        "peer": exc.peer or msg.sender,
                        "error": type(exc).__name__,
                        "detail": str(exc),
                    },
                )
                return []

        task_status.started()
        stop = execute(role.start(trio.current_time()))
        while stop is None:
            deadline = role.next_deadline()
            item: tuple[str, Any] | None = None
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                item = await inbox.receive()
            now = trio.current_time()
            actions: list[Action]
            if item is None:
                actions = role.poll(now)
            else:
                kind, value = item
                if kind == "msg":
                    actions = guarded(role.handle, value, now)
                elif kind == "peer":
                    actions = role.on_peer(value.peer, value.up, now)
                elif kind == "send_failed":
                    actions = role.on_peer(value, False, now)
                else:
                    actions = role.on_result(value, now)
                actions = actions + role.poll(now)
            stop = execute(actions)
        if in_flight:  # a role's last messages (e.g. a final reply) must not be cancelled
            drained = trio.Event()
            with trio.move_on_after(send_timeout_s):
                await drained.wait()
        nursery.cancel_scope.cancel()
    return stop
