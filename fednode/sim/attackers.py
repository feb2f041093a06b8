"""Which nodes of a topology attack: ``attackers = [...]`` / ``attacker_fraction`` (pure).

A spec marks attackers by node id (``attackers = [3, 7]``) or by fraction
(``attacker_fraction = 0.2``: ``round(0.2 * m)`` of its ``m`` clients or peers, at least
one, drawn from the run's seed, so a seed always picks the same nodes);
``fednode sim --attackers`` overrides the spec (:func:`parse_attackers_flag`). Which
attack they run is the config's ``[attack] kind`` (``fednode sim --attack KIND``).
Only clients (star, two-tier) and peers (gossip) can attack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

#: roles that can be attackers
ATTACKER_ROLES = ("client", "peer")


@dataclass(frozen=True)
class AttackerMarks:
    """What a spec (or ``--attackers``) says: explicit node ids, or a fraction."""

    nodes: tuple[int, ...] = ()
    fraction: float = 0.0

    @property
    def any(self) -> bool:
        return bool(self.nodes) or self.fraction > 0


def _fraction(value: Any, where: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0 < float(value) < 1 or not math.isfinite(float(value)):
        raise ConfigError(where, value, "a fraction in (0, 1) of the clients or peers")
    return float(value)


def attacker_marks(spec: Mapping[str, Any], roles: Mapping[int, str]) -> AttackerMarks:
    """The marks of a parsed spec (keys ``attackers`` / ``attacker_fraction``), checked
    against its roles. ConfigError naming the key."""
    raw, frac = spec.get("attackers"), spec.get("attacker_fraction")
    if raw is not None and frac is not None:
        raise ConfigError("attackers", raw, "either attackers or attacker_fraction, not both")
    if frac is not None:
        return AttackerMarks(fraction=_fraction(frac, "attacker_fraction"))
    if raw is None:
        return AttackerMarks()
    return AttackerMarks(nodes=check_nodes(raw, roles, "attackers"))


def check_nodes(raw: Any, roles: Mapping[int, str], where: str) -> tuple[int, ...]:
    """Distinct node ids of clients or peers. ConfigError naming ``where`` otherwise."""
    if not isinstance(raw, list | tuple) or not raw:
        raise ConfigError(where, raw, "a non-empty list of node ids")
    ids: list[int] = []
    for i, v in enumerate(raw):
        if isinstance(v, bool) or not isinstance(v, int) or v not in roles:
            raise ConfigError(f"{where}[{i}]", v, f"a node id in 0..{len(roles) - 1}")
        if roles[v] not in ATTACKER_ROLES:
            raise ConfigError(f"{where}[{i}]", v, f"a client or peer (node {v} is {roles[v]})")
        ids.append(v)
    if len(set(ids)) != len(ids):
        raise ConfigError(where, list(raw), "distinct node ids")
    return tuple(sorted(ids))


def parse_attackers_flag(text: str) -> AttackerMarks:
    """``--attackers``: a fraction (``0.2``) or comma-separated node ids (``3,7``)."""
    try:
        if "." in text:
            return AttackerMarks(fraction=_fraction(float(text), "attackers"))
        return AttackerMarks(nodes=tuple(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        raise ConfigError("attackers", text, "a fraction (0.2) or node ids (3,7)") from None


def choose_attackers(marks: AttackerMarks, roles: Mapping[int, str], seed: int) -> tuple[int, ...]:
    """The attacking node ids, sorted: the marked ones, or ``round(fraction * m)`` (at
    least one) of the ``m`` clients / peers drawn with ``seed``."""
    if marks.nodes:
        return check_nodes(list(marks.nodes), roles, "attackers")
    if marks.fraction <= 0:
        return ()
    eligible = sorted(v for v, r in roles.items() if r in ATTACKER_ROLES)
    count = min(max(1, round(marks.fraction * len(eligible))), len(eligible))
    rng = np.random.default_rng([seed, 0xA77AC4])
    return tuple(sorted(int(v) for v in rng.choice(eligible, size=count, replace=False)))
