"""The aggregation interface and FedAvg, one path for the coordinator, the regional
aggregator and FedBuff's buffer.

(A gossip peer does not average a round's updates: it moves along differences between
link copies, which is not a weighted mean; see ``gossip/links.py`` and docs/GOSSIP.md.)

Every rule has the streaming shape ``start(size, capacity)`` -> ``add(vec, weight,
peer)`` -> ``finish()``, then ``report`` says what the round did (which updates a rule
discarded or clipped, which claims were capped, which norms were flagged).
:class:`StreamingMean` keeps one float64 accumulator (memory O(model), not
O(clients x model) as in Flower's ``aggregate()``); it accumulates in place in
fixed-size chunks through one preallocated float64 chunk, so adding an update allocates
nothing and reads it twice: once for its norm (which is also its finiteness check), once
to add it. The robust rules (median, trimmed
mean, Krum, ...; :mod:`fednode.training.buffered`) need every update at once and say so
with ``needs_all = True``. :func:`fednode.training.buffered.make_aggregator` builds either
from a rule spec (:mod:`fednode.training.rulespec`).

Input is checked, never cast: a vector that is not 1-D float32 of the started size, a
non-finite value, or a non-positive/non-finite weight raises :class:`PayloadError`.

What the coordinator does with the mean (FedAvg step, FedAvgM, FedAdam, FedYogi) lives in
:mod:`fednode.training.server_opt`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import PayloadError, RoundFailed
from ..wire.tensors import DTYPE, check_finite, check_vector
from .claims import ClaimGuard, ClaimLimits

CHUNK = 1 << 16
ACC_DTYPE = np.float64


@dataclass
class AggregateReport:
    """What one aggregation did, by peer id (empty strings for unnamed inputs)."""

    rule: str = "fedavg"
    count: int = 0
    #: updates used whole by a selecting rule (Krum's choice, Multi-Krum's, Bulyan's)
    selected: list[str] = field(default_factory=list)
    #: updates a selecting rule left out
    discarded: list[str] = field(default_factory=list)
    #: updates scaled down (norm_bound, centered clipping)
    clipped: list[str] = field(default_factory=list)
    #: values trimmed per coordinate (trimmed mean: at each end; Bulyan: in its 2nd phase)
    trimmed: int = 0
    #: claims cut to the cap
    capped: list[str] = field(default_factory=list)
    #: norms far outside the round's distribution
    flagged: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The round-record fields (``agg_*``)."""
        return {
            "agg_rule": self.rule,
            "agg_selected": sorted(self.selected),
            "agg_discarded": sorted(self.discarded),
            "agg_clipped": len(self.clipped),
            "agg_trimmed": self.trimmed,
            "agg_capped": sorted(self.capped),
            "agg_flagged": sorted(self.flagged),
        }


def report_note(record: dict[str, Any]) -> str:
    """A round record's ``agg_*`` fields in a few words ("" when the rule changed nothing),
    e.g. ``krum:1: discarded 7, flagged 1``."""
    parts = []
    if record.get("agg_discarded"):
        parts.append(f"discarded {len(record['agg_discarded'])}")
    if record.get("agg_clipped"):
        parts.append(f"clipped {record['agg_clipped']}")
    if record.get("agg_trimmed"):
        parts.append(f"trimmed {record['agg_trimmed']}")
    if record.get("agg_capped"):
        parts.append(f"capped {len(record['agg_capped'])}")
    if record.get("agg_flagged"):
        parts.append(f"flagged {len(record['agg_flagged'])}")
    return f"{record.get('agg_rule', '')}: {', '.join(parts)}" if parts else ""


class Aggregator(Protocol):
    needs_all: bool
    report: AggregateReport

    def start(self, size: int, capacity: int = 0) -> None: ...
    def add(self, vec: np.ndarray, weight: float, peer: str = "") -> None: ...
    def finish(self) -> tuple[np.ndarray, float]: ...

    @property
    def count(self) -> int: ...


def check_input(vec: np.ndarray, weight: float, size: int) -> float:
    """Check one update (shape, dtype, weight, finiteness); return its norm
    (:func:`checked_norm`, whose pass over ``vec`` is also the finiteness check)."""
    check_vector(vec, size)
    if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
        raise PayloadError(f"expected a finite weight > 0, got {weight!r}")
    return checked_norm(vec)


def checked_norm(vec: np.ndarray) -> float:
    """Euclidean norm of ``vec``, raising :class:`PayloadError` if a value is NaN/Inf.

    One BLAS pass (``np.dot`` in float32, the fast path of the receive check
    ``wire.tensors.check_finite``): a finite sum of squares proves every value finite (NaN
    and Inf propagate, squares cannot cancel). Its float32 accumulation is exact to ~1e-6
    relative, which is all the norm is used for (flagging at 10x the median, the
    ``norm_bound`` clip factor: the clipped norm is then ``c`` to float32 precision). If
    the float32 sum overflows (norms above ~1.8e19) or is not finite, the exact float64
    :func:`vector_norm` decides, then the element-wise check names the bad values.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        squares = float(np.dot(vec, vec))
    if math.isfinite(squares):
        return math.sqrt(squares)
    norm = vector_norm(vec)
    if math.isfinite(norm):
        return norm
    check_finite(vec)
    raise PayloadError("expected finite values")  # pragma: no cover - check_finite raised


def vector_norm(vec: np.ndarray) -> float:
    """Euclidean norm accumulated in float64, without a float64 copy of ``vec``: squares
    into one float64 chunk at a time, summed by numpy's own pairwise loop (no BLAS:
    threaded BLAS was 100x slower on a machine whose cores were busy; and ~1.6x faster
    than ``einsum`` with ``dtype=float64``, which casts through a small buffer)."""
    buf = np.empty(min(CHUNK, vec.shape[0]), dtype=ACC_DTYPE)
    total = 0.0
    for lo in range(0, vec.shape[0], CHUNK):
        part = vec[lo : lo + CHUNK]
        b = buf[: part.shape[0]]
        np.square(part, out=b)
        total += float(b.sum())
    return math.sqrt(total)


class StreamingMean:
    """Weighted mean, accumulated in place: FedAvg (McMahan et al. 2017) by num_examples
    (capped, :mod:`.claims`); with ``clip`` > 0 each update is first scaled to norm at
    most ``clip`` (the ``norm_bound:<c>`` stage, applied on arrival)."""

    needs_all = False

    def __init__(
        self, *, clip: float = 0.0, limits: ClaimLimits | None = None, rule: str = ""
    ) -> None:
        self._acc: np.ndarray | None = None
        #: the one float64 chunk an update is scaled into before it is added
        self._buf = np.empty(0, dtype=ACC_DTYPE)
        self._total = 0.0
        self._count = 0
        self.clip = clip
        self.rule = rule or (f"norm_bound:{clip:g}+fedavg" if clip > 0 else "fedavg")
        self.guard = ClaimGuard(limits or ClaimLimits())
        self._clipped: list[str] = []
        self.report = AggregateReport(rule=self.rule)

    def start(self, size: int, capacity: int = 0) -> None:
        if self._acc is None or self._acc.shape[0] != size:
            self._acc = np.zeros(size, dtype=ACC_DTYPE)
            self._buf = np.empty(min(CHUNK, size), dtype=ACC_DTYPE)
        else:
            self._acc.fill(0.0)
        self._total = 0.0
        self._count = 0
        self._clipped = []
        self.guard.start()

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> float:
        return self._total

    def add(self, vec: np.ndarray, weight: float, peer: str = "") -> None:
        acc = self._acc
        if acc is None:
            raise RoundFailed("add() before start()")
        norm = check_input(vec, weight, acc.shape[0])
        w = self.guard.weigh(float(weight), norm, peer)
        scale = 1.0
        if self.clip > 0 and norm > self.clip:
            scale = self.clip / norm
            self._clipped.append(peer)
        ws = w * scale
        buf = self._buf
        for lo in range(0, acc.shape[0], CHUNK):
            part = acc[lo : lo + CHUNK]
            b = buf[: part.shape[0]]
            np.multiply(vec[lo : lo + CHUNK], ws, out=b)  # float64: the cast is the loop's
            np.add(part, b, out=part)
        self._total += w
        self._count += 1

    def finish(self) -> tuple[np.ndarray, float]:
        """(weighted mean as float32, total weight). Raises RoundFailed with no input."""
        if self._acc is None or self._count == 0:
            raise RoundFailed("no updates to aggregate")
        out = np.empty(self._acc.shape[0], dtype=DTYPE)
        for lo in range(0, out.shape[0], CHUNK):
            hi = lo + CHUNK
            out[lo:hi] = self._acc[lo:hi] / self._total
        self.report = AggregateReport(
            rule=self.rule,
            count=self._count,
            clipped=list(self._clipped),
            capped=list(self.guard.capped),
            flagged=self.guard.flagged(),
        )
        self.guard.close()
        return out, self._total
