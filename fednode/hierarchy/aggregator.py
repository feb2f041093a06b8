"""Regional aggregator: a coordinator for its region, a client for the coordinator (pure).

On a ``Fit`` from its parent it forwards the model to its children, folds their deltas into
the same :class:`~fednode.training.aggregate.StreamingMean` the coordinator uses, and
answers with one ``Update`` whose delta is the weighted mean and whose ``num_examples`` is
the region's total — so the coordinator treats it exactly like a client, and with one edge
round two-tier FedAvg equals star FedAvg (sum of sums). With ``edge_rounds`` = E > 1 it
runs E local rounds per global round, each starting from the previous edge model
(HierFAVG: Liu, Zhang, Song, Letaief, "Client-Edge-Cloud Hierarchical Federated
Learning", ICC 2020)::

    IDLE --Fit from parent--> FITTING(edge 1) --all in / deadline--> ... FITTING(edge E)
      ^                                                                    |
      +-------- Update up (delta = edge model - global, examples = total) -+
                 or Reject up (no child answered)

Its deadline is shorter than the coordinator's: ``aggregator_deadline_fraction`` of the
``deadline_s`` carried in ``Fit.config``, split across the edge rounds. Leaf accounting
travels up in ``Update.metrics`` (``clients``, ``clients_selected``, ``clients_failed``)
so the coordinator's round log shows client-level failure rates.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..actions import Action, Compute, Emit, EvalResult, Send, TrainJob, TrainResult
from ..config import TierParams
from ..errors import DeltaError, LocalProtocolError, RemoteProtocolError
from ..role import RoleDefaults
from ..training.aggregate import Aggregator, StreamingMean
from ..training.personal import PersonalTally
from ..training.rulespec import RuleUnavailable
from ..wire import messages as m
from ..wire.codecs import ErrorFeedback, parse_codec
from .broadcast import VERSION_KEY, Broadcaster, PublicCopy, plain_config, refuse_delta

MAX_KNOWN = 256


class State(enum.Enum):
    IDLE = "idle"
    FITTING = "fitting"


@dataclass
class EdgeJob:
    fit: m.Fit
    base: np.ndarray = field(repr=False)
    model: np.ndarray = field(repr=False)
    started: float
    budget_s: float
    edge_round: int = 0
    deadline: float = 0.0
    #: local version of the edge model the children were sent (their Updates echo it)
    seq: int = 0
    selected: frozenset[str] = frozenset()
    arrived: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)
    examples: int = 0
    loss: float = 0.0
    clients: int = 0
    first_selected: int = 0
    #: [personal]: the last edge round's personalised accuracies (fednode.training.personal)
    personal: PersonalTally = field(default_factory=PersonalTally)


Handler = Callable[[Any, float], list[Action]]


def child_table(
    role: Any, states: Iterable[enum.Enum], *, on_reject: Handler
) -> dict[tuple[Any, m.Kind], Handler]:
    """The (state, kind) -> handler entries every child of the tree (client, aggregator)
    shares in all its states: its parent's adverts, fits, assignments and bye; acks are
    ignored; rejects go to ``on_reject``. The role adds its own entries."""

    def bye(msg: Any, now: float) -> list[Action]:
        return role.on_peer(msg.sender, False, now)

    def ignore(msg: Any, now: float) -> list[Action]:
        return []

    table: dict[tuple[Any, m.Kind], Handler] = {}
    for state in states:
        table[(state, m.Kind.ADVERT)] = role._on_advert
        table[(state, m.Kind.FIT)] = role._on_fit
        table[(state, m.Kind.ASSIGN)] = role._on_assign
        table[(state, m.Kind.BYE)] = bye
        table[(state, m.Kind.ACK)] = ignore
        table[(state, m.Kind.REJECT)] = on_reject
    return table


class RegionalAggregator(RoleDefaults):
    role = "aggregator"

    def __init__(
        self,
        *,
        federation: str = "fednode",
        task: str = "digits",
        region: str = "",
        parent: str = "",
        children: tuple[str, ...] = (),
        tier: TierParams | None = None,
        default_deadline_s: float = 60.0,
        trains: bool = False,
        aggregator: Aggregator | None = None,
        codec: str = "none",
        error_feedback: bool = True,
    ) -> None:
        self.federation = federation
        #: the region's update up: this codec, with error feedback if lossy (client-like)
        self.codec = parse_codec(codec)
        self.error_feedback = error_feedback and codec != "none"
        self.ef: ErrorFeedback | None = None
        #: the public model rebuilt from the parent's broadcasts, forwarded to the children
        self.public = PublicCopy()
        self.broadcast = Broadcaster()
        self.task = task
        self.region = region
        self.parent = parent
        self.tier = tier or TierParams()
        self.default_deadline_s = default_deadline_s
        #: also train on local data as its own child (a promoted client keeps its data in)
        self.trains = trains
        self._train_seq = 0
        #: children by their last advert (None: assigned by the coordinator, not heard yet)
        self.children: dict[str, m.Advert | None] = dict.fromkeys(children)
        self.known: dict[str, m.Advert] = {}
        self.me = ""
        #: this node's listen addresses, advertised (the node sets them once it listens)
        self.addrs: tuple[str, ...] = ()
        self.aggregator: Aggregator = aggregator or StreamingMean()
        self.state = State.IDLE
        self.job: EdgeJob | None = None
        self._seq = 0
        self.done = False
        self.rounds_done = 0
        self._table = child_table(self, State, on_reject=self._on_reject)
        self._table[(State.IDLE, m.Kind.UPDATE)] = self._on_stale
        self._table[(State.FITTING, m.Kind.UPDATE)] = self._on_update

    # --- role interface -------------------------------------------------------------
    def advert(self) -> m.Advert:
        accepting = [p for p, a in self.children.items() if a is None or a.accepting]
        return m.Advert(
            role="aggregator",
            federation=self.federation,
            task=self.task,
            region=self.region,
            parent=self.parent,
            load=len(self.children) + self.trains,
            accepting=bool(accepting) or self.trains,
            children=tuple(sorted(self.children)),
            addrs=self.addrs,
        )

    def start(self, now: float) -> list[Action]:
        return [Send(self.parent, self.advert())] if self.parent else []

    def set_listen_addrs(self, addrs: tuple[str, ...]) -> None:
        self.addrs = tuple(addrs)

    def status(self) -> dict[str, Any]:
        return {"role": self.role, "round": self.round, "parent": self.parent}

    def next_deadline(self) -> float | None:
        return self.job.deadline if self.state is State.FITTING and self.job else None

    def poll(self, now: float) -> list[Action]:
        if self.state is State.FITTING and self.job and now >= self.job.deadline:
            return self._finish_edge_round(now)
        return []

    def on_result(self, result: TrainResult | EvalResult, now: float) -> list[Action]:
        if not self.trains or not isinstance(result, TrainResult):
            raise LocalProtocolError(f"aggregator got a {type(result).__name__} it never asked for")
        job, seq, self._train_seq = self.job, self._train_seq, 0
        if self.state is not State.FITTING or job is None or seq != job.seq:
            return [Emit("stale_update", {"peer": self.me, "round": result.round})]
        delta = np.subtract(result.params, job.model, dtype=np.float32)
        self.aggregator.add(delta, float(result.num_examples), self.me)
        job.arrived.add(self.me)
        job.examples += result.num_examples
        job.loss += float(result.metrics.get("train_loss", 0.0)) * result.num_examples
        job.clients += 1
        job.personal.add(result.metrics)  # [personal]
        return self._maybe_finish(now)

    def handle(self, msg: m.Message, now: float) -> list[Action]:
        self.me = self.me or msg.recipient
        handler = self._table.get((self.state, msg.KIND))
        if handler is None:
            raise RemoteProtocolError(
                f"aggregator in state {self.state.value} does not accept {msg.KIND.name}",
                peer=msg.sender,
            )
        return handler(msg, now)

    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
        if up:
            return [Send(peer, self.advert())]
        self.known.pop(peer, None)
        if peer == self.parent:
            self.parent = ""
            self._abandon("parent lost")
            actions: list[Action] = [Emit("parent_lost", {"peer": peer})]
            coordinators = sorted(p for p, a in self.known.items() if a.role == "coordinator")
            if coordinators:
                self.parent = coordinators[0]
                actions.append(Send(self.parent, self.advert()))
            return actions
        if peer in self.children:
            return self._drop_child(peer, now)
        return []

    # --- handlers -------------------------------------------------------------------
    def _on_advert(self, msg: m.Advert, now: float) -> list[Action]:
        if msg.federation != self.federation:
            return []
        if msg.role == "coordinator":
            if len(self.known) < MAX_KNOWN:
                self.known[msg.sender] = msg
            if not self.parent:
                self.parent = msg.sender
                return [Send(msg.sender, self.advert())]
            return []
        if msg.role != "client":
            return []
        if msg.parent == self.me:
            new = msg.sender not in self.children or self.children[msg.sender] is None
            self.children[msg.sender] = msg
            return [Send(self.parent, self.advert())] if new and self.parent else []
        if msg.sender in self.children:  # it reports elsewhere now
            return self._drop_child(msg.sender, now)
        return []

    def _drop_child(self, peer: str, now: float) -> list[Action]:
        self.children.pop(peer, None)
        self.broadcast.forget(peer)
        actions: list[Action] = [Send(self.parent, self.advert())] if self.parent else []
        job = self.job
        if self.state is State.FITTING and job and peer in job.selected and peer not in job.arrived:
            job.failed.add(peer)
            actions += self._maybe_finish(now)
        return actions

    def _on_assign(self, msg: m.Assign, now: float) -> list[Action]:
        if msg.sender != self.parent and msg.sender not in self.known:
            raise RemoteProtocolError(
                "Assign from a node that is not a coordinator", peer=msg.sender
            )
        if msg.role != "aggregator":
            return [Emit("assign_refused", {"role": msg.role, "reason": "aggregators stay"})]
        for child in msg.children:
            self.children.setdefault(child, None)
        self.parent = msg.parent or msg.sender
        return [Send(self.parent, self.advert())]

    def _on_fit(self, msg: m.Fit, now: float) -> list[Action]:
        if msg.vector is None:
            raise RemoteProtocolError("Fit without a model", peer=msg.sender)
        if self.parent and msg.sender != self.parent:
            return [Send(msg.sender, self.advert())]  # not my parent: tell it where I am
        self.parent = msg.sender
        try:
            base = self.public.receive(msg)
        except DeltaError as exc:  # counted in self.public.rejected; the parent resends
            return refuse_delta(msg, exc)
        if VERSION_KEY in msg.config:
            self.broadcast.adopt(self.public, msg)
        actions: list[Action] = []
        if self.state is State.FITTING:
            actions.append(Emit("edge_abandoned", {"round": self.round}))
            self._abandon("newer Fit")
        deadline_s = msg.config.get("deadline_s", self.default_deadline_s)
        if not isinstance(deadline_s, int | float) or not 0 < deadline_s < math.inf:
            deadline_s = self.default_deadline_s  # from the wire: never trust a bad value
        base = np.asarray(base, dtype=np.float32)
        self.job = EdgeJob(
            fit=msg,
            base=base,
            model=base,
            started=now,
            budget_s=self.tier.aggregator_deadline_fraction * deadline_s / self.tier.edge_rounds,
        )
        self.state = State.FITTING
        return actions + self._start_edge_round(now)

    def _on_update(self, msg: m.Update, now: float) -> list[Action]:
        job = self.job
        assert job is not None
        if (
            msg.round != job.fit.round
            or msg.model_version != job.seq
            or msg.sender not in job.selected
            or msg.sender in job.arrived
            or msg.sender in job.failed
        ):
            return self._on_stale(msg, now)
        if msg.vector is None or msg.num_examples <= 0:
            raise RemoteProtocolError("update without a decoded delta or examples", peer=msg.sender)
        self.aggregator.add(msg.vector, float(msg.num_examples), msg.sender)
        self.broadcast.acked(msg.sender, job.fit.config.get(VERSION_KEY))
        job.arrived.add(msg.sender)
        job.examples += msg.num_examples
        job.loss += float(msg.metrics.get("train_loss", 0.0)) * msg.num_examples
        job.clients += int(msg.metrics.get("clients", 1))
        job.personal.add(msg.metrics)  # [personal]
        return self._maybe_finish(now)

    def _on_stale(self, msg: m.Message, now: float) -> list[Action]:
        return [Emit("stale_update", {"peer": msg.sender, "round": msg.round})]

    def _on_reject(self, msg: m.Reject, now: float) -> list[Action]:
        job = self.job
        if (
            self.state is State.FITTING
            and job
            and msg.sender in job.selected - job.arrived
            and msg.model_version == job.seq
        ):
            if self.broadcast.refused(msg.sender, msg.reason):  # the full model, once
                return [Send(msg.sender, self._child_fit(msg.sender, job))]
            job.declined.add(msg.sender)
            return self._maybe_finish(now)
        return []

    # --- edge rounds ----------------------------------------------------------------
    @property
    def round(self) -> int:
        return self.job.fit.round if self.job else 0

    def _abandon(self, reason: str) -> None:
        self.job = None
        self.state = State.IDLE

    def _start_edge_round(self, now: float) -> list[Action]:
        job = self.job
        assert job is not None
        ready = sorted(p for p, a in self.children.items() if a is None or a.accepting)
        train_self = self.trains and not self._train_seq  # one own job at a time
        if not ready and not train_self:
            return self._give_up(now, "declined: no children ready")
        job.edge_round += 1
        self._seq += 1
        job.seq = self._seq
        job.deadline = now + job.budget_s
        job.selected = frozenset(ready) | ({self.me} if train_self else set())
        job.arrived, job.failed, job.declined = set(), set(), set()
        job.examples, job.loss, job.clients = 0, 0.0, 0
        job.personal = PersonalTally()  # [personal]
        if job.edge_round == 1:
            job.first_selected = len(job.selected)
        self.aggregator.start(job.base.shape[0], capacity=len(job.selected))
        if job.edge_round == 1 and VERSION_KEY in job.fit.config:  # deltas or the full model
            actions: list[Action] = [Send(p, self._child_fit(p, job)) for p in ready]
        else:
            plain = self._plain_fit(job)  # one message for all: encoded once
            actions = [Send(p, plain) for p in ready]
        if train_self:
            self._train_seq = job.seq
            config = self._child_config(job)
            work = float(config.get("local_epochs", 1))
            actions.append(Compute(TrainJob(job.fit.round, job.model, config, work=work)))
        info = {"round": job.fit.round, "edge_round": job.edge_round, "selected": len(ready)}
        actions.append(Emit("edge_round_start", info))
        return actions

    def _child_config(self, job: EdgeJob) -> dict[str, Any]:
        config = plain_config(job.fit.config)
        config["deadline_s"] = job.budget_s
        config["edge_round"] = job.edge_round
        return config

    def _child_fit(self, peer: str, job: EdgeJob) -> m.Fit:
        """Edge round 1 under a public-model broadcast: the same step, or the full model."""
        config = self._child_config(job)
        return self.broadcast.fit_for(
            peer, round=job.fit.round, model_version=job.seq, config=config
        )

    def _plain_fit(self, job: EdgeJob) -> m.Fit:
        config = self._child_config(job)
        if job.edge_round == 1:  # forward the parent's encoded model as it came
            fit = m.Fit(
                round=job.fit.round,
                model_version=job.seq,
                codec=job.fit.codec,
                payload=job.fit.payload,
                config=config,
            )
        else:
            fit = m.Fit(
                round=job.fit.round,
                model_version=job.seq,
                codec="none",
                vector=job.model,
                config=config,
            )
        return fit

    def _maybe_finish(self, now: float) -> list[Action]:
        job = self.job
        if job and len(job.arrived) + len(job.failed) + len(job.declined) >= len(job.selected):
            return self._finish_edge_round(now)
        return []

    def _finish_edge_round(self, now: float) -> list[Action]:
        job = self.job
        assert job is not None
        job.failed |= set(job.selected) - job.arrived - job.declined
        if not job.arrived:
            return self._give_up(now, f"no results in edge round {job.edge_round}")
        try:
            mean, _ = self.aggregator.finish()
        except RuleUnavailable as exc:
            return self._give_up(now, f"edge round {job.edge_round}: {exc}")
        job.model = (job.model.astype(np.float64) + mean).astype(np.float32)
        report = self.aggregator.report
        flags: list[Action] = [
            Emit("update_flagged", {"round": job.fit.round, "peer": p, "rule": report.rule})
            for p in report.flagged
        ]
        record: dict[str, Any] = {
            "round": job.fit.round,
            "edge_round": job.edge_round,
            "selected": len(job.selected),
            "completed": len(job.arrived),
            "failed": len(job.failed),
            "declined": len(job.declined),
            "examples": job.examples,
            **report.record(),
        }
        actions: list[Action] = [*flags, Emit("edge_round", record)]
        if job.edge_round < self.tier.edge_rounds:
            return actions + self._start_edge_round(now)
        delta = np.subtract(job.model, job.base, dtype=np.float32)
        if self.error_feedback and self.ef is None:
            self.ef = ErrorFeedback(self.codec, delta.shape[0])
        lossy = self.codec.spec != "none"
        payload = self.ef.encode(delta) if self.ef else self.codec.encode(delta) if lossy else b""
        update = m.Update(
            round=job.fit.round,
            model_version=job.fit.model_version,
            num_examples=job.examples,
            metrics={
                "train_loss": job.loss / max(job.examples, 1),
                "clients": job.clients,
                "clients_selected": job.first_selected,
                "clients_failed": max(job.first_selected - job.clients, 0),
                "edge_rounds": job.edge_round,
                **job.personal.record(),  # [personal]
            },
            codec=self.codec.spec,
            payload=payload,
            vector=None if lossy else delta,  # "none": the sealer writes it (no copy)
        )
        self.rounds_done += 1
        self._abandon("done")
        actions.append(Send(self.parent, update))
        return actions

    def _give_up(self, now: float, reason: str) -> list[Action]:
        job = self.job
        rnd = job.fit.round if job else 0
        self._abandon(reason)
        actions: list[Action] = [Emit("edge_round_failed", {"round": rnd, "reason": reason})]
        if self.parent:
            actions.append(Send(self.parent, m.Reject(round=rnd, reason=reason)))
        return actions
