"""Graph generators networkx does not ship (used by :mod:`fednode.sim.topology`)."""

from __future__ import annotations

import networkx as nx


def exponential_graph(n: int) -> nx.Graph:
    """Undirected static exponential graph: i -- (i + 2^k) mod n for all 2^k < n.

    The "exponential-2 graph" of decentralised SGD (Ying et al., NeurIPS 2021, "Exponential
    Graph is Provably Efficient for Decentralized Deep Training"), symmetrised so that
    Metropolis-Hastings weights apply. Regular; for n = 2^m the degree is 2m - 1
    (+2^(m-1) and -2^(m-1) coincide).
    """
    g = nx.Graph()
    g.add_nodes_from(range(n))
    hop = 1
    while hop < n:
        g.add_edges_from((i, (i + hop) % n) for i in range(n))
        hop *= 2
    return g
