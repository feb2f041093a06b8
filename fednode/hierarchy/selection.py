"""Client selection strategies (pure). The coordinator asks one for ``k`` of the available.

Strategies see :class:`Candidate` records — peer, load, accepting, plus what the
coordinator has observed of it (last reported training loss, how long its last result
took, examples, rounds since it was last picked) — and a seeded ``random.Random``, so
selection is reproducible. They are plug-ins: anything with ``select(candidates, k, rng)``.

=================  ==========================================================================
uniform            uniform sample without replacement (FedAvg, McMahan et al. 2017)
power_of_choice    sample d, keep the k with the highest last known loss (Cho et al. 2022)
deadline           skip children whose observed time would miss the round budget
oort               statistical x system utility, with exploration (Lai et al. 2021)
=================  ==========================================================================
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from ..config import SelectionParams


@dataclass(frozen=True, slots=True)
class Candidate:
    peer: str
    load: int = 0
    accepting: bool = True
    #: last training loss the child reported (None: never heard from)
    loss: float | None = None
    #: seconds from Fit to Update last time (None: never measured)
    duration_s: float | None = None
    examples: int = 0
    #: rounds since it was last selected (None: never selected)
    age: int | None = None


@dataclass(slots=True)
class Observed:
    """What the coordinator has seen of one child (kept across rounds, checkpointed)."""

    loss: float | None = None
    duration_s: float | None = None
    examples: int = 0
    last_selected: int | None = None

    def candidate(self, peer: str, load: int, accepting: bool, round_number: int) -> Candidate:
        age = None if self.last_selected is None else max(round_number - self.last_selected, 1)
        return Candidate(peer, load, accepting, self.loss, self.duration_s, self.examples, age)


class Selection(Protocol):
    def select(self, candidates: list[Candidate], k: int, rng: random.Random) -> list[str]: ...


class UniformSelection:
    """Uniform random sample without replacement (FedAvg's client sampling)."""

    def select(self, candidates: list[Candidate], k: int, rng: random.Random) -> list[str]:
        peers = sorted(c.peer for c in candidates)
        return sorted(rng.sample(peers, min(k, len(peers))))


class PowerOfChoice:
    """Power-of-choice (Cho, Wang, Joshi, AISTATS 2022, "Towards understanding biased client
    selection in federated learning"; arXiv 2010.01243, 2020).

    Sample a candidate set of ``d`` children uniformly, then keep the ``k`` with the highest
    local loss. This is the paper's communication-free variant *rpow-d*: the loss is the
    last one each child reported in ``Update.metrics["train_loss"]`` rather than a fresh
    probe; a child never heard from counts as +inf so everyone is tried once.
    """

    def __init__(self, d: int = 0, weighted: bool = True) -> None:
        self.d = d
        self.weighted = weighted

    def select(self, candidates: list[Candidate], k: int, rng: random.Random) -> list[str]:
        k = min(k, len(candidates))
        d = min(max(self.d or 2 * k, k), len(candidates))
        ordered = sorted(candidates, key=lambda c: c.peer)
        if self.weighted:  # the paper samples the candidate set by data fraction p_k
            known = [c.examples for c in ordered if c.examples > 0]
            guess = sum(known) / len(known) if known else 1.0
            weights = [float(c.examples) if c.examples > 0 else guess for c in ordered]
            pool = _weighted_sample(ordered, weights, d, rng)
        else:
            pool = rng.sample(ordered, d)
        ranked = sorted(
            pool, key=lambda c: (-(math.inf if c.loss is None else c.loss), rng.random())
        )
        return sorted(c.peer for c in ranked[:k])


def _weighted_sample(
    items: list[Candidate], weights: list[float], n: int, rng: random.Random
) -> list[Candidate]:
    """``n`` items without replacement, each draw proportional to weight (Efraimidis &
    Spirakis 2006: keep the n largest ``u ** (1 / w)``)."""
    keyed = sorted(
        ((rng.random() ** (1.0 / max(w, 1e-12)), i) for i, w in enumerate(weights)), reverse=True
    )
    return [items[i] for _, i in keyed[:n]]


class DeadlineAware:
    """Pick uniformly among children expected to finish within ``budget_s``.

    The expectation is the child's last observed Fit-to-Update time; a child never measured
    is assumed to fit (that is how it gets measured). If too few fit, the fastest of the rest
    fill up. Cuts the straggler tail without a fixed blacklist (cf. the deadline-based
    selection of FedCS, Nishio & Yonetani 2019).
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s

    def select(self, candidates: list[Candidate], k: int, rng: random.Random) -> list[str]:
        k = min(k, len(candidates))
        ordered = sorted(candidates, key=lambda c: c.peer)
        fits = [c for c in ordered if c.duration_s is None or c.duration_s <= self.budget_s]
        rest = sorted(
            (c for c in ordered if c not in fits), key=lambda c: (c.duration_s or 0.0, c.peer)
        )
        chosen = rng.sample(fits, min(k, len(fits)))
        chosen += rest[: k - len(chosen)]
        return sorted(c.peer for c in chosen)


class OortSelection:
    """Oort-like guided selection (Lai et al., OSDI 2021, "Oort: Efficient Federated Learning
    via Guided Participant Selection").

    Utility of an explored child: statistical utility ``examples * loss`` (the paper's
    ``|B| sqrt(mean loss^2)`` with the mean loss we have), plus a staleness bonus
    ``sqrt(0.1 log(R) / age)`` so old favourites are revisited, times the system penalty
    ``(budget / duration) ** alpha`` when the child is slower than the round budget.
    ``explore`` of the picks go to children never seen (uniformly); the rest exploit, sampled
    with probability proportional to utility among those within 95% of the k-th best.
    """

    def __init__(self, budget_s: float, explore: float = 0.1, alpha: float = 2.0) -> None:
        self.budget_s = budget_s
        self.explore = explore
        self.alpha = alpha
        self.rounds = 0

    def utility(self, c: Candidate) -> float:
        assert c.loss is not None
        u = max(c.examples, 1) * max(c.loss, 0.0)
        if c.age:
            u += math.sqrt(0.1 * math.log(max(self.rounds, 2)) / c.age)
        if c.duration_s and c.duration_s > self.budget_s:
            u *= (self.budget_s / c.duration_s) ** self.alpha
        return u

    def select(self, candidates: list[Candidate], k: int, rng: random.Random) -> list[str]:
        self.rounds += 1
        k = min(k, len(candidates))
        ordered = sorted(candidates, key=lambda c: c.peer)
        seen = [c for c in ordered if c.loss is not None]
        unseen = [c for c in ordered if c.loss is None]
        n_explore = min(len(unseen), max(k - len(seen), round(self.explore * k)))
        chosen = rng.sample(unseen, n_explore)
        want = k - n_explore
        if want and seen:
            scored = sorted(((self.utility(c), c.peer, c) for c in seen), reverse=True)
            cutoff = 0.95 * scored[min(want, len(scored)) - 1][0]
            pool = [(u, c) for u, _, c in scored if u >= cutoff]
            while pool and want:
                total = sum(u for u, _ in pool)
                x = rng.random() * total
                for i, (u, c) in enumerate(pool):
                    x -= u
                    if x <= 0 or i == len(pool) - 1:
                        chosen.append(c)
                        pool.pop(i)
                        break
                want -= 1
        if len(chosen) < k:  # pool exhausted: fill with the best remaining
            left = [c for c in ordered if c not in chosen]
            chosen += rng.sample(left, k - len(chosen))
        return sorted(c.peer for c in chosen)


def make_selection(params: SelectionParams, budget_s: float) -> Selection:
    """The strategy ``params.strategy``; ``budget_s`` is the time a child may take."""
    if params.strategy == "power_of_choice":
        return PowerOfChoice(params.candidates)
    if params.strategy == "deadline":
        return DeadlineAware(budget_s)
    if params.strategy == "oort":
        return OortSelection(budget_s, params.explore, params.straggler_penalty)
    return UniformSelection()
