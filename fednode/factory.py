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

from .config import AggregationParams, NodeConfig, PrivacyParams
from .crypto.identity import Identity
from .errors import ConfigError
from .gossip.core import WaitFor
from .gossip.peer import GossipPeer
from .hierarchy.aggregator import RegionalAggregator
from .hierarchy.checkpoint import DirectoryCheckpoints
from .hierarchy.client import Client
from .hierarchy.coordinator import Coordinator
from .hierarchy.fedbuff import AsyncCoordinator
from .hierarchy.secure_client import SecureMember
from .hierarchy.secure_region import RegionSumCoordinator, SecureRegion
from .hierarchy.secure_root import SecureCoordinator
from .hierarchy.selection import make_selection
from .privacy import DpAggregator, EqualWeights, LocalDp, PrivacyLedger, epsilon_of, noise_rng
from .privacy.distributed import NoiseShare
from .training.aggregate import Aggregator, StreamingMean
from .training.attacks import Attacker, Collusion, parse_attack
from .training.buffered import make_aggregator
from .training.claims import ClaimLimits
from .training.server_opt import make_server_optimizer

AnyRole = Coordinator | AsyncCoordinator | RegionalAggregator | Client | GossipPeer


def aggregator_factory(
    params: AggregationParams,
    *,
    root: bool = False,
    privacy: PrivacyParams | None = None,
    two_tier: bool = False,
    salt: str = "",
) -> Callable[[], Aggregator]:
    """Builds the aggregator of ``[aggregation]``: ``root_rule`` (or ``rule``) for the
    coordinator, ``rule`` for a regional aggregator (a promoted client builds its own).

    With ``privacy.mode = "central"`` the rule is wrapped in
    :class:`~fednode.privacy.DpAggregator` (clip and noise; its noise generator from
    ``privacy.seed`` and ``salt``), except at the coordinator of a two-tier tree
    (``root`` and ``two_tier``), whose inputs are the regions' noised updates: there
    :class:`~fednode.privacy.EqualWeights` only averages them."""
    rule = (params.root_rule or params.rule) if root else params.rule
    limits = ClaimLimits(params.max_examples, params.max_examples_ratio, params.flag_norm_ratio)
    plain = partial(make_aggregator, rule, limits)
    if privacy is None or privacy.mode != "central":
        return plain
    if root and two_tier:
        return lambda: EqualWeights(plain())
    return lambda: DpAggregator(
        plain(),
        clip=privacy.clip_norm,
        noise_multiplier=privacy.noise_multiplier,
        rng=noise_rng(privacy.seed, salt),
        adaptive=privacy.adaptive,
        target_quantile=privacy.target_quantile,
        clip_lr=privacy.clip_lr,
    )


def make_ledger(privacy: PrivacyParams) -> PrivacyLedger | None:
    """The coordinator's privacy ledger under central or distributed DP (None otherwise)."""
    if privacy.mode not in ("central", "distributed"):
        return None
    return PrivacyLedger(
        noise_multiplier=privacy.noise_multiplier,
        delta=privacy.delta,
        accountant=privacy.accountant,
        epsilon_budget=privacy.epsilon_budget,
    )


def _check_privacy_role(config: NodeConfig) -> None:
    mode = config.privacy.mode
    if mode == "local" and config.role != "peer":
        raise ConfigError(
            "privacy.mode",
            mode,
            f"off or central for role {config.role} (local DP is for gossip peers)",
        )
    if mode == "central" and config.role == "peer":
        raise ConfigError(
            "privacy.mode", mode, "off or local for a gossip peer (it has no aggregator)"
        )


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
    identity: Identity | None = None,
) -> AnyRole:
    """The role object for ``config.role``.

    ``params``: the initial model (coordinator and peer only). ``me``: a peer's id; an
    aggregator's name for its DP noise stream (``privacy.seed`` >= 0). Hierarchy: ``region``
    defaults to ``tier.region``; ``checkpoint_dir`` overrides ``server.checkpoint_dir``.
    Peer: ``me`` is its peer id; consortium = ``net.federation``, members = ``net.allow``
    (and ``me``) unless membership is open; ``neighbours``, ``bootstrap`` and ``wait_for``
    as :class:`GossipPeer` takes them. ``attacker``: a client's or peer's (None: honest;
    ``fednode run`` passes :func:`make_attacker` of its config). ``identity``: a client's
    node identity, which signs its secure-aggregation messages (needed with ``[secagg]``).
    """
    region = config.tier.region if region is None else region
    _check_privacy_role(config)
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
            rounds=_local_rounds(config),
            consortium=net.federation,
            codec=config.wire.codec,
            neighbours=neighbours,
            members=None if net.open_membership else (*net.allow, me),
            bootstrap=bootstrap,
            seed=config.seed,
            wait_for=wait_for,
            attacker=attacker,
            privacy=_local_dp(config, me),
        )
    if config.role == "aggregator" and config.secagg.enabled:  # norm_bound at the members
        return SecureRegion(
            secagg=config.secagg,
            federation=config.net.federation,
            task=config.data.task,
            region=region,
            parent=parent,
            tier=config.tier,
            default_deadline_s=config.rounds.round_deadline_s,
            aggregator=StreamingMean(),
            codec=config.wire.codec,
            error_feedback=config.wire.error_feedback,
        )
    if config.role == "aggregator":
        return RegionalAggregator(
            federation=config.net.federation,
            task=config.data.task,
            region=region,
            parent=parent,
            tier=config.tier,
            default_deadline_s=config.rounds.round_deadline_s,
            aggregator=aggregator_factory(
                config.aggregation, privacy=config.privacy, salt=f"aggregator/{me or region}"
            )(),
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
            secure=_secure_member(config, identity),
        )
    raise ConfigError("role", config.role, "client, aggregator, coordinator or peer")


def _local_rounds(config: NodeConfig) -> int:
    """A peer's rounds: ``rounds.rounds``, under local DP with a budget at most the
    rounds whose epsilon stays within it (its rounds are not sampled: known at start)."""
    p, rounds = config.privacy, config.rounds.rounds
    if p.mode != "local" or p.epsilon_budget <= 0:
        return rounds
    ledger = _local_dp(config, "").ledger  # type: ignore[union-attr]
    lo, hi = 0, rounds  # the largest T <= rounds with epsilon(T) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        eps = epsilon_of({1.0: mid}, ledger.noise_multiplier, p.delta, p.accountant)
        if eps <= p.epsilon_budget:
            lo = mid
        else:
            hi = mid - 1
    if lo < 1:
        raise ConfigError(
            "privacy.epsilon_budget",
            p.epsilon_budget,
            "a budget that allows at least one round of local DP at this noise_multiplier",
        )
    return lo


def _local_dp(config: NodeConfig, me: str) -> LocalDp | None:
    p = config.privacy
    if p.mode != "local":
        return None
    return LocalDp(
        clip=p.clip_norm,
        noise_multiplier=p.noise_multiplier,
        delta=p.delta,
        rng=noise_rng(p.seed, f"peer/{me}"),
        accountant=p.accountant,
        epsilon_budget=p.epsilon_budget,
    )


def _coordinator(
    config: NodeConfig,
    params: np.ndarray,
    resume_from: str | Path | None,
    checkpoint_dir: str | Path | None,
) -> Coordinator | AsyncCoordinator:
    server = config.server
    if resume_from is not None and config.privacy.mode == "central":
        raise ConfigError(
            "privacy.mode",
            config.privacy.mode,
            "off when resuming from a checkpoint (the privacy ledger is not checkpointed "
            "yet; a resumed run would start its epsilon at 0)",
        )
    budget = config.rounds.round_deadline_s * config.tier.aggregator_deadline_fraction
    directory = checkpoint_dir or server.checkpoint_dir
    common = dict(
        params=params,
        rounds=config.rounds,
        train=config.train,
        federation=config.net.federation,
        task=config.data.task,
        codec_down=config.wire.codec_down,
        aggregator=aggregator_factory(
            config.aggregation,
            root=True,
            privacy=config.privacy,
            two_tier=config.topology == "two-tier",
            salt="coordinator",
        )(),
        privacy=make_ledger(config.privacy),
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
    if config.secagg.enabled and config.topology == "two-tier":  # regions unmask their sums
        return RegionSumCoordinator(**common)  # type: ignore[arg-type]
    if config.secagg.enabled:  # norm_bound runs at the members; the sum arrives as one mean
        common["aggregator"] = StreamingMean()
        return SecureCoordinator(
            secagg=config.secagg,
            distributed_dp=config.privacy.mode == "distributed",
            **common,  # type: ignore[arg-type]
        )
    return Coordinator(**common)  # type: ignore[arg-type]


def _secure_member(config: NodeConfig, identity: Identity | None) -> SecureMember | None:
    """A client's secure-aggregation state under ``[secagg]`` (None when off)."""
    if not config.secagg.enabled:
        return None
    if identity is None:
        raise ConfigError("secagg.enabled", True, "a client built with its node identity")
    from .training.rulespec import parse_rule

    agg = config.aggregation  # a star client's aggregator is the coordinator (root_rule)
    star = config.topology != "two-tier"
    spec = parse_rule((agg.root_rule if star else "") or agg.rule, "aggregation.rule")
    bound = next((s.c for s in spec.stages if s.name == "norm_bound"), 0.0)
    p = config.privacy
    noise = None
    if p.mode == "distributed":
        rng = noise_rng(p.seed, f"member/{identity.peer_id}")
        noise = NoiseShare(clip=p.clip_norm, noise_multiplier=p.noise_multiplier, rng=rng)
    return SecureMember(identity, norm_bound=bound, noise=noise)
