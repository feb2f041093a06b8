"""The ``[attack]`` section: make this node an attacker (tests and benchmarks only).

Off by default (``kind = ""``). ``fednode run`` refuses a config with an attack unless
``--i-am-testing-an-attack`` is given, and refuses ``omniscient`` outright (only the
simulator can know the honest updates of a round). The attacks are in
:mod:`fednode.training.attacks`; ``docs/ROBUSTNESS.md`` ("Attacks") is the guide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .sections import check


@dataclass(frozen=True)
class AttackParams:
    """``[attack]``: which attack this node runs, and what its colluders know."""

    #: "" (no attack), signflip, scale:<k>, gaussian:<sigma>, labelflip, alie, ipm:<eps>
    kind: str = ""
    #: attackers that collude (ALIE's f; in the simulator: the attackers of the run)
    colluders: int = 1
    #: simulator only: ALIE / IPM know every honest update of the round (the hard benchmark)
    omniscient: bool = False
    #: ALIE's z; 0 = from the population (n = data.num_clients, f = colluders), as in the paper
    z: float = 0.0

    @property
    def on(self) -> bool:
        return bool(self.kind)

    def validate(self) -> None:
        if self.kind:
            from ..training.attacks import parse_attack

            parse_attack(self.kind, "attack.kind")
        check(self.colluders >= 1, "attack.colluders", self.colluders, "an integer >= 1")
        check(self.z >= 0 and math.isfinite(self.z), "attack.z", self.z, "a float >= 0 (0 = auto)")
        check(
            not self.omniscient or self.kind.split(":")[0] in ("alie", "ipm"),
            "attack.omniscient",
            self.omniscient,
            "false unless attack.kind is alie or ipm (the attacks that use others' updates)",
        )
