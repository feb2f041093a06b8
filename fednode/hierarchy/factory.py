"""Build the role a :class:`~fednode.config.NodeConfig` asks for (same code for sim and node).

``make_role(config, ...)`` returns a :class:`Coordinator` (``server.mode = "sync"``), an
:class:`AsyncCoordinator` (``"async"``), a :class:`RegionalAggregator` or a
:class:`Client`, wired with the configured selection strategy, server optimiser and
checkpoint store.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from ..config import AggregationParams, NodeConfig
from ..errors import ConfigError
from ..training.aggregate import Aggregator
from ..training.buffered import make_aggregator
from ..training.claims import ClaimLimits
from ..training.server_opt import make_server_optimizer
from .aggregator import RegionalAggregator
from .checkpoint import DirectoryCheckpoints
from .client import Client
from .coordinator import Coordinator
from .fedbuff import AsyncCoordinator
from .selection import make_selection


def aggregator_factory(
    params: AggregationParams, *, root: bool = False
) -> Callable[[], Aggregator]:
    """Builds the aggregator of ``[aggregation]``: ``root_rule`` (or ``rule``) for the
    coordinator, ``rule`` for a regional aggregator (a promoted client builds its own)."""
    rule = (params.root_rule or params.rule) if root else params.rule
    limits = ClaimLimits(params.max_examples, params.max_examples_ratio, params.flag_norm_ratio)
    return partial(make_aggregator, rule, limits)


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
        aggregator=aggregator_factory(config.aggregation, root=True)(),
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


def make_role(
    config: NodeConfig,
    model_size: int,
    params: np.ndarray | None = None,
    *,
    region: str | None = None,
    parent: str = "",
    resume_from: str | Path | None = None,
) -> Coordinator | AsyncCoordinator | RegionalAggregator | Client:
    """The role object for ``config.role`` (``params``: the initial model, coordinator only;
    ``region`` defaults to ``tier.region``)."""
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
            aggregator=aggregator_factory(config.aggregation)(),
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
            aggregator_factory=aggregator_factory(config.aggregation),
        )
    raise ConfigError("role", config.role, "client, aggregator or coordinator (hierarchy roles)")
