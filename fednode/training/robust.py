"""Robust aggregation rules: pure numpy functions on one ``(n, d)`` float32 block.

Every function takes the round's updates as the rows of ``x`` (one block the caller
preallocated, see :mod:`fednode.training.buffered`) and returns a float32 vector of
length ``d`` plus what it did (an :class:`Outcome`). Nothing loops over parameters in
Python: coordinate-wise work (median, trimmed mean, Bulyan's second phase, the norm and
mean passes of centered clipping and Weiszfeld) runs on column chunks of at most
:data:`BUDGET` values, converted to float64 one chunk at a time, so the extra memory is
one chunk plus O(d) vectors, never a second block. Distance-based rules (Krum,
Multi-Krum, Bulyan, NNM) build the ``n x n`` Gram matrix chunk by chunk
(``||a - b||^2 = |a|^2 + |b|^2 - 2 a.b``, one BLAS product per chunk); the loops left
are over clients (Bulyan's ``n - 2f`` selections), on ``n x n`` matrices.

The two pre-aggregation stages (:func:`norm_bound`, :func:`nnm`) rewrite ``x`` in place.

Weights are not used: every update counts once (a claimed ``num_examples`` is a claim;
docs/ROBUSTNESS.md, "Weights are claims").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

#: values per float64 temporary (8 MiB): chunk width = BUDGET // n columns
BUDGET = 1 << 20
F64 = np.float64
F32 = np.float32


@dataclass
class Outcome:
    """A rule's result and what it discarded or down-weighted (row indices)."""

    vector: np.ndarray
    #: rows the rule used whole (Krum's choice, Multi-Krum's set, Bulyan's selection)
    selected: list[int] | None = None
    #: rows the rule left out entirely
    discarded: list[int] = field(default_factory=list)
    #: rows scaled down (norm bound, centered clipping's last iteration)
    clipped: list[int] = field(default_factory=list)
    #: values dropped per coordinate at each end (trimmed mean), or per coordinate (Bulyan)
    trimmed: int = 0
    #: Weiszfeld / centered clipping iterations run
    iterations: int = 0


def chunks(n: int, d: int) -> Iterator[slice]:
    step = max(1, BUDGET // max(n, 1))
    for lo in range(0, d, step):
        yield slice(lo, min(lo + step, d))


def gram(x: np.ndarray) -> np.ndarray:
    """``x @ x.T`` in float64, accumulated over column chunks."""
    n, d = x.shape
    g = np.zeros((n, n), dtype=F64)
    for c in chunks(n, d):
        block = x[:, c].astype(F64)
        g += block @ block.T
    return g


def sq_distances(x: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (n x n, float64, diagonal 0)."""
    g = gram(x)
    sq = np.diag(g).copy()
    dist = sq[:, None] + sq[None, :] - 2.0 * g
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def sq_norms(x: np.ndarray) -> np.ndarray:
    n, d = x.shape
    out = np.zeros(n, dtype=F64)
    for c in chunks(n, d):
        block = x[:, c].astype(F64)
        out += np.einsum("ij,ij->i", block, block)
    return out


def mean_rows(x: np.ndarray, rows: np.ndarray | list[int] | None = None) -> np.ndarray:
    """Unweighted mean of ``x[rows]`` (all rows by default), accumulated in float64."""
    idx = np.arange(x.shape[0]) if rows is None else np.asarray(rows, dtype=np.intp)
    out = np.empty(x.shape[1], dtype=F32)
    for c in chunks(len(idx), x.shape[1]):
        out[c] = x[idx, c].astype(F64).mean(axis=0)
    return out


def weighted_mean(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=F64) / float(np.sum(weights))
    out = np.empty(x.shape[1], dtype=F32)
    for c in chunks(x.shape[0], x.shape[1]):
        out[c] = w @ x[:, c].astype(F64)
    return out


# --- coordinate-wise ---------------------------------------------------------------------
#: values per transposed float32 chunk of the selection rules (1 MiB: stays in cache)
SELECT_BUDGET = 1 << 18


def columns_as_rows(x: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """``(c, x[:, c].T)`` for column chunks ``c`` of ``x``, each transposed into one
    reused C-contiguous ``(width, n)`` float32 buffer (the caller may reorder it in place).

    Selecting or sorting along the client axis of ``x`` itself runs numpy's loop once per
    coordinate on a strided lane; on the transposed chunk it is one call over contiguous
    rows, which numpy's SIMD partition/sort (x86-simd-sort) runs ~5x faster, copy included.
    """
    n, d = x.shape
    step = max(1, SELECT_BUDGET // max(n, 1))
    buf = np.empty((min(step, d), n), dtype=F32)
    for lo in range(0, d, step):
        c = slice(lo, min(lo + step, d))
        rows = buf[: c.stop - lo]
        np.copyto(rows, x[:, c].T)
        yield c, rows


def median(x: np.ndarray) -> Outcome:
    """Coordinate-wise median (Yin et al. 2018); for even ``n`` the mean of the two middle
    values, computed in float32 as ``np.median`` does (bit-identical to it)."""
    n = x.shape[0]
    k = n // 2
    out = np.empty(x.shape[1], dtype=F32)
    for c, rows in columns_as_rows(x):
        if n % 2:
            rows.partition(k, axis=1)
            out[c] = rows[:, k]
        else:
            rows.partition((k - 1, k), axis=1)
            o = out[c]
            np.add(rows[:, k - 1], rows[:, k], out=o)
            o *= F32(0.5)
    return Outcome(out)


def trimmed_mean(x: np.ndarray, beta: float) -> Outcome:
    """Coordinate-wise mean after dropping ``k = floor(beta n)`` values at each end."""
    n = x.shape[0]
    k = int(beta * n)
    out = np.empty(x.shape[1], dtype=F32)
    for c, rows in columns_as_rows(x):
        rows.sort(axis=1)
        out[c] = np.sum(rows[:, k : n - k], axis=1, dtype=F64) / (n - 2 * k)
    return Outcome(out, trimmed=k)


# --- distance-based ----------------------------------------------------------------------
def krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al. 2017: each row's summed squared distance to its ``n - f - 2``
    nearest other rows (at least 1)."""
    n = dist.shape[0]
    k = max(n - f - 2, 1)
    d = dist + np.diag(np.full(n, np.inf))
    return np.sort(d, axis=1)[:, :k].sum(axis=1)


def krum(x: np.ndarray, f: int) -> Outcome:
    """The update with the lowest Krum score."""
    scores = krum_scores(sq_distances(x), f)
    best = int(np.argmin(scores))
    rest = [i for i in range(x.shape[0]) if i != best]
    return Outcome(x[best].astype(F32, copy=True), selected=[best], discarded=rest)


def multikrum(x: np.ndarray, f: int, m: int = 0) -> Outcome:
    """Mean of the ``m`` updates with the lowest Krum scores (``m = 0``: ``n - f``)."""
    n = x.shape[0]
    m = m or n - f
    order = np.argsort(krum_scores(sq_distances(x), f), kind="stable")
    chosen = sorted(int(i) for i in order[:m])
    rest = sorted(int(i) for i in order[m:])
    return Outcome(mean_rows(x, chosen), selected=chosen, discarded=rest)


def bulyan(x: np.ndarray, f: int) -> Outcome:
    """Bulyan (El Mhamdi, Guerraoui, Rouault 2018): Krum picks ``theta = n - 2f`` updates
    one at a time (each pick removed from the pool, scores recomputed over the rest);
    then, per coordinate, the mean of the ``beta = theta - 2f`` selected values closest
    to their median."""
    n = x.shape[0]
    theta = n - 2 * f
    beta = theta - 2 * f
    dist = sq_distances(x)
    pool = list(range(n))
    chosen: list[int] = []
    for _ in range(theta):
        sub = dist[np.ix_(pool, pool)]
        best = pool[int(np.argmin(krum_scores(sub, f)))]
        chosen.append(best)
        pool.remove(best)
    sel = np.asarray(sorted(chosen), dtype=np.intp)
    out = np.empty(x.shape[1], dtype=F32)
    for c in chunks(len(sel), x.shape[1]):
        part = x[sel, c].astype(F64)
        med = np.median(part, axis=0)
        idx = np.argsort(np.abs(part - med), axis=0, kind="stable")[:beta]
        out[c] = np.take_along_axis(part, idx, axis=0).mean(axis=0)
    return Outcome(
        out, selected=[int(i) for i in sel], discarded=sorted(pool), trimmed=theta - beta
    )


# --- iterative ---------------------------------------------------------------------------
def _distances_to(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``||x_i - v||`` for every row, by direct differences (no cancellation)."""
    n, d = x.shape
    acc = np.zeros(n, dtype=F64)
    for c in chunks(n, d):
        diff = x[:, c].astype(F64) - v[c]
        acc += np.einsum("ij,ij->i", diff, diff)
    return np.sqrt(acc)


def centered_clip(
    x: np.ndarray, tau: float, iters: int, center: np.ndarray | None = None
) -> Outcome:
    """Centered clipping (Karimireddy, He, Jaggi 2021): ``iters`` times
    ``v <- v + mean_i clip_tau(x_i - v)``, from ``center`` (default 0: no change)."""
    n, d = x.shape
    v = np.zeros(d, dtype=F64) if center is None else center.astype(F64)
    clipped: list[int] = []
    for _ in range(iters):
        dist = _distances_to(x, v)
        scale = np.minimum(1.0, tau / np.maximum(dist, 1e-300))
        clipped = [int(i) for i in np.flatnonzero(scale < 1.0)]
        for c in chunks(n, d):
            v[c] += scale @ (x[:, c].astype(F64) - v[c]) / n
    return Outcome(v.astype(F32), clipped=clipped, iterations=iters)


def geomed(x: np.ndarray, iters: int, tol: float = 1e-7, floor: float = 1e-12) -> Outcome:
    """Geometric median by Weiszfeld's iteration from the mean: ``z <- sum w_i x_i /
    sum w_i`` with ``w_i = 1 / max(||x_i - z||, floor)``, until ``z`` moves less than
    ``tol`` times its norm or ``iters`` iterations (Pillutla, Kakade, Harchaoui 2022 use
    the same smoothed weights)."""
    n, d = x.shape
    z = mean_rows(x).astype(F64)
    done = 0
    for done in range(1, iters + 1):  # noqa: B007 - the count is reported
        w = 1.0 / np.maximum(_distances_to(x, z), floor)
        w /= w.sum()
        new = np.empty(d, dtype=F64)
        for c in chunks(n, d):
            new[c] = w @ x[:, c].astype(F64)
        step = float(np.linalg.norm(new - z))
        z = new
        if step <= tol * max(float(np.linalg.norm(z)), floor):
            break
    return Outcome(z.astype(F32), iterations=done)


# --- pre-aggregation (in place) -----------------------------------------------------------
def norm_bound(x: np.ndarray, c: float) -> list[int]:
    """Scale every row with norm above ``c`` down to norm ``c``; returns the rows clipped."""
    norms = np.sqrt(sq_norms(x))
    over = np.flatnonzero(norms > c)
    for i in over:  # a loop over clipped clients, each a vectorised row scale
        x[i] *= F32(c / norms[i])
    return [int(i) for i in over]


def nnm(x: np.ndarray, f: int) -> None:
    """Nearest-neighbour mixing (Allouah et al. 2023): each row becomes the mean of its
    ``n - f`` nearest rows (itself included), computed in place, chunk by chunk."""
    n, d = x.shape
    k = n - f
    nearest = np.argsort(sq_distances(x), axis=1, kind="stable")[:, :k]
    mix = np.zeros((n, n), dtype=F64)
    np.put_along_axis(mix, nearest, 1.0 / k, axis=1)
    for c in chunks(n, d):
        x[:, c] = (mix @ x[:, c].astype(F64)).astype(F32)
