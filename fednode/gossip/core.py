"""What a gossip peer's averaging protocols work on: its model, its links and their upkeep.

:class:`PeerCore` holds a peer's state and the operations its two averaging protocols
(:mod:`.sync`, :mod:`.pairwise`) call on it: building link messages, replacing the model,
the round's training job and record, dropping a link, finishing. It also keeps the
links the peer should have (reach out to explicit, lost and random neighbours; expire
unanswered hellos). The role itself — its inputs, phases and the link handshake — is
:class:`~.peer.GossipPeer`, which picks the protocol (:meth:`PeerCore._averaging`).
The protocols import this module, never :mod:`.peer`, so the package has no import cycle.

Pure: no I/O, time only from the ``now`` arguments.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

import numpy as np

from ..actions import Action, Compute, Emit, EvalJob, Send, Stop, TrainJob, TrainResult
from ..config import GossipParams, TrainParams
from ..errors import LocalProtocolError
from ..privacy import LocalDp
from ..role import RoleDefaults
from ..training.attacks import Attacker
from ..training.clipping import parse_gossip_robust
from ..wire import messages as m
from .links import F32, Link, LinkCodec
from .states import TRANSITIONS, Phase

#: bound on the evaluations of the last rounds once the rounds are done (phase CLOSING)
FINAL_EVAL_S = 10.0
#: evaluations in flight at most (one running, four waiting); a round past it is skipped
MAX_EVALS = 5


class WaitFor(NamedTuple):
    """Hold the first round until ``peers`` other consortium members are up, at most
    ``limit_s`` seconds (a node: ``rounds.min_available_clients - 1`` and
    ``rounds.wait_for_clients_s``), so a peer that starts first does not train alone."""

    peers: int
    limit_s: float


class Averaging(Protocol):
    """What :class:`GossipPeer` asks of its averaging protocol (sync or async)."""

    def begin(self, now: float) -> list[Action]: ...
    def on_trained(self, result: TrainResult, now: float) -> list[Action]: ...
    def on_message(self, link: Link, msg: m.Gossip, now: float) -> list[Action]: ...
    def on_link_down(self, link: Link, now: float) -> list[Action]: ...
    def poll(self, now: float) -> list[Action]: ...
    def deadline(self) -> float | None: ...
    def welcome_round(self) -> int: ...


class PeerCore(RoleDefaults):
    """The state of a gossip peer (see :class:`~.peer.GossipPeer` for the arguments)."""

    role = "peer"

    def __init__(
        self,
        *,
        me: str,
        params: np.ndarray,
        gossip: GossipParams | None = None,
        train: TrainParams | None = None,
        rounds: int = 15,
        consortium: str = "fednode",
        codec: str = "none",
        neighbours: Iterable[str] | None = None,
        members: Iterable[str] | None = None,
        bootstrap: bool = False,
        seed: int = 0,
        wait_for: WaitFor | None = None,
        attacker: Attacker | None = None,
        privacy: LocalDp | None = None,
    ) -> None:
        self.gossip = gossip or GossipParams()
        #: local DP (``[privacy] mode = "local"``): clips and noises each round's delta
        self.privacy = privacy
        self.gossip.validate()
        #: ClippedGossip (``gossip.robust``), None for plain averaging
        self.clip = parse_gossip_robust(self.gossip.robust)
        #: an attacker peer poisons each round's local update (:meth:`trained_model`)
        self.attacker = attacker
        self.train = train or TrainParams()
        self.me = me
        self.rounds = rounds
        self.consortium = consortium
        self.explicit = None if neighbours is None else frozenset(neighbours) - {me}
        self.members = None if members is None else frozenset(members)
        self.bootstrapping = bootstrap
        self.rng = random.Random(f"fednode-gossip/{seed}/{me}")
        self.x = _frozen(params)
        self.codec = LinkCodec(codec, self.x.shape[0], seed=self.rng.getrandbits(32))
        self.gamma = self.gossip.step_size or self.codec.default_step()
        self.links: dict[str, Link] = {}
        self.candidates: set[str] = set()
        self.up_since: dict[str, float] = {}
        self.lost: set[str] = set()  # links dropped by a peer-down event: reopen on return
        self.cooldown: dict[str, float] = {}
        self.wait_for = wait_for
        self.phase = Phase.JOINING if wait_for is None else Phase.WAITING
        #: WAITING ends by this time at the latest (set by ``start``)
        self.wait_until = math.inf
        #: evaluate the model every this many rounds (0: never)
        self.eval_every = max(self.gossip.eval_every, 0)
        self.evaluating = 0  # evaluation jobs in flight
        #: CLOSING: the reason of the Stop to come and when it comes at the latest
        self.closing: tuple[str, float] | None = None
        self.round = 0
        self.completed = 0
        self.model_version = 0
        self.started = 0.0
        #: the next tick of the link maintenance (``_reach_out``) grid
        self.next_maintenance = 0.0
        #: True while no tick could open a link: every candidate is linked or unwanted
        #: and the degree is met. Ticks are skipped then (they would do nothing) until a
        #: link goes away or a candidate appears (:meth:`_unlink`, :meth:`on_peer`).
        self._settled = False
        #: no hello of ours can time out before this (inf: none pending); poll and
        #: next_deadline scan the links only once it has passed
        self.hello_due = math.inf
        self.train_loss = math.nan
        #: [personal]: the last training's personalised accuracy (fednode.training.personal)
        self.personal: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        #: (round, model at its end) of the last rounds, for observers (the simulator)
        self.recent: deque[tuple[int, np.ndarray]] = deque(maxlen=8)
        self.done = False
        #: the averaging protocol (sync or async), made by the role
        self.proto: Averaging = self._averaging()
        #: (phase, message key) -> name of the handler (shared by all peers of a mode)
        self._table = TRANSITIONS[self.gossip.mode]

    def _averaging(self) -> Averaging:
        """The averaging protocol for ``gossip.mode`` (the role's choice)."""
        raise NotImplementedError

    @property
    def params(self) -> np.ndarray:
        """The current local model (read-only; replaced, never modified in place)."""
        return self.x

    # --- helpers the protocols use ----------------------------------------------------------
    def message(
        self,
        mode: str,
        link: Link,
        payload: bytes,
        codec: str,
        *,
        diff: bool = False,
        reply: bool = False,
        degree: int | None = None,
        round: int | None = None,
        final: bool = False,
    ) -> m.Gossip:
        """A gossip message on ``link``; model exchanges take the link's next seq number."""
        seq = 0
        if mode not in ("hello", "welcome"):
            seq = link.send_seq
            link.send_seq += 1
        return m.Gossip(
            round=self.round if round is None else round,
            model_version=self.model_version,
            codec=codec,
            payload=payload,
            reply=reply,
            consortium=self.consortium,
            mode=mode,
            diff=diff,
            link=link.epoch,
            seq=seq,
            degree=self.degree() if degree is None else degree,
            ack=link.recv_seq,
            final=final,
        )

    def degree(self) -> int:
        return sum(1 for lk in self.links.values() if lk.up)

    def up_links(self) -> list[Link]:
        return sorted((lk for lk in self.links.values() if lk.up), key=lambda lk: lk.peer)

    def set_x(self, vec: np.ndarray, *, owned: bool = False) -> None:
        """Replace the model. ``owned``: ``vec`` is a new float32 vector nobody else holds
        (made by :func:`~.links.combine`), adopted without a copy."""
        if owned and vec.dtype == F32 and vec.ndim == 1 and vec.flags.owndata:
            vec.flags.writeable = False
            self.x = vec
        else:
            self.x = _frozen(vec)
        self.model_version += 1

    def trained_model(self, params: np.ndarray, base: np.ndarray) -> np.ndarray:
        """The model a finished training job leaves this peer with: ``params``, or for an
        attacker ``base + poison(params - base)`` — it adopts the poisoned model, so what
        it sends its neighbours (full models or CHOCO differences) is poisoned and its
        model copies stay consistent with theirs. Under local DP the delta is then clipped
        and noised the same way (:mod:`fednode.privacy.local`).

        A result that is not finite everywhere (training diverged, or an attacker's
        poison overflowed float32) is discarded: the peer keeps ``base``, counts it as
        ``training_discarded`` in its round record, and goes on (it could send nothing
        else: every codec refuses NaN/Inf)."""
        if self.attacker is not None:
            delta = np.subtract(params, base, dtype=F32)
            config = self.train_config()
            bad = self.attacker.apply(delta, round=self.round, base=base, config=config)
            with np.errstate(over="ignore", invalid="ignore"):
                params = np.add(base, bad, dtype=F32)
        if not np.isfinite(params).all():
            self.counters["training_discarded"] += 1
            return base
        if self.privacy is not None:  # local DP: the peer adopts (and sends) the noised model
            params = self.privacy.privatise(params, base)
        return params

    def train_config(self) -> dict[str, Any]:
        t = self.train
        return {
            "round": self.round,
            "local_epochs": t.local_epochs,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "momentum": t.momentum,
            "prox_mu": t.prox_mu,
        }

    def train_job(self) -> Compute:
        config = self.train_config()
        return Compute(TrainJob(self.round, self.x, config, work=float(self.train.local_epochs)))

    def drop(
        self, link: Link, now: float, *, notify: bool, reason: str, reach_out: bool = True
    ) -> list[Action]:
        """Forget ``link`` (telling the neighbour with a Bye when ``notify``)."""
        if self.links.get(link.peer) is link:
            self._unlink(link.peer, now)
        self.counters[f"dropped_{reason}"] += 1
        actions: list[Action] = []
        if notify:
            actions.append(Send(link.peer, m.Bye(round=link.epoch, reason=f"gossip: {reason}")))
        if reason == "down":
            self.lost.add(link.peer)
        elif reason == "misses":
            self.cooldown[link.peer] = now + self.gossip.hello_timeout_s
        if link.up:
            actions.append(Emit("gossip_link_down", {"peer": link.peer, "reason": reason}))
            actions += self.proto.on_link_down(link, now)
        return actions + (self._reach_out(now) if reach_out else [])

    def round_done(self, distances: list[float | None], extra: dict[str, Any]) -> list[Action]:
        """Close the current round: count it and emit its ``gossip_round`` record."""
        self.completed = self.round
        self.recent.append((self.round, self.x))
        seen = [d for d in distances if d is not None]
        record = {
            "round": self.round,
            "mode": self.gossip.mode,
            "neighbours": self.degree(),
            "distance": sum(seen) / len(seen) if seen else math.nan,
            "distance_max": max(seen) if seen else math.nan,
            "model_version": self.model_version,
            "train_loss": self.train_loss,
            **self.personal,  # [personal]
            "bytes_sent": self.codec.bytes_sent,
            **extra,
            **{k: v for k, v in self.counters.items() if v},
            **(self.privacy.record() if self.privacy is not None else {}),
        }
        actions: list[Action] = [Emit("gossip_round", record)]
        every = self.eval_every
        if every and self.round % every == 0 and self.evaluating < MAX_EVALS:
            self.evaluating += 1  # its result comes back to on_result as a gossip_eval
            actions.append(Compute(EvalJob(self.round, self.x)))
        return actions

    def finish(self, reason: str, now: float) -> list[Action]:
        """The rounds are done: stop, or first wait for the evaluations in flight (CLOSING,
        at most :data:`FINAL_EVAL_S`), so the last round's figure is not lost."""
        if self.evaluating:
            self.phase = Phase.CLOSING
            self.closing = (reason, now + FINAL_EVAL_S)
            return []
        return [self.stop(reason)]

    def stop(self, reason: str) -> Stop:
        self.phase = Phase.DONE
        self.done = True
        return Stop(reason)

    # --- membership ------------------------------------------------------------------------
    def _admits(self, peer: str) -> bool:
        return self.members is None or peer in self.members

    def _accepts(self, peer: str) -> bool:
        if self.phase is Phase.DONE:
            return False
        if self.explicit is not None and peer in self.explicit:
            return True
        return len(self.links) < self.gossip.max_degree

    def _maintenance_interval(self) -> float:
        return min(self.gossip.join_wait_s, self.gossip.hello_timeout_s) / 2

    def _reach_out(self, now: float) -> list[Action]:
        """Open the links this peer should have and does not (explicit, lost, or to degree)."""
        if self.phase in (Phase.WAITING, Phase.CLOSING, Phase.DONE):
            return []
        actions: list[Action] = []
        patient = self.gossip.join_wait_s
        for peer in sorted(self.candidates):
            if peer in self.links or self.cooldown.get(peer, -math.inf) > now:
                continue
            wanted = (self.explicit is not None and peer in self.explicit) or (
                peer in self.lost and len(self.links) < self.gossip.max_degree
            )
            # the lower id opens; the other waits a little before opening it itself
            if wanted and (self.me < peer or now >= self.up_since.get(peer, now) + patient):
                actions += self._hello(peer, now)
        if self.explicit is None:
            want = self.gossip.degree - len(self.links)
            pool = [
                p
                for p in sorted(self.candidates)
                if p not in self.links and self.cooldown.get(p, -math.inf) <= now
            ]
            for peer in self.rng.sample(pool, max(0, min(want, len(pool)))):
                actions += self._hello(peer, now)
        if self._nothing_to_open():
            self._settled = True
        else:
            self._unsettle(now)
        return actions

    def _nothing_to_open(self) -> bool:
        """Would a maintenance tick, now or at any later time, open no link? True when
        every candidate is linked or unwanted (neither explicit nor lost with room) and,
        without explicit neighbours, the degree is met or no candidate is left unlinked.
        Cooldowns and the patience of the higher id only delay a wanted link: not settled.
        """
        links, gp = self.links, self.gossip
        short = self.explicit is None and len(links) < gp.degree
        room = len(links) < gp.max_degree
        for peer in self.candidates:
            if peer in links:
                continue
            if short or (self.explicit is not None and peer in self.explicit):
                return False
            if room and peer in self.lost:
                return False
        return True

    def _unlink(self, peer: str, now: float) -> None:
        del self.links[peer]
        self._unsettle(now)

    def _unsettle(self, now: float) -> None:
        """Maintenance ticks again, from its grid's next tick (the ticks skipped while
        settled would have done nothing)."""
        if self._settled:
            self._settled = False
            step = self._maintenance_interval()
            while self.next_maintenance < now:
                self.next_maintenance += step

    def _expire_hellos(self, now: float) -> None:
        """Forget the links whose hello went unanswered for ``hello_timeout_s``."""
        timeout = self.gossip.hello_timeout_s
        for link in [lk for lk in self.links.values() if not lk.up and now >= lk.opened + timeout]:
            self._unlink(link.peer, now)
            self.cooldown[link.peer] = now + timeout
            self.counters["hello_timeouts"] += 1
        pending = [lk.opened + timeout for lk in self.links.values() if not lk.up]
        self.hello_due = min(pending, default=math.inf)

    def _hello(self, peer: str, now: float) -> list[Action]:
        link = Link(peer, self.rng.getrandbits(31) | 1, now)
        payload, spec = self.codec.encode_full(link, self.x)
        self.links[peer] = link
        self.hello_due = min(self.hello_due, now + self.gossip.hello_timeout_s)
        return [Send(peer, self.message("hello", link, payload, spec, round=self.completed))]


def _frozen(vec: np.ndarray) -> np.ndarray:
    out = np.array(vec, dtype=F32, copy=True)
    if out.ndim != 1:
        raise LocalProtocolError(f"model must be a flat float32 vector, got shape {out.shape}")
    out.flags.writeable = False
    return out
