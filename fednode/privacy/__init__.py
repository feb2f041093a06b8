"""Client-level differential privacy and its accounting (docs/PRIVACY.md).

* :mod:`.central` — DP-FedAvg: :class:`DpAggregator` clips and noises around the round's
  aggregator (the coordinator, each regional aggregator, FedBuff's buffer); adaptive
  clipping; :class:`EqualWeights` for the two-tier coordinator.
* :mod:`.local` — local DP for gossip peers (:class:`LocalDp`).
* :mod:`.accountant` — :class:`PrivacyLedger`: epsilon at delta with dp-accounting (RDP or
  PLD) after every round, and the budget.

:func:`fednode.factory.aggregator_factory` and :func:`fednode.factory.make_role` build
these from ``[privacy]`` (:class:`fednode.config.PrivacyParams`).
"""

from .accountant import LEDGER_KEYS, PrivacyLedger, epsilon_of
from .central import MECHANISM_KEYS, DpAggregator, DpReport, EqualWeights, clip_update, noise_rng
from .local import LocalDp

#: every ``dp_*`` round-record field
DP_KEYS = (*LEDGER_KEYS, *MECHANISM_KEYS)

__all__ = [
    "DP_KEYS",
    "LEDGER_KEYS",
    "MECHANISM_KEYS",
    "DpAggregator",
    "DpReport",
    "EqualWeights",
    "LocalDp",
    "PrivacyLedger",
    "clip_update",
    "epsilon_of",
    "noise_rng",
]
