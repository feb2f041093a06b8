"""How a built experiment follows its spec: link faults, the operator, restarted peers.

Shared by the single-process run (:mod:`.experiment`) and the sharded one (:mod:`.parallel`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .des import DesSimulation
from .engine import Simulation
from .faults import FaultSchedule
from .netfaults import NetworkFaults
from .topology import Topology


@dataclass
class Built:
    sim: Simulation
    root: Any
    node_of: dict[int, int]  # topology node -> simulator index
    roles: dict[int, str]  # simulator index -> role
    attackers: tuple[int, ...] = ()  # topology nodes that attack (fednode.sim.attackers)


def _operator(topo: Topology, built: Built, nodes: Any) -> Any:
    """For a tree with faults: before each round, tell the coordinator how many clients to
    wait for — those the spec leaves reachable — as an operator would. The coordinator picks
    round ``r + 1``'s clients in the step that closes round ``r``, which is when the faults
    of boundary ``r + 1`` apply; so it waits for ``min(reachable(b), reachable(b + 1))``
    (a node restarted at ``b`` advertises itself during round ``b``)."""
    if topo.kind == "gossip" or not topo.faults or built.root is None:
        return None
    reach: dict[int, int] = {}

    def reachable(r: int) -> int:
        if r not in reach:
            reach[r] = _clients_reachable(topo, r)
        return reach[r]

    def on_round(b: int) -> None:
        role = nodes[built.root.index].role
        want = max(1, min(reachable(b), reachable(b + 1)))
        fit = min(role.rounds.min_fit_clients, want)
        role.rounds = dataclasses.replace(
            role.rounds, min_available_clients=want, min_fit_clients=fit
        )

    return on_round


def _add_operator(schedule: FaultSchedule, topo: Topology, built: Built, nodes: Any) -> None:
    op = _operator(topo, built, nodes)
    if op is not None:
        schedule.on_round.append(op)


def _clients_reachable(topo: Topology, rnd: int) -> int:
    """Clients the coordinator can reach in round ``rnd`` under the spec's faults."""
    sched = FaultSchedule(topo.faults, {v: v for v in range(topo.n)})
    down = sched.down_at(rnd)
    part = sched.partition_at(rnd)
    coord = next(v for v, r in topo.roles.items() if r == "coordinator")

    def reachable(v: int) -> bool:
        return v not in down and not (part is not None and part.separates(v, coord))

    return sum(
        1
        for v, r in topo.roles.items()
        if r == "client" and reachable(v) and reachable(topo.parent.get(v, coord))
    )


def visibility(topo: Topology, node_of: dict[int, int]) -> list[list[int]]:
    """Who hears of whom (peer up/down): graph neighbours; in a tree also the coordinator
    and everyone (its role advert reaches the whole LAN, so orphans can re-home)."""
    n = topo.n
    vis: list[set[int]] = [set() for _ in range(n)]
    for a, b in topo.graph.edges():
        vis[node_of[a]].add(node_of[b])
        vis[node_of[b]].add(node_of[a])
    if topo.kind != "gossip":
        c = node_of[next(v for v, r in topo.roles.items() if r == "coordinator")]
        for i in range(n):
            if i != c:
                vis[i].add(c)
                vis[c].add(i)
    return [sorted(s) for s in vis]


def _apply_links(topo: Topology, built: Built, sim: NetworkFaults) -> None:
    """The spec's links, and who hears of whom (:func:`visibility`), on either driver."""
    sim.set_visible(visibility(topo, built.node_of))
    sim.default_link = topo.links
    for (a, b), link in topo.edge_links.items():
        sim.set_link(built.node_of[a], built.node_of[b], link)


def follow(topo: Topology, built: Built, sim: Any, schedule: FaultSchedule, collector: Any) -> Any:
    """Put the spec on ``sim`` (either driver): its links, the collector (the first
    listener: rows see a round's state before a fault changes it), the operator and the
    faults. Returns ``sim``'s root node (None for gossip)."""
    _apply_links(topo, built, sim)
    sim.listeners.append(collector.listener(sim))
    _add_operator(schedule, topo, built, sim.nodes)
    schedule.install(sim)
    return sim.nodes[built.root.index] if built.root is not None else None


def des_of(topo: Topology, built: Built, options: Any, keep: frozenset[str]) -> DesSimulation:
    """The discrete-event form of ``built`` (gossip: without the trio tracker's hook),
    keeping the events named in ``keep``."""
    return DesSimulation.from_simulation(
        built.sim,
        hooks=topo.kind != "gossip",
        unsigned=options.unsigned,
        visible=visibility(topo, built.node_of).__getitem__,
        keep_events=keep,
    )
