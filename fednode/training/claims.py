"""Weights are claims: bound a member's claimed ``num_examples`` and flag outlying norms.

A member's ``num_examples`` is a number it wrote into its own (signed) update: a
signature proves who sent it, not that it is true. FedAvg weighs by it, so one member
claiming a million examples outweighs the rest. :class:`ClaimGuard` is used by every
aggregator (coordinator, regional aggregator, FedBuff buffer):

* **cap** — a claim is cut to ``max_examples`` (0 = no absolute cap) and to
  ``max_examples_ratio`` times the median claim of the *previous* round this aggregator
  finished (0 = off; the first round has no reference, only the absolute cap applies).
  The previous round's median is a reference the member cannot move alone this round,
  and it needs no second pass over the updates, so FedAvg stays streaming.
* **flag** — an update whose norm is more than ``flag_norm_ratio`` times the round's
  lower median norm (with at least 3 updates) is *flagged*: reported in the round record,
  a ``update_flagged`` warning event and a Prometheus counter. Flagging changes nothing
  in the mean by itself; a robust rule or ``norm_bound`` is what bounds the damage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: fewest updates in a round before norms are compared (two cannot say which is odd)
FLAG_MIN_UPDATES = 3


@dataclass(frozen=True)
class ClaimLimits:
    max_examples: int = 0
    max_examples_ratio: float = 10.0
    flag_norm_ratio: float = 10.0


@dataclass
class ClaimGuard:
    limits: ClaimLimits = field(default_factory=ClaimLimits)
    #: median claim of the last finished round (None: none finished yet)
    reference: float | None = None
    claims: list[float] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.claims, self.norms, self.peers, self.capped = [], [], [], []

    def cap(self) -> float:
        """The most one update may weigh this round (inf: no bound)."""
        bound = float(self.limits.max_examples) if self.limits.max_examples > 0 else np.inf
        if self.limits.max_examples_ratio > 0 and self.reference:
            bound = min(bound, self.limits.max_examples_ratio * self.reference)
        return bound

    def weigh(self, claim: float, norm: float, peer: str) -> float:
        """Note ``peer``'s update (its claim and norm); return the weight it gets."""
        self.claims.append(float(claim))
        self.norms.append(float(norm))
        self.peers.append(peer)
        bound = self.cap()
        if claim > bound:
            self.capped.append(peer)
            return bound
        return float(claim)

    def flagged(self) -> list[str]:
        """Peers whose update norm is far above the round's lower median."""
        if self.limits.flag_norm_ratio <= 0 or len(self.norms) < FLAG_MIN_UPDATES:
            return []
        norms = np.asarray(self.norms)
        low = float(np.partition(norms, (len(norms) - 1) // 2)[(len(norms) - 1) // 2])
        limit = self.limits.flag_norm_ratio * low
        return [p for p, v in zip(self.peers, norms, strict=True) if v > limit and v > 0]

    def close(self) -> None:
        """End of round: this round's median claim is the next round's reference."""
        if self.claims:
            self.reference = float(np.median(self.claims))
