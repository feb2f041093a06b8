"""The simulated network, once for both drivers: links, loss, crashes, partitions, who hears whom.

Pure (no trio). The trio memory transport (:class:`~fednode.p2p.memory.MemoryNetwork`) and
the discrete-event driver (:class:`~fednode.sim.des.DesSimulation`) both hold a
:class:`NetworkModel` and ask it every question about the network; they differ only in how
they carry out its answers (a trio nursery and channels; an event queue). So both drivers
have one semantics by construction:

* a frame from ``a`` to ``b`` needs both alive and on the same side of a partition
  (:meth:`NetworkModel.reachable`); otherwise the send fails at once;
* a sent frame is counted, then lost with the link's loss combined with the global extra
  loss, else delivered after ``latency + nbytes / bandwidth`` (:meth:`NetworkModel.transfer`;
  transfers do not queue behind each other). The loss draw is counter-based: the n-th
  frame sent from ``a`` to ``b`` while that link is lossy is lost iff
  ``blake2b(n, key=blake2b(seed, name(a), name(b))) / 2**64 < p`` (:func:`loss_draw`). It
  depends on the seed, the two names and that count only — not on how the sends of
  different links interleave — so two drivers that order same-instant sends differently
  lose the same frames, and so does a sharded run. A loss-free link draws nothing;
* :meth:`~NetworkModel.join` (attach, restart), :meth:`~NetworkModel.crash`,
  :meth:`~NetworkModel.partition` and :meth:`~NetworkModel.heal` change the state and
  return the peer up/down events to announce, as data: ``(observer, peer, up)`` for every
  pair whose reachability changed, where the observer is alive and ``peer`` is one of
  ``visible(observer)`` (default: every node, in the order they were first added).

Nodes are named by any hashable key: the memory transport uses peer ids, the discrete-event
driver node indices (with ``name`` mapping an index to its peer id, so that both drivers
draw loss from the same names).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Link:
    """One link (a direction, a pair, or the network default): one-way latency, bandwidth
    (None = unlimited) and drop rate."""

    latency_s: float = 0.0
    bandwidth_Bps: float | None = None
    loss: float = 0.0

    def transfer_time(self, nbytes: int) -> float:
        """Seconds from the send of ``nbytes`` to their delivery."""
        return self.latency_s + (nbytes / self.bandwidth_Bps if self.bandwidth_Bps else 0.0)


@dataclass
class NetStats:
    """Frames and bytes sent (counted before the loss draw) and frames lost."""

    sent_frames: int = 0
    sent_bytes: int = 0
    dropped_frames: int = 0


_DRAW_SCALE = 1.0 / 2**64

#: how long after a change its peer up/down events reach the nodes (both drivers): every
#: frame due at the instant of the change is handled before them, whichever node's event
#: made the change, so the drivers' different orders within one instant do not matter
ANNOUNCE_S = 1e-9


def link_key(seed: int, a: str, b: str) -> bytes:
    """The loss-draw key of the directed link ``a -> b`` under ``seed``."""
    text = f"fednode/loss\0{seed}\0{a}\0{b}".encode()
    return hashlib.blake2b(text, digest_size=16).digest()


def loss_draw(key: bytes, n: int) -> float:
    """A uniform number in [0, 1) for the ``n``-th lossy frame of the link ``key`` names;
    the same in every process (no Python ``hash``, no RNG state)."""
    digest = hashlib.blake2b(n.to_bytes(8, "little"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") * _DRAW_SCALE


class NetworkModel(Generic[K]):
    """Links, loss, liveness and partition groups of one simulated network.

    ``extra_loss`` is an independent drop rate on every link on top of its own (a loss
    fault). ``visible(k)`` names the nodes whose up/down events ``k`` gets (None: all).
    ``name(k)`` is the node's name in the loss draw (default: ``str(k)``).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        default: Link | None = None,
        visible: Callable[[K], Iterable[K]] | None = None,
        name: Callable[[K], str] = str,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.seed = seed
        self.name = name
        self.clock = clock
        self.default = default or Link()
        self.visible = visible
        self.extra_loss = 0.0
        self.stats = NetStats()
        self._links: dict[tuple[K, K], Link] = {}
        #: per directed link: its loss-draw key and how many lossy frames it carried
        self._draws: dict[tuple[K, K], list[Any]] = {}
        #: every known node, in the order first added: its partition group if up, else None
        #: (so that reachability is one comparison on the per-frame path)
        self._side: dict[K, int | None] = {}
        self._group: dict[K, int] = {}  # partition group, up or down; absent: 0
        self._rank: dict[K, int] = {}  # every node ever known: its place in the order
        #: the instant of the last change and ``_side`` as it was before that instant's
        #: first change (what frames due at that instant see: :meth:`arrives`)
        self._changed_at = -math.inf
        self._before: dict[K, int | None] = {}

    # --- links ----------------------------------------------------------------------------
    def set_link(self, a: K, b: K, link: Link, *, both_ways: bool = True) -> None:
        self._links[(a, b)] = link
        if both_ways:
            self._links[(b, a)] = link

    def link(self, a: K, b: K) -> Link:
        return self._links.get((a, b), self.default) if self._links else self.default

    def links(self) -> dict[tuple[K, K], Link]:
        """The per-pair overrides (directed), a copy."""
        return dict(self._links)

    def delay(self, a: K, b: K, nbytes: int) -> float:
        return self.link(a, b).transfer_time(nbytes)

    def transfer(self, a: K, b: K, nbytes: int) -> float | None:
        """Count a frame of ``nbytes`` sent from ``a`` to ``b``; its delivery delay, or
        None when the link loses it. (Reachability is the caller's check, before.)"""
        link = self._links.get((a, b), self.default) if self._links else self.default
        return link.transfer_time(nbytes) if self.carry(a, b, nbytes, link) else None

    def carry(self, a: K, b: K, nbytes: int, link: Link) -> bool:
        """Count a frame of ``nbytes`` sent over ``link`` (``self.link(a, b)``, which the
        caller looked up for its delay) and draw its loss: False when it is lost."""
        stats = self.stats
        stats.sent_frames += 1
        stats.sent_bytes += nbytes
        loss = link.loss
        if self.extra_loss:
            loss = 1.0 - (1.0 - loss) * (1.0 - self.extra_loss)
        if loss and self._lost(a, b, loss):
            stats.dropped_frames += 1
            return False
        return True

    def _lost(self, a: K, b: K, loss: float) -> bool:
        draws = self._draws.get((a, b))
        if draws is None:
            key = link_key(self.seed, self.name(a), self.name(b))
            draws = self._draws[(a, b)] = [key, 0]
        n = draws[1]
        draws[1] = n + 1
        return loss_draw(draws[0], n) < loss

    # --- who reaches whom -----------------------------------------------------------------
    def add(self, k: K) -> None:
        """Know ``k`` (down until it :meth:`join` s), so it keeps its place in the order."""
        self._side.setdefault(k, None)
        self._rank.setdefault(k, len(self._rank))

    def rank(self, k: K) -> int:
        """``k``'s place in the order nodes were first known (added or joined): frames and
        peer events due at one instant go to each node in the rank of their sender (of the
        peer they are about), on both drivers."""
        rank = self._rank.get(k)
        return len(self._rank) if rank is None else rank

    def remove(self, k: K) -> None:
        """Forget ``k`` (call :meth:`crash` first to announce it); a later join re-adds it."""
        self._changing()
        self._side.pop(k, None)

    def alive(self, k: K) -> bool:
        return self._side.get(k) is not None

    def reachable(self, a: K, b: K) -> bool:
        side = self._side.get(a)
        return side is not None and side == self._side.get(b)

    def arrives(self, a: K, b: K, t: float) -> bool:
        """May a frame from ``a`` in flight to ``b`` be delivered at ``t``? As
        :meth:`reachable`, but a change made at the instant ``t`` itself (by whichever
        node's event came first) does not touch the frames due at ``t``: they see the
        network as it was when the instant began. So the drivers, which order the events
        of one instant differently, deliver the same frames."""
        side = self._before if t == self._changed_at else self._side
        s = side.get(a)
        return s is not None and s == side.get(b)

    def reachable_from(self, k: K) -> list[K]:
        return [p for p in self._side if p != k and self.reachable(k, p)]

    # --- changes, and what they announce --------------------------------------------------
    def join(self, k: K) -> list[tuple[K, K, bool]]:
        """``k`` comes up (first attach or restart): for each visible reachable peer, the
        peer hears of ``k`` and ``k`` hears of the peer. Nothing if ``k`` is up already."""
        if self.alive(k):
            return []
        self._changing()
        self._side[k] = self._group.get(k, 0)
        self._rank.setdefault(k, len(self._rank))
        out: list[tuple[K, K, bool]] = []
        for other in self._peers(k):
            if other != k and self.reachable(k, other):
                out.append((other, k, True))
                out.append((k, other, True))
        return out

    def crash(self, k: K) -> list[tuple[K, K, bool]]:
        """``k`` goes down: its visible reachable peers hear of it. Nothing if it is down."""
        if not self.alive(k):
            return []
        out = [(o, k, False) for o in self._peers(k) if o != k and self.reachable(k, o)]
        self._changing()
        self._side[k] = None
        return out

    def partition(self, groups: Iterable[Iterable[K]]) -> list[tuple[K, K, bool]]:
        """Only nodes of one group reach each other; nodes not named share group 0."""
        before = self._group
        self._group = {k: g for g, members in enumerate(groups, start=1) for k in members}
        return self._changes(before)

    def heal(self) -> list[tuple[K, K, bool]]:
        before = self._group
        self._group = {}
        return self._changes(before)

    def _peers(self, k: K) -> Iterable[K]:
        return self._side if self.visible is None else self.visible(k)

    def _changing(self) -> None:
        """Keep the state of the instant's start before its first change (see :meth:`arrives`)."""
        if self.clock is not None:
            now = self.clock()
            if now != self._changed_at:
                self._changed_at = now
                self._before = dict(self._side)

    def _changes(self, before: dict[K, int]) -> list[tuple[K, K, bool]]:
        self._changing()
        side, group = self._side, self._group
        for k, was in side.items():
            if was is not None:
                side[k] = group.get(k, 0)
        out: list[tuple[K, K, bool]] = []
        for a, up in side.items():
            if up is None:
                continue
            for b in self._peers(a):
                if b != a and side.get(b) is not None:
                    now = side[a] == side[b]
                    if (before.get(a, 0) == before.get(b, 0)) != now:
                        out.append((a, b, now))
        return out
