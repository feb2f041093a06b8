"""How fast does gossip averaging mix on a graph? Metropolis-Hastings weights and their spectrum.

Gossip averaging iterates ``x <- W x`` with a symmetric doubly-stochastic ``W``. The
distance to the average shrinks by ``rho = max_{i>=2} |lambda_i(W)| = ||W - 11^T/n||_2``
per step, so reaching a relative error ``eps`` takes about ``log(eps) / log(rho)`` steps
(Xiao & Boyd 2004, "Fast linear iterations for distributed averaging"; Boyd et al. 2006,
"Randomized gossip algorithms"). Metropolis-Hastings weights need only the degrees of the
two endpoints, so every node can compute its row locally.

Pure: numpy / scipy only. Dense ``eigvalsh`` up to :data:`DENSE_MAX_N` nodes, sparse
Lanczos (``scipy.sparse.linalg.eigsh``) beyond.
"""

from __future__ import annotations

import math
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path
from scipy.sparse.linalg import LinearOperator, eigsh

#: dense ``eigvalsh`` up to here, Lanczos above: at 2,000 nodes on one BLAS thread (as
#: during a run) dense took ~0.6 s and Lanczos ~0.02 s, equal to 1e-14 (2026-12-05)
DENSE_MAX_N = 500
#: networkx's exact bounding diameter search up to here when all-sources BFS is too big
EXACT_DIAMETER_MAX_N = 2000
_BFS_BUDGET = 5e7  # n * edges: all-sources BFS in C stays around a second


def _mh_coo(g: nx.Graph) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(n, rows, cols, off-diagonal weights, diagonal) in ``list(g)`` node order."""
    if g.is_directed():
        raise ValueError("Metropolis-Hastings weights need an undirected graph")
    index = {v: i for i, v in enumerate(g)}
    n = len(index)
    pairs = np.array([(index[a], index[b]) for a, b in g.edges() if a != b], dtype=np.int64)
    pairs = pairs.reshape(-1, 2)
    deg = np.bincount(pairs.ravel(), minlength=n).astype(np.float64)  # self-loops ignored
    w = 1.0 / (1.0 + np.maximum(deg[pairs[:, 0]], deg[pairs[:, 1]]))
    rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0]])
    vals = np.concatenate([w, w])
    diag = 1.0 - np.bincount(rows, weights=vals, minlength=n)
    return n, rows, cols, vals, diag


def metropolis_hastings_weights(g: nx.Graph) -> np.ndarray:
    """Dense MH matrix: ``W_ij = 1 / (1 + max(d_i, d_j))`` on edges, ``W_ii = 1 - sum_j W_ij``.

    Symmetric, doubly stochastic, nonnegative, with a positive diagonal (so the chain is
    aperiodic and ``rho < 1`` exactly when ``g`` is connected). Rows/columns follow
    ``list(g)``. Self-loops are ignored. Errors: ValueError for a directed graph.
    """
    n, rows, cols, vals, diag = _mh_coo(g)
    w = np.zeros((n, n))
    w[rows, cols] = vals
    w[np.arange(n), np.arange(n)] = diag
    return w


def metropolis_hastings_sparse(g: nx.Graph) -> sp.csr_array:
    """The same matrix as :func:`metropolis_hastings_weights`, as a sparse CSR array."""
    n, rows, cols, vals, diag = _mh_coo(g)
    idx = np.arange(n)
    data = np.concatenate([vals, diag])
    return sp.csr_array((data, (np.concatenate([rows, idx]), np.concatenate([cols, idx]))))


def mixing_rho(w: np.ndarray | sp.sparray) -> float:
    """Second-largest eigenvalue modulus of a symmetric doubly-stochastic ``w``.

    Dense: all eigenvalues via ``eigvalsh``. Sparse: Lanczos on ``W - 11^T/n`` (which removes
    the eigenvalue 1 of the all-ones vector), largest magnitude. Returns 1.0 (up to rounding)
    for a disconnected graph and 0.0 for ``n <= 1``. Errors: ValueError if ``w`` is not square.
    """
    n = w.shape[0]
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"mixing matrix must be square, got shape {w.shape}")
    if n <= 1:
        return 0.0
    if not sp.issparse(w):
        ev = np.sort(np.abs(np.linalg.eigvalsh(np.asarray(w, dtype=np.float64))))
        return float(min(ev[-2], 1.0))
    ws = sp.csr_array(w, dtype=np.float64)
    if n <= 3:  # eigsh needs k < n - 1 for tiny matrices
        return mixing_rho(ws.toarray())

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.ravel(x)
        return np.asarray(ws @ x - x.mean())

    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)  # fixed start: deterministic result
    ev = eigsh(op, k=1, which="LM", v0=v0, tol=1e-10, maxiter=max(1000, 20 * n))[0]
    return float(min(abs(ev[0]), 1.0))


def predicted_iterations(rho: float, eps: float = 1e-3) -> float:
    """Gossip steps to shrink disagreement by ``eps``: ``log(eps) / log(rho)``.

    0.0 for ``rho == 0`` (one step averages exactly), ``inf`` for ``rho >= 1`` (never
    mixes). Errors: ValueError for ``rho < 0`` or ``eps`` outside (0, 1).
    """
    if rho < 0 or not 0 < eps < 1:
        raise ValueError(f"need rho >= 0 and 0 < eps < 1, got rho={rho}, eps={eps}")
    if rho >= 1:
        return math.inf
    if rho == 0:
        return 0.0
    return math.log(eps) / math.log(rho)


def _diameter(g: nx.Graph) -> tuple[int, bool]:
    """(diameter, exact) of a connected graph, within about a second or two.

    Sparse enough: BFS from every node in C (scipy). Small and dense: networkx's bounding
    algorithm (Takes & Kosters 2011), fast on dense graphs. Otherwise a double-sweep lower
    bound, flagged inexact.
    """
    n, m = g.number_of_nodes(), g.number_of_edges()
    if n * m <= _BFS_BUDGET:
        adj = nx.to_scipy_sparse_array(g, format="csr", weight=None)
        worst = 0.0
        for start in range(0, n, 256):
            idx = np.arange(start, min(n, start + 256))
            d = shortest_path(adj, method="D", directed=False, unweighted=True, indices=idx)
            worst = max(worst, float(d.max()))
        return int(worst), True
    if n <= EXACT_DIAMETER_MAX_N:
        return int(nx.diameter(g, usebounds=True)), True
    return int(nx.approximation.diameter(g, seed=0)), False


def graph_rho(g: nx.Graph) -> float:
    """:func:`mixing_rho` of ``g``'s Metropolis-Hastings matrix (dense or sparse by size);
    exactly 1 (no mixing) for a disconnected graph, where the eigensolver would say
    1 - 1e-16, and 0 for an empty one."""
    n = g.number_of_nodes()
    if not n or not nx.is_connected(g):
        return 1.0 if n else 0.0
    dense = n <= DENSE_MAX_N
    return mixing_rho(metropolis_hastings_weights(g) if dense else metropolis_hastings_sparse(g))


def mixing_time(graph: nx.Graph, eps: float = 1e-3) -> float:
    """Predicted synchronous gossip steps to shrink disagreement by ``eps`` on ``graph``:
    ``log(eps) / log(rho)`` of its Metropolis-Hastings matrix (inf if disconnected)."""
    return predicted_iterations(graph_rho(graph), eps)


def spectral_summary(g: nx.Graph) -> dict[str, Any]:
    """One row for tables and plots: size, degrees, MH mixing rate, diameter.

    Keys: ``n, edges, connected, degree_min, degree_max, degree_mean, rho, spectral_gap,
    predicted_iterations`` (to 1e-3), ``diameter`` (None when disconnected) and
    ``diameter_exact`` (False: a lower bound, for graphs too big to search exhaustively).
    Plain Python numbers, so the dict is JSON-serialisable.
    """
    n = g.number_of_nodes()
    degrees = [d for _, d in g.degree()] or [0]
    connected = n > 0 and nx.is_connected(g)
    rho = graph_rho(g)
    diameter, exact = _diameter(g) if connected else (None, True)
    return {
        "n": n,
        "edges": g.number_of_edges(),
        "connected": connected,
        "degree_min": int(min(degrees)),
        "degree_max": int(max(degrees)),
        "degree_mean": float(np.mean(degrees)),
        "rho": rho,
        "spectral_gap": 1.0 - rho,
        "predicted_iterations": predicted_iterations(rho, 1e-3),
        "diameter": diameter,
        "diameter_exact": exact,
    }
