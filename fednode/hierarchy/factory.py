"""Build the role a :class:`~fednode.config.NodeConfig` asks for (same code for sim and node).

``make_role(config, ...)`` returns a :class:`Coordinator` (``server.mode = "sync"``), an
:class:`AsyncCoordinator` (``"async"``), a :class:`RegionalAggregator` or a
:class:`Client`, wired with the configured selection strategy, server optimiser and
checkpoint store. A client whose config has an ``[attack]`` gets its
:class:`~fednode.training.attacks.Attacker` (:func:`make_attacker`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import NodeConfig
from ..errors import ConfigError
from ..training.attacks import Attacker, Collusion, parse_attack
from ..training.server_opt import make_server_optimizer
from .aggregator import RegionalAggregator
from .checkpoint import DirectoryCheckpoints
from .client import Client
from .coordinator import Coordinator
from .fedbuff import AsyncCoordinator
from .selection import make_selection


def make_coordinator(
    config: NodeConfig,
    params: np.ndarray,
    *,
    resume_from: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
) -> Coordinator | AsyncCoordinator:
    """The root role for ``config``. ``checkpoint_dir`` overrides ``server.checkpoint_dir``."""
    server = config.server
    budget = config.rounds.round_deadline_s * config.tier.aggregator_deadline_fraction
    directory = checkpoint_dir or server.checkpoint_dir
    common = dict(
        params=params,
        rounds=config.rounds,
        train=config.train,
        federation=config.net.federation,
        task=config.data.task,
        selection=make_selection(config.selection, budget),
        seed=config.seed,
        server_update=make_server_optimizer(
            server.optimizer,
            lr=server.lr,
            momentum=server.momentum,
            beta2=server.beta2,
            tau=server.tau,
        ),
        tier=config.tier,
        checkpoints=DirectoryCheckpoints(directory, server.checkpoint_keep) if directory else None,
        resume_from=resume_from,
    )
    if server.mode == "async":
        return AsyncCoordinator(server=server, **common)  # type: ignore[arg-type]
    return Coordinator(**common)  # type: ignore[arg-type]


def make_attacker(
    config: NodeConfig,
    *,
    index: int = 0,
    n: int | None = None,
    collusion: Collusion | None = None,
) -> Attacker | None:
    """The attacker of ``config.attack`` (None without one). ALIE's population: ``n``
    members (default ``data.num_clients``) of which ``attack.colluders`` attack;
    ``index`` names it on ``collusion`` (default: alone, its own update only)."""
    spec = config.attack
    if not spec.on:
        return None
    return Attacker(
        parse_attack(spec.kind),
        n=config.data.num_clients if n is None else n,
        f=spec.colluders,
        z=spec.z,
        seed=config.seed,
        index=index,
        collusion=collusion,
    )


def make_role(
    config: NodeConfig,
    model_size: int,
    params: np.ndarray | None = None,
    *,
    region: str | None = None,
    parent: str = "",
    resume_from: str | Path | None = None,
    attacker: Attacker | None = None,
) -> Coordinator | AsyncCoordinator | RegionalAggregator | Client:
    """The role object for ``config.role`` (``params``: the initial model, coordinator only;
    ``region`` defaults to ``tier.region``; ``attacker``: a client's, default
    :func:`make_attacker` of the config)."""
    region = config.tier.region if region is None else region
    if config.role == "coordinator":
        if params is None:
            raise ConfigError("role", config.role, "an initial model for the coordinator")
        return make_coordinator(config, params, resume_from=resume_from)
    if config.role == "aggregator":
        return RegionalAggregator(
            federation=config.net.federation,
            task=config.data.task,
            region=region,
            parent=parent,
            tier=config.tier,
            default_deadline_s=config.rounds.round_deadline_s,
        )
    if config.role == "client":
        return Client(
            model_size=model_size,
            federation=config.net.federation,
            task=config.data.task,
            codec=config.wire.codec,
            error_feedback=config.wire.error_feedback,
            region=region,
            parent=parent,
            tier=config.tier,
            attacker=attacker or make_attacker(config),
        )
    raise ConfigError("role", config.role, "client, aggregator or coordinator (hierarchy roles)")
