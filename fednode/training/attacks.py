"""Attacks on federated learning, for tests and benchmarks of robust rules (pure numpy).

An attacker node trains honestly, then replaces what it sends by a poisoned version of
its model delta (one flat float32 vector). ``[attack] kind`` selects the attack; it is
never on by default and ``fednode run`` refuses it without ``--i-am-testing-an-attack``.

============== ===============================================================
``signflip``   sends ``-delta``
``scale:<k>``  sends ``k * delta``
``gaussian:<s>`` sends ``N(0, s^2 I)`` noise instead of the update (seeded per node/round)
``labelflip``  trains on its data with every label ``y`` replaced by ``C - 1 - y``
               (:func:`flip_labels`); the update itself is sent unchanged
``alie``       "A little is enough" (Baruch, Baruch & Goldberg, NeurIPS 2019): sends
               ``mean - z * std`` (coordinate-wise over the updates it knows); ``z`` from
               the population as in the paper (:func:`alie_z`) unless ``attack.z`` is set
``ipm:<eps>``  inner-product manipulation (Xie, Koyejo & Gupta, UAI 2020): sends
               ``-eps * mean`` of the updates it knows
============== ===============================================================

What ALIE and IPM know (:class:`Collusion`): a lone attacker knows only its own honest
update (``mean`` = its update, ``std`` = 0: ALIE then sends its honest update and IPM
``-eps`` times it). In the simulator the attackers of one run share a collusion board
(:mod:`fednode.sim.collusion`) that gives every colluder the honest updates of all
colluders, or with ``attack.omniscient`` the honest updates of every honest client of
the round (the hard benchmark).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError

F32 = np.float32
#: attack kinds and whether they take a parameter (``kind:<value>``)
KINDS: dict[str, bool] = {
    "signflip": False,
    "scale": True,
    "gaussian": True,
    "labelflip": False,
    "alie": False,
    "ipm": True,
}
EXPECTED = "one of signflip, scale:<k>, gaussian:<sigma>, labelflip, alie, ipm:<eps>"


@dataclass(frozen=True)
class Attack:
    """A parsed attack spec (:func:`parse_attack`). ``value`` is k, sigma or eps."""

    kind: str
    value: float = 0.0

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.value:g}" if KINDS[self.kind] else self.kind

    @property
    def needs_updates(self) -> bool:
        """ALIE and IPM are computed from the updates the attacker knows."""
        return self.kind in ("alie", "ipm")


def parse_attack(spec: str, field: str = "attack.kind") -> Attack:
    """``"scale:10"`` -> ``Attack("scale", 10.0)``. ConfigError naming ``field`` otherwise."""
    kind, sep, arg = spec.partition(":")
    if kind not in KINDS or bool(sep) != KINDS[kind]:
        raise ConfigError(field, spec, EXPECTED)
    if not KINDS[kind]:
        return Attack(kind)
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(field, spec, f"{kind}:<number>") from None
    if not math.isfinite(value) or (kind != "scale" and value <= 0):
        raise ConfigError(field, spec, f"{kind}:<a finite number > 0>")
    return Attack(kind, value)


def alie_z(n: int, f: int) -> float:
    """ALIE's ``z_max`` (Baruch et al. 2019, Algorithm 3): ``s = floor(n/2 + 1) - f`` workers
    must be won over, ``z = Phi^-1((n - s) / n)``. ``n`` members of which ``f`` attack.
    Errors: ValueError unless ``0 < f < n``; ``s <= 0`` (attackers hold a majority) gives
    the largest finite z the formula allows, ``Phi^-1((n - 1) / n)``."""
    if not 0 < f < n:
        raise ValueError(f"ALIE needs 0 < f < n attackers, got f={f} n={n}")
    s = max(math.floor(n / 2 + 1) - f, 1)
    return NormalDist().inv_cdf((n - s) / n)


def poison(
    attack: Attack,
    delta: np.ndarray,
    known: np.ndarray | None = None,
    *,
    z: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The poisoned version of ``delta`` (float32, same shape; ``delta`` is not modified).

    ``known``: the ``(k, d)`` updates ALIE / IPM are computed from (default: ``delta``
    alone); ``z``: ALIE's multiplier; ``rng``: the noise of ``gaussian``.
    """
    kind, value = attack.kind, attack.value
    if kind == "signflip":
        return np.negative(delta, dtype=F32)
    if kind == "scale":
        return np.multiply(delta, value, dtype=F32)
    if kind == "gaussian":
        gen = rng if rng is not None else np.random.default_rng(0)
        return gen.normal(0.0, value, size=delta.shape).astype(F32)
    if kind == "labelflip":
        return np.array(delta, dtype=F32, copy=True)
    stack = np.asarray(delta if known is None else known, dtype=np.float64).reshape(
        -1, delta.shape[0]
    )
    mean = stack.mean(axis=0)
    if kind == "alie":
        return (mean - z * stack.std(axis=0)).astype(F32)
    return (-value * mean).astype(F32)  # ipm


class Collusion(Protocol):
    """What an attacker knows of the round's updates (for ALIE / IPM).

    ``known(me, round, base, config, own)`` returns the ``(k, d)`` float32 updates the
    attacker ``me`` computes its attack from, given the round's model ``base``, the
    fit config and its own honest update ``own``.
    """

    def known(
        self, me: int, round: int, base: np.ndarray, config: Mapping[str, Any], own: np.ndarray
    ) -> np.ndarray: ...


class Alone:
    """A lone attacker: it knows its own honest update only."""

    def known(
        self, me: int, round: int, base: np.ndarray, config: Mapping[str, Any], own: np.ndarray
    ) -> np.ndarray:
        return own[None, :]


@dataclass
class Attacker:
    """An attacker's setup: the attack, ALIE's population, its seed and its collusion.

    ``n`` members of which ``f`` attack give ALIE's z (:func:`alie_z`) unless ``z`` > 0;
    ``index`` names this attacker on the collusion board and seeds its noise.
    """

    attack: Attack
    n: int = 1
    f: int = 1
    z: float = 0.0
    seed: int = 0
    index: int = 0
    collusion: Collusion | None = None

    def z_value(self) -> float:
        if self.z > 0:
            return self.z
        return alie_z(self.n, self.f) if 0 < self.f < self.n else 1.0

    def apply(
        self, delta: np.ndarray, *, round: int, base: np.ndarray, config: Mapping[str, Any]
    ) -> np.ndarray:
        """The update this attacker sends for ``round`` instead of its honest ``delta``."""
        known = None
        if self.attack.needs_updates:
            board = self.collusion or Alone()
            known = board.known(self.index, round, base, config, delta)
        rng = np.random.default_rng([self.seed, self.index, round, 0xA77AC])
        return poison(self.attack, delta, known, z=self.z_value(), rng=rng)


def flip_labels(labels: Any, classes: int = 10) -> Any:
    """``classes - 1 - y`` for every label (numpy array or torch tensor, a new object)."""
    return (classes - 1) - labels


def label_flipped(task: Any, classes: int = 10) -> Any:
    """``task`` with its training labels flipped (:func:`flip_labels`), for ``labelflip``.

    Works on the built-in tasks (digits, digits:linear/numpy, synthetic), which keep their
    training labels in ``_y``; ConfigError for a task that does not.
    """
    labels = getattr(task, "_y", None)
    if labels is None:
        raise ConfigError(
            "attack.kind", "labelflip", "a built-in task (digits, synthetic) for labelflip"
        )
    task._y = flip_labels(labels, classes)
    return task
