"""The ``[secagg]`` section: secure aggregation in the star round (docs/PRIVACY.md).

Off by default. With ``enabled = true`` the coordinator of a star
(:mod:`fednode.hierarchy.secure_root`), or each regional aggregator of a two-tier tree
(:mod:`fednode.hierarchy.secure_region`), runs the four stages of SecAgg+ after its
members trained, and learns only the sum of the surviving members' weighted updates.
``neighbours`` is SecAgg+'s ``k``
(0: ``2 * ceil(log2 n)``, at least 2); ``threshold`` is ``t``: a count (>= 2) or, below 1,
a fraction of the share holders of a member (``k + 1``, or ``n`` when ``k >= n - 1``);
``stage_timeout_s`` is each stage's deadline after the first (the first, advertise, ends
with the round deadline: training happens before it). ``clip`` bounds every encoded
coordinate (``num_examples * delta``, ``num_examples``, ``num_examples * train_loss``:
the weighted update; clipped coordinates are counted and reported, never silent) and
``frac_bits`` is the fixed-point precision (:mod:`fednode.crypto.fixedpoint`).

:func:`check_secagg` refuses, naming the field, what secure aggregation cannot run with:
robust rules other than ``norm_bound:<c>+fedavg`` (they need every individual update),
lossy uplink codecs, the async (FedBuff) server, gossip, automatic promotion
(``tier.promote_at``), and in a two-tier tree distributed DP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .sections import check


@dataclass(frozen=True)
class SecAggConfig:
    """``[secagg]``: secure aggregation on or off and its round parameters."""

    #: run secure aggregation in the star round (coordinator and clients must agree)
    enabled: bool = False
    #: SecAgg+ neighbours k per member (0 = 2 * ceil(log2 n), at least 2)
    neighbours: int = 0
    #: threshold t: a count >= 2, or a fraction in (0, 1) of a member's share holders
    threshold: float = 0.6
    #: deadline of each stage after advertise (seconds)
    stage_timeout_s: float = 30.0
    #: the largest magnitude of an encoded coordinate (num_examples * delta, ...)
    clip: float = 4096.0
    #: fixed-point fractional bits (quantum 2**-frac_bits)
    frac_bits: int = 20

    def validate(self) -> None:
        check(
            self.neighbours == 0 or self.neighbours >= 2,
            "secagg.neighbours",
            self.neighbours,
            "0 (2 * ceil(log2 n)) or an integer >= 2",
        )
        t = self.threshold
        check(
            math.isfinite(t) and (0 < t < 1 or (t >= 2 and t == int(t))),
            "secagg.threshold",
            t,
            "a fraction in (0, 1) of a member's share holders, or a count >= 2",
        )
        check(
            math.isfinite(self.stage_timeout_s) and self.stage_timeout_s > 0,
            "secagg.stage_timeout_s",
            self.stage_timeout_s,
            "a number of seconds > 0",
        )
        check(
            math.isfinite(self.clip) and self.clip > 0,
            "secagg.clip",
            self.clip,
            "a number > 0 (bound on each encoded coordinate)",
        )
        check(
            0 <= self.frac_bits <= 40,
            "secagg.frac_bits",
            self.frac_bits,
            "an integer in [0, 40]",
        )

    def neighbours_for(self, n: int) -> int:
        """``k`` for ``n`` members."""
        if self.neighbours:
            return self.neighbours
        return max(2, 2 * math.ceil(math.log2(max(n, 2))))

    def threshold_for(self, n: int) -> int:
        """``t`` for ``n`` members: a fraction of a member's share holders (at least 2),
        or the configured count as it is (a round with too few members for it cannot
        run: :class:`~fednode.crypto.secagg_messages.SecAggParams` refuses it)."""
        t = self.threshold
        if t >= 1:
            return int(t)
        k = self.neighbours_for(n)
        holders = min(n - 1, 2 * (-(-k // 2))) + 1
        return max(2, min(math.ceil(t * holders), holders))


def check_secagg(config: Any) -> None:
    """What secure aggregation cannot run with (``config`` is a NodeConfig)."""
    from ..training.rulespec import parse_rule

    if not config.secagg.enabled:
        check(
            config.privacy.mode != "distributed",
            "privacy.mode",
            config.privacy.mode,
            "off, central or local unless secagg.enabled (distributed DP needs secure "
            "aggregation: [secagg] enabled = true)",
        )
        return
    agg = config.aggregation
    for name in ("aggregation.rule", "aggregation.root_rule"):
        text = getattr(agg, name.split(".")[1])
        if text:
            spec = parse_rule(text, name)
            check(
                not spec.needs_all,
                name,
                text,
                "fedavg or norm_bound:<c>+fedavg with secagg.enabled (a robust rule needs "
                "every individual update; secure aggregation reveals only their sum)",
            )
    check(
        config.wire.codec == "none",
        "wire.codec",
        config.wire.codec,
        "'none' with secagg.enabled (the masked input is a fixed-point vector; a lossy "
        "uplink codec cannot compress it)",
    )
    check(
        config.server.mode == "sync",
        "server.mode",
        config.server.mode,
        "'sync' with secagg.enabled (secure aggregation needs a round of members)",
    )
    check(
        config.topology in ("star", "two-tier") and config.role != "peer",
        "topology",
        config.topology,
        "'star' or 'two-tier' with secagg.enabled (gossip has no aggregator)",
    )
    check(
        not (config.topology == "two-tier" and config.privacy.mode == "distributed"),
        "privacy.mode",
        config.privacy.mode,
        "off with secagg.enabled in a two-tier tree (distributed DP is built for the star "
        "round only)",
    )
    check(
        config.tier.promote_at == 0,
        "tier.promote_at",
        config.tier.promote_at,
        "0 with secagg.enabled (a promoted client would aggregate its region's updates in "
        "the clear)",
    )
    check(
        config.privacy.mode in ("off", "distributed"),
        "privacy.mode",
        config.privacy.mode,
        "off or distributed with secagg.enabled (central DP needs the individual updates)",
    )
    check(
        not (config.privacy.mode == "distributed" and config.privacy.adaptive),
        "privacy.clip",
        config.privacy.clip,
        "a float > 0 with privacy.mode = distributed (adaptive clipping is not built there)",
    )
