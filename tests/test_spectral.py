"""Metropolis-Hastings weights and mixing rates, checked against closed forms."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest

from fednode.sim.spectral import (
    DENSE_MAX_N,
    metropolis_hastings_sparse,
    metropolis_hastings_weights,
    mixing_rho,
    predicted_iterations,
    spectral_summary,
)
from fednode.sim.topology import TOPOLOGY_DIR, exponential_graph, load_topology

SHIPPED = sorted(p.stem for p in TOPOLOGY_DIR.glob("*.toml"))
GRAPHS = {
    "path5": nx.path_graph(5),
    "star7": nx.star_graph(6),
    "barbell": nx.barbell_graph(4, 2),
    "ba50": nx.barabasi_albert_graph(50, 2, seed=1),
    "gnp40_disconnected": nx.gnp_random_graph(40, 0.04, seed=3),
    "two_components": nx.disjoint_union(nx.cycle_graph(4), nx.complete_graph(3)),
}


def ring_rho(n: int) -> float:
    """MH on a cycle is I/3 + A/3 with eigenvalues 1/3 + 2/3 cos(2 pi k / n)."""
    return max(abs(1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n)) for k in range(1, n))


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("graph", [*GRAPHS.values(), *(load_topology(s).graph for s in SHIPPED)],
                         ids=[*GRAPHS, *SHIPPED])  # fmt: skip
def test_mh_weights_are_symmetric_doubly_stochastic_and_nonnegative(graph: nx.Graph) -> None:
    w = metropolis_hastings_weights(graph)
    n = graph.number_of_nodes()

    assert w.shape == (n, n)
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert (w >= 0).all()
    assert (np.diag(w) > 0).all()
    off_support = (w > 0) & ~np.eye(n, dtype=bool)
    np.testing.assert_array_equal(off_support, nx.to_numpy_array(graph, weight=None) > 0)


def test_mh_weights_of_a_path_match_the_formula() -> None:
    # degrees 1, 2, 1: W_01 = W_12 = 1 / (1 + 2)
    expected = np.array([[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])
    np.testing.assert_allclose(metropolis_hastings_weights(nx.path_graph(3)), expected)


def test_mh_weights_ignore_self_loops() -> None:
    g = nx.path_graph(3)
    g.add_edge(1, 1)
    np.testing.assert_allclose(
        metropolis_hastings_weights(g), metropolis_hastings_weights(nx.path_graph(3))
    )


def test_mh_weights_reject_directed_graphs() -> None:
    with pytest.raises(ValueError, match="undirected"):
        metropolis_hastings_weights(nx.DiGraph([(0, 1)]))


@pytest.mark.parametrize("name", list(GRAPHS))
def test_sparse_and_dense_mh_weights_are_the_same_matrix(name: str) -> None:
    g = GRAPHS[name]
    np.testing.assert_allclose(
        metropolis_hastings_sparse(g).toarray(), metropolis_hastings_weights(g), atol=1e-15
    )


# --------------------------------------------------------------------------- rho: closed forms


@pytest.mark.parametrize("n", range(2, 21))
def test_complete_graph_mixes_in_one_step(n: int) -> None:
    w = metropolis_hastings_weights(nx.complete_graph(n))
    np.testing.assert_allclose(w, np.full((n, n), 1 / n), atol=1e-15)
    eigenvalues = np.sort(np.linalg.eigvalsh(w))

    np.testing.assert_allclose(eigenvalues[:-1], 0.0, atol=1e-12)
    assert eigenvalues[-1] == pytest.approx(1.0)
    assert mixing_rho(w) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [3, 4, 5, 8, 16, 31, 64, 101])
def test_ring_rho_matches_the_closed_form(n: int) -> None:
    g = nx.cycle_graph(n)
    w = metropolis_hastings_weights(g)
    np.testing.assert_allclose(w, (np.eye(n) + nx.to_numpy_array(g)) / 3, atol=1e-15)

    assert mixing_rho(w) == pytest.approx(ring_rho(n), abs=1e-12)
    assert mixing_rho(metropolis_hastings_sparse(g)) == pytest.approx(ring_rho(n), abs=1e-9)


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 6])
def test_hypercube_rho_is_d_minus_1_over_d_plus_1(dim: int) -> None:
    # W = (I + A) / (d + 1); A has eigenvalues d - 2k
    g = nx.hypercube_graph(dim)
    assert mixing_rho(metropolis_hastings_weights(g)) == pytest.approx((dim - 1) / (dim + 1))


def test_shipped_exponential16_mixes_faster_than_ring16() -> None:
    rho_exp = mixing_rho(metropolis_hastings_weights(load_topology("exponential16").graph))
    rho_ring = mixing_rho(metropolis_hastings_weights(load_topology("ring16").graph))
    rho_k16 = mixing_rho(metropolis_hastings_weights(load_topology("complete16").graph))
    assert rho_k16 < rho_exp < rho_ring == pytest.approx(ring_rho(16))
    # exponential16 is 7-regular: W = (I + A) / 8, A a circulant with offsets +-1, +-2, +-4, 8
    eig_a = [
        sum(2 * math.cos(2 * math.pi * k * h / 16) for h in (1, 2, 4)) + math.cos(math.pi * k)
        for k in range(1, 16)
    ]
    assert rho_exp == pytest.approx(max(abs((1 + e) / 8) for e in eig_a))


# --------------------------------------------------------------------------- rho < 1 iff connected


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("p", [0.03, 0.06, 0.1])
def test_rho_below_one_exactly_when_connected(seed: int, p: float) -> None:
    g = nx.gnp_random_graph(30, p, seed=seed)
    rho = mixing_rho(metropolis_hastings_weights(g))
    if nx.is_connected(g):
        assert rho < 1 - 1e-9
    else:
        assert rho == pytest.approx(1.0)


def test_the_connectivity_sweep_sees_both_cases() -> None:
    outcomes = {
        nx.is_connected(nx.gnp_random_graph(30, p, seed=s)) for s in range(12) for p in (0.03, 0.1)
    }
    assert outcomes == {True, False}


def test_disconnected_graph_never_mixes() -> None:
    g = GRAPHS["two_components"]
    assert mixing_rho(metropolis_hastings_weights(g)) == pytest.approx(1.0, abs=1e-12)
    assert mixing_rho(metropolis_hastings_sparse(g)) == pytest.approx(1.0, abs=1e-9)


def test_rho_of_trivial_graphs_is_zero() -> None:
    assert mixing_rho(metropolis_hastings_weights(nx.empty_graph(1))) == 0.0
    assert mixing_rho(np.zeros((0, 0))) == 0.0


def test_rho_rejects_non_square_matrices() -> None:
    with pytest.raises(ValueError, match="square"):
        mixing_rho(np.ones((2, 3)))


@pytest.mark.parametrize("n", [3, 4, 10, 257])
def test_sparse_rho_matches_dense_rho(n: int) -> None:
    g = nx.random_regular_graph(3, n + (n % 2), seed=n) if n > 4 else nx.path_graph(n)
    dense = mixing_rho(metropolis_hastings_weights(g))
    assert mixing_rho(metropolis_hastings_sparse(g)) == pytest.approx(dense, abs=1e-9)


# --------------------------------------------------------------------------- predicted iterations


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.9, 0.999])
def test_predicted_iterations_reach_eps(rho: float) -> None:
    t = predicted_iterations(rho, eps=1e-3)
    assert rho**t == pytest.approx(1e-3)


def test_predicted_iterations_edge_cases() -> None:
    assert predicted_iterations(0.0) == 0.0
    assert predicted_iterations(1.0) == math.inf
    assert predicted_iterations(0.5, eps=0.25) == pytest.approx(2.0)
    for rho, eps in [(-0.1, 1e-3), (0.5, 0.0), (0.5, 1.0)]:
        with pytest.raises(ValueError):
            predicted_iterations(rho, eps)


# --------------------------------------------------------------------------- summary


def test_summary_of_ring16() -> None:
    s = spectral_summary(load_topology("ring16").graph)

    assert s["n"] == 16 and s["edges"] == 16 and s["connected"] is True
    assert (s["degree_min"], s["degree_max"], s["degree_mean"]) == (2, 2, 2.0)
    assert s["rho"] == pytest.approx(ring_rho(16))
    assert s["spectral_gap"] == pytest.approx(1 - ring_rho(16))
    assert s["predicted_iterations"] == pytest.approx(math.log(1e-3) / math.log(ring_rho(16)))
    assert (s["diameter"], s["diameter_exact"]) == (8, True)
    json.dumps(s)  # plain Python values


def test_summary_of_a_disconnected_graph() -> None:
    s = spectral_summary(GRAPHS["two_components"])
    assert s["connected"] is False and s["diameter"] is None
    assert s["rho"] == 1.0 and s["spectral_gap"] == 0.0 and s["predicted_iterations"] == math.inf


@pytest.mark.parametrize(
    ("graph", "diameter"),
    [(nx.path_graph(7), 6), (nx.complete_graph(30), 1), (exponential_graph(16), 2),
     (nx.grid_2d_graph(3, 5), 6), (nx.star_graph(9), 2)],
)  # fmt: skip
def test_summary_diameter_is_exact_for_small_graphs(graph: nx.Graph, diameter: int) -> None:
    s = spectral_summary(graph)
    assert (s["diameter"], s["diameter_exact"]) == (diameter, True)


def test_summary_of_a_large_graph_uses_the_sparse_path() -> None:
    g = nx.convert_node_labels_to_integers(nx.hypercube_graph(13))  # n = 8192 > DENSE_MAX_N
    assert g.number_of_nodes() > DENSE_MAX_N

    s = spectral_summary(g)

    assert s["rho"] == pytest.approx(12 / 14, abs=1e-9)
    assert s["diameter_exact"] is False and 1 <= s["diameter"] <= 13  # a lower bound


def test_summary_of_a_large_ring_matches_the_closed_form() -> None:
    n = DENSE_MAX_N + 500
    s = spectral_summary(nx.cycle_graph(n))
    assert s["rho"] == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / n), abs=1e-10)
    assert (s["diameter"], s["diameter_exact"]) == (n // 2, True)
