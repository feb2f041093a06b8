"""Ready-made federations for the simulator: star, two-tier; fault hooks; restarts.

Each builder returns a :class:`Simulation` plus its root node, with the same role
objects a deployed node would construct from the same :class:`NodeConfig`
(:func:`fednode.factory.make_role`). Node indices: 0 is the coordinator; in a
two-tier federation 1..A are the aggregators and A+1..A+N the clients.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import NodeConfig, replace
from ..factory import make_role
from ..p2p.netmodel import Link
from ..role import Role
from ..runner import InlineExecutor
from ..training.attacks import label_flipped
from ..training.personal import personalise
from ..training.task import Task, load_task
from .collusion import attackers_of
from .engine import RunResult, SimNode, Simulation, sim_identity


def client_task(config: NodeConfig, index: int, num_clients: int) -> Task:
    task = load_task(
        config.data.task,
        client_index=index,
        num_clients=num_clients,
        partition=config.data.partition,
        seed=config.seed,
    )
    return personalise(task, config.personal)  # [personal]: itself when off


def _task_of(config: NodeConfig, num_clients: int) -> Callable[[int], Task]:
    return lambda i: client_task(config, i, num_clients)


def _add_root(
    sim: Simulation,
    config: NodeConfig,
    num_clients: int,
    checkpoint_dir: str | Path | None,
    resume_from: str | Path | None = None,
) -> tuple[SimNode, int, np.ndarray]:
    eval_task = client_task(config, 0, num_clients)
    size = eval_task.layout().size
    params = eval_task.init_params(config.seed)
    coordinator = make_role(
        replace(config, role="coordinator"),
        size,
        params,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
    )
    return sim.add(coordinator, InlineExecutor(eval_task), size), size, params


def _add_clients(
    sim: Simulation,
    config: NodeConfig,
    num_clients: int,
    size: int,
    *,
    slow: dict[int, float] | None,
    train_cost_s: float,
    region: Callable[[int], str] = lambda i: "",
    attackers: Collection[int] = (),
) -> None:
    client_config = replace(config, role="client")
    attacker_of = attackers_of(config, num_clients, attackers, _task_of(config, num_clients))
    for i in range(num_clients):
        attacker = attacker_of(i)
        ident = sim_identity(sim.seed, len(sim.nodes))  # what sim.add would give it
        client = make_role(client_config, size, region=region(i), attacker=attacker, identity=ident)
        task = client_task(config, i, num_clients)
        if attacker is not None and attacker.attack.kind == "labelflip":
            label_flipped(task)
        executor = InlineExecutor(
            task, train_cost_s=train_cost_s, slowdown=(slow or {}).get(i, 1.0)
        )
        sim.add(client, executor, size, identity=ident)


def build_star(
    config: NodeConfig,
    num_clients: int,
    *,
    link: Link | None = None,
    slow: dict[int, float] | None = None,
    train_cost_s: float = 0.1,
    checkpoint_dir: str | Path | None = None,
    regions: int = 0,
    attackers: Collection[int] = (),
) -> tuple[Simulation, SimNode]:
    """A coordinator and ``num_clients`` clients; clients find it by its advert.

    ``slow`` maps a client index (0-based) to a compute slowdown factor; ``regions`` > 0
    labels client i with region ``r{i % regions}`` (for promotion by region);
    ``attackers``: client indices that run ``config.attack`` (the others are honest).
    """
    sim = Simulation(seed=config.seed, link=link)
    root, size, _ = _add_root(sim, config, num_clients, checkpoint_dir)
    _add_clients(
        sim,
        config,
        num_clients,
        size,
        slow=slow,
        train_cost_s=train_cost_s,
        region=(lambda i: f"r{i % regions}") if regions else (lambda i: ""),
        attackers=attackers,
    )
    return sim, root


def build_two_tier(
    config: NodeConfig,
    num_aggregators: int,
    num_clients: int,
    *,
    assignment: str = "region",
    link: Link | None = None,
    slow: dict[int, float] | None = None,
    train_cost_s: float = 0.1,
    checkpoint_dir: str | Path | None = None,
    client_region: Callable[[int], int] | None = None,
    attackers: Collection[int] = (),
) -> tuple[Simulation, SimNode]:
    """Coordinator, ``num_aggregators`` regional aggregators, ``num_clients`` clients.

    ``assignment``: ``"region"`` labels aggregator j and client i with ``r{j}`` /
    ``r{client_region(i)}`` (default ``i % A``), and clients join their region's
    aggregator from its advert;
    ``"coordinator"`` leaves everyone unlabelled and the coordinator places each client
    (``tier.placement``, least-loaded by default) with an ``Assign``. ``attackers``: as
    for :func:`build_star`.
    """
    if assignment not in ("region", "coordinator"):
        raise ValueError(f"assignment must be 'region' or 'coordinator', not {assignment!r}")
    labelled = assignment == "region"
    sim = Simulation(seed=config.seed, link=link)
    root, size, _ = _add_root(sim, config, num_clients, checkpoint_dir)
    aggregator_config = replace(config, role="aggregator")
    for j in range(num_aggregators):
        agg = make_role(
            aggregator_config, size, region=f"r{j}" if labelled else "", me=f"aggregator-{j}"
        )
        sim.add(agg, InlineExecutor(client_task(config, 0, num_clients)), size)
    _add_clients(
        sim,
        config,
        num_clients,
        size,
        slow=slow,
        train_cost_s=train_cost_s,
        region=(lambda i: f"r{(client_region or (lambda c: c % num_aggregators))(i)}")
        if labelled
        else (lambda i: ""),
        attackers=attackers,
    )
    return sim, root


def run_two_tier(
    config: NodeConfig, num_aggregators: int, num_clients: int, **kwargs: Any
) -> RunResult:
    sim, root = build_two_tier(config, num_aggregators, num_clients, **kwargs)
    return sim.run(root)


def crash_at_round(round_number: int, clients: Iterable[int]):
    """Fault hook: crash the given nodes (by node index; 0 is the coordinator) when the
    coordinator's round ``round_number`` starts (first attempt)."""
    victims = set(clients)
    fired: set[int] = set()

    def hook(sim: Simulation, peer: str, event: str, data: dict[str, Any]) -> None:
        if event == "round_start" and data.get("round") == round_number:
            for node in sim.nodes:
                if node.index in victims and node.index not in fired:
                    fired.add(node.index)
                    sim.crash(node.peer)

    return hook


def run_star(config: NodeConfig, num_clients: int, **kwargs: Any) -> RunResult:
    sim, root = build_star(config, num_clients, **kwargs)
    return sim.run(root)


# --- coordinator restart ---------------------------------------------------------------
def run_with_restart(
    sim: Simulation,
    root: SimNode,
    *,
    crash_round: int,
    make_root: Callable[[], Role],
    down_s: float = 1.0,
    max_virtual_s: float = 1e7,
) -> RunResult:
    """Run; when round ``crash_round`` starts, crash the root, keep it down ``down_s``
    virtual seconds, then start ``make_root()`` (e.g. a coordinator resuming from its
    checkpoint) under the same identity, and run until that one stops."""
    fired = False

    def hook(s: Simulation, peer: str, event: str, data: dict[str, Any]) -> None:
        nonlocal fired
        if (
            not fired
            and peer == root.peer
            and event == "round_start"
            and data.get("round") == crash_round
        ):
            fired = True
            s.crash(root.peer)
            s.restart(root.peer, make_root, after_s=down_s)

    sim.fault_hooks.append(hook)
    return sim.run(root, max_virtual_s=max_virtual_s)
