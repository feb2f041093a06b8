"""The gossip peer: a member of a coordinator-free consortium (pure state machine, no I/O).

Every peer trains on its own data and averages its model with its neighbours'; nobody
holds a global model. This is decentralised SGD (D-PSGD, Lian et al., NeurIPS 2017) in
its adapt-then-combine form: a round is local training followed by averaging. Two
averaging protocols, chosen by :attr:`GossipParams.mode`:

* ``sync`` (:mod:`.sync`): every step each peer sends its model and degree to each
  neighbour, waits for theirs, and takes the Metropolis-Hastings weighted average
  (Xiao & Boyd 2004).
* ``async`` (:mod:`.pairwise`): randomized pairwise gossip (Boyd et al., IEEE Trans. Inf.
  Theory 2006): on the ticks of its own Poisson clock a peer exchanges models with one
  random neighbour and both take the pairwise mean; AD-PSGD (Lian et al., ICML 2018)
  style, training runs meanwhile.

Both conserve the network sum exactly when no message is lost (:mod:`.links` explains
the transfer form that guarantees it) and compress with CHOCO-gossip for lossy codecs.

Membership. Neighbours are either given (an explicit set, e.g. from a topology graph) or
chosen at random among the peers reported up, ``degree`` of them. Links open with a
``hello`` / ``welcome`` handshake; a peer accepts up to ``max_degree`` links (explicit
neighbours always) and answers a hello it cannot take with ``Reject``. Only consortium
members are linked (``members``; the envelope's allow-list refuses the others' frames
before they get here) and every message names the consortium. A peer started with
``bootstrap=True`` adopts the model, round and model version of its first welcome. A
link is dropped on a peer-down event, a ``Bye``, or after ``miss_limit`` missed steps or
exchanges; averaging weights renormalise by themselves (each step uses the degrees of
that step). Links lost to a peer-down event are reopened when the peer comes back (a
healed partition), up to ``max_degree``.

Time comes only from the ``now`` arguments. Errors: a message the current phase does not
accept, from a non-member, or for another consortium raises
:class:`~fednode.errors.RemoteProtocolError` / :class:`~fednode.errors.AuthError`; the
runner counts and logs it and nothing changes.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from ..actions import Action, Compute, Emit, EvalResult, Send, Stop, TrainJob, TrainResult
from ..config import GossipParams, NodeConfig, TrainParams
from ..errors import AuthError, LocalProtocolError, RemoteProtocolError
from ..role import RoleDefaults, byes
from ..wire import messages as m
from .links import F32, MAX_AHEAD, Link, LinkCodec
from .states import TRANSITIONS, Phase


class Averaging(Protocol):
    """What :class:`GossipPeer` asks of its averaging protocol (sync or async)."""

    def begin(self, now: float) -> list[Action]: ...
    def on_trained(self, result: TrainResult, now: float) -> list[Action]: ...
    def on_message(self, link: Link, msg: m.Gossip, now: float) -> list[Action]: ...
    def on_link_down(self, link: Link, now: float) -> list[Action]: ...
    def poll(self, now: float) -> list[Action]: ...
    def deadline(self) -> float | None: ...
    def welcome_round(self) -> int: ...


class GossipPeer(RoleDefaults):
    """``--role peer``: local training plus gossip averaging, no coordinator.

    ``me`` is this node's peer id (it breaks ties between two peers opening the same link);
    ``params`` the initial model. ``neighbours=None`` selects neighbours dynamically;
    ``members=None`` links with anyone the transport reports.
    """

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
    ) -> None:
        self.gossip = gossip or GossipParams()
        self.gossip.validate()
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
        self.phase = Phase.JOINING
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
        self.counters: Counter[str] = Counter()
        #: (round, model at its end) of the last rounds, for observers (the simulator)
        self.recent: deque[tuple[int, np.ndarray]] = deque(maxlen=8)
        self.done = False
        self.proto: Averaging
        if self.gossip.mode == "sync":
            from .sync import SyncRounds

            self.proto = SyncRounds(self)
        else:
            from .pairwise import PairwiseGossip

            self.proto = PairwiseGossip(self)
        #: (phase, message key) -> name of the handler (shared by all peers of a mode)
        self._table = TRANSITIONS[self.gossip.mode]

    @classmethod
    def from_config(
        cls,
        config: NodeConfig,
        *,
        me: str,
        params: np.ndarray,
        gossip: GossipParams | None = None,
        neighbours: Iterable[str] | None = None,
        bootstrap: bool = False,
    ) -> GossipPeer:
        """The peer a node with ``config`` runs (``--role peer``); the simulator builds the same.

        Consortium = ``net.federation``; members = ``net.allow`` unless membership is open.
        """
        net = config.net
        return cls(
            me=me,
            params=params,
            gossip=config.gossip if gossip is None else gossip,
            train=config.train,
            rounds=config.rounds.rounds,
            consortium=net.federation,
            codec=config.wire.codec,
            neighbours=neighbours,
            members=None if net.open_membership else (*net.allow, me),
            bootstrap=bootstrap,
            seed=config.seed,
        )

    @property
    def params(self) -> np.ndarray:
        """The current local model (read-only; replaced, never modified in place)."""
        return self.x

    # --- what adapters ask (fednode.role.Role) ------------------------------------------
    def goodbye(self, peers: Iterable[str], reason: str) -> list[Send]:
        """Each ``Bye`` names its link's epoch: that is how a neighbour tells which ends."""
        return byes(peers, reason, {p: lk.epoch for p, lk in self.links.items()})

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "round": self.completed,
            "model_version": self.model_version,
            "phase": self.phase.value,
            "neighbours": self.degree(),
        }

    def rejoin(self) -> None:
        """Rejoin like a new peer: adopt the model, round and model version of the first
        welcome (as ``bootstrap=True``)."""
        self.bootstrapping = True

    # --- inputs --------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        self.started = now
        self.next_maintenance = now + self._maintenance_interval()
        return self._maybe_begin(now)

    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
        if peer == self.me or not self._admits(peer) or self.phase is Phase.DONE:
            return []
        if up:
            self.candidates.add(peer)
            self.up_since.setdefault(peer, now)
            self.cooldown.pop(peer, None)
            return self._reach_out(now)
        self.candidates.discard(peer)
        self.up_since.pop(peer, None)
        link = self.links.get(peer)
        return self.drop(link, now, notify=False, reason="down") if link else []

    def handle(self, msg: m.Message, now: float) -> list[Action]:
        key = msg.mode if isinstance(msg, m.Gossip) else msg.KIND.name.lower()
        name = self._table.get((self.phase, key))
        if name is None:
            raise RemoteProtocolError(
                f"peer ({self.gossip.mode}) in phase {self.phase.value} does not accept "
                f"{msg.KIND.name} {key!r}",
                peer=msg.sender,
            )
        if isinstance(msg, m.Gossip):
            if not self._admits(msg.sender):
                raise AuthError("gossip from a peer that is not a consortium member")
            if msg.consortium != self.consortium:
                raise RemoteProtocolError(
                    f"gossip for consortium {msg.consortium!r}, this peer is in "
                    f"{self.consortium!r}",
                    peer=msg.sender,
                )
        handler: Callable[[Any, float], list[Action]] = getattr(self, name)
        return handler(msg, now)

    def on_result(self, result: TrainResult | EvalResult, now: float) -> list[Action]:
        if not isinstance(result, TrainResult):
            raise LocalProtocolError(f"gossip peer got an unexpected {type(result).__name__}")
        self.train_loss = float(result.metrics.get("train_loss", math.nan))
        return self.proto.on_trained(result, now)

    def poll(self, now: float) -> list[Action]:
        if self.phase is Phase.DONE:
            return []
        actions: list[Action] = []
        if now >= self.hello_due:
            self._expire_hellos(now)
        if not self._settled and now >= self.next_maintenance:
            self.next_maintenance = now + self._maintenance_interval()
            actions += self._reach_out(now)
        if self.phase is Phase.JOINING:
            actions += self._maybe_begin(now)
        more = self.proto.poll(now)
        return actions + more if actions else more

    def next_deadline(self) -> float | None:
        if self.phase is Phase.DONE:
            return None
        at = self.hello_due if self._settled else min(self.next_maintenance, self.hello_due)
        if self.phase is Phase.JOINING and self.started + self.gossip.join_wait_s < at:
            at = self.started + self.gossip.join_wait_s
        proto = self.proto.deadline()
        if proto is not None and proto < at:
            return proto
        return None if at == math.inf else at

    # --- link handshake ------------------------------------------------------------------
    def on_hello(self, msg: m.Gossip, now: float) -> list[Action]:
        peer = msg.sender
        actions: list[Action] = []
        link = self.links.get(peer)
        if link is not None and not link.up:  # both opened the link at once
            if self.me < peer:
                return []  # ours wins; they accept it
            self._unlink(peer, now)
        elif link is not None:  # they lost the link we still hold: start over
            actions += self.drop(link, now, notify=False, reason="reopened", reach_out=False)
        if not self._accepts(peer):
            self.counters["refused"] += 1
            return [*actions, Send(peer, m.Reject(round=msg.link, reason="gossip: no room"))]
        link = Link(peer, msg.link, now, up=True, degree=msg.degree)
        self.codec.receive(link, msg)
        payload, spec = self.codec.encode_full(link, self.x)
        self.links[peer] = link
        self.lost.discard(peer)
        welcome = self.message(
            "welcome", link, payload, spec, reply=True, round=self.proto.welcome_round()
        )
        return [*actions, Send(peer, welcome), *self._maybe_begin(now)]

    def on_welcome(self, msg: m.Gossip, now: float) -> list[Action]:
        link = self.links.get(msg.sender)
        if link is None or link.epoch != msg.link:
            return [Send(msg.sender, m.Bye(round=msg.link, reason="gossip: no such link"))]
        if link.up:
            raise RemoteProtocolError("second welcome for an open link", peer=msg.sender)
        link.up = True
        link.degree = msg.degree
        self.codec.receive(link, msg)
        self.lost.discard(link.peer)
        actions: list[Action] = []
        if self.bootstrapping and msg.vector is not None:
            self.bootstrapping = False
            self.set_x(msg.vector)
            self.model_version = msg.model_version
            self.completed = max(msg.round - 1, 0)
            actions.append(
                Emit(
                    "gossip_bootstrap",
                    {"from": msg.sender, "round": msg.round, "model_version": msg.model_version},
                )
            )
        early, link.early = link.early, []
        for pending in early:
            actions += self.on_exchange(pending, now)
        return actions + self._maybe_begin(now)

    def on_bye(self, msg: m.Bye, now: float) -> list[Action]:
        link = self.links.get(msg.sender)
        if link is None or link.epoch != msg.round:
            return []
        return self.drop(link, now, notify=False, reason="bye")

    def on_reject(self, msg: m.Reject, now: float) -> list[Action]:
        link = self.links.get(msg.sender)
        if link is None or link.up or link.epoch != msg.round:
            return []
        self._unlink(msg.sender, now)
        self.cooldown[msg.sender] = now + self.gossip.hello_timeout_s
        return self._reach_out(now)

    def on_advert(self, msg: m.Advert, now: float) -> list[Action]:
        return []  # roles of a two-tier federation sharing the network: not ours to answer

    def on_exchange(self, msg: m.Gossip, now: float) -> list[Action]:
        link = self.links.get(msg.sender)
        if link is None or link.epoch != msg.link:
            self.counters["stray"] += 1
            if link is None:  # tell them the link is gone so they stop waiting for us
                return [Send(msg.sender, m.Bye(round=msg.link, reason="gossip: no such link"))]
            return []
        if not link.up:  # overtook the welcome: hold it until the link is open
            if len(link.early) >= MAX_AHEAD:
                raise RemoteProtocolError("too many messages before the welcome", peer=link.peer)
            link.early.append(msg)
            return []
        link.misses = 0
        return self.proto.on_message(link, msg, now)

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

    def train_job(self) -> Compute:
        t = self.train
        config: dict[str, Any] = {
            "round": self.round,
            "local_epochs": t.local_epochs,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "momentum": t.momentum,
            "prox_mu": t.prox_mu,
        }
        return Compute(TrainJob(self.round, self.x, config, work=float(t.local_epochs)))

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
            "bytes_sent": self.codec.bytes_sent,
            **extra,
            **{k: v for k, v in self.counters.items() if v},
        }
        return [Emit("gossip_round", record)]

    def finish(self, reason: str) -> Stop:
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
        if self.phase is Phase.DONE:
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

    def _maybe_begin(self, now: float) -> list[Action]:
        if self.phase is not Phase.JOINING or not self._ready(now):
            return []
        return self.proto.begin(now)

    def _ready(self, now: float) -> bool:
        if self.bootstrapping:
            return False
        up = self.degree()
        if self.explicit:
            if all(p in self.links and self.links[p].up for p in self.explicit):
                return True
        elif self.explicit is None and up >= self.gossip.degree:
            return True
        return now >= self.started + self.gossip.join_wait_s and (up > 0 or self.gossip.train)


def _frozen(vec: np.ndarray) -> np.ndarray:
    out = np.array(vec, dtype=F32, copy=True)
    if out.ndim != 1:
        raise LocalProtocolError(f"model must be a flat float32 vector, got shape {out.shape}")
    out.flags.writeable = False
    return out
