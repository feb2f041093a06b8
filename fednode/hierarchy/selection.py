"""Client selection strategies (pure). The coordinator asks one for ``k`` of the available.

Strategies see :class:`Candidate` records (peer, load, accepting, plus what the
coordinator has observed) and a seeded ``random.Random``, so selection is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Candidate:
    peer: str
    load: int = 0
    accepting: bool = True


class Selection(Protocol):
    def select(self, candidates: list[Candidate], k: int, rng: random.Random) -> list[str]: ...


class UniformSelection:
    """Uniform random sample without replacement (FedAvg's client sampling)."""

    def select(self, candidates: list[Candidate], k: int, rng: random.Random) -> list[str]:
        peers = sorted(c.peer for c in candidates)
        return sorted(rng.sample(peers, min(k, len(peers))))
