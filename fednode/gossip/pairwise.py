"""Asynchronous randomized pairwise gossip (pure state machine part).

Randomized gossip (Boyd, Ghosh, Prabhakar & Shah, "Randomized gossip algorithms", IEEE
Trans. Inf. Theory 2006): every peer has its own Poisson clock; on a tick it picks a
random neighbour and the two replace their models by the pairwise mean. No global clock,
no rounds to agree on. With local training running meanwhile this is AD-PSGD (Lian et
al., "Asynchronous decentralized parallel SGD", ICML 2018); a training result is applied
as a delta, so exchanges made during training are kept.

One exchange, initiator *i*, responder *j*::

    i --push(x_i)--> j      j: x_j <- x_j + gamma/2 (x_i - x_j); reply first with its old x_j
    i <--pull(x_j)-- j      i: x_i <- x_i + gamma/2 (x_j - x_i)

Atomicity. A peer runs one exchange of its own at a time and has at most one push per
link in flight. A push that arrives while the peer waits for a pull is *deferred* (served
when the exchange ends), so its model copies never mix two exchanges. Two pushes that
cross on a link (each sent before the other arrived, told apart by ``ack``) complete one
exchange with no pull at all. In transfer form (:mod:`.links`) each side moves the same
difference with opposite signs, so the sum is conserved exactly — also when an initiator
gave up waiting (``exchange_timeout_s``) and the pull arrives later; a pull is applied
whenever it comes. Only a lost message breaks conservation.

A round here is ``round_s`` of the peer's clock with one local training job in it (none
for pure averaging); ``exchanges_per_round`` is the clock's rate (by default half the
peer's degree: about one exchange per link per round, see
:meth:`~.params.GossipParams.exchange_rate`). After its last round a
peer stops starting exchanges, finishes the ones still open (serving deferred pushes),
and stops.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from ..actions import Action, Send, TrainResult
from ..errors import RemoteProtocolError
from ..wire import messages as m
from .links import F64, Link, combine
from .robust import clipped_delta
from .states import Phase

if TYPE_CHECKING:
    from .core import PeerCore


class PairwiseGossip:
    """The ``async`` averaging protocol of a gossip peer (:class:`~.core.PeerCore`)."""

    def __init__(self, peer: PeerCore) -> None:
        self.p = peer
        self.next_tick: float | None = None
        self.round_end: float | None = None
        self.base: np.ndarray | None = None  # model the running training job started from
        self.exchange: Link | None = None  # the link of our own exchange in progress
        self.deferred: deque[tuple[Link, m.Gossip]] = deque()
        self.awaiting_until: dict[str, float] = {}
        self.drain_deadline: float | None = None
        self.exchanges = 0

    def begin(self, now: float) -> list[Action]:
        self.p.phase = Phase.RUNNING
        self.next_tick = now + self.p.rng.expovariate(self._rate())
        return self._start_round(now)

    def welcome_round(self) -> int:
        return max(self.p.round, 1)

    def deadline(self) -> float | None:
        p = self.p
        times = list(self.awaiting_until.values())
        if p.phase is Phase.RUNNING:
            if self.next_tick is not None:
                times.append(self.next_tick)
            if self.base is None and self.round_end is not None:
                times.append(self.round_end)
        if p.phase is Phase.DRAINING and self.drain_deadline is not None:
            times.append(self.drain_deadline)
        return min(times) if times else None

    def poll(self, now: float) -> list[Action]:
        p = self.p
        actions: list[Action] = []
        for peer, until in list(self.awaiting_until.items()):
            if now >= until:
                actions += self._timed_out(p.links[peer], now)
        if p.phase is Phase.RUNNING and self.next_tick is not None:
            ticked = False
            while self.next_tick <= now:
                self.next_tick += p.rng.expovariate(self._rate())
                ticked = True
            if ticked and self.exchange is None:
                actions += self._initiate(now)
            actions += self._maybe_end_round(now)
        if p.phase is Phase.DRAINING:
            actions += self._maybe_stop(now)
        return actions

    def _rate(self) -> float:
        """The Poisson clock's rate now (the automatic rate follows the degree)."""
        return self.p.gossip.exchange_rate(self.p.degree())

    # --- rounds --------------------------------------------------------------------------
    def _start_round(self, now: float) -> list[Action]:
        p = self.p
        p.round = p.completed + 1
        self.round_end = now + p.gossip.round_s
        if p.gossip.train:
            self.base = p.x
            return [p.train_job()]
        return []

    def on_trained(self, result: TrainResult, now: float) -> list[Action]:
        base, self.base = self.base, None
        if base is None:
            return []
        p = self.p
        trained = np.subtract(p.trained_model(result.params, base), base, dtype=F64)[None, :]
        p.set_x(combine(p.x, [1.0], trained), owned=True)
        return self._maybe_end_round(now)

    def _maybe_end_round(self, now: float) -> list[Action]:
        p = self.p
        if p.phase is not Phase.RUNNING or self.base is not None:
            return []
        if self.round_end is None or now < self.round_end:
            return []
        distances = [lk.distance(p.x) for lk in p.up_links()]
        actions = p.round_done(distances, {"exchanges": self.exchanges})
        if p.completed < p.rounds:
            return actions + self._start_round(now)
        p.phase = Phase.DRAINING
        self.round_end = None
        self.drain_deadline = now + p.gossip.exchange_timeout_s * p.gossip.miss_limit
        return actions + self._maybe_stop(now)

    def _maybe_stop(self, now: float) -> list[Action]:
        p = self.p
        idle = not self.awaiting_until and not self.deferred and self.exchange is None
        if idle or (self.drain_deadline is not None and now >= self.drain_deadline):
            open_ = len(self.awaiting_until) + len(self.deferred)
            return p.finish(f"finished {p.completed} rounds ({open_} exchanges left open)", now)
        return []

    # --- exchanges -----------------------------------------------------------------------
    def _initiate(self, now: float) -> list[Action]:
        p = self.p
        free = [lk for lk in p.up_links() if lk.awaiting is None]
        if not free:
            return []
        link = p.rng.choice(free)
        payload, diff, spec = p.codec.encode(link, p.x)
        link.awaiting = link.send_seq
        msg = p.message("push", link, payload, spec, diff=diff)
        self.exchange = link
        self.awaiting_until[link.peer] = now + p.gossip.exchange_timeout_s
        return [Send(link.peer, msg)]

    def on_message(self, link: Link, msg: m.Gossip, now: float) -> list[Action]:
        if msg.mode == "pull":
            return self._on_pull(link, msg, now)
        if link.awaiting is not None and msg.ack <= link.awaiting:
            # crossing pushes: neither had seen the other's; each is the other's reply
            self._apply(link, msg)
            self._close(link)
            self._transfer(link)
            return self._serve_deferred(now)
        if self.exchange is not None or link.awaiting is not None:
            if len(self.deferred) > len(self.p.links):
                raise RemoteProtocolError("more pushes than links", peer=link.peer)
            self.deferred.append((link, msg))
            return []
        return self._respond(link, msg)

    def _on_pull(self, link: Link, msg: m.Gossip, now: float) -> list[Action]:
        if link.awaiting is None or msg.ack <= link.awaiting:
            raise RemoteProtocolError(f"pull (ack {msg.ack}) that answers no push", peer=link.peer)
        self._apply(link, msg)
        self._close(link)
        self._transfer(link)
        return self._serve_deferred(now)

    def _respond(self, link: Link, push: m.Gossip) -> list[Action]:
        p = self.p
        self._apply(link, push)
        payload, diff, spec = p.codec.encode(link, p.x)
        msg = p.message("pull", link, payload, spec, diff=diff, reply=True)
        self._transfer(link)
        return [Send(link.peer, msg)]

    def _apply(self, link: Link, msg: m.Gossip) -> None:
        self.p.codec.receive(link, msg)
        link.recv_seq += 1

    def _close(self, link: Link) -> None:
        link.awaiting = None
        link.misses = 0
        self.awaiting_until.pop(link.peer, None)
        if self.exchange is link:
            self.exchange = None

    def _transfer(self, link: Link) -> None:
        p = self.p
        if p.clip is None:
            d = link.delta()[None, :]
        else:  # ClippedGossip (gossip.robust)
            d, clipped = clipped_delta(link, p.up_links(), p.clip)
            p.counters["clipped"] += clipped
        p.set_x(combine(p.x, [p.gamma / 2], d), owned=True)
        self.exchanges += 1

    def _serve_deferred(self, now: float) -> list[Action]:
        p = self.p
        actions: list[Action] = []
        keep: deque[tuple[Link, m.Gossip]] = deque()
        while self.deferred:
            link, push = self.deferred.popleft()
            if p.links.get(link.peer) is not link:
                continue
            if self.exchange is not None or link.awaiting is not None:
                keep.append((link, push))
                continue
            actions += self._respond(link, push)
        self.deferred = keep
        if p.phase is Phase.DRAINING:
            actions += self._maybe_stop(now)
        return actions

    def _timed_out(self, link: Link, now: float) -> list[Action]:
        """No pull yet: stop blocking on it (it is still applied if it comes)."""
        p = self.p
        link.misses += 1
        p.counters["timeouts"] += 1
        self.awaiting_until[link.peer] = now + p.gossip.exchange_timeout_s
        actions: list[Action] = []
        if self.exchange is link:
            self.exchange = None
            actions += self._serve_deferred(now)
        if link.misses >= p.gossip.miss_limit and p.links.get(link.peer) is link:
            actions += p.drop(link, now, notify=True, reason="misses")
        return actions

    def on_link_down(self, link: Link, now: float) -> list[Action]:
        self.awaiting_until.pop(link.peer, None)
        if self.exchange is link:
            self.exchange = None
        self.deferred = deque((lk, msg) for lk, msg in self.deferred if lk is not link)
        return self._serve_deferred(now)
