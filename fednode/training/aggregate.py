"""Aggregation rules, one path shared by the coordinator and the regional aggregator.

(A gossip peer does not average a round's updates: it moves along differences between
link copies, which is not a weighted mean; see ``gossip/links.py`` and docs/GOSSIP.md.)

Every rule has the streaming shape ``start(size)`` -> ``add(vec, weight)`` -> ``finish()``.
:class:`StreamingMean` keeps one float64 accumulator (memory O(model), not
O(clients x model) as in Flower's ``aggregate()``); it accumulates in fixed-size chunks
so the only other memory is one chunk-sized temporary. Robust rules (median, trimmed
mean, Krum) need every update at once and say so with ``needs_all = True``.

Input is checked, never cast: a vector that is not 1-D float32 of the started size, a
non-finite value, or a non-positive/non-finite weight raises :class:`PayloadError`.

What the coordinator does with the mean (FedAvg step, FedAvgM, FedAdam, FedYogi) lives in
:mod:`fednode.training.server_opt`.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from ..errors import ConfigError, PayloadError, RoundFailed
from ..wire.tensors import DTYPE, check_finite, check_vector

CHUNK = 1 << 16
ACC_DTYPE = np.float64


class Aggregator(Protocol):
    needs_all: bool

    def start(self, size: int) -> None: ...
    def add(self, vec: np.ndarray, weight: float) -> None: ...
    def finish(self) -> tuple[np.ndarray, float]: ...

    @property
    def count(self) -> int: ...


def _check_input(vec: np.ndarray, weight: float, size: int) -> None:
    check_vector(vec, size)
    if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
        raise PayloadError(f"expected a finite weight > 0, got {weight!r}")
    check_finite(vec)


class StreamingMean:
    """Weighted mean, accumulated in place: FedAvg (McMahan et al. 2017) by num_examples."""

    needs_all = False

    def __init__(self) -> None:
        self._acc: np.ndarray | None = None
        self._total = 0.0
        self._count = 0

    def start(self, size: int) -> None:
        if self._acc is None or self._acc.shape[0] != size:
            self._acc = np.zeros(size, dtype=ACC_DTYPE)
        else:
            self._acc.fill(0.0)
        self._total = 0.0
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> float:
        return self._total

    def add(self, vec: np.ndarray, weight: float) -> None:
        acc = self._acc
        if acc is None:
            raise RoundFailed("add() before start()")
        _check_input(vec, weight, acc.shape[0])
        w = float(weight)
        for lo in range(0, acc.shape[0], CHUNK):
            hi = lo + CHUNK
            acc[lo:hi] += w * vec[lo:hi].astype(ACC_DTYPE)
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
        return out, self._total


class _Buffered:
    """Base for rules that need every update (memory O(clients x model), by necessity)."""

    needs_all = True

    def __init__(self) -> None:
        self._vecs: list[np.ndarray] = []
        self._weights: list[float] = []
        self._size = 0

    def start(self, size: int) -> None:
        self._vecs, self._weights, self._size = [], [], size

    @property
    def count(self) -> int:
        return len(self._vecs)

    def add(self, vec: np.ndarray, weight: float) -> None:
        _check_input(vec, weight, self._size)
        self._vecs.append(vec)
        self._weights.append(float(weight))

    def _stack(self) -> np.ndarray:
        if not self._vecs:
            raise RoundFailed("no updates to aggregate")
        return np.stack(self._vecs)


class CoordinateMedian(_Buffered):
    """Coordinate-wise median (Yin et al. 2018)."""

    def finish(self) -> tuple[np.ndarray, float]:
        return np.median(self._stack(), axis=0).astype(DTYPE), sum(self._weights)


class TrimmedMean(_Buffered):
    """Coordinate-wise mean after dropping the ``beta`` fraction at each end (Yin et al. 2018)."""

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        if not 0 <= beta < 0.5:
            raise ConfigError("aggregation", f"trimmed:{beta}", "beta in [0, 0.5)")
        self.beta = beta

    def finish(self) -> tuple[np.ndarray, float]:
        stack = np.sort(self._stack(), axis=0)
        k = int(self.beta * stack.shape[0])
        kept = stack[k : stack.shape[0] - k]
        return kept.mean(axis=0).astype(DTYPE), sum(self._weights)


class Krum(_Buffered):
    """Krum (Blanchard et al. 2017): the update closest to its n - f - 2 nearest others."""

    def __init__(self, f: int = 1) -> None:
        super().__init__()
        self.f = f

    def finish(self) -> tuple[np.ndarray, float]:
        stack = self._stack().astype(ACC_DTYPE)
        n = stack.shape[0]
        m = max(n - self.f - 2, 1)
        sq = (stack**2).sum(1)
        d = sq[:, None] + sq[None, :] - 2 * stack @ stack.T
        np.fill_diagonal(d, np.inf)
        scores = np.sort(d, axis=1)[:, :m].sum(1)
        best = int(np.argmin(scores))
        return self._vecs[best].astype(DTYPE, copy=True), sum(self._weights)


def make_aggregator(spec: str = "fedavg") -> Aggregator:
    """``fedavg`` | ``median`` | ``trimmed:<beta>`` | ``krum:<f>``."""
    name, _, arg = spec.partition(":")
    try:
        if name == "fedavg" and not arg:
            return StreamingMean()
        if name == "median" and not arg:
            return CoordinateMedian()
        if name == "trimmed":
            return TrimmedMean(float(arg or 0.1))
        if name == "krum":
            return Krum(int(arg or 1))
    except ValueError:
        pass
    raise ConfigError("aggregation", spec, "'fedavg', 'median', 'trimmed:<beta>' or 'krum:<f>'")
