"""Ready-made federations for the simulator (star; two-tier and gossip build on it).

Each builder returns a :class:`Simulation` plus its root node, with the same role
objects a deployed node would construct from the same :class:`NodeConfig`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..config import NodeConfig
from ..hierarchy.client import Client
from ..hierarchy.coordinator import Coordinator
from ..p2p.memory import LinkFaults
from ..runner import InlineExecutor
from ..training.task import Task, load_task
from .engine import SimNode, SimResult, Simulation


def client_task(config: NodeConfig, index: int, num_clients: int) -> Task:
    return load_task(
        config.data.task,
        client_index=index,
        num_clients=num_clients,
        partition=config.data.partition,
        seed=config.seed,
    )


def build_star(
    config: NodeConfig,
    num_clients: int,
    *,
    link: LinkFaults | None = None,
    slow: dict[int, float] | None = None,
    train_cost_s: float = 0.1,
) -> tuple[Simulation, SimNode]:
    """A coordinator and ``num_clients`` clients; clients find it by its advert."""
    sim = Simulation(seed=config.seed, link=link)
    eval_task = client_task(config, 0, num_clients)
    size = eval_task.layout().size
    coordinator = Coordinator(
        params=eval_task.init_params(config.seed),
        rounds=config.rounds,
        train=config.train,
        federation=config.net.federation,
        task=config.data.task,
        seed=config.seed,
    )
    root = sim.add(coordinator, InlineExecutor(eval_task), size)
    for i in range(num_clients):
        client = Client(
            model_size=size,
            federation=config.net.federation,
            task=config.data.task,
            codec=config.wire.codec,
            error_feedback=config.wire.error_feedback,
        )
        executor = InlineExecutor(
            client_task(config, i, num_clients),
            train_cost_s=train_cost_s,
            slowdown=(slow or {}).get(i, 1.0),
        )
        sim.add(client, executor, size)
    return sim, root


def crash_at_round(round_number: int, clients: Iterable[int]):
    """Fault hook: crash the given client nodes (1-based node index) when a round starts."""
    victims = set(clients)
    fired: set[int] = set()

    def hook(sim: Simulation, peer: str, event: str, data: dict[str, Any]) -> None:
        if event == "round_start" and data.get("round") == round_number:
            for node in sim.nodes:
                if node.index in victims and node.index not in fired:
                    fired.add(node.index)
                    sim.crash(node.peer)

    return hook


def run_star(config: NodeConfig, num_clients: int, **kwargs: Any) -> SimResult:
    sim, root = build_star(config, num_clients, **kwargs)
    return sim.run(root)
