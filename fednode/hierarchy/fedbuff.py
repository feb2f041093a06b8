"""Asynchronous coordinator: buffered asynchronous aggregation (pure state machine).

FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022): ``concurrency`` children train at any time, each on the model version it
was sent; every arrival is folded into a buffer with staleness weight
``s(tau) = 1 / sqrt(1 + tau)`` (tau = versions the global model moved on since the child's
Fit); every ``buffer_size`` arrivals the buffer is applied through the server optimiser and
the model version advances. Updates staler than ``max_staleness`` are dropped. A child
that answers is sent the current model at once, so fast children are never held back by
slow ones (the straggler problem of synchronous rounds)::

    WAITING --enough clients--> RUNNING --buffer full--> server step, eval --> ... DONE
                                  ^   \\-- answer / timeout / peer down: refill --/

The buffer step is ``x <- opt(x, sum_i n_i s_i d_i / sum_i n_i)``: the examples-weighted
FedAvg mean, shrunk by the staleness weights (with no staleness it is exactly FedAvg over
the buffer). One "round" in the log is one buffer step. With a robust rule
(``[aggregation] rule``) the rule runs over each buffer instead of the mean (every
update counted once) and the result is shrunk by the same factor
``sum n_i s_i / sum n_i``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Unpack

import numpy as np

from ..actions import Action, Compute, Emit, EvalJob, EvalResult, Send, Stop, TrainResult
from ..config import ServerParams
from ..errors import RemoteProtocolError, RoundFailed
from ..training.rulespec import RuleUnavailable
from ..wire import messages as m
from .root import RootArgs, RootRole, flag_events


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


def staleness_weight(tau: int) -> float:
    """FedBuff's polynomial staleness discount s(tau) = 1/sqrt(1+tau)."""
    return 1.0 / math.sqrt(1.0 + tau)


@dataclass
class Flight:
    version: int
    sent: float
    deadline: float


@dataclass
class Buffer:
    started: float
    count: int = 0
    examples: int = 0
    scaled: float = 0.0  # sum n_i s(tau_i)
    loss: float = 0.0
    staleness: list[int] = field(default_factory=list)
    dropped: int = 0
    failed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    #: the aggregator's report of this buffer's step (``agg_*`` round-record fields)
    report: dict[str, Any] = field(default_factory=dict)


class AsyncCoordinator(RootRole):
    mode = "async"

    def __init__(self, *, server: ServerParams | None = None, **root: Unpack[RootArgs]) -> None:
        super().__init__(**root)
        self.server = server or ServerParams(mode="async")
        self.state = State.WAITING
        self.waiting_since: float | None = None
        self.in_flight: dict[str, Flight] = {}
        self.buffer = Buffer(started=0.0)
        self.evaluating: dict[int, tuple[Buffer, float]] = {}
        self._table: dict[tuple[State, m.Kind], Callable[[Any, float], list[Action]]] = {}
        for state in State:
            self._table[(state, m.Kind.ADVERT)] = self._on_advert
            self._table[(state, m.Kind.BYE)] = lambda msg, now: self.on_peer(msg.sender, False, now)
            self._table[(state, m.Kind.UPDATE)] = self._on_stale
            self._table[(state, m.Kind.REJECT)] = lambda msg, now: []
            self._table[(state, m.Kind.ACK)] = lambda msg, now: []
        self._table[(State.RUNNING, m.Kind.UPDATE)] = self._on_update
        self._table[(State.RUNNING, m.Kind.REJECT)] = self._on_reject

    # --- role interface ---------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        self.waiting_since = now
        return self.poll(now)

    def handle(self, msg: m.Message, now: float) -> list[Action]:
        handler = self._table.get((self.state, msg.KIND))
        if handler is None:
            raise RemoteProtocolError(
                f"async coordinator in state {self.state.value} does not accept {msg.KIND.name}",
                peer=msg.sender,
            )
        return handler(msg, now)

    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
        if up:
            return self._peer_up(peer)
        actions = self._peer_down(peer)
        if self.in_flight.pop(peer, None) is not None:
            self.buffer.failed += 1
        return actions + self._dispatch(now)

    def on_result(self, result: TrainResult | EvalResult, now: float) -> list[Action]:
        if not isinstance(result, EvalResult) or result.round not in self.evaluating:
            raise RoundFailed(f"unexpected job result {type(result).__name__}")
        return self._on_evaluated(result, now)

    def next_deadline(self) -> float | None:
        if self.state is State.WAITING and self.waiting_since is not None:
            return self.waiting_since + self.rounds.wait_for_clients_s
        if self.state is State.RUNNING and self.in_flight:
            return min(f.deadline for f in self.in_flight.values())
        return None

    def poll(self, now: float) -> list[Action]:
        if self.state is State.WAITING:
            return self._try_start(now)
        if self.state is not State.RUNNING:
            return []
        late = sorted(p for p, f in self.in_flight.items() if now >= f.deadline)
        for peer in late:
            del self.in_flight[peer]
            self.buffer.failed += 1
        return self._dispatch(now) if late else []

    # --- handlers -------------------------------------------------------------------
    def _on_advert(self, msg: m.Advert, now: float) -> list[Action]:
        actions = self._advert_in(msg)
        if self.state is State.WAITING:
            return actions + self._try_start(now)
        if self.state is State.RUNNING:
            return actions + self._dispatch(now)
        return actions

    def _on_stale(self, msg: m.Update, now: float) -> list[Action]:
        self.broadcast.acked(msg.sender, msg.model_version)
        return [Emit("stale_update", {"peer": msg.sender, "round": msg.round})]

    def _on_reject(self, msg: m.Reject, now: float) -> list[Action]:
        resend = self._resend_full(msg) if msg.sender in self.in_flight else []
        if resend:  # a delta it could not apply: the full model, once
            return resend
        if self.in_flight.pop(msg.sender, None) is None:
            return []
        declined = Emit("declined", {"peer": msg.sender, "reason": msg.reason})
        return [declined, *self._dispatch(now)]

    def _on_update(self, msg: m.Update, now: float) -> list[Action]:
        flight = self.in_flight.get(msg.sender)
        if flight is None or msg.model_version != flight.version:
            return self._on_stale(msg, now)
        if msg.vector is None or msg.num_examples <= 0:
            raise RemoteProtocolError("update without a decoded delta or examples", peer=msg.sender)
        del self.in_flight[msg.sender]
        self.broadcast.acked(msg.sender, msg.model_version)
        if self._last_step_done():  # the last step is being evaluated: nothing more to do
            return []
        buf = self.buffer
        tau = self.model_version - flight.version
        loss = float(msg.metrics.get("train_loss", 0.0))
        obs = self.observe(msg.sender)
        obs.loss, obs.duration_s, obs.examples = loss, now - flight.sent, msg.num_examples
        buf.bytes_up += len(msg.payload)
        if tau > self.server.max_staleness:
            buf.dropped += 1
            return self._dispatch(now)
        s = staleness_weight(tau)
        self.aggregator.add(msg.vector, float(msg.num_examples) * s, msg.sender)
        buf.count += 1
        buf.examples += msg.num_examples
        buf.scaled += msg.num_examples * s
        buf.loss += loss * msg.num_examples
        buf.staleness.append(tau)
        actions: list[Action] = []
        if buf.count >= self.server.buffer_size:
            actions += self._step(now)
        return actions + self._dispatch(now)

    # --- steps ----------------------------------------------------------------------
    def _try_start(self, now: float) -> list[Action]:
        actions = self._tree_maintenance(now)
        leaves = sum(self.tree.leaves(c.peer) for c in self.candidates())
        if leaves < self.rounds.min_available_clients:
            since = self.waiting_since if self.waiting_since is not None else now
            if now - since >= self.rounds.wait_for_clients_s:
                need = self.rounds.min_available_clients
                reason = f"only {leaves} clients available; need {need}"
                self.state, self.done = State.DONE, True
                return [*actions, Stop(reason, RoundFailed(reason))]
            return actions
        self.state = State.RUNNING
        self.buffer = Buffer(started=now)
        self.aggregator.start(self.params.shape[0], capacity=self.server.buffer_size)
        return actions + self._dispatch(now)

    def _dispatch(self, now: float) -> list[Action]:
        """Keep ``concurrency`` children training on the current model."""
        if self.state is not State.RUNNING or self._last_step_done():
            return []
        idle = [c for c in self.candidates() if c.peer not in self.in_flight]
        limit = self.server.concurrency or len(self.in_flight) + len(idle)
        want = min(limit - len(self.in_flight), len(idle))
        if want <= 0:
            return []
        chosen = self.selection.select(idle, want, self.rng)
        deadline = now + self.rounds.round_deadline_s
        actions: list[Action] = []
        for peer, fit in self._fits(sorted(chosen)).items():
            self.in_flight[peer] = Flight(self.model_version, now, deadline)
            self.observe(peer).last_selected = self.round_number
            self.buffer.bytes_down += len(fit.payload)
            actions.append(Send(peer, fit))
        return actions

    def _last_step_done(self) -> bool:
        return self.round_number > self.rounds.rounds

    def _step(self, now: float) -> list[Action]:
        buf = self.buffer
        number = self.round_number
        # central DP: a buffer step is one release, sampled at buffer / available clients
        dp_q = self.aggregator.count / max(sum(self.tree.leaves(c) for c in self.tree.direct), 1)
        stop = self.privacy_stop(min(dp_q, 1.0), number)  # [privacy] epsilon_budget
        if stop:
            self.state = State.DONE
            return stop
        try:
            mean, _ = self.aggregator.finish()
        except RuleUnavailable as exc:  # the buffer is dropped, the model unchanged
            self.buffer = Buffer(started=now)
            self.aggregator.start(self.params.shape[0], capacity=self.server.buffer_size)
            return [Emit("round_failed", {"round": number, "reason": str(exc), "rule": True})]
        if self.privacy is not None:
            self.privacy.spend(min(dp_q, 1.0))
        buf.report = {**self.aggregator.report.record(), **self.privacy_record()}
        flags = flag_events(self.aggregator.report, number)
        self._apply(mean * np.float32(buf.scaled / buf.examples))
        self.evaluating[number] = (buf, now)
        self.round_number += 1
        self.buffer = Buffer(started=now)
        self.aggregator.start(self.params.shape[0], capacity=self.server.buffer_size)
        return [*flags, *self._checkpoint(number), Compute(EvalJob(number, self.params))]

    def _on_evaluated(self, result: EvalResult, now: float) -> list[Action]:
        buf, stepped = self.evaluating.pop(result.round)
        record = {
            "round": result.round,
            "accuracy": result.metrics.get("accuracy", float("nan")),
            "loss": result.loss,
            "selected": buf.count + buf.dropped + buf.failed,
            "completed": buf.count,
            "failed": buf.failed,
            "stale_dropped": buf.dropped,
            "failure_rate": buf.failed / max(buf.count + buf.dropped + buf.failed, 1),
            "mean_staleness": sum(buf.staleness) / max(len(buf.staleness), 1),
            "max_staleness": max(buf.staleness, default=0),
            "in_flight": len(self.in_flight),
            "examples": buf.examples,
            "train_loss": buf.loss / max(buf.examples, 1),
            "bytes_up": buf.bytes_up,
            "bytes_down": buf.bytes_down,
            "duration_s": stepped - buf.started,
            "time_s": stepped,
            "model_version": self.model_version,
            **buf.report,
        }
        self.history.append(record)
        actions: list[Action] = [Emit("round", record)]
        target = self.rounds.target_accuracy
        if result.round >= self.rounds.rounds or (target and record["accuracy"] >= target):
            self.state, self.done = State.DONE, True
            return [*actions, Stop(f"finished {result.round} buffered steps")]
        return actions
