"""The ``[privacy]`` section: client-level differential privacy and its accounting.

Off by default (``mode = "off"``). ``central``: the aggregator that sees the members'
updates (the coordinator of a star, each regional aggregator of a two-tier tree, FedBuff's
buffer) clips each update to L2 norm ``clip`` and adds Gaussian noise of std
``noise_multiplier * clip`` to the sum (DP-FedAvg, McMahan et al. 2018); ``local``: each
gossip peer clips and noises what it sends; ``distributed`` (with ``[secagg] enabled``):
each client clips its update and adds its share of the Gaussian noise before masking, so
the coordinator only ever sees a noised sum. The mechanisms are in :mod:`fednode.privacy`;
docs/PRIVACY.md is the guide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .sections import check

PRIVACY_MODES = ("off", "central", "local", "distributed")
ACCOUNTANTS = ("rdp", "pld")


@dataclass(frozen=True)
class PrivacyParams:
    """``[privacy]``: which DP mechanism runs, its clipping and noise, and the budget."""

    #: off, central (trusted aggregator adds the noise) or local (gossip peers)
    mode: str = "off"
    #: L2 clipping norm C of one member's update (float > 0), or "adaptive"
    clip: float | str = 1.0
    #: adaptive clipping: the norm C starts at (Andrew et al. 2021)
    initial_clip: float = 0.1
    #: sigma: the noise std is sigma * C on the sum of the clipped updates
    noise_multiplier: float = 1.0
    #: epsilon is reported at this delta
    delta: float = 1e-5
    #: stop training before epsilon would exceed this (0 = no budget)
    epsilon_budget: float = 0.0
    #: rdp (Renyi DP, dp_accounting.rdp) or pld (privacy loss distributions)
    accountant: str = "rdp"
    #: adaptive clipping: the quantile of update norms C tracks
    target_quantile: float = 0.5
    #: adaptive clipping: learning rate of the geometric update of C
    clip_lr: float = 0.2
    #: noise seed; -1 = from os.urandom (a real deployment must not fix it; the
    #: simulator uses the run's seed for reproducible runs)
    seed: int = -1

    @property
    def on(self) -> bool:
        return self.mode != "off"

    @property
    def adaptive(self) -> bool:
        return self.clip == "adaptive"

    @property
    def clip_norm(self) -> float:
        """The fixed clipping norm (``initial_clip`` when adaptive)."""
        return self.initial_clip if self.adaptive else float(self.clip)

    def validate(self) -> None:
        check(
            self.mode in PRIVACY_MODES,
            "privacy.mode",
            self.mode,
            "off, central, local or distributed",
        )
        if isinstance(self.clip, str):
            check(
                self.clip == "adaptive",
                "privacy.clip",
                self.clip,
                'a float > 0 (the L2 clipping norm) or "adaptive"',
            )
        else:
            check(
                math.isfinite(self.clip) and self.clip > 0,
                "privacy.clip",
                self.clip,
                'a float > 0 (the L2 clipping norm) or "adaptive"',
            )
        check(
            math.isfinite(self.initial_clip) and self.initial_clip > 0,
            "privacy.initial_clip",
            self.initial_clip,
            "a float > 0",
        )
        check(
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0,
            "privacy.noise_multiplier",
            self.noise_multiplier,
            "a float > 0 (sigma; the noise std is sigma * clip)",
        )
        check(0 < self.delta < 1, "privacy.delta", self.delta, "a float in (0, 1), e.g. 1e-5")
        check(
            math.isfinite(self.epsilon_budget) and self.epsilon_budget >= 0,
            "privacy.epsilon_budget",
            self.epsilon_budget,
            "a float >= 0 (0 = no budget)",
        )
        check(self.accountant in ACCOUNTANTS, "privacy.accountant", self.accountant, "rdp or pld")
        check(
            0 < self.target_quantile < 1,
            "privacy.target_quantile",
            self.target_quantile,
            "a float in (0, 1)",
        )
        check(
            math.isfinite(self.clip_lr) and self.clip_lr > 0,
            "privacy.clip_lr",
            self.clip_lr,
            "a float > 0",
        )
        check(self.seed >= -1, "privacy.seed", self.seed, "an integer >= 0, or -1 (os.urandom)")
        check(
            not (self.mode == "local" and self.adaptive),
            "privacy.clip",
            self.clip,
            'a float > 0 with privacy.mode = "local" (adaptive clipping needs an aggregator)',
        )
