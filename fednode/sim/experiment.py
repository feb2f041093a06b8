"""Topology experiments: run a spec in the simulator, get arrays, write an experiment folder.

::

    from fednode.sim import run_experiment
    res = run_experiment("ring16", overrides={"rounds.rounds": 20, "data.task": "synthetic"})
    res.accuracy, res.consensus, res.bound      # numpy arrays, one value per round
    res.to_pandas()                             # when pandas is installed

A spec (:mod:`fednode.sim.topology`) says the graph, the roles, the links and the faults;
the :class:`~fednode.config.NodeConfig` says the task, partition, rounds, codec and seed.
Star and two-tier specs run the hierarchy roles (:func:`~fednode.sim.scenarios.build_star`,
:func:`~fednode.sim.scenarios.build_two_tier`), gossip specs the
:class:`~fednode.gossip.peer.GossipPeer` (:func:`~fednode.sim.gossip.build_gossip`) — the
builders' own role objects, driven by the discrete-event driver (:mod:`fednode.sim.des`,
the default), its parallel form (``workers > 1``, :mod:`fednode.sim.parallel`) or the trio
engine (``driver="trio"``, fidelity; small runs).

Metrics (:class:`~fednode.sim.metrics.Collector`) come from the events the roles emit anyway
plus an omniscient look at the gossip peers' models; the folder layout and plots are in
:mod:`fednode.sim.report` and ``docs/SIMULATION.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from ..config import NodeConfig, load_config
from ..errors import ConfigError
from ..loop import EventSink
from .attackers import AttackerMarks, choose_attackers
from .faults import FaultSchedule
from .gossip import GossipSimulation
from .metrics import Collector, RoundTable
from .result import ExperimentResult
from .spectral import spectral_summary
from .topology import Topology, load_topology
from .wiring import Built, _clients_reachable, des_of, follow

#: a live listener: (simulator node index, event, data, time) -> None
Listener = Callable[[int, str, dict[str, Any], float], None]
#: ``run_experiment(watch=...)``: (topology, built federation, driver) -> a listener
Watch = Callable[[Topology, Built, Any], Listener]


@dataclass(frozen=True)
class SimOptions:
    """How to run (not what): driver, fidelity, cost model, how much to measure."""

    #: "des" (discrete events, fast) or "trio" (the real runner over the memory transport)
    driver: str = "des"
    #: skip signatures for very large runs (fednode.crypto.unsigned); default: every frame
    #: is signed and verified, as on a real node
    unsigned: bool = False
    #: des: worker processes (> 1 shards the nodes; see fednode.sim.parallel)
    workers: int = 1
    #: virtual seconds of compute per 100 examples per local epoch
    train_cost_s: float = 0.1
    #: gossip: peers whose model is scored on the test set each round (0 = all)
    eval_nodes: int = 200
    #: per-node metrics lines for at most this many nodes (a fixed sample; 0 = all)
    node_metrics: int = 1000
    #: gossip: "sync" or "async" averaging
    gossip_mode: str = "sync"
    #: gossip: pure averaging from random models (train off): the spectral bound applies
    consensus_only: bool = False
    max_virtual_s: float = 1e6
    #: draw the topology up to this many nodes
    draw_max_nodes: int = 500

    def validate(self) -> None:
        if self.driver not in ("des", "trio"):
            raise ConfigError("driver", self.driver, "'des' or 'trio'")
        if self.workers < 1:
            raise ConfigError("workers", self.workers, "an integer >= 1")
        if self.driver == "trio" and self.workers > 1:
            raise ConfigError("driver", "trio", "the des driver for --workers")
        if self.train_cost_s < 0:
            raise ConfigError("train_cost_s", self.train_cost_s, "a float >= 0")
        if self.gossip_mode not in ("sync", "async"):
            raise ConfigError("gossip_mode", self.gossip_mode, "'sync' or 'async'")
        for name, zero in (
            ("eval_nodes", "all"),
            ("node_metrics", "all"),
            ("draw_max_nodes", "none"),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(name, value, f"an integer >= 0 (0: {zero})")
        if not self.max_virtual_s > 0:
            raise ConfigError("max_virtual_s", self.max_virtual_s, "a positive number of seconds")


# --------------------------------------------------------------------------- building


def _config(
    topo: Topology, config: NodeConfig | None, overrides: Mapping[str, Any] | None
) -> NodeConfig:
    """``config`` with ``overrides``; for a tree, round sizes that fit the spec: wait for
    every client the faults do not take down at the start, and (two-tier, where the
    coordinator's children are the aggregators) accept a round from one aggregator —
    unless the overrides set those fields."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    flat = _flatten(dataclasses.asdict(config or load_config(None, None)))
    flat.update(given)
    if "topology" not in given:
        flat["topology"] = topo.kind  # the coordinator of a two-tier tree (central DP)
    if "privacy.seed" not in given and int(flat.get("privacy.seed", -1)) < 0:
        flat["privacy.seed"] = int(flat["seed"])  # reproducible noise (never on a real node)
    if topo.kind != "gossip":
        ready = max(1, min(_clients_reachable(topo, 0), _clients_reachable(topo, 1)))
        fit = 1 if topo.kind == "two-tier" else min(int(flat["rounds.min_fit_clients"]), ready)
        flat.setdefault("rounds.min_available_clients", ready)
        if "rounds.min_available_clients" not in given:
            flat["rounds.min_available_clients"] = ready
        if "rounds.min_fit_clients" not in given:
            flat["rounds.min_fit_clients"] = fit
        flat["rounds.min_fit_clients"] = min(
            int(flat["rounds.min_fit_clients"]), int(flat["rounds.min_available_clients"])
        )
    return load_config(None, flat)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _chosen_attackers(topo: Topology, config: NodeConfig) -> tuple[int, ...]:
    """The topology nodes that attack; ConfigError when the spec and the config disagree
    (attackers marked without ``attack.kind``, or an attack and nobody to run it)."""
    chosen = choose_attackers(topo.attackers, topo.roles, config.seed)
    if chosen and not config.attack.on:
        raise ConfigError("attack.kind", "", "an attack for the attackers the topology marks")
    if config.attack.on and not chosen:
        expected = "attackers marked by the topology (attackers / attacker_fraction) or --attackers"
        raise ConfigError("attackers", "none", expected)
    return chosen


def build(topo: Topology, config: NodeConfig, options: SimOptions) -> Built:
    """The builder's simulation for ``topo`` and the topology -> simulator index map."""
    kind = topo.kind
    bad = _chosen_attackers(topo, config)
    if kind == "star":
        from .scenarios import build_star

        coord = next(v for v, r in topo.roles.items() if r == "coordinator")
        clients = sorted(v for v, r in topo.roles.items() if r == "client")
        sim, root = build_star(
            config,
            len(clients),
            train_cost_s=options.train_cost_s,
            attackers=[i for i, v in enumerate(clients) if v in bad],
        )
        node_of = {coord: 0, **{v: i + 1 for i, v in enumerate(clients)}}
        return Built(sim, root, node_of, {node_of[v]: topo.roles[v] for v in node_of}, bad)
    if kind == "two-tier":
        from .scenarios import build_two_tier

        coord = next(v for v, r in topo.roles.items() if r == "coordinator")
        aggs = sorted(v for v, r in topo.roles.items() if r == "aggregator")
        clients = sorted(v for v, r in topo.roles.items() if r == "client")
        rank = {v: j for j, v in enumerate(aggs)}
        sim, root = build_two_tier(
            config,
            len(aggs),
            len(clients),
            train_cost_s=options.train_cost_s,
            client_region=lambda i: rank[topo.parent[clients[i]]],  # the spec's parent
            attackers=[i for i, v in enumerate(clients) if v in bad],
        )
        node_of = {coord: 0}
        node_of.update({v: 1 + j for j, v in enumerate(aggs)})
        node_of.update({v: 1 + len(aggs) + i for i, v in enumerate(clients)})
        return Built(sim, root, node_of, {node_of[v]: topo.roles[v] for v in node_of}, bad)
    from ..config import GossipParams
    from ..config.load import check_gossip_aggregation
    from .gossip import build_gossip, random_init

    check_gossip_aggregation(config, gossip=True)

    train = not options.consensus_only
    init = None
    if options.consensus_only:
        from .scenarios import client_task

        size = client_task(config, 0, topo.n).layout().size
        init = random_init(config.seed, size)
    sim, _nodes = build_gossip(
        config,
        topo.graph,
        mode=options.gossip_mode,
        train=train,
        gossip=GossipParams(robust=config.gossip.robust),
        init=init,
        train_cost_s=options.train_cost_s,
        attackers=bad,
    )
    node_of = {v: v for v in range(topo.n)}
    return Built(sim, None, node_of, dict.fromkeys(range(topo.n), "peer"), bad)


# --------------------------------------------------------------------------- running


def run_experiment(
    topology: Topology | str | Path,
    config: NodeConfig | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    options: SimOptions | None = None,
    n: int | None = None,
    graph_seed: int | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    attackers: AttackerMarks | None = None,
    watch: Watch | None = None,
) -> ExperimentResult:
    """Run one topology spec; write the experiment folder to ``out`` if given.

    ``topology`` is a :class:`Topology`, a ``.toml`` path or a shipped spec's name
    (``n`` / ``graph_seed`` override the spec's). ``overrides`` are dotted config fields
    (``{"rounds.rounds": 20, "data.task": "synthetic"}``) applied over ``config``.
    ``attackers`` overrides the spec's attacker marks (``fednode sim --attackers``).
    ``progress(done, total)`` is called whenever the highest round any node has finished
    grows (with several workers: at most once per window), for a progress display.
    ``watch(topo, built, driver)``, called once before the run starts, returns a listener
    ``(node index, event, data, time)`` that sees every event as it happens (the live
    dashboard, :mod:`fednode.sim.live`; one process only).
    Errors: ConfigError for a bad spec, config or option.
    """
    options = options or SimOptions()
    options.validate()
    topo = (
        topology
        if isinstance(topology, Topology)
        else load_topology(topology, n=n, seed=graph_seed)
    )
    if attackers is not None:
        topo = dataclasses.replace(topo, attackers=attackers)
    cfg = _config(topo, config, overrides)
    t0 = time.perf_counter()
    built = build(topo, cfg, options)
    spectral = spectral_summary(topo.graph)
    collector = Collector(topo, built, cfg, options)
    collector.progress = progress
    schedule = FaultSchedule(topo.faults, built.node_of)
    notes: list[str] = []
    if built.attackers:
        notes.append(f"attackers ({cfg.attack.kind}): nodes {list(built.attackers)}")
    with _run_settings():
        virtual, messages, error, stop_reason = _run(
            topo, built, cfg, options, schedule, collector, notes, watch
        )
    table: RoundTable = collector.table()
    if topo.n > options.draw_max_nodes:
        notes.append(f"topology drawing skipped: {topo.n} nodes > {options.draw_max_nodes}")
    result = ExperimentResult(
        **{f.name: getattr(table, f.name) for f in dataclasses.fields(RoundTable)},
        name=topo.name,
        kind=topo.kind,
        n=topo.n,
        config=_describe(topo, cfg, options),
        spectral=spectral,
        node_rows=collector.node_rows,
        records=sorted(collector.root_rows, key=lambda r: r["round"]),
        faults=schedule.log,
        wall_s=time.perf_counter() - t0,
        virtual_s=virtual,
        messages=messages,
        error=error,
        notes=notes,
        topology=topo,
        extra_summary={"attackers": list(built.attackers)} if built.attackers else {},
        stop_reason=stop_reason,
        privacy=_privacy_of(cfg),
        personal=collector.personal_rounds(),
    )
    if out is not None:
        from .report import write_folder

        write_folder(result, Path(out))
    return result


def _privacy_of(cfg: NodeConfig) -> dict[str, Any]:
    p = cfg.privacy
    if not p.on:
        return {}
    return {
        "mode": p.mode,
        "noise_multiplier": p.noise_multiplier,
        "clip": p.clip,
        "delta": p.delta,
        "epsilon_budget": p.epsilon_budget,
        "accountant": p.accountant,
        "seed": p.seed,
    }


@contextlib.contextmanager
def _run_settings() -> Iterator[None]:
    """Process settings for the length of a run (restored after; forked workers inherit
    them). Measured at 10,000 gossip peers (docs/BENCHMARKS.md, simulator scale):

    * the built federation is frozen out of the cyclic collector (it lives for the whole
      run) and young objects are collected every 50,000 allocations instead of 700: a run
      allocates millions of short-lived acyclic objects that reference counting frees, and
      the collections were ~12% of the run;
    * BLAS runs on one thread: the simulator's matrix products are small and many, and
      idle BLAS threads spinning beside the worker processes cost ~10% of their CPU. One
      thread also makes the results independent of the machine's core count.
    """
    gc.collect()
    gc.freeze()
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], 50_000), max(threshold[1], 20), max(threshold[2], 20))
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def _run(
    topo: Topology,
    built: Built,
    cfg: NodeConfig,
    options: SimOptions,
    schedule: FaultSchedule,
    collector: Collector,
    notes: list[str],
    watch: Watch | None = None,
) -> tuple[float, int, str | None, str]:
    """Run the built federation with the chosen driver: (virtual s, messages, error, why
    the root stopped — "" when unknown: gossip, sharded runs)."""
    if watch is not None and options.driver == "des" and options.workers > 1:
        raise ConfigError("workers", options.workers, "1 to follow a run live (--dashboard)")
    if options.driver == "trio":
        sim = built.sim
        follow(topo, built, sim, schedule, collector)
        if watch is not None:
            sim.listeners.append(_watching(watch(topo, built, sim), sim))
        if isinstance(sim, GossipSimulation):
            virtual = sim.run_all(max_virtual_s=options.max_virtual_s).virtual_s
            error, reason = None, ""
        else:
            trio_res = sim.run(built.root, max_virtual_s=options.max_virtual_s)
            virtual = trio_res.virtual_s
            error = trio_res.stop.reason if trio_res.stop and trio_res.stop.error else None
            reason = trio_res.stop.reason if trio_res.stop else ""
        messages = sim.network.sent_frames
        collector.finish(sim.nodes)
    elif options.workers > 1:
        from .parallel import run_sharded

        outcome = run_sharded(built, topo, schedule, collector, options)
        virtual, messages, error = outcome.virtual_s, outcome.messages, outcome.error
        reason = ""
        notes += outcome.notes
    else:
        des = des_of(
            topo, built, options, frozenset({"round", "round_failed", "crashed", "restarted"})
        )
        root = follow(topo, built, des, schedule, collector)
        if watch is not None:
            des.listeners.append(_watching(watch(topo, built, des), des))
        res = des.run(root, max_virtual_s=options.max_virtual_s)
        virtual, messages = res.virtual_s, res.network.sent_frames
        error = res.stop.reason if res.stop and res.stop.error else None
        reason = res.stop.reason if res.stop else ""
        collector.finish(des.nodes)
    return virtual, messages, error, reason


def _watching(listen: Listener, sim: Any) -> EventSink:
    """A ``watch`` listener on ``sim`` (either driver): node index and simulated time."""

    def hook(peer: str, event: str, data: dict[str, Any]) -> None:
        listen(sim.node(peer).index, event, data, sim.now)

    return hook


def _describe(topo: Topology, cfg: NodeConfig, options: SimOptions) -> dict[str, Any]:
    return {
        "topology": {
            "source": topo.source,
            "name": topo.name,
            "kind": topo.kind,
            "n": topo.n,
            "edges": topo.graph.number_of_edges(),
            "description": topo.description,
            "links": dataclasses.asdict(topo.links),
            "faults": [{"type": f.type, **dataclasses.asdict(f)} for f in topo.faults],
        },
        "node_config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "options": dataclasses.asdict(options),
        "gossip_steps": 1,
    }
