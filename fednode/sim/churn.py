"""Membership churn in fault schedules: the ``join`` fault (a member that joins mid-run).

Kept apart from :mod:`.topology` (which parses it) so the spec module stays one job:
:mod:`.faults` applies it like a restart of a node that was away from round 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class JoinFault:
    """``node`` is not there for rounds ``r < round`` and joins at ``round`` as a new
    member (a fresh role; its data are its own from the start). Cold start: a gossip peer
    adopts its first neighbour's model, a star / two-tier client is sent the current
    model as soon as its coordinator admits it (docs/PERSONALISATION.md)."""

    type: ClassVar[str] = "join"
    node: int
    round: int

    def active(self, rnd: int) -> bool:
        """Whether the node is still away (not joined yet) at round ``rnd``."""
        return rnd < self.round
