"""Rules that need every update: one preallocated ``(n, d)`` float32 block per aggregator.

:class:`BufferedAggregator` is the :class:`~fednode.training.aggregate.Aggregator` for
every rule of :mod:`fednode.training.rulespec` except plain (or norm-bounded) FedAvg.
``start(size, capacity)`` allocates ``capacity`` rows (the coordinator knows how many
children it selected; the block is kept between rounds when it is big enough); an
update beyond the capacity grows the block geometrically (x2, one copy). ``add`` copies
the update into its row, so the caller's array is never kept; ``finish`` runs the
pre-aggregation stages in place on the block, then the rule
(:mod:`fednode.training.robust`), and fills :attr:`report` with peer ids.

Memory: the block (``capacity x d x 4`` bytes) plus the rule's chunk temporaries and O(d)
vectors (docs/ROBUSTNESS.md, "Implementation, cost and memory").

The rule runs with BLAS limited to one thread (threadpoolctl): its products are many
small-to-medium ones (one per column chunk), and on a machine whose cores are busy
(training, other nodes) OpenBLAS's threads spinning for a core made them up to 100x
slower; one thread costs little when the machine is idle.

:func:`make_aggregator` is the one place a spec becomes an aggregator.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import RoundFailed
from ..wire.tensors import DTYPE
from . import robust
from .aggregate import AggregateReport, Aggregator, StreamingMean, check_input
from .claims import ClaimGuard, ClaimLimits
from .rulespec import RuleSpec, parse_rule

#: rows allocated when the caller gives no capacity
DEFAULT_CAPACITY = 8


class BufferedAggregator:
    needs_all = True

    def __init__(self, spec: RuleSpec, limits: ClaimLimits | None = None) -> None:
        self.spec = spec
        self.guard = ClaimGuard(limits or ClaimLimits())
        self._block: np.ndarray | None = None
        self._weights: list[float] = []
        self._peers: list[str] = []
        self._size = 0
        self.report = AggregateReport(rule=spec.text)

    def start(self, size: int, capacity: int = 0) -> None:
        rows = max(capacity, 1) if capacity else DEFAULT_CAPACITY
        block = self._block
        if block is None or block.shape[1] != size or block.shape[0] < rows:
            self._block = None  # let the old block go before the new one is allocated
            self._block = np.empty((rows, size), dtype=DTYPE)
        self._size = size
        self._weights, self._peers = [], []
        self.guard.start()

    @property
    def count(self) -> int:
        return len(self._weights)

    @property
    def capacity(self) -> int:
        return 0 if self._block is None else self._block.shape[0]

    def add(self, vec: np.ndarray, weight: float, peer: str = "") -> None:
        if self._block is None:
            raise RoundFailed("add() before start()")
        norm = check_input(vec, weight, self._size)
        n = len(self._weights)
        if n == self._block.shape[0]:
            grown = np.empty((2 * n, self._size), dtype=DTYPE)
            grown[:n] = self._block[:n]
            self._block = grown
        self._block[n] = vec
        self._weights.append(self.guard.weigh(float(weight), norm, peer))
        self._peers.append(peer)

    def finish(self) -> tuple[np.ndarray, float]:
        n = len(self._weights)
        if self._block is None or n == 0:
            raise RoundFailed("no updates to aggregate")
        spec = self.spec
        flagged = self.guard.flagged()  # on the norms as they came, before any stage
        capped = list(self.guard.capped)
        self.guard.close()
        spec.check_count(n)
        x = self._block[:n]
        clipped: list[int] = []
        with threadpool_limits(limits=1, user_api="blas"):  # see the module docstring
            for stage in spec.stages:
                if stage.name == "norm_bound":
                    clipped += robust.norm_bound(x, stage.c)
                else:
                    f = stage.f if stage.f is not None else spec.rule_f(n)
                    robust.nnm(x, int(f or 0))
            out = self._rule(x)
        peers = self._peers
        self.report = AggregateReport(
            rule=spec.text,
            count=n,
            selected=[peers[i] for i in out.selected or []],
            discarded=[peers[i] for i in out.discarded],
            clipped=[peers[i] for i in sorted(set(clipped) | set(out.clipped))],
            trimmed=out.trimmed,
            capped=capped,
            flagged=flagged,
        )
        return out.vector, float(sum(self._weights))

    def _rule(self, x: np.ndarray) -> robust.Outcome:
        spec = self.spec
        name = spec.name
        if name == "median":
            return robust.median(x)
        if name == "trimmed":
            return robust.trimmed_mean(x, spec.beta)
        if name == "krum":
            return robust.krum(x, spec.f)
        if name == "multikrum":
            return robust.multikrum(x, spec.f, spec.m)
        if name == "bulyan":
            return robust.bulyan(x, spec.f)
        if name == "centered_clip":
            return robust.centered_clip(x, spec.tau, spec.iters)
        if name == "geomed":
            return robust.geomed(x, spec.iters)
        return robust.Outcome(robust.weighted_mean(x, np.asarray(self._weights)))  # fedavg


def make_aggregator(
    spec: str | RuleSpec = "fedavg", limits: ClaimLimits | None = None
) -> Aggregator:
    """The aggregator for ``spec`` (text or parsed): :class:`StreamingMean` for fedavg
    and ``norm_bound:<c>+fedavg``, :class:`BufferedAggregator` for the rest.

    Errors: :class:`~fednode.errors.ConfigError` (field ``aggregation.rule``) for a bad spec.
    """
    parsed = parse_rule(spec) if isinstance(spec, str) else spec
    if not parsed.needs_all:
        clip = min((s.c for s in parsed.stages if s.name == "norm_bound"), default=0.0)
        return StreamingMean(clip=clip, limits=limits, rule=parsed.text)
    return BufferedAggregator(parsed, limits)
