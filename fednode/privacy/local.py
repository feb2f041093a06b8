"""Local DP for gossip peers: each peer clips and noises its own training delta.

A gossip peer has no aggregator to trust, so it privatises what it releases itself: after
each round's local training it clips the delta ``params - base`` (``base``: the model it
trained from) to L2 norm ``C`` and adds Gaussian noise of std ``sigma * C`` per
coordinate, and *adopts* the noised model ``base + clip(delta) + noise``. Everything it
sends afterwards (full models, CHOCO differences, in every exchange of the round) is a
function of that model and of what it received, so each round is one Gaussian mechanism
on the clipped delta and the exchanges are post-processing.

Guarantee (docs/PRIVACY.md, "Local DP"): the unit is the peer's whole data set and the
observer is anyone who sees its messages (its neighbours, and through them the rest).
Replacing the data set moves a clipped delta by up to ``2C``, so each round is a Gaussian
mechanism with multiplier ``sigma / 2``; rounds compose without subsampling (every peer
trains every round). :class:`LocalDp` accounts exactly that with
:class:`~.accountant.PrivacyLedger` (``q = 1``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..wire.tensors import DTYPE
from .accountant import PrivacyLedger
from .central import clip_update


class LocalDp:
    """One peer's clip-and-noise and its ledger."""

    def __init__(
        self,
        *,
        clip: float,
        noise_multiplier: float,
        delta: float,
        rng: np.random.Generator,
        accountant: str = "rdp",
        epsilon_budget: float = 0.0,
    ) -> None:
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.rng = rng
        #: replace-one sensitivity 2C: the mechanism's multiplier is sigma / 2
        self.ledger = PrivacyLedger(
            noise_multiplier=noise_multiplier / 2,
            delta=delta,
            accountant=accountant,
            epsilon_budget=epsilon_budget,
        )
        self.clipped = 0

    def allows_round(self) -> bool:
        return self.ledger.allows(1.0)

    def privatise(self, params: np.ndarray, base: np.ndarray) -> np.ndarray:
        """The model to adopt after training ``base`` into ``params``; spends one round."""
        delta = np.subtract(params, base, dtype=DTYPE)
        delta, scaled = clip_update(delta, self.clip)
        self.clipped += scaled
        noise = self.rng.normal(0.0, self.noise_multiplier * self.clip, size=delta.shape[0])
        self.ledger.spend(1.0)
        return (base.astype(np.float64) + delta + noise).astype(DTYPE)

    def record(self) -> dict[str, Any]:
        return {**self.ledger.record(), "dp_clip": self.clip, "dp_clipped": self.clipped}
