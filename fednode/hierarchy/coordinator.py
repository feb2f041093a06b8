"""Global coordinator: owns the model and runs synchronous rounds (pure state machine).

One round (FedAvg, McMahan et al. 2017)::

    WAITING --enough clients, tree settled--> FITTING --all in / cut-off / deadline-->
       ^   |                                     |  too few results: retry or fail
       |   +-- waited too long: Stop(RoundFailed)                                  |
       +---- next round <-- EVALUATING (checkpoint written) <-- server step <------+
                              last round / target reached: DONE

Children are clients or regional aggregators alike: each answers a ``Fit`` with one
``Update`` carrying a model delta and its ``num_examples`` (an aggregator's is the total
of its region), or declines with a ``Reject``. Deltas are folded into one streaming
accumulator as they arrive; the server optimiser (``server_update``; FedAvgM / FedAdam /
FedYogi in :mod:`fednode.training.server_opt`) applies the mean.

Round lifecycle: the round closes when every selected child answered, when
``cutoff_fraction`` of them did (the rest are *stragglers*; cf. over-selection in
Bonawitz et al., "Towards Federated Learning at Scale", MLSys 2019), or at the deadline
(the rest *failed*). Declines are neither. The round log (``Emit("round", ...)``) carries
``failure_rate`` and ``participation_rate`` for children and, via the aggregators' leaf
accounting, for clients.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Unpack

from ..actions import Action, Compute, Emit, EvalJob, EvalResult, Send, Stop, TrainResult
from ..errors import RemoteProtocolError, RoundFailed
from ..training.personal import COLD_START, PersonalTally
from ..training.rulespec import RuleUnavailable
from ..wire import messages as m
from .root import RootArgs, RootRole, flag_events


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
    available: int = 0
    leaves: dict[str, int] = field(default_factory=dict)
    arrived: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)
    stragglers: set[str] = field(default_factory=set)
    stale: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    examples: int = 0
    train_loss: float = 0.0
    aggregators: int = 0
    clients: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    #: central DP: the round's sampling rate (clients selected / available)
    dp_q: float = 0.0
    #: [personal]: the members' personalised accuracies (fednode.training.personal)
    personal: PersonalTally = field(default_factory=PersonalTally)


class Coordinator(RootRole):
    """Runs ``rounds.rounds`` synchronous rounds over whichever children advertise."""

    def __init__(self, *, max_retries: int | None = None, **root: Unpack[RootArgs]) -> None:
        super().__init__(**root)
        self.max_retries = self.rounds.max_retries if max_retries is None else max_retries
        self.state = State.WAITING
        self.current: RoundState | None = None
        self.previous: RoundState | None = None
        self.waiting_since: float | None = None
        self._attempt = 0
        self._table: dict[tuple[State, m.Kind], Callable[[Any, float], list[Action]]] = {}
        for state in State:
            self._table[(state, m.Kind.ADVERT)] = self._on_advert
            self._table[(state, m.Kind.BYE)] = self._on_bye
            self._table[(state, m.Kind.UPDATE)] = self._on_stale_update
            self._table[(state, m.Kind.REJECT)] = lambda msg, now: []
            self._table[(state, m.Kind.ACK)] = lambda msg, now: []
        self._table[(State.FITTING, m.Kind.UPDATE)] = self._on_update
        self._table[(State.FITTING, m.Kind.REJECT)] = self._on_reject

    # --- inputs --------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        self.waiting_since = now
        return self.poll(now)

    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
        if up:
            return self._peer_up(peer)
        actions = self._peer_down(peer)
        cur = self.current
        if self.state is State.FITTING and cur and peer in cur.selected and peer not in cur.arrived:
            cur.failed.add(peer)
            return actions + self._maybe_finish(now)
        return actions

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
            wait = self.waiting_since + self.rounds.wait_for_clients_s
            return min([wait, *self.tree.promoting.values()])
        return None

    def poll(self, now: float) -> list[Action]:
        if self.state is State.WAITING:
            return self._try_start_round(now)
        if self.state is State.FITTING and self.current and now >= self.current.deadline:
            return self._finish_round(now)
        return []

    # --- handlers ------------------------------------------------------------------------
    def _on_advert(self, msg: m.Advert, now: float) -> list[Action]:
        fresh = msg.sender not in self.tree.direct  # [personal] cold start: a new member?
        actions = self._advert_in(msg) + self._cold_start(msg.sender, fresh)
        cur = self.current
        moved = msg.parent and msg.parent != self.tree.me
        if (
            self.state is State.FITTING
            and cur
            and moved
            and msg.sender in cur.selected - cur.arrived - cur.failed
        ):
            cur.declined.add(msg.sender)  # it reports elsewhere now: will not answer us
            return actions + self._maybe_finish(now)
        return actions + self.poll(now) if self.state is State.WAITING else actions

    def _cold_start(self, peer: str, fresh: bool) -> list[Action]:
        """[personal] A client admitted after the first round gets the current model at
        once (a Fit marked ``cold_start``: it holds it, it does not train on it), not only
        when a round selects it (docs/PERSONALISATION.md)."""
        advert = self.tree.direct.get(peer)
        cur = self.current
        if not fresh or advert is None or advert.role != "client" or self.model_version < 1:
            return []
        if cur is not None and self.state is State.FITTING and peer in cur.selected:
            return []
        fit = self._fits([peer])[peer]
        cold = dataclasses.replace(fit, config={**fit.config, COLD_START: 1})
        return [Send(peer, cold), Emit("cold_start_sent", {"peer": peer, "round": fit.round})]

    def _on_bye(self, msg: m.Bye, now: float) -> list[Action]:
        return self.on_peer(msg.sender, False, now)

    def _on_stale_update(self, msg: m.Update, now: float) -> list[Action]:
        self.broadcast.acked(msg.sender, msg.model_version)
        prev = self.previous
        if prev and msg.round == prev.number and msg.sender in prev.selected:
            self.observe(msg.sender).duration_s = now - prev.started  # a straggler's real time
        if self.current:
            self.current.stale += 1
        return [Emit("stale_update", {"peer": msg.sender, "round": msg.round})]

    def _on_update(self, msg: m.Update, now: float) -> list[Action]:
        cur = self.current
        assert cur is not None
        if (
            msg.round != cur.number
            or msg.model_version != self.model_version
            or msg.sender not in cur.selected
            or msg.sender in cur.arrived | cur.stragglers
        ):
            return self._on_stale_update(msg, now)
        if msg.vector is None or msg.num_examples <= 0:
            raise RemoteProtocolError("update without a decoded delta or examples", peer=msg.sender)
        self.aggregator.add(msg.vector, float(msg.num_examples), msg.sender)
        self.broadcast.acked(msg.sender, msg.model_version)
        cur.arrived.add(msg.sender)
        cur.failed.discard(msg.sender)
        cur.bytes_up += len(msg.payload)
        cur.examples += msg.num_examples
        loss = float(msg.metrics.get("train_loss", 0.0))
        cur.train_loss += loss * msg.num_examples
        clients = int(msg.metrics.get("clients", 1))
        reported = int(msg.metrics.get("clients_selected", clients))
        # clients it was asked for: what we knew at the start or what it found, if more
        cur.leaves[msg.sender] = max(cur.leaves.get(msg.sender, 0), reported, clients)
        cur.clients += clients
        cur.losses[msg.sender] = loss
        cur.personal.add(msg.metrics)  # [personal]: personalised accuracy, when reported
        obs = self.observe(msg.sender)
        obs.duration_s, obs.examples = now - cur.started, msg.num_examples
        return self._maybe_finish(now)

    def _on_reject(self, msg: m.Reject, now: float) -> list[Action]:
        cur = self.current
        assert cur is not None
        if msg.round != cur.number or msg.sender not in cur.selected - cur.arrived:
            return []
        if resend := self._resend_full(msg):
            return resend  # a delta it could not apply: the full model, once
        if msg.reason.startswith("declined"):  # did not want to: not a failure
            cur.declined.add(msg.sender)
            cur.failed.discard(msg.sender)
        else:  # e.g. an aggregator none of whose clients answered
            cur.failed.add(msg.sender)
        event = Emit(
            "declined" if msg.sender in cur.declined else "child_failed",
            {"peer": msg.sender, "reason": msg.reason},
        )
        return [event, *self._maybe_finish(now)]

    # --- round steps ---------------------------------------------------------------------
    def _try_start_round(self, now: float) -> list[Action]:
        actions = self._tree_maintenance(now)
        if self.tree.settling(now):
            return actions  # a promotion is in flight: the next round uses the new tree
        available = self.candidates()
        leaves = sum(self.tree.leaves(c.peer) for c in available)
        if leaves < self.rounds.min_available_clients or not available:
            since = self.waiting_since if self.waiting_since is not None else now
            if now - since >= self.rounds.wait_for_clients_s:
                return actions + self._fail(
                    now,
                    f"only {leaves} clients available after "
                    f"{self.rounds.wait_for_clients_s:g}s; min_available_clients is "
                    f"{self.rounds.min_available_clients}",
                )
            return actions
        want = max(self.rounds.min_fit_clients, round(self.rounds.fraction_fit * len(available)))
        chosen = self.selection.select(available, min(want, len(available)), self.rng)
        dp_q = sum(self.tree.leaves(p) for p in chosen) / max(leaves, 1)
        stop = self.privacy_stop(dp_q, self.round_number)  # [privacy] epsilon_budget
        if stop:
            self.state = State.DONE
            return actions + stop
        self.current = RoundState(
            number=self.round_number,
            attempt=self._attempt,
            started=now,
            deadline=now + self.rounds.round_deadline_s,
            selected=frozenset(chosen),
            available=leaves,
            leaves={p: self.tree.leaves(p) for p in chosen},
            aggregators=sum(self.tree.direct[p].role == "aggregator" for p in chosen),
            dp_q=dp_q,
        )
        self.aggregator.start(self.params.shape[0], capacity=len(chosen))
        self.state = State.FITTING
        fits = self._fits(sorted(chosen))
        for peer, fit in fits.items():
            self.current.bytes_down += len(fit.payload)
            self.observe(peer).last_selected = self.round_number
            actions.append(Send(peer, fit))
        actions.append(
            Emit(
                "round_start",
                {
                    "round": self.round_number,
                    "attempt": self._attempt,
                    "selected": len(chosen),
                    "available": len(available),
                    "clients": sum(self.current.leaves.values()),
                },
            )
        )
        return actions

    def _maybe_finish(self, now: float) -> list[Action]:
        cur = self.current
        if cur is None or self.state is not State.FITTING:
            return []
        answered = len(cur.arrived) + len(cur.failed) + len(cur.declined)
        if answered >= len(cur.selected):
            return self._finish_round(now)
        need = math.ceil(self.rounds.cutoff_fraction * (len(cur.selected) - len(cur.declined)))
        if self.rounds.cutoff_fraction < 1 and len(cur.arrived) >= max(need, 1):
            cur.stragglers = set(cur.selected) - cur.arrived - cur.failed - cur.declined
            return self._finish_round(now)
        return []

    def _finish_round(self, now: float) -> list[Action]:
        cur = self.current
        assert cur is not None
        cur.failed |= set(cur.selected) - cur.arrived - cur.declined - cur.stragglers
        for peer in cur.failed | cur.stragglers:  # alive but slow: it took at least this long
            if peer in self.tree.direct:
                obs = self.observe(peer)
                obs.duration_s = max(obs.duration_s or 0.0, now - cur.started)
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
            self.previous = cur
            self._attempt += 1
            return actions + self._try_start_round(now)
        try:
            delta, _total = self.aggregator.finish()
        except RuleUnavailable as exc:
            return self._skip_round(now, str(exc))
        if self.privacy is not None:  # central DP: the noised aggregate is released
            self.privacy.spend(cur.dp_q)
        actions = flag_events(self.aggregator.report, cur.number)
        self._apply(delta)
        mean_loss = cur.train_loss / max(cur.examples, 1)
        for peer, loss in cur.losses.items():  # relative to its round: comparable across rounds
            self.observe(peer).loss = loss / mean_loss if mean_loss > 0 else loss
        self.state = State.EVALUATING
        return [*actions, Compute(EvalJob(cur.number, self.params))]

    def _skip_round(
        self, now: float, reason: str, mark: str = "rule", event: str = ""
    ) -> list[Action]:
        """The round cannot release a model (the rule cannot run on its updates; ``mark``
        names the cause in the ``round_failed`` event, ``event`` emits the same record
        first under its own name): the round fails (model unchanged) and the next round
        starts; after the last round the coordinator stops."""
        cur = self.current
        assert cur is not None
        info = {"round": cur.number, "attempt": cur.attempt, "reason": reason, mark: True}
        actions: list[Action] = [Emit(event, dict(info))] if event else []
        actions.append(Emit("round_failed", info))
        self.previous = cur
        if cur.number >= self.rounds.rounds:
            self.state, self.done = State.DONE, True
            return [*actions, Stop(f"finished {cur.number} rounds (the last failed: {reason})")]
        self.round_number += 1
        self._attempt = 0
        self.state = State.WAITING
        self.waiting_since = now
        return actions + self._try_start_round(now)

    def round_record(self, cur: RoundState, result: EvalResult, now: float) -> dict[str, Any]:
        selected = len(cur.selected)
        clients_selected = sum(cur.leaves.values())
        declined = sum(cur.leaves.get(p, 0) for p in cur.declined)
        lost = clients_selected - cur.clients - declined
        return {
            "round": cur.number,
            "accuracy": result.metrics.get("accuracy", float("nan")),
            "loss": result.loss,
            "selected": selected,
            "completed": len(cur.arrived),
            "failed": len(cur.failed),
            "declined": len(cur.declined),
            "stragglers": len(cur.stragglers),
            "failure_rate": len(cur.failed) / selected,
            "available": cur.available,
            "participation_rate": cur.clients / max(cur.available, 1),
            "clients_selected": clients_selected,
            "clients_completed": cur.clients,
            "clients_failed": lost,
            "client_failure_rate": lost / max(clients_selected, 1),
            "clients_declined": declined,
            "aggregators": cur.aggregators,
            "stale": cur.stale,
            "examples": cur.examples,
            "train_loss": cur.train_loss / max(cur.examples, 1),
            "bytes_up": cur.bytes_up,
            "bytes_down": cur.bytes_down,
            "duration_s": now - cur.started,
            "time_s": now,
            "attempt": cur.attempt,
            "model_version": self.model_version,
            **self.aggregator.report.record(),
            **self.privacy_record(),
            **cur.personal.record(),  # [personal]
        }

    def _on_evaluated(self, result: EvalResult, now: float) -> list[Action]:
        cur = self.current
        assert cur is not None
        record = self.round_record(cur, result, now)
        self.history.append(record)
        actions: list[Action] = [Emit("round", record), *self._checkpoint(cur.number)]
        self.previous = cur
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
