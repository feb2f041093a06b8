"""Gossip consortia in the simulator: peers on a networkx graph, churn, partitions, metrics.

:func:`build_gossip` puts one :class:`~fednode.gossip.GossipPeer` on every node of a
graph (its graph neighbours are its explicit neighbour set) over the memory transport,
with the real runner, identities, signed frames and codecs. :func:`run_gossip` runs it
until every peer has stopped and returns a :class:`~.engine.RunResult` whose rounds are
the tracker's records.

The :class:`ConsensusTracker` is the omniscient observer a real deployment lacks: on
every peer's ``gossip_round`` event it snapshots that peer's model, and once every live
peer has finished round *r* it records the true consensus error of round *r*, ::

    consensus_error = ||X - 1 xbar^T||_F / (sqrt(n) ||xbar||),   rel_error = same / at start

(``X`` stacks the peers' models, ``xbar`` is their mean), the mean test accuracy over
peers, the accuracy of ``xbar`` and the bytes the network carried so far. Callbacks
registered with :meth:`GossipSimulation.at_round` run when a round is recorded: that is
how tests crash peers, add new ones, partition and heal the network between rounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import trio

from ..config import GossipParams, NodeConfig, replace
from ..factory import make_role
from ..gossip.peer import GossipPeer
from ..p2p.netmodel import Link
from ..role import Role
from ..runner import InlineExecutor
from ..training.attacks import label_flipped
from ..training.task import Task
from .collusion import attackers_of
from .engine import RunResult, SimNode, Simulation, sim_identity
from .scenarios import client_task

Init = Callable[[int], np.ndarray]
Callback = Callable[["GossipSimulation"], None]


class ConsensusTracker:
    """Records true consensus error and accuracy per round from all peers' models."""

    def __init__(
        self,
        sim: GossipSimulation,
        evaluate: Callable[[np.ndarray], float] | None = None,
    ) -> None:
        self.sim = sim
        self.evaluate = evaluate
        self.snapshots: dict[int, dict[str, np.ndarray]] = {}
        self.records: list[dict[str, Any]] = []
        self.next_round = 1
        self.reported: dict[str, int] = {}
        self.initial_spread: float | None = None
        self._advancing = False

    def record_start(self, params: dict[str, np.ndarray]) -> None:
        record = self._stats(0, params)
        self.initial_spread = record["spread"]
        self.records.append({**record, "rel_error": 1.0 if record["spread"] else 0.0})

    def hook(self, sim: Simulation, peer: str, event: str, data: dict[str, Any]) -> None:
        if event != "gossip_round" or peer not in self.sim.tracked:
            return
        role = self.sim.node(peer).role
        assert isinstance(role, GossipPeer)
        r = int(data["round"])
        params = next((x for rr, x in reversed(role.recent) if rr == r), role.params)
        self.snapshots.setdefault(r, {})[peer] = params
        self.reported[peer] = r
        self.advance()

    def advance(self, *, final: bool = False) -> None:
        """Record every round that all live peers have finished (all remaining if ``final``)."""
        if self._advancing:  # a callback (crash, join, ...) re-entered: the outer loop goes on
            return
        self._advancing = True
        try:
            while self._advance_one(final):
                pass
        finally:
            self._advancing = False

    def _advance_one(self, final: bool) -> bool:
        r = self.next_round
        if r not in self.snapshots:
            if final and any(k > r for k in self.snapshots):
                self.next_round += 1
                return True
            return False
        if not final and not self._finished(r):
            return False
        snap = self.snapshots.pop(r)
        record = self._stats(r, snap)
        spread0 = self.initial_spread
        record["rel_error"] = record["spread"] / spread0 if spread0 else math.nan
        record["t"] = math.nan if final else trio.current_time()
        self.records.append(record)
        self.next_round += 1
        for callback in self.sim.callbacks.pop(r, []):
            callback(self.sim)
        return True

    def _finished(self, r: int) -> bool:
        """Has every running peer reported round ``r`` (or joined after it)?"""
        for node in self.sim.running():
            role = node.role
            assert isinstance(role, GossipPeer)
            if node.peer in self.sim.stopped or role.phase.value == "joining":
                continue
            if self.reported.get(node.peer, role.completed) < r:
                return False
        return True

    def _stats(self, r: int, snap: dict[str, np.ndarray]) -> dict[str, Any]:
        x = np.stack([snap[p] for p in sorted(snap)]).astype(np.float64)
        mean = x.mean(axis=0)
        spread = float(np.linalg.norm(x - mean))
        scale = math.sqrt(x.shape[0]) * float(np.linalg.norm(mean))
        record: dict[str, Any] = {
            "round": r,
            "peers": x.shape[0],
            "spread": spread,
            "consensus_error": spread / scale if scale else math.nan,
            "bytes": self.sim.network.sent_bytes,
        }
        if self.evaluate is not None:
            accs = [self.evaluate(snap[p]) for p in sorted(snap)]
            record["accuracy"] = float(np.mean(accs))
            record["accuracy_min"] = float(np.min(accs))
            record["accuracy_of_mean"] = self.evaluate(mean.astype(np.float32))
        return record


class GossipSimulation(Simulation):
    """A :class:`Simulation` that runs until every (tracked) peer stops, with churn hooks."""

    def __init__(self, *, seed: int = 0, link: Link | None = None, open_membership=True):
        super().__init__(seed=seed, link=link, open_membership=open_membership)
        self.callbacks: dict[int, list[Callback]] = {}
        self.tracked: set[str] = set()  # consortium peers the tracker measures
        self.crashed: set[str] = set()
        self.started: set[str] = set()
        self.pending: list[SimNode] = []  # added, to be started when the run begins
        self.tracker = ConsensusTracker(self)
        self.fault_hooks.append(self.tracker.hook)
        self.make_peer: Callable[..., SimNode] | None = None
        self.spare: list[int] = []  # node indices reserved for peers that join later
        self._live: trio.Nursery | None = None
        self.stopped: set[str] = set()  # peers whose run ended (stopped or crashed)
        self._all_done: trio.Event | None = None

    def at_round(self, r: int, callback: Callback) -> None:
        """Run ``callback(sim)`` once round ``r`` is recorded (from inside the run)."""
        self.callbacks.setdefault(r, []).append(callback)

    def spawn(self, node: SimNode, *, tracked: bool = True) -> None:
        """Start ``node`` now (inside a run) or when the run begins."""
        if tracked:
            self.tracked.add(node.peer)
        if self._live is None:
            self.pending.append(node)
        else:
            self._start(node)

    def crash(self, peer: str) -> None:
        self.crashed.add(peer)
        super().crash(peer)

    def restart(
        self, peer: str, make_role: Callable[[], Role] | None = None, *, after_s: float = 0.0
    ) -> None:
        """Start a crashed peer again, tracked again (see :meth:`Simulation.restart`)."""
        node = self.node(peer)
        if node.running and not (node.scope is not None and node.scope.cancel_called):
            raise ValueError(f"node {node.index} is running: crash it before restarting it")
        if self._live is None:
            raise RuntimeError("GossipSimulation.restart is only possible while it runs")
        node.pending_restart = (after_s, make_role or self._fresh(node.index))
        self.crashed.discard(peer)
        self.stopped.discard(peer)
        if not node.running:  # its old task already returned: start a new one
            self._start(node)

    def running(self) -> list[SimNode]:
        return [
            n
            for n in self.nodes
            if n.peer in self.tracked and n.peer in self.started and n.peer not in self.crashed
        ]

    def current_params(self, *, members_only: bool = True) -> dict[str, np.ndarray]:
        out = {}
        for n in self.nodes:
            alive = n.peer in self.started and n.peer not in self.crashed
            if alive and (n.peer in self.tracked or not members_only):
                assert isinstance(n.role, GossipPeer)
                out[n.peer] = n.role.params
        return out

    def _start(self, node: SimNode) -> None:
        assert self._live is not None
        self.started.add(node.peer)
        self._live.start_soon(self._run_tracked, node)

    async def _run_tracked(self, node: SimNode) -> None:
        try:
            await self._run_incarnations(node)
        finally:
            self.stopped.add(node.peer)
            self.tracker.advance()
            if self._all_done is not None and self.tracked <= self.stopped:
                self._all_done.set()

    def run_all(self, *, max_virtual_s: float = 1e5) -> RunResult:
        """Run until every tracked peer has stopped or crashed; untracked ones are cancelled."""
        t0 = time.perf_counter()
        self.tracker.record_start(
            {n.peer: n.role.params for n in self.pending if n.peer in self.tracked}  # type: ignore[attr-defined]
        )

        async def until_all_stop(live: trio.Nursery) -> None:
            self._live = self._nodes_nursery = live
            self._all_done = trio.Event()
            pending, self.pending = self.pending, []
            for node in pending:
                self._start(node)
            self._started()
            await self._all_done.wait()

        virtual = self._drive(until_all_stop, max_virtual_s)
        self._live = self._nodes_nursery = None
        self.tracker.advance(final=True)
        wall = time.perf_counter() - t0
        return RunResult(
            self.tracker.records, self.events, None, wall, virtual, self.nodes, self.network
        )


def random_init(seed: int, size: int) -> Init:
    """Independent N(0, 1) initial models, one per node index (for consensus tests)."""

    def init(index: int) -> np.ndarray:
        rng = np.random.default_rng((seed, index))
        return rng.standard_normal(size).astype(np.float32)

    return init


def build_gossip(
    config: NodeConfig,
    graph: nx.Graph,
    *,
    mode: str = "sync",
    train: bool = True,
    gossip: GossipParams | None = None,
    link: Link | None = None,
    init: Init | None = None,
    spare: int = 0,
    allow_list: bool = False,
    train_cost_s: float = 0.1,
    attackers: Collection[int] = (),
) -> tuple[GossipSimulation, list[SimNode]]:
    """A consortium with one peer per node of ``graph`` (its neighbours from the graph).

    ``spare`` reserves identities and data shards for peers that join later with
    :func:`join` (the data is split ``len(graph) + spare`` ways). ``allow_list`` turns on
    the consortium allow-list: the graph's peers and the spares, nobody else. ``init``
    gives node ``i``'s initial model (default: the task's, the same for all). Returns the
    simulation and the graph's nodes in ``list(graph)`` order. ``attackers``: node indices
    (``list(graph)`` positions) that run ``config.attack`` (:mod:`fednode.sim.collusion`).
    """
    gp = replace(gossip or GossipParams(), mode=mode, train=train)
    order = list(graph)
    n = len(order)
    shards = n + spare
    sim = GossipSimulation(seed=config.seed, link=link, open_membership=not allow_list)
    eval_task = client_task(config, 0, shards)
    size = eval_task.layout().size
    identities = [sim_identity(config.seed, i) for i in range(shards)]
    members = [ident.peer_id for ident in identities]
    if allow_list:
        sim.allow = frozenset(members)
    net = replace(
        config.net, allow=tuple(members) if allow_list else (), open_membership=not allow_list
    )
    peer_config = replace(config, role="peer", gossip=gp, net=net)
    tasks: dict[int, Task] = {}
    default_params = eval_task.init_params(config.seed)  # every peer copies it (read-only)

    def task_for(index: int) -> Task:
        if not train:
            return eval_task
        if index not in tasks:
            tasks[index] = client_task(config, index, shards)
            if index in attackers and config.attack.kind == "labelflip":
                label_flipped(tasks[index])
        return tasks[index]

    attacker_of = attackers_of(config, shards, attackers, lambda i: client_task(config, i, shards))

    def make_peer(
        index: int,
        *,
        neighbours: Iterable[str] | None,
        bootstrap: bool,
        identity: Any = None,
        tracked: bool = True,
    ) -> SimNode:
        ident = identity or identities[index]
        params = init(index) if init is not None else default_params
        role = make_role(
            peer_config,
            size,
            params,
            me=ident.peer_id,
            neighbours=neighbours,
            bootstrap=bootstrap,
            attacker=attacker_of(index) if identity is None else None,
        )
        executor = InlineExecutor(task_for(index % shards), train_cost_s=train_cost_s)
        node = sim.add(role, executor, size, identity=ident)
        sim.spawn(node, tracked=tracked)
        return node

    sim.make_peer = make_peer
    position = {v: i for i, v in enumerate(order)}
    nodes = [
        make_peer(i, neighbours=[members[position[u]] for u in graph[v]], bootstrap=False)
        for i, v in enumerate(order)
    ]
    if train:
        sim.tracker.evaluate = lambda params: float(eval_task.evaluate(params)[2]["accuracy"])
    sim.spare = list(range(n, shards))
    return sim, nodes


def join(sim: GossipSimulation) -> SimNode:
    """Start the next spare peer: no explicit neighbours, bootstraps from a neighbour."""
    if not sim.spare or sim.make_peer is None:
        raise ValueError("no spare peer left: build_gossip(..., spare=k)")
    return sim.make_peer(sim.spare.pop(0), neighbours=None, bootstrap=True)


def add_intruder(sim: GossipSimulation, targets: Iterable[str]) -> SimNode:
    """A peer outside the allow-list that insists on gossiping with ``targets``."""
    assert sim.make_peer is not None
    ident = sim_identity(sim.seed, 10_000 + len(sim.nodes))
    return sim.make_peer(
        0,
        neighbours=list(targets),
        bootstrap=False,
        identity=ident,
        tracked=False,
    )


@dataclass
class Schedule:
    """Fault schedule by round: crash, join, partition, heal (applied by the tracker)."""

    crash: dict[int, list[int]] = field(default_factory=dict)
    join: dict[int, int] = field(default_factory=dict)
    partition: dict[int, list[list[int]]] = field(default_factory=dict)
    heal: list[int] = field(default_factory=list)

    def install(self, sim: GossipSimulation, nodes: list[SimNode]) -> None:
        def crash(victims: list[int]) -> Callback:
            def fire(s: GossipSimulation) -> None:
                for i in victims:
                    s.crash(nodes[i].peer)

            return fire

        def add(count: int) -> Callback:
            def fire(s: GossipSimulation) -> None:
                for _ in range(count):
                    join(s)

            return fire

        def split(groups: list[list[int]]) -> Callback:
            def fire(s: GossipSimulation) -> None:
                s.partition([[nodes[i].index for i in group] for group in groups])

            return fire

        def heal(s: GossipSimulation) -> None:
            s.heal()

        for r, victims in self.crash.items():
            sim.at_round(r, crash(victims))
        for r, count in self.join.items():
            sim.at_round(r, add(count))
        for r, groups in self.partition.items():
            sim.at_round(r, split(groups))
        for r in self.heal:
            sim.at_round(r, heal)


def run_gossip(
    config: NodeConfig,
    graph: nx.Graph,
    *,
    schedule: Schedule | None = None,
    max_virtual_s: float = 1e5,
    **kwargs: Any,
) -> RunResult:
    """Build with :func:`build_gossip`, apply ``schedule``, run until all peers stop."""
    sim, nodes = build_gossip(config, graph, **kwargs)
    if schedule is not None:
        schedule.install(sim, nodes)
    return sim.run_all(max_virtual_s=max_virtual_s)
