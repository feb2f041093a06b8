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

Waiting and evaluation (what a node sets up, :func:`fednode.node.build_role`; every node
and simulator builds its peer with :func:`fednode.factory.make_role`): built with
``wait_for`` the peer starts in phase WAITING and holds its first round until enough
members are up (``peers_ready``); with ``gossip.eval_every`` > 0 it asks for an
evaluation of its model after every that many rounds and emits ``gossip_eval``, waiting
in phase CLOSING for the last ones before it stops.

Time comes only from the ``now`` arguments. Errors: a message the current phase does not
accept, from a non-member, or for another consortium raises
:class:`~fednode.errors.RemoteProtocolError` / :class:`~fednode.errors.AuthError`; the
runner counts and logs it and nothing changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from ..actions import Action, Emit, EvalResult, Send, TrainResult
from ..errors import AuthError, LocalProtocolError, RemoteProtocolError
from ..role import byes
from ..wire import messages as m
from .core import Averaging, PeerCore
from .links import MAX_AHEAD, Link
from .pairwise import PairwiseGossip
from .states import Phase
from .sync import SyncRounds

#: phases that take no part in rounds or link upkeep (poll and deadline handled apart)
_HELD = frozenset({Phase.WAITING, Phase.CLOSING, Phase.DONE})
#: phases after the rounds: peer events no longer matter
_FINISHED = frozenset({Phase.CLOSING, Phase.DONE})


class GossipPeer(PeerCore):
    """``--role peer``: local training plus gossip averaging, no coordinator.

    ``me`` is this node's peer id (it breaks ties between two peers opening the same link);
    ``params`` the initial model. ``neighbours=None`` selects neighbours dynamically;
    ``members=None`` links with anyone the transport reports. ``wait_for``
    (:class:`~.core.WaitFor`) holds the first round until enough members are up
    (``peers_ready`` event); ``gossip.eval_every`` > 0 tests the model every that many
    rounds (``Compute(EvalJob)``, then a ``gossip_eval`` event).
    """

    def _averaging(self) -> Averaging:
        if self.gossip.mode == "sync":
            return SyncRounds(self)
        return PairwiseGossip(self)

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
        if self.wait_for is not None and self.phase is Phase.WAITING:
            self.started = now
            self.wait_until = now + self.wait_for.limit_s
            return self._maybe_stop_waiting(now)
        return self._join(now)

    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
        if peer == self.me or not self._admits(peer) or self.phase in _FINISHED:
            return []
        if up:
            self.candidates.add(peer)
            self.up_since.setdefault(peer, now)
            self.cooldown.pop(peer, None)
            if self.phase is Phase.WAITING:
                return self._maybe_stop_waiting(now)
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
        if isinstance(result, EvalResult):
            return self._evaluated(result)
        if not isinstance(result, TrainResult):
            raise LocalProtocolError(f"gossip peer got an unexpected {type(result).__name__}")
        self.train_loss = float(result.metrics.get("train_loss", math.nan))
        self.personal = {  # [personal]: reported in this round's gossip_round record
            k: float(v) for k, v in result.metrics.items() if k == "personal_accuracy"
        }
        return self.proto.on_trained(result, now)

    def poll(self, now: float) -> list[Action]:
        if self.phase in _HELD:
            return self._poll_held(now)
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
        if self.phase in _HELD:
            if self.phase is Phase.WAITING:
                return self.wait_until
            return self.closing[1] if self.closing and self.phase is Phase.CLOSING else None
        at = self.hello_due if self._settled else min(self.next_maintenance, self.hello_due)
        if self.phase is Phase.JOINING and self.started + self.gossip.join_wait_s < at:
            at = self.started + self.gossip.join_wait_s
        proto = self.proto.deadline()
        if proto is not None and proto < at:
            return proto
        return None if at == math.inf else at

    # --- waiting, evaluating, closing ----------------------------------------------------
    def _maybe_stop_waiting(self, now: float) -> list[Action]:
        """WAITING -> JOINING once enough members are up or the wait limit passed."""
        assert self.wait_for is not None
        have, want = len(self.candidates), self.wait_for.peers
        if have < want and now < self.wait_until:
            return []
        waited = round(now - self.started, 3)
        ready = Emit("peers_ready", {"peers": have, "wanted": want, "waited_s": waited})
        return [ready, *self._join(now)]

    def _join(self, now: float) -> list[Action]:
        """Start joining: open links to the peers up so far; the join wait starts now."""
        self.phase = Phase.JOINING
        self.started = now
        self.next_maintenance = now + self._maintenance_interval()
        actions = self._reach_out(now) if self.candidates else []
        return actions + self._maybe_begin(now)

    def _poll_held(self, now: float) -> list[Action]:
        if self.phase is Phase.WAITING:
            return self._maybe_stop_waiting(now)
        if self.phase is Phase.CLOSING and self.closing and now >= self.closing[1]:
            return [self.stop(self.closing[0])]
        return []

    def _evaluated(self, result: EvalResult) -> list[Action]:
        """An evaluation of ``round_done`` came back: its ``gossip_eval`` record (and the
        Stop, when it was the last one the CLOSING phase waited for)."""
        if self.phase is Phase.DONE:
            return []
        self.evaluating -= 1
        record = {
            "round": result.round,
            "accuracy": result.metrics.get("accuracy", math.nan),
            "loss": result.loss,
        }
        actions: list[Action] = [Emit("gossip_eval", record)]
        if self.phase is Phase.CLOSING and self.closing and not self.evaluating:
            actions.append(self.stop(self.closing[0]))
        return actions

    def on_ignored(self, msg: m.Message, now: float) -> list[Action]:
        return []  # CLOSING: the rounds are over; answer nobody, as a stopped node would

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
