"""Central client-level DP: DP-FedAvg (McMahan et al. 2018) as a wrapper of an aggregator.

:class:`DpAggregator` wraps the round's :class:`~fednode.training.aggregate.Aggregator`
(fedavg, or ``norm_bound:<c>+fedavg``; ``NodeConfig.validate`` refuses the robust rules
with central DP). It needs no help from the role that drives it:

* ``add`` scales each update to L2 norm at most ``C`` (the clip) and adds it with weight
  1 — **unweighted**: a member's ``num_examples`` claim would otherwise scale its
  contribution past ``C`` and leak through the weights;
* ``finish`` takes the sum of the clipped updates, adds Gaussian noise of std
  ``sigma * C`` per coordinate, and divides by the **fixed denominator**: the number of
  members the round selected (``start``'s ``capacity``, the expected count), not the
  number that answered, so a dropout changes the step's size but not the sensitivity
  (DP-FedAvg's fixed-denominator estimator; the caller's capacity is 0 only when it
  selected nobody in advance, and then the actual count is used). It returns that
  denominator as the total weight, so what the aggregate's sender reports upward as
  its example count (a regional aggregator) is no function of the members' data.
* with ``clip = "adaptive"`` the norm ``C`` follows the ``target_quantile`` of the update
  norms (Andrew et al. 2021): after each round ``C <- C * exp(-clip_lr * (b - target))``
  with ``b`` the noised fraction of updates that were within ``C``. The count gets
  Gaussian noise of std ``sigma_b = max(m / 20, 5 sigma)`` (m: the denominator; the
  paper recommends m/20) and the update noise multiplier becomes
  ``(sigma^-2 - (2 sigma_b)^-2)^-1/2`` (at most sigma / sqrt(0.99) = 1.0051 sigma), so the
  two releases together are one Gaussian mechanism with multiplier ``sigma`` and the
  accountant needs no change (the paper's Theorem 1).

Noise comes from a numpy ``Generator`` (PCG64) seeded from ``os.urandom`` by default; a
fixed ``privacy.seed`` makes runs reproducible (the simulator uses the run's seed) and
must not be used in a deployment. numpy's sampler is not a cryptographic generator and
its floating-point Gaussian is not the exact discrete mechanism; docs/PRIVACY.md says
what that means.

:class:`EqualWeights` is the coordinator's wrapper in a two-tier tree under central DP:
each region's update is already noised by its regional aggregator, the coordinator only
averages them, equally (post-processing, no further noise).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import RoundFailed
from ..training.aggregate import AggregateReport, Aggregator, check_input, vector_norm
from ..wire.tensors import DTYPE

#: round-record fields of the mechanism (``rounds.jsonl``, round table)
MECHANISM_KEYS = ("dp_clip", "dp_clipped", "dp_noise_std", "dp_denominator")


def noise_rng(seed: int, salt: str = "") -> np.random.Generator:
    """The noise generator: from ``os.urandom`` when ``seed`` < 0 (a deployment), else
    reproducible from ``(seed, salt)`` (tests, the simulator; ``salt`` tells the
    aggregators of one run apart)."""
    if seed < 0:
        return np.random.default_rng(np.random.SeedSequence(int.from_bytes(os.urandom(32))))
    tag = int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "big")
    return np.random.default_rng(np.random.SeedSequence([seed, tag]))


@dataclass
class DpReport(AggregateReport):
    """The wrapped rule's report plus what the DP mechanism did this round."""

    dp_clip: float = 0.0
    dp_clipped: int = 0
    dp_noise_std: float = 0.0
    dp_denominator: int = 0

    def record(self) -> dict[str, Any]:
        return {
            **super().record(),
            "dp_clip": self.dp_clip,
            "dp_clipped": self.dp_clipped,
            "dp_noise_std": self.dp_noise_std,
            "dp_denominator": self.dp_denominator,
        }


def clip_update(vec: np.ndarray, clip: float) -> tuple[np.ndarray, bool]:
    """``vec`` scaled to L2 norm at most ``clip`` (a new array when scaled), and whether
    it was scaled."""
    norm = vector_norm(vec)
    if norm <= clip:
        return vec, False
    return (vec * np.float32(clip / norm)).astype(DTYPE, copy=False), True


class DpAggregator:
    """Clip on ``add``, noise on ``finish`` (see the module docstring)."""

    def __init__(
        self,
        inner: Aggregator,
        *,
        clip: float,
        noise_multiplier: float,
        rng: np.random.Generator,
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
    ) -> None:
        self.inner = inner
        self.needs_all = inner.needs_all
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.rng = rng
        self.adaptive = adaptive
        self.target_quantile = target_quantile
        self.clip_lr = clip_lr
        self._size = 0
        self._expected = 0
        self._clipped = 0
        self._within = 0
        self.report: AggregateReport = DpReport(rule=f"dp+{inner.report.rule}")

    @property
    def count(self) -> int:
        return self.inner.count

    def start(self, size: int, capacity: int = 0) -> None:
        self.inner.start(size, capacity)
        self._size, self._expected = size, capacity
        self._clipped = self._within = 0

    def add(self, vec: np.ndarray, weight: float, peer: str = "") -> None:
        check_input(vec, weight, self._size)
        clipped, scaled = clip_update(vec, self.clip)
        self._clipped += scaled
        self._within += not scaled
        self.inner.add(clipped, 1.0, peer)

    def count_noise_std(self, denominator: int) -> float:
        """sigma_b of the adaptive clip's count (0 with a fixed clip)."""
        return max(denominator / 20, 5 * self.noise_multiplier) if self.adaptive else 0.0

    def update_noise_multiplier(self, denominator: int) -> float:
        z = self.noise_multiplier
        sigma_b = self.count_noise_std(denominator)
        return z if sigma_b == 0 else (z**-2 - (2 * sigma_b) ** -2) ** -0.5

    def finish(self) -> tuple[np.ndarray, float]:
        n = self.inner.count
        if n == 0:
            raise RoundFailed("no updates to aggregate")
        mean, total = self.inner.finish()
        denom = self._expected if self._expected > 0 else n
        std = self.update_noise_multiplier(denom) * self.clip
        total_sum = mean.astype(np.float64) * total
        total_sum += self.rng.normal(0.0, std, size=total_sum.shape[0])
        out = (total_sum / denom).astype(DTYPE)
        inner = self.inner.report
        self.report = DpReport(
            rule=f"dp+{inner.rule}",
            count=inner.count,
            selected=inner.selected,
            discarded=inner.discarded,
            clipped=inner.clipped,
            trimmed=inner.trimmed,
            capped=inner.capped,
            flagged=inner.flagged,
            dp_clip=self.clip,
            dp_clipped=self._clipped,
            dp_noise_std=std / denom,
            dp_denominator=denom,
        )
        if self.adaptive:
            noisy = self._within + self.rng.normal(0.0, self.count_noise_std(denom))
            self.clip *= math.exp(-self.clip_lr * (noisy / denom - self.target_quantile))
        return out, float(denom)


class EqualWeights:
    """``inner`` with every weight set to 1 (the two-tier coordinator under central DP)."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.needs_all = inner.needs_all
        self.report = inner.report
        self._size = 0

    @property
    def count(self) -> int:
        return self.inner.count

    def start(self, size: int, capacity: int = 0) -> None:
        self.inner.start(size, capacity)
        self._size = size

    def add(self, vec: np.ndarray, weight: float, peer: str = "") -> None:
        check_input(vec, weight, self._size)
        self.inner.add(vec, 1.0, peer)

    def finish(self) -> tuple[np.ndarray, float]:
        out = self.inner.finish()
        self.report = self.inner.report
        return out
