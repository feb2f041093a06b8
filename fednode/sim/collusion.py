"""The collusion board: what the simulated attackers of one run know for ALIE and IPM.

The attackers of a run share one board (an in-process object, the simulator's stand-in
for a side channel between colluding members). An attacker asks it, when its own
training ends, for the updates it computes its attack from
(:class:`~fednode.training.attacks.Collusion`):

* colluding (default): the honest updates of every attacker of the run;
* omniscient (``attack.omniscient``, the hard benchmark): the honest updates of every
  honest client of the run.

How the board knows them without touching honest code or depending on who finishes
first: training is deterministic in (partition, model, fit config) — the built-in tasks
seed their shuffling with (seed, client index, round) — so the board trains the members'
partitions itself from the round's model with the round's fit config, on its own task
objects, and keeps the result for the round (one extra training per member per round;
the asking attacker's own update is used as it is). It covers every member whether or
not the coordinator selected it that round. Not checked with ``--workers`` > 1 (each forked
worker would hold its own copy of the board).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np

from ..config import NodeConfig, replace
from ..errors import ConfigError
from ..factory import make_attacker
from ..training.attacks import Attacker
from ..training.task import Task

F32 = np.float32


class CollusionBoard:
    """``members``: the client indices whose honest updates the attackers know;
    ``task_of(i)`` builds client ``i``'s task (its clean data)."""

    def __init__(self, members: Sequence[int], task_of: Callable[[int], Task]) -> None:
        self.members = sorted(members)
        self.task_of = task_of
        self._tasks: dict[int, Task] = {}
        self._round: tuple[int, bytes] | None = None
        self._updates: dict[int, np.ndarray] = {}
        #: trainings the board ran itself (what it costs)
        self.trainings = 0

    def known(
        self, me: int, round: int, base: np.ndarray, config: Mapping[str, Any], own: np.ndarray
    ) -> np.ndarray:
        key = (round, hashlib.blake2b(np.ascontiguousarray(base).data, digest_size=16).digest())
        if self._round != key:
            self._round, self._updates = key, {}
        if me in self.members:
            self._updates[me] = own
        for i in self.members:
            if i not in self._updates:
                self._updates[i] = self._train(i, base, config)
        return np.stack([self._updates[i] for i in self.members]).astype(F32, copy=False)

    def _train(self, i: int, base: np.ndarray, config: Mapping[str, Any]) -> np.ndarray:
        task = self._tasks.get(i)
        if task is None:
            task = self._tasks[i] = self.task_of(i)
        params, _n, _metrics = task.train(base, config)
        self.trainings += 1
        return np.subtract(params, base, dtype=F32)


def attackers_of(
    config: NodeConfig, num: int, attackers: Collection[int], task_of: Callable[[int], Task]
) -> Callable[[int], Attacker | None]:
    """Node index (client or peer, ``0..num-1``) -> its attacker (``config.attack``) or
    None. The attackers share one :class:`CollusionBoard` (ALIE / IPM) over ``task_of``'s
    partitions; ALIE's population is n = ``num``, f = ``len(attackers)``."""
    chosen = frozenset(attackers)
    if chosen and not config.attack.on:
        raise ConfigError("attack.kind", "", "an attack for the attackers the topology marks")
    if not chosen:
        return lambda i: None
    spec = replace(config.attack, colluders=len(chosen))
    attack_config = replace(config, attack=spec)
    members = [i for i in range(num) if i not in chosen] if spec.omniscient else sorted(chosen)
    board = CollusionBoard(members, task_of)

    def attacker_of(i: int) -> Attacker | None:
        if i not in chosen:
            return None
        return make_attacker(attack_config, index=i, n=num, collusion=board)

    return attacker_of
