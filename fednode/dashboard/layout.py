"""Node positions for the dashboard's graph, computed on the server with networkx.

A tree (a coordinator with aggregators and clients, or a node's view of its members) is
drawn in tiers, top to bottom: coordinator, aggregators, clients, each child near its
parent; a gossip graph by a seeded spring layout (the same picture on every reload).
Positions are in [0, 1] x [0, 1]. The board caps the nodes drawn, which bounds the cost.
"""

from __future__ import annotations

import networkx as nx

TIERS = {"parent": 0, "coordinator": 0, "aggregator": 1, "client": 2}
Positions = dict[str, tuple[float, float]]


def layout(roles: dict[str, str], edges: list[tuple[str, str]]) -> Positions:
    """Positions of the nodes ``roles`` names, given the ``edges`` between them."""
    if not roles:
        return {}
    if any(role in TIERS for role in roles.values()):
        return _tiers(roles, edges)
    graph = nx.Graph()
    graph.add_nodes_from(roles)
    graph.add_edges_from(edges)
    if graph.number_of_nodes() == 1:
        return {n: (0.5, 0.5) for n in roles}
    pos = nx.spring_layout(graph, seed=0, iterations=100)
    return _scaled({n: (float(p[0]), float(p[1])) for n, p in pos.items()})


def _tiers(roles: dict[str, str], edges: list[tuple[str, str]]) -> Positions:
    """Tier by role (others below the clients); in each tier, children follow the order
    of their parents, so the edges of a tree do not cross."""
    tier = {n: TIERS.get(r, 3) for n, r in roles.items()}
    parent: dict[str, str] = {}
    for a, b in edges:
        if tier[a] < tier[b]:
            parent.setdefault(b, a)
        elif tier[b] < tier[a]:
            parent.setdefault(a, b)
    order: dict[str, float] = {}
    pos: Positions = {}
    depth = max(tier.values())
    for level in range(depth + 1):
        members = [n for n in roles if tier[n] == level]
        members.sort(key=lambda n: (order.get(parent.get(n, ""), -1.0), n))
        for i, n in enumerate(members):
            x = (i + 0.5) / len(members)
            order[n] = x
            pos[n] = (x, level / depth if depth else 0.5)
    return pos


def _scaled(pos: Positions) -> Positions:
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    lo_x, lo_y = min(xs), min(ys)
    span_x, span_y = (max(xs) - lo_x) or 1.0, (max(ys) - lo_y) or 1.0
    return {n: ((x - lo_x) / span_x, (y - lo_y) / span_y) for n, (x, y) in pos.items()}
