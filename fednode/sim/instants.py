"""The event queue of the discrete-event driver, and the order of one instant's events.

:class:`Instants` is a heap of the distinct virtual times that have events and, per time,
its events in the order they were scheduled (no per-event heap work: with equal link
latencies most events share a few instants).

The memory transport hands over what is due at one instant — frames and peer events — in
the network model's rank of the sender (of the peer an event is about), each sender's in
the order it was sent (:mod:`fednode.p2p.memory`). :func:`order_instant` puts one
instant's events in that same order before they run, so both drivers give each node its
same-instant inputs alike. Pure.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any


def order_instant(
    bucket: deque[tuple[Any, ...]], rank: Callable[[tuple[Any, ...]], int | None]
) -> None:
    """Stable-sort the events of ``bucket`` that ``rank`` ranks (the others, ranked None,
    keep their places), in place. What is scheduled for the instant while it runs (zero
    delay) is appended after, unsorted."""
    events = list(bucket)
    slots, keys = [], []
    for i, event in enumerate(events):
        key = rank(event)
        if key is not None:
            slots.append(i)
            keys.append(key)
    if len(slots) < 2 or all(a <= b for a, b in itertools.pairwise(keys)):
        return  # in order already (e.g. all from one sender)
    ranked = [events[slots[j]] for j in sorted(range(len(slots)), key=keys.__getitem__)]
    for i, event in zip(slots, ranked, strict=True):
        events[i] = event
    bucket.clear()
    bucket.extend(events)


class Instants:
    """Pending events: :attr:`times` (a heap) and :attr:`at` (time -> FIFO of events)."""

    __slots__ = ("at", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.at: dict[float, deque[tuple[Any, ...]]] = {}

    def schedule(self, t: float, event: tuple[Any, ...]) -> None:
        bucket = self.at.get(t)
        if bucket is None:
            bucket = self.at[t] = deque()
            heapq.heappush(self.times, t)
        bucket.append(event)

    @property
    def next_time(self) -> float:
        return self.times[0] if self.times else math.inf
