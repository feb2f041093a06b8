"""Synchronous gossip rounds with Metropolis-Hastings weights (pure state machine part).

One round of peer *i* (D-PSGD, Lian et al. 2017, adapt-then-combine)::

    TRAINING   x_i <- local SGD from x_i                      (skipped for pure averaging)
    AVERAGING  send x_i and d_i to every neighbour            (d_i = links in this step)
               wait for every neighbour's model of this step, or the step deadline
               x_i <- x_i + gamma * sum_j w_ij (x_j - x_i),   w_ij = 1 / (1 + max(d_i, d_j))
               (``steps`` times), then emit ``gossip_round``

With gamma = 1 this is ``x_i <- sum_j W_ij x_j`` with the Metropolis-Hastings matrix ``W``
(Xiao & Boyd, "Fast linear iterations for distributed averaging", 2004): symmetric and
doubly stochastic, so the network average is invariant, and the disagreement shrinks by
``rho = max_{k>=2} |lambda_k(W)|`` per step. Each peer computes its row from the degrees
its neighbours send, so no peer needs to know the graph.

Steps pair up per link, not by a global round number: a peer's n-th message on a link
is averaged with the neighbour's n-th message on it (``seq``), so peers that joined late
or sat in different partitions need no clock agreement. A message ahead of its step waits
in the link; one that arrives after its step's deadline only updates the model copy
(compression stays consistent) and is not averaged — the only way besides loss in which
the sum can drift. A neighbour that misses ``miss_limit`` steps in a row is dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..actions import Action, Send, TrainResult
from ..errors import LocalProtocolError, RemoteProtocolError
from ..wire import messages as m
from .links import MAX_AHEAD, Link, mh_weight, mix
from .robust import clipped_mix
from .states import Phase

if TYPE_CHECKING:
    from .core import PeerCore


class SyncRounds:
    """The ``sync`` averaging protocol of a gossip peer (:class:`~.core.PeerCore`)."""

    def __init__(self, peer: PeerCore) -> None:
        self.p = peer
        self.step = 0
        self.degree = 0
        self.waiting: dict[str, Link] = {}
        self.arrived: list[tuple[Link, int]] = []
        self.step_deadline: float | None = None
        self.distances: list[float | None] = []
        self.missed = 0
        self.finished: list[Link] = []  # neighbours whose message this step was their last

    def begin(self, now: float) -> list[Action]:
        return self._start_round(now)

    def welcome_round(self) -> int:
        """The round whose first step will include a link opened now."""
        p = self.p
        if p.phase is Phase.AVERAGING and self.step + 1 >= p.gossip.steps:
            return p.completed + 2
        return p.completed + 1

    def deadline(self) -> float | None:
        return self.step_deadline if self.p.phase is Phase.AVERAGING else None

    def poll(self, now: float) -> list[Action]:
        due = self.step_deadline
        if self.p.phase is Phase.AVERAGING and due is not None and now >= due:
            return self._combine(now)
        return []

    # --- round steps ---------------------------------------------------------------------
    def _start_round(self, now: float) -> list[Action]:
        p = self.p
        p.round = p.completed + 1
        if p.gossip.train:
            p.phase = Phase.TRAINING
            return [p.train_job()]
        return self._start_step(now)

    def on_trained(self, result: TrainResult, now: float) -> list[Action]:
        if self.p.phase is not Phase.TRAINING:
            raise LocalProtocolError(f"training result in phase {self.p.phase.value}")
        self.p.set_x(self.p.trained_model(result.params, self.p.x))
        return self._start_step(now)

    def _start_step(self, now: float) -> list[Action]:
        p = self.p
        p.phase = Phase.AVERAGING
        links = p.up_links()
        self.degree = len(links)
        self.waiting = {}
        self.arrived = []
        self.step_deadline = now + p.gossip.round_timeout_s
        x = p.x
        final = p.round >= p.rounds and self.step + 1 >= p.gossip.steps
        actions: list[Action] = []
        for link in links:
            payload, diff, spec = p.codec.encode(link, x)
            msg = p.message(
                "round", link, payload, spec, diff=diff, degree=self.degree, final=final
            )
            actions.append(Send(link.peer, msg))
            self.waiting[link.peer] = link
        for link in links:
            ahead = link.ahead.pop(link.recv_seq, None)
            if ahead is not None:
                self._accept(link, ahead)
        return actions + self._maybe_combine(now)

    def on_message(self, link: Link, msg: m.Gossip, now: float) -> list[Action]:
        p = self.p
        if msg.seq < link.recv_seq:  # its step timed out here: keep the copy, do not average
            p.codec.receive(link, msg)
            p.counters["late"] += 1
            return []
        if (
            p.phase is Phase.AVERAGING
            and self.waiting.get(link.peer) is link
            and msg.seq == link.recv_seq
        ):
            self._accept(link, msg)
            return self._maybe_combine(now)
        if len(link.ahead) >= MAX_AHEAD or msg.seq in link.ahead:
            raise RemoteProtocolError(
                f"round message {msg.seq} too far ahead (this peer expects {link.recv_seq})",
                peer=link.peer,
            )
        link.ahead[msg.seq] = msg
        return []

    def on_link_down(self, link: Link, now: float) -> list[Action]:
        if self.waiting.get(link.peer) is link:
            del self.waiting[link.peer]
            return self._maybe_combine(now)
        return []

    def _accept(self, link: Link, msg: m.Gossip) -> None:
        self.p.codec.receive(link, msg)
        link.degree = msg.degree
        link.recv_seq += 1
        del self.waiting[link.peer]
        self.arrived.append((link, msg.degree))
        if msg.final:
            self.finished.append(link)

    def _maybe_combine(self, now: float) -> list[Action]:
        if self.waiting or self.p.phase is not Phase.AVERAGING:
            return []
        return self._combine(now)

    def _combine(self, now: float) -> list[Action]:
        p = self.p
        actions: list[Action] = []
        missed, self.waiting = list(self.waiting.values()), {}
        arrived, self.arrived = self.arrived, []
        self.step_deadline = None
        if arrived:
            coefs = [p.gamma * mh_weight(self.degree, d_j) for _, d_j in arrived]
            links = [lk for lk, _ in arrived]
            if p.clip is None:
                x, dist = mix(p.x, links, coefs)
            else:  # ClippedGossip (gossip.robust)
                x, dist, clipped = clipped_mix(p.x, links, coefs, p.clip)
                p.counters["clipped"] += clipped
            self.distances += dist
            p.set_x(x, owned=True)
        finished, self.finished = self.finished, []
        for link in finished:
            if p.links.get(link.peer) is link:
                actions += p.drop(link, now, notify=False, reason="done", reach_out=False)
        for link in missed:
            link.recv_seq += 1  # its message for this step, if it comes, is late
            link.misses += 1
            self.missed += 1
            if link.misses >= p.gossip.miss_limit and p.links.get(link.peer) is link:
                actions += p.drop(link, now, notify=True, reason="misses")
        self.step += 1
        if self.step < p.gossip.steps:
            return actions + self._start_step(now)
        self.step = 0
        distances, self.distances = self.distances, []
        actions += p.round_done(distances, {"degree": self.degree, "missed": self.missed})
        self.missed = 0
        if p.completed >= p.rounds:
            return actions + p.finish(f"finished {p.completed} rounds", now)
        return actions + self._start_round(now)
