"""Global coordinator: owns the model and runs rounds (pure state machine, no I/O).

One round (FedAvg, McMahan et al. 2017)::

    WAITING --enough children--> FITTING --all in / deadline--> EVALUATING --result--> WAITING
       |                            |  too few results: retry (same round) or fail          |
       +---- waited too long: Stop(RoundFailed)                        last round: DONE ---+

Children are clients or regional aggregators alike: each answers a ``Fit`` with one
``Update`` carrying a model delta and its ``num_examples`` (an aggregator's is the total
of its region). Deltas are folded into one streaming accumulator as they arrive.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..actions import Action, Compute, Emit, EvalJob, EvalResult, Send, Stop, TrainResult
from ..config import RoundParams, TrainParams
from ..errors import RemoteProtocolError, RoundFailed
from ..training.aggregate import Aggregator, StreamingMean
from ..wire import messages as m
from ..wire.codecs import parse_codec
from .selection import Candidate, Selection, UniformSelection


class State(enum.Enum):
    WAITING = "waiting"
    FITTING = "fitting"
    EVALUATING = "evaluating"
    DONE = "done"


@dataclass
class RoundState:
    number: int
    attempt: int
    started: float
    deadline: float
    selected: frozenset[str]
    arrived: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    stale: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    examples: int = 0
    train_loss: float = 0.0


class Coordinator:
    """Runs ``rounds.rounds`` rounds of FedAvg over whichever children advertise."""

    role = "coordinator"

    def __init__(
        self,
        *,
        params: np.ndarray,
        rounds: RoundParams,
        train: TrainParams,
        federation: str = "fednode",
        task: str = "digits",
        codec_down: str = "none",
        aggregator: Aggregator | None = None,
        selection: Selection | None = None,
        seed: int = 0,
        start_round: int = 1,
        model_version: int = 0,
        max_retries: int = 2,
        server_update: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.params = np.array(params, dtype=np.float32, copy=True)
        self.rounds = rounds
        self.train = train
        self.federation = federation
        self.task = task
        self.codec_down = parse_codec(codec_down)
        self.aggregator = aggregator or StreamingMean()
        self.selection = selection or UniformSelection()
        self.rng = random.Random(seed)
        self.round_number = start_round
        self.model_version = model_version
        self.max_retries = max_retries
        self.server_update = server_update or (lambda params, delta: params + delta)
        self.children: dict[str, m.Advert] = {}
        self.state = State.WAITING
        self.current: RoundState | None = None
        self.waiting_since: float | None = None
        self._attempt = 0
        self.history: list[dict[str, Any]] = []
        self.done = False
        self._table: dict[tuple[State, m.Kind], Callable[[Any, float], list[Action]]] = {}
        for state in State:
            self._table[(state, m.Kind.ADVERT)] = self._on_advert
            self._table[(state, m.Kind.BYE)] = self._on_bye
            self._table[(state, m.Kind.UPDATE)] = self._on_stale_update
        self._table[(State.FITTING, m.Kind.UPDATE)] = self._on_update

    # --- inputs --------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        self.waiting_since = now
        return self.poll(now)

    def advert(self) -> m.Advert:
        return m.Advert(
            role="coordinator",
            federation=self.federation,
            task=self.task,
            load=len(self.children),
            round=self.round_number,
            model_version=self.model_version,
        )

    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
        if up:
            return [Send(peer, self.advert())]
        self.children.pop(peer, None)
        cur = self.current
        if self.state is State.FITTING and cur and peer in cur.selected and peer not in cur.arrived:
            cur.failed.add(peer)
            return self._maybe_finish(now)
        return []

    def handle(self, msg: m.Message, now: float) -> list[Action]:
        handler = self._table.get((self.state, msg.KIND))
        if handler is None:
            raise RemoteProtocolError(
                f"coordinator in state {self.state.value} does not accept {msg.KIND.name}",
                peer=msg.sender,
            )
        return handler(msg, now)

    def on_result(self, result: TrainResult | EvalResult, now: float) -> list[Action]:
        if not isinstance(result, EvalResult) or self.state is not State.EVALUATING:
            raise RoundFailed(f"unexpected job result {type(result).__name__} in {self.state}")
        return self._on_evaluated(result, now)

    def next_deadline(self) -> float | None:
        if self.state is State.FITTING and self.current:
            return self.current.deadline
        if self.state is State.WAITING and self.waiting_since is not None:
            return self.waiting_since + self.rounds.wait_for_clients_s
        return None

    def poll(self, now: float) -> list[Action]:
        if self.state is State.WAITING:
            return self._try_start_round(now)
        if self.state is State.FITTING and self.current and now >= self.current.deadline:
            return self._finish_round(now)
        return []

    # --- handlers ------------------------------------------------------------------------
    def _on_advert(self, msg: m.Advert, now: float) -> list[Action]:
        if msg.federation != self.federation or msg.role not in ("client", "aggregator"):
            return []
        if msg.parent and msg.parent != self._me(msg):
            self.children.pop(msg.sender, None)
            return []
        self.children[msg.sender] = msg
        return self.poll(now) if self.state is State.WAITING else []

    @staticmethod
    def _me(msg: m.Message) -> str:
        return msg.recipient

    def _on_bye(self, msg: m.Bye, now: float) -> list[Action]:
        return self.on_peer(msg.sender, False, now)

    def _on_stale_update(self, msg: m.Update, now: float) -> list[Action]:
        if self.current:
            self.current.stale += 1
        return [Emit("stale_update", {"peer": msg.sender, "round": msg.round})]

    def _on_update(self, msg: m.Update, now: float) -> list[Action]:
        cur = self.current
        assert cur is not None
        if msg.round != cur.number or msg.sender not in cur.selected or msg.sender in cur.arrived:
            cur.stale += 1
            return [Emit("stale_update", {"peer": msg.sender, "round": msg.round})]
        if msg.vector is None or msg.num_examples <= 0:
            raise RemoteProtocolError("update without a decoded delta or examples", peer=msg.sender)
        self.aggregator.add(msg.vector, float(msg.num_examples))
        cur.arrived.add(msg.sender)
        cur.failed.discard(msg.sender)
        cur.bytes_up += len(msg.payload)
        cur.examples += msg.num_examples
        cur.train_loss += float(msg.metrics.get("train_loss", 0.0)) * msg.num_examples
        return self._maybe_finish(now)

    # --- round steps ---------------------------------------------------------------------
    def _available(self) -> list[Candidate]:
        return [
            Candidate(peer, advert.load, advert.accepting)
            for peer, advert in sorted(self.children.items())
        ]

    def _try_start_round(self, now: float) -> list[Action]:
        available = [c for c in self._available() if c.accepting]
        if len(available) < self.rounds.min_available_clients:
            since = self.waiting_since if self.waiting_since is not None else now
            if now - since >= self.rounds.wait_for_clients_s:
                return self._fail(
                    now,
                    f"only {len(available)} children available after "
                    f"{self.rounds.wait_for_clients_s:g}s; min_available_clients is "
                    f"{self.rounds.min_available_clients}",
                )
            return []
        want = max(self.rounds.min_fit_clients, round(self.rounds.fraction_fit * len(available)))
        chosen = self.selection.select(available, min(want, len(available)), self.rng)
        attempt = self._attempt
        self.current = RoundState(
            number=self.round_number,
            attempt=attempt,
            started=now,
            deadline=now + self.rounds.round_deadline_s,
            selected=frozenset(chosen),
        )
        self.aggregator.start(self.params.shape[0])
        self.state = State.FITTING
        payload = self.codec_down.encode(self.params)
        config = self.train_config()
        actions: list[Action] = []
        for peer in sorted(chosen):
            self.current.bytes_down += len(payload)
            actions.append(
                Send(
                    peer,
                    m.Fit(
                        round=self.round_number,
                        model_version=self.model_version,
                        codec=self.codec_down.spec,
                        payload=payload,
                        config=config,
                    ),
                )
            )
        actions.append(
            Emit(
                "round_start",
                {
                    "round": self.round_number,
                    "attempt": attempt,
                    "selected": len(chosen),
                    "available": len(available),
                },
            )
        )
        return actions

    def train_config(self) -> dict[str, Any]:
        t = self.train
        return {
            "round": self.round_number,
            "local_epochs": t.local_epochs,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "momentum": t.momentum,
            "prox_mu": t.prox_mu,
        }

    def _maybe_finish(self, now: float) -> list[Action]:
        cur = self.current
        if cur and len(cur.arrived) + len(cur.failed) >= len(cur.selected):
            return self._finish_round(now)
        return []

    def _finish_round(self, now: float) -> list[Action]:
        cur = self.current
        assert cur is not None
        cur.failed |= set(cur.selected) - cur.arrived
        failure_rate = len(cur.failed) / len(cur.selected)
        if len(cur.arrived) < self.rounds.min_fit_clients or (
            failure_rate > self.rounds.max_failure_fraction
        ):
            reason = (
                f"round {cur.number}: {len(cur.arrived)} of {len(cur.selected)} results "
                f"(min_fit_clients {self.rounds.min_fit_clients}, failure rate "
                f"{failure_rate:.0%} vs max {self.rounds.max_failure_fraction:.0%})"
            )
            actions: list[Action] = [
                Emit(
                    "round_failed", {"round": cur.number, "attempt": cur.attempt, "reason": reason}
                )
            ]
            if cur.attempt >= self.max_retries:
                return actions + self._fail(now, reason)
            self.state = State.WAITING
            self.waiting_since = now
            self._attempt += 1
            return actions + self._try_start_round(now)
        delta, _total = self.aggregator.finish()
        self.params = np.asarray(self.server_update(self.params, delta), dtype=np.float32)
        self.model_version += 1
        self.state = State.EVALUATING
        return [Compute(EvalJob(cur.number, self.params))]

    def _on_evaluated(self, result: EvalResult, now: float) -> list[Action]:
        cur = self.current
        assert cur is not None
        record = {
            "round": cur.number,
            "accuracy": result.metrics.get("accuracy", float("nan")),
            "loss": result.loss,
            "selected": len(cur.selected),
            "completed": len(cur.arrived),
            "failed": len(cur.failed),
            "failure_rate": len(cur.failed) / len(cur.selected),
            "stale": cur.stale,
            "examples": cur.examples,
            "train_loss": cur.train_loss / max(cur.examples, 1),
            "bytes_up": cur.bytes_up,
            "bytes_down": cur.bytes_down,
            "duration_s": now - cur.started,
            "attempt": cur.attempt,
            "model_version": self.model_version,
        }
        self.history.append(record)
        actions: list[Action] = [Emit("round", record)]
        target = self.rounds.target_accuracy
        if cur.number >= self.rounds.rounds or (target and record["accuracy"] >= target):
            self.state = State.DONE
            self.done = True
            return [*actions, Stop(f"finished {cur.number} rounds")]
        self.round_number += 1
        self._attempt = 0
        self.state = State.WAITING
        self.waiting_since = now
        return actions + self._try_start_round(now)

    def _fail(self, now: float, reason: str) -> list[Action]:
        self.state = State.DONE
        self.done = True
        return [Stop(reason, RoundFailed(reason))]
