"""Client role: train on local data when its parent asks, send back a compressed delta.

Pure state machine. Error feedback (EF-SGD, Karimireddy et al. 2019; DGC, Lin et al. 2018)
keeps what the lossy codec dropped and adds it to the next update.

Where it sits in the tree:

* parent = the coordinator when it has none, or an aggregator of its own (non-empty)
  region; the coordinator may move it with ``Assign(role="client", parent=...)``. Every
  change of parent is advertised to the old and the new parent, so both trees agree.
* it trains only for its parent: a ``Fit`` from anyone else is answered with its advert
  (which tells the sender where it is) — a client is never counted under two parents.
* parent lost (peer down, ``Bye``, failed send): it re-homes at once to a coordinator it
  has heard from (or else an aggregator), which may place it again.
* not accepting (``accepting=False``): a ``Fit`` is declined with a ``Reject``.

Promotion without restart: on ``Assign(role="aggregator")`` from its coordinator the
client builds a :class:`~fednode.hierarchy.aggregator.RegionalAggregator` and from then on
delegates every call to it (``role`` becomes ``"aggregator"``). The runner keeps the same
object, so no runner change is needed.

Attacker (``[attack]``, tests and benchmarks only): with an
:class:`~fednode.training.attacks.Attacker` the client trains honestly and sends the
poisoned delta instead of its own; everything else (tree, codec, signing) is unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import numpy as np

from ..actions import Action, Compute, Emit, EvalResult, Send, TrainJob, TrainResult
from ..config import TierParams
from ..errors import DeltaError, RemoteProtocolError
from ..role import RoleDefaults
from ..training.aggregate import Aggregator
from ..training.attacks import Attacker
from ..training.personal import COLD_START
from ..wire import messages as m
from ..wire.codecs import ErrorFeedback, parse_codec
from .aggregator import RegionalAggregator, child_table
from .broadcast import PublicCopy, refuse_delta
from .secure_client import SecureMember

MAX_KNOWN = 256
MAX_UNANNOUNCED = 65536
#: a client with no parent this long after a peer appeared adverts to the peers it saw
DISCOVERY_S = 1.0


class State(enum.Enum):
    IDLE = "idle"
    TRAINING = "training"


class Client(RoleDefaults):
    def __init__(
        self,
        *,
        model_size: int,
        federation: str = "fednode",
        task: str = "digits",
        codec: str = "none",
        error_feedback: bool = True,
        region: str = "",
        accepting: bool = True,
        parent: str = "",
        tier: TierParams | None = None,
        aggregator_factory: Callable[[], Aggregator] | None = None,
        attacker: Attacker | None = None,
        secure: SecureMember | None = None,
    ) -> None:
        self.role = "client"
        #: builds the aggregator this client uses if it is promoted (None: FedAvg)
        self.aggregator_factory = aggregator_factory
        self.federation = federation
        self.task = task
        self.region = region
        self.accepting = accepting
        self.parent = parent
        self.tier = tier
        #: an attacker client poisons every update it sends (fednode.training.attacks)
        self.attacker = attacker
        self.codec = parse_codec(codec)
        self.ef = (
            ErrorFeedback(self.codec, model_size) if error_feedback and codec != "none" else None
        )
        self.state = State.IDLE
        self.done = False
        self._job: tuple[str, m.Fit, np.ndarray] | None = None
        self._pending: tuple[m.Fit, np.ndarray] | None = None
        #: the public model rebuilt from delta broadcasts (hierarchy/broadcast.py)
        self.public = PublicCopy()
        #: [personal] the model last received (a cold-start Fit's, or a round's)
        self.held: np.ndarray | None = None
        self.rounds_trained = 0
        self.declined = 0
        #: coordinators and aggregators heard from (re-homing candidates)
        self.known: dict[str, m.Advert] = {}
        self._assigned = False
        self._drop_results = 0
        #: (round, parent) of the last training: a client moved to another parent while
        #: its old one is alive must not train the same round twice (counted twice)
        self._trained: tuple[int, str] | None = None
        self._unannounced: set[str] = set()
        self._discover_at: float | None = None
        #: set once promoted: every call is delegated to it
        self.promoted: RegionalAggregator | None = None
        #: this node's listen addresses, advertised (the node sets them once it listens)
        self.addrs: tuple[str, ...] = ()
        self._table = child_table(self, State, on_reject=lambda msg, now: [])
        #: [secagg]: answers a secure round's stages instead of sending an Update
        self.secure = secure
        if secure is not None:  # secagg hook: SecAgg frames go to the member's state
            for state in State:
                self._table[(state, m.Kind.SECAGG)] = self._on_secagg

    def advert(self) -> m.Advert:
        return m.Advert(
            role="client",
            federation=self.federation,
            task=self.task,
            region=self.region,
            parent=self.parent,
            accepting=self.accepting,
            addrs=self.addrs,
        )

    # --- role interface (delegates once promoted) ------------------------------------
    def start(self, now: float) -> list[Action]:
        return [Send(self.parent, self.advert())] if self.parent else []

    def set_listen_addrs(self, addrs: tuple[str, ...]) -> None:
        self.addrs = tuple(addrs)
        if self.promoted:
            self.promoted.set_listen_addrs(addrs)

    def status(self) -> dict[str, Any]:
        if self.promoted:
            return self.promoted.status()
        return {"role": self.role, "parent": self.parent, "rounds_trained": self.rounds_trained}

    def next_deadline(self) -> float | None:
        return self.promoted.next_deadline() if self.promoted else self._discover_at

    def poll(self, now: float) -> list[Action]:
        if self.promoted:
            return self.promoted.poll(now)
        if self._discover_at is None or now < self._discover_at:
            return []
        peers, self._unannounced, self._discover_at = sorted(self._unannounced), set(), None
        if self.parent:
            return []
        advert = self.advert()
        return [Send(p, advert) for p in peers]

    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
        if self.promoted:
            return self.promoted.on_peer(peer, up, now)
        if up:
            return self._peer_up(peer, now)
        self.known.pop(peer, None)
        self._unannounced.discard(peer)
        if peer == self.parent:
            return self._rehome(peer)
        return []

    def handle(self, msg: m.Message, now: float) -> list[Action]:
        if self.promoted:
            return self.promoted.handle(msg, now)
        handler = self._table.get((self.state, msg.KIND))
        if handler is None:
            raise RemoteProtocolError(
                f"client in state {self.state.value} does not accept {msg.KIND.name}",
                peer=msg.sender,
            )
        return handler(msg, now)

    def set_accepting(self, accepting: bool) -> list[Action]:
        """Start or stop taking work (battery, metered network...); tells the parent."""
        self.accepting = accepting
        return [Send(self.parent, self.advert())] if self.parent and not self.promoted else []

    # --- tree ------------------------------------------------------------------------
    def _peer_up(self, peer: str, now: float) -> list[Action]:
        """Coordinators and aggregators advertise themselves to every peer that appears and
        clients answer them: O(N) messages, not a client-to-everyone O(N^2) broadcast. Only
        a client still without a parent ``DISCOVERY_S`` after peers appeared adverts to them
        (the coordinator may have missed its peer-up event, e.g. a full event queue)."""
        if peer == self.parent or peer in self.known:
            return [Send(peer, self.advert())]
        if not self.parent and len(self._unannounced) < MAX_UNANNOUNCED:
            self._unannounced.add(peer)
            if self._discover_at is None:
                self._discover_at = now + DISCOVERY_S
        return []

    def _move_to(self, parent: str, addrs: tuple[str, ...] = ()) -> list[Action]:
        """Report to ``parent`` from now on (dialing ``addrs`` if not connected to it)."""
        self._unannounced, self._discover_at = set(), None
        old, self.parent = self.parent, parent
        actions: list[Action] = [Send(parent, self.advert(), addrs)]
        if old and old != parent:
            actions.append(Send(old, self.advert()))  # so the old parent lets go
        return actions

    def _rehome(self, lost: str) -> list[Action]:
        self.parent = ""
        self._assigned = False
        self._trained = None  # what it trained for the lost parent died with it: train again
        actions: list[Action] = [Emit("parent_lost", {"peer": lost})]
        known = sorted(self.known.items())
        pick = [p for p, a in known if a.role == "coordinator"] or [
            p
            for p, a in sorted(known, key=lambda kv: (kv[1].region != self.region, kv[1].load))
            if a.role == "aggregator"
        ]
        if pick:
            actions += self._move_to(pick[0])
            actions.append(Emit("rehomed", {"from": lost, "to": pick[0]}))
        return actions

    def _on_advert(self, msg: m.Advert, now: float) -> list[Action]:
        if msg.federation != self.federation or msg.role not in ("coordinator", "aggregator"):
            return []
        if len(self.known) < MAX_KNOWN or msg.sender in self.known:
            self.known[msg.sender] = msg
        if msg.sender == self.parent:
            return []
        if not self.parent and msg.role == "coordinator":
            return self._move_to(msg.sender)
        current = self.known.get(self.parent)
        at_home = bool(current and current.role == "aggregator" and current.region == self.region)
        if (
            msg.role == "aggregator"
            and self.region
            and msg.region == self.region
            and not self._assigned
            and not at_home
        ):
            return self._move_to(msg.sender)
        return []

    def _on_assign(self, msg: m.Assign, now: float) -> list[Action]:
        sender = self.known.get(msg.sender)
        if msg.sender != self.parent and (sender is None or sender.role != "coordinator"):
            raise RemoteProtocolError("Assign from neither parent nor coordinator", peer=msg.sender)
        if msg.role == "aggregator":
            return self._promote(msg, now)
        if msg.role != "client" or not msg.parent:
            raise RemoteProtocolError(f"cannot take role {msg.role!r}", peer=msg.sender)
        self._assigned = True
        return self._move_to(msg.parent, msg.addrs) if msg.parent != self.parent else []

    def _promote(self, msg: m.Assign, now: float) -> list[Action]:
        agg = RegionalAggregator(
            federation=self.federation,
            task=self.task,
            region=self.region,
            parent=msg.parent or msg.sender,
            children=msg.children,
            tier=self.tier,
            trains=True,
            aggregator=self.aggregator_factory() if self.aggregator_factory else None,
            codec=self.codec.spec,
            error_feedback=self.ef is not None,
        )
        agg.public = self.public  # the public model it holds: its children get deltas of it
        agg.known = {p: a for p, a in self.known.items() if a.role == "coordinator"}
        agg.me = msg.recipient
        agg.addrs = self.addrs
        self.promoted, self.role = agg, agg.role
        # a training job in flight is dropped: its result must not reach the aggregator
        self._drop_results = 1 if self._job is not None else 0
        self._job = self._pending = None
        promoted = Emit("promoted", {"parent": agg.parent, "children": len(msg.children)})
        return [promoted, *agg.start(now)]

    def _on_secagg(self, msg: m.Message, now: float) -> list[Action]:
        assert self.secure is not None
        return self.secure.handle(msg, self.parent)

    # --- training --------------------------------------------------------------------
    def _on_fit(self, msg: m.Fit, now: float) -> list[Action]:
        if msg.vector is None:
            raise RemoteProtocolError("Fit without a model", peer=msg.sender)
        if self.parent and msg.sender != self.parent:
            return [Send(msg.sender, self.advert())]  # not my parent: tell it where I am
        try:
            model = self.public.receive(msg)
        except DeltaError as exc:  # counted in self.public.rejected; the parent resends
            return refuse_delta(msg, exc)
        self.held = model  # [personal] cold start: a model to hold, not a round to train
        if msg.config.get(COLD_START):
            self.parent = self.parent or msg.sender
            return [Emit("cold_start", {"round": msg.round, "model_version": msg.model_version})]
        if not self.accepting:
            self.declined += 1
            reject = m.Reject(round=msg.round, model_version=msg.model_version, reason="declined")
            return [Send(msg.sender, reject)]
        if self._trained and self._trained[0] == msg.round and self._trained[1] != msg.sender:
            # moved (Assign) after training this round for a parent that is still alive: its
            # aggregate already holds this client's update
            reject = m.Reject(round=msg.round, model_version=msg.model_version, reason="trained")
            return [Send(msg.sender, reject)]
        if not self.parent:
            self.parent = msg.sender
        if self.state is State.TRAINING:
            self._pending = (msg, model)  # the newest request wins once the current job ends
            return []
        return self._start(msg, model)

    def _start(self, msg: m.Fit, base: np.ndarray) -> list[Action]:
        self.state = State.TRAINING
        self._job = (msg.sender, msg, base)
        self._trained = (msg.round, msg.sender)
        config: dict[str, Any] = dict(msg.config)
        config["round"] = msg.round
        return [
            Compute(TrainJob(msg.round, base, config, work=float(config.get("local_epochs", 1))))
        ]

    def on_result(self, result: TrainResult | EvalResult, now: float) -> list[Action]:
        if self._drop_results:  # the client job that was running when it was promoted
            self._drop_results -= 1
            return []
        if self.promoted:
            return self.promoted.on_result(result, now)
        if self._job is None:
            return []
        assert isinstance(result, TrainResult)
        to, fit, base = self._job
        self._job = None
        self.state = State.IDLE
        self.rounds_trained += 1
        delta = np.subtract(result.params, base, dtype=np.float32)
        if self.attacker is not None:
            config = {**fit.config, "round": fit.round}
            delta = self.attacker.apply(delta, round=fit.round, base=base, config=config)
        if self.secure is not None and fit.config.get("secagg"):  # secagg hook
            loss = float(result.metrics.get("train_loss", 0.0))
            actions = self.secure.trained(to, fit, delta, result.num_examples, loss)
            return actions + self._next_pending()
        payload = self.ef.encode(delta) if self.ef else self.codec.encode(delta)
        actions = [
            Send(
                to,
                m.Update(
                    round=fit.round,
                    model_version=fit.model_version,
                    num_examples=result.num_examples,
                    metrics=result.metrics,
                    codec=self.codec.spec,
                    payload=payload,
                ),
            )
        ]
        return actions + self._next_pending()

    def _next_pending(self) -> list[Action]:
        if self._pending is None:
            return []
        pending, self._pending = self._pending, None
        return self._start(*pending)
