"""Build the role a :class:`~fednode.config.NodeConfig` names: the one role factory of
``fednode run`` (:func:`fednode.node.build_role`), the simulator's builders
(:mod:`fednode.sim.scenarios`, :mod:`fednode.sim.gossip`) and so of ``fednode demo``.

``make_role(config, ...)`` returns a :class:`Coordinator` (``server.mode = "sync"``), an
:class:`AsyncCoordinator` (``"async"``), a :class:`RegionalAggregator`, a :class:`Client`
or a :class:`GossipPeer`, wired with the configured selection strategy, server optimiser,
checkpoint store, codec and consortium. A client or peer whose config has an ``[attack]``
gets its :class:`~fednode.training.attacks.Attacker` (:func:`make_attacker`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np

from .config import AggregationParams, NodeConfig
from .errors import ConfigError
from .gossip.core import WaitFor
from .gossip.peer import GossipPeer
from .hierarchy.aggregator import RegionalAggregator
from .hierarchy.checkpoint import DirectoryCheckpoints
from .hierarchy.client import Client
from .hierarchy.coordinator import Coordinator
from .hierarchy.fedbuff import AsyncCoordinator
from .hierarchy.selection import make_selection
from .training.aggregate import Aggregator
from .training.attacks import Attacker, Collusion, parse_attack
from .training.buffered import make_aggregator
from .training.claims import ClaimLimits
from .training.server_opt import make_server_optimizer

AnyRole = Coordinator | AsyncCoordinator | RegionalAggregator | Client | GossipPeer


def aggregator_factory(
    params: AggregationParams, *, root: bool = False
) -> Callable[[], Aggregator]:
    """Builds the aggregator of ``[aggregation]``: ``root_rule`` (or ``rule``) for the
    coordinator, ``rule`` for a regional aggregator (a promoted client builds its own)."""
    rule = (params.root_rule or params.rule) if root else params.rule
    limits = ClaimLimits(params.max_examples, params.max_examples_ratio, params.flag_norm_ratio)
    return partial(make_aggregator, rule, limits)


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
    me: str = "",
    region: str | None = None,
    parent: str = "",
    resume_from: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    neighbours: Iterable[str] | None = None,
    bootstrap: bool = False,
    wait_for: WaitFor | None = None,
    attacker: Attacker | None = None,
) -> AnyRole:
    """The role object for ``config.role``.

    ``params``: the initial model (coordinator and peer only). Hierarchy: ``region``
    defaults to ``tier.region``; ``checkpoint_dir`` overrides ``server.checkpoint_dir``.
    Peer: ``me`` is its peer id; consortium = ``net.federation``, members = ``net.allow``
    (and ``me``) unless membership is open; ``neighbours``, ``bootstrap`` and ``wait_for``
    as :class:`GossipPeer` takes them. ``attacker``: a client's or peer's (None: honest;
    ``fednode run`` passes :func:`make_attacker` of its config).
    """
    region = config.tier.region if region is None else region
    if config.role in ("coordinator", "peer"):
        if params is None:
            raise ConfigError("role", config.role, f"an initial model for the {config.role}")
        if config.role == "coordinator":
            return _coordinator(config, params, resume_from, checkpoint_dir)
        net = config.net
        return GossipPeer(
            me=me,
            params=params,
            gossip=config.gossip,
            train=config.train,
            rounds=config.rounds.rounds,
            consortium=net.federation,
            codec=config.wire.codec,
            neighbours=neighbours,
            members=None if net.open_membership else (*net.allow, me),
            bootstrap=bootstrap,
            seed=config.seed,
            wait_for=wait_for,
            attacker=attacker,
        )
    if config.role == "aggregator":
        return RegionalAggregator(
            federation=config.net.federation,
            task=config.data.task,
            region=region,
            parent=parent,
            tier=config.tier,
            default_deadline_s=config.rounds.round_deadline_s,
            aggregator=aggregator_factory(config.aggregation)(),
            codec=config.wire.codec,
            error_feedback=config.wire.error_feedback,
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
            attacker=attacker,
        )
    raise ConfigError("role", config.role, "client, aggregator, coordinator or peer")


def _coordinator(
    config: NodeConfig,
    params: np.ndarray,
    resume_from: str | Path | None,
    checkpoint_dir: str | Path | None,
) -> Coordinator | AsyncCoordinator:
    server = config.server
    budget = config.rounds.round_deadline_s * config.tier.aggregator_deadline_fraction
    directory = checkpoint_dir or server.checkpoint_dir
    common = dict(
        params=params,
        rounds=config.rounds,
        train=config.train,
        federation=config.net.federation,
        task=config.data.task,
        codec_down=config.wire.codec_down,
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
