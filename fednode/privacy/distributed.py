"""Distributed DP under secure aggregation: each member clips and adds its noise share.

With ``[privacy] mode = "distributed"`` (and ``[secagg] enabled``) no party adds the
noise of DP-FedAvg to the sum; every member adds a share of it to its own update before
masking (:mod:`fednode.hierarchy.secure_client`), so the coordinator only ever sees the
masked inputs and their noised sum. A member:

* clips its delta to L2 norm ``C`` and weights it 1 (unweighted, as central DP does);
* adds Gaussian noise of std ``sigma * C / sqrt(m)`` per coordinate, where ``m`` is the
  fewest survivors the coordinator will release a sum of (it sends ``m`` in the ``Fit``
  config, ``secagg_min_survivors``, and aborts the round before unmasking when fewer
  masked inputs arrived).

The sum of ``s >= m`` survivors carries noise of std ``sigma * C * sqrt(s / m) >=
sigma * C``: what the coordinator's :class:`~.accountant.PrivacyLedger` accounts for
(``noise_multiplier = sigma``) is the noise guaranteed in the worst release allowed, so
dropouts (down to ``m``) never leave a release with less noise than was accounted; with
no dropouts the sum has ``sqrt(n / m)`` times more noise than needed (the price of the
guarantee). The coordinator divides by the number of members selected (the fixed
denominator of DP-FedAvg). A member's own noise is known to it: members colluding with
the coordinator remove theirs (docs/PRIVACY.md).
"""

from __future__ import annotations

import math

import numpy as np

from ..wire.tensors import DTYPE
from .central import clip_update

__all__ = ["NoiseShare"]


class NoiseShare:
    """One member's clip and noise share (see the module docstring)."""

    def __init__(self, *, clip: float, noise_multiplier: float, rng: np.random.Generator) -> None:
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self.rng = rng
        #: updates this member had to scale down to the clip
        self.clipped = 0

    def std(self, min_survivors: int) -> float:
        return self.noise_multiplier * self.clip / math.sqrt(max(min_survivors, 1))

    def apply(self, delta: np.ndarray, min_survivors: int) -> np.ndarray:
        """The clipped delta plus this member's noise share (float64)."""
        vec, scaled = clip_update(np.asarray(delta, dtype=DTYPE), self.clip)
        self.clipped += int(scaled)
        noise = self.rng.normal(0.0, self.std(min_survivors), size=vec.shape[0])
        return vec.astype(np.float64) + noise
