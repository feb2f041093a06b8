"""Knobs of the gossip peer, one frozen group (the future ``[gossip]`` config table).

Every field has a default that gives a working consortium; :meth:`GossipParams.validate`
raises :class:`~fednode.errors.ConfigError` naming the field, as ``config.py`` does for the
other groups. Times are seconds of the node's clock (virtual seconds in the simulator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

MODES = ("sync", "async")


@dataclass(frozen=True)
class GossipParams:
    """How a peer gossips. ``repr`` shows everything, so a log line tells the whole setup."""

    #: "sync": rounds with Metropolis-Hastings weights; "async": randomized pairwise gossip
    mode: str = "sync"
    #: False: pure averaging (no local training), e.g. to measure consensus
    train: bool = True
    #: sync: averaging steps per round (after the round's local training)
    steps: int = 1
    #: neighbours a peer looks for when no explicit neighbour set is given
    degree: int = 4
    #: most links a peer accepts (explicit neighbours are always accepted)
    max_degree: int = 8
    #: sync: how long a step waits for its neighbours' models
    round_timeout_s: float = 30.0
    #: async: length of a round (one local training job + exchanges meanwhile)
    round_s: float = 1.0
    #: async: expected exchanges a peer starts per round (its Poisson clock rate x round_s);
    #: 0 = automatic: half the peer's current degree, at least 1 — about one exchange per
    #: link per round, the traffic of one sync step (:meth:`exchange_rate`)
    exchanges_per_round: float = 0.0
    #: async: how long an initiator waits for the pull before it moves on
    exchange_timeout_s: float = 5.0
    #: how long a hello waits for its welcome
    hello_timeout_s: float = 10.0
    #: how long a starting peer waits for its links before its first round
    join_wait_s: float = 5.0
    #: consecutive missed steps / exchanges after which a silent neighbour is dropped
    miss_limit: int = 3
    #: consensus step size gamma (CHOCO-gossip); 0 = automatic (1, or 2F for top-k:F)
    step_size: float = 0.0

    def validate(self) -> None:
        _check(self.mode in MODES, "gossip.mode", self.mode, f"one of {', '.join(MODES)}")
        _check(self.steps >= 1, "gossip.steps", self.steps, "an integer >= 1")
        _check(self.degree >= 1, "gossip.degree", self.degree, "an integer >= 1")
        _check(
            self.max_degree >= self.degree,
            "gossip.max_degree",
            self.max_degree,
            f"an integer >= degree ({self.degree})",
        )
        _check(
            self.exchanges_per_round >= 0 and math.isfinite(self.exchanges_per_round),
            "gossip.exchanges_per_round",
            self.exchanges_per_round,
            "a float >= 0 (0 = automatic: half the degree)",
        )
        for name in (
            "round_timeout_s",
            "round_s",
            "exchange_timeout_s",
            "hello_timeout_s",
            "join_wait_s",
        ):
            value = getattr(self, name)
            _check(value > 0 and math.isfinite(value), f"gossip.{name}", value, "a float > 0")
        _check(self.miss_limit >= 1, "gossip.miss_limit", self.miss_limit, "an integer >= 1")
        _check(
            0 <= self.step_size <= 1,
            "gossip.step_size",
            self.step_size,
            "a float in [0, 1] (0 = automatic)",
        )

    def exchange_rate(self, degree: int) -> float:
        """Async: exchanges a peer with ``degree`` links starts per second of its clock.

        The automatic rate, ``max(1, degree / 2)`` per round, gives each link about one
        exchange per round (both ends start them): every neighbour's model is mixed in
        once a round, as in a sync step, for the same bytes. One exchange per peer per
        round, whatever the degree, leaves the models too far apart under non-IID data
        (docs/GOSSIP.md, "Learning").
        """
        per_round = self.exchanges_per_round or max(1.0, degree / 2)
        return per_round / self.round_s


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(name, value, expected)
