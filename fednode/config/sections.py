"""The config sections (``[train]``, ``[rounds]``, ...): frozen dataclasses that validate.

Each section checks its own fields in ``validate()`` and raises
:class:`~fednode.errors.ConfigError` naming the field; :func:`~fednode.config.load_config`
calls it once, through :class:`~fednode.config.NodeConfig`. ``[net]`` is in
:mod:`fednode.config.net`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


def check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(name, value, expected)


@dataclass(frozen=True)
class TrainParams:
    """Local training knobs (client and peer roles)."""

    local_epochs: int = 5
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    prox_mu: float = 0.0

    def validate(self) -> None:
        check(self.local_epochs >= 1, "train.local_epochs", self.local_epochs, "an integer >= 1")
        check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        check(self.lr > 0 and math.isfinite(self.lr), "train.lr", self.lr, "a finite float > 0")
        check(0 <= self.momentum < 1, "train.momentum", self.momentum, "a float in [0, 1)")
        check(self.prox_mu >= 0, "train.prox_mu", self.prox_mu, "a float >= 0")


@dataclass(frozen=True)
class RoundParams:
    """Round lifecycle on the coordinator (Flower's names where they exist)."""

    rounds: int = 15
    fraction_fit: float = 1.0
    min_fit_clients: int = 2
    min_available_clients: int = 2
    round_deadline_s: float = 60.0
    max_failure_fraction: float = 0.5
    wait_for_clients_s: float = 300.0
    target_accuracy: float = 0.0
    #: accuracy at which bytes/rounds-to-target are measured (0: 0.95 on digits); never stops
    measure_accuracy: float = 0.0
    #: straggler cut-off: close the round once this fraction of the selected reported
    cutoff_fraction: float = 1.0
    #: how often a failed round is retried before the coordinator gives up
    max_retries: int = 2

    def validate(self) -> None:
        check(self.rounds >= 1, "rounds.rounds", self.rounds, "an integer >= 1")
        check(
            0 < self.fraction_fit <= 1,
            "rounds.fraction_fit",
            self.fraction_fit,
            "a float in (0, 1]",
        )
        check(
            self.min_fit_clients >= 1,
            "rounds.min_fit_clients",
            self.min_fit_clients,
            "an integer >= 1",
        )
        check(
            self.min_available_clients >= self.min_fit_clients,
            "rounds.min_available_clients",
            self.min_available_clients,
            f"an integer >= min_fit_clients ({self.min_fit_clients})",
        )
        check(
            self.round_deadline_s > 0,
            "rounds.round_deadline_s",
            self.round_deadline_s,
            "a float > 0 (seconds)",
        )
        check(
            0 <= self.max_failure_fraction < 1,
            "rounds.max_failure_fraction",
            self.max_failure_fraction,
            "a float in [0, 1)",
        )
        check(
            self.wait_for_clients_s > 0,
            "rounds.wait_for_clients_s",
            self.wait_for_clients_s,
            "a float > 0 (seconds)",
        )
        check(
            0 <= self.target_accuracy <= 1,
            "rounds.target_accuracy",
            self.target_accuracy,
            "a float in [0, 1] (0 = run all rounds)",
        )
        check(
            0 <= self.measure_accuracy <= 1,
            "rounds.measure_accuracy",
            self.measure_accuracy,
            "a float in [0, 1] (0 = 0.95 on digits, none on other tasks)",
        )
        check(
            0 < self.cutoff_fraction <= 1,
            "rounds.cutoff_fraction",
            self.cutoff_fraction,
            "a float in (0, 1] (1 = wait for every selected child or the deadline)",
        )
        check(self.max_retries >= 0, "rounds.max_retries", self.max_retries, "an integer >= 0")

    def measured_at(self, task: str) -> float | None:
        """The accuracy bytes-to-target is measured at (None: not measured)."""
        default = 0.95 if task.split(":")[0] == "digits" else None
        return self.measure_accuracy or default


PLACEMENTS = ("least_loaded", "region", "none")
SELECTIONS = ("uniform", "power_of_choice", "deadline", "oort")
OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
MODES = ("sync", "async")


@dataclass(frozen=True)
class TierParams:
    """Two-tier federation: where clients go, what a regional aggregator does, promotion."""

    #: this node's region label (clients go under an aggregator of their region)
    region: str = ""
    #: coordinator places clients under aggregators: same region first, then the least
    #: loaded (``least_loaded``), same region only (``region``), or never (``none``)
    placement: str = "least_loaded"
    #: local rounds an aggregator runs per global round (HierFAVG, Liu et al. 2020)
    edge_rounds: int = 1
    #: an aggregator's own deadline, as a fraction of the coordinator's round deadline
    aggregator_deadline_fraction: float = 0.8
    #: promote a client to aggregator once this many direct clients share a region (0 = off)
    promote_at: int = 0
    #: how long a round start waits for a promotion to settle (new aggregator's advert)
    settle_s: float = 5.0

    def validate(self) -> None:
        check(
            len(self.region) <= 64, "tier.region", self.region, "a label of at most 64 characters"
        )
        check(
            self.placement in PLACEMENTS,
            "tier.placement",
            self.placement,
            f"one of {', '.join(PLACEMENTS)}",
        )
        check(self.edge_rounds >= 1, "tier.edge_rounds", self.edge_rounds, "an integer >= 1")
        check(
            0 < self.aggregator_deadline_fraction < 1,
            "tier.aggregator_deadline_fraction",
            self.aggregator_deadline_fraction,
            "a float in (0, 1) (the aggregator must answer before the coordinator's deadline)",
        )
        check(
            self.promote_at == 0 or self.promote_at >= 2,
            "tier.promote_at",
            self.promote_at,
            "0 (off) or an integer >= 2",
        )
        check(self.settle_s > 0, "tier.settle_s", self.settle_s, "a float > 0 (seconds)")


@dataclass(frozen=True)
class SelectionParams:
    """Which children the coordinator asks each round (see ``hierarchy/selection.py``)."""

    strategy: str = "uniform"
    #: power-of-choice candidate set size d (0 = 2k)
    candidates: int = 0
    #: Oort / deadline-aware: share of picks spent exploring clients never seen
    explore: float = 0.1
    #: Oort straggler penalty exponent alpha
    straggler_penalty: float = 2.0

    def validate(self) -> None:
        check(
            self.strategy in SELECTIONS,
            "selection.strategy",
            self.strategy,
            f"one of {', '.join(SELECTIONS)}",
        )
        check(self.candidates >= 0, "selection.candidates", self.candidates, "an integer >= 0")
        check(0 <= self.explore <= 1, "selection.explore", self.explore, "a float in [0, 1]")
        check(
            self.straggler_penalty >= 0,
            "selection.straggler_penalty",
            self.straggler_penalty,
            "a float >= 0",
        )


@dataclass(frozen=True)
class ServerParams:
    """The coordinator's model update: optimiser, sync/async mode, checkpoints."""

    #: server optimiser (Reddi et al. 2021): fedavg, fedavgm, fedadam, fedyogi
    optimizer: str = "fedavg"
    #: server learning rate; 0 = the optimiser's default
    lr: float = 0.0
    momentum: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    #: ``sync`` rounds or ``async`` buffered aggregation (FedBuff, Nguyen et al. 2022)
    mode: str = "sync"
    #: async: aggregate every ``buffer_size`` arrivals
    buffer_size: int = 10
    #: async: children training at once (0 = every available child)
    concurrency: int = 0
    #: async: updates more than this many versions old are dropped
    max_staleness: int = 10
    #: directory for versioned checkpoints ("" = none)
    checkpoint_dir: str = ""
    checkpoint_keep: int = 3
    #: resume from this checkpoint (a version or a checkpoint directory); "latest" = the
    #: newest one in ``checkpoint_dir`` if there is one, else start fresh
    resume_from: str = ""

    def validate(self) -> None:
        check(
            self.optimizer in OPTIMIZERS,
            "server.optimizer",
            self.optimizer,
            f"one of {', '.join(OPTIMIZERS)}",
        )
        check(
            self.lr >= 0 and math.isfinite(self.lr),
            "server.lr",
            self.lr,
            "a finite float >= 0 (0 = optimiser default)",
        )
        check(0 <= self.momentum < 1, "server.momentum", self.momentum, "a float in [0, 1)")
        check(0 <= self.beta2 < 1, "server.beta2", self.beta2, "a float in [0, 1)")
        check(self.tau > 0, "server.tau", self.tau, "a float > 0")
        check(self.mode in MODES, "server.mode", self.mode, f"one of {', '.join(MODES)}")
        check(self.buffer_size >= 1, "server.buffer_size", self.buffer_size, "an integer >= 1")
        check(self.concurrency >= 0, "server.concurrency", self.concurrency, "an integer >= 0")
        check(
            self.max_staleness >= 0, "server.max_staleness", self.max_staleness, "an integer >= 0"
        )
        check(
            self.checkpoint_keep >= 1,
            "server.checkpoint_keep",
            self.checkpoint_keep,
            "an integer >= 1",
        )
        check(
            self.resume_from != "latest" or bool(self.checkpoint_dir),
            "server.resume_from",
            self.resume_from,
            "a checkpoint path, or 'latest' together with server.checkpoint_dir",
        )


@dataclass(frozen=True)
class DataParams:
    """Which task and which shard of its data this node trains on."""

    task: str = "digits"
    partition: str = "iid"
    client_index: int = 0
    num_clients: int = 1

    def validate(self) -> None:
        check(bool(self.task), "data.task", self.task, "'digits' or 'package.module:Class'")
        check(self.num_clients >= 1, "data.num_clients", self.num_clients, "an integer >= 1")
        check(
            0 <= self.client_index < self.num_clients,
            "data.client_index",
            self.client_index,
            f"an integer in [0, num_clients={self.num_clients})",
        )
        from ..training.partition import parse_partition

        parse_partition(self.partition)  # raises ConfigError('data.partition', ...)


@dataclass(frozen=True)
class WireParams:
    """Update compression and message limits."""

    codec: str = "none"
    #: model broadcasts: "none" = the dense model; else deltas of the public model (PROTOCOL.md)
    codec_down: str = "none"
    error_feedback: bool = True
    max_frame_bytes: int = 512 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    #: inbound frames read at once (all peers / one peer); more wait their turn, unread
    max_inbound_frames: int = 32
    max_inbound_frames_per_peer: int = 4
    max_clock_skew_s: float = 300.0

    def validate(self) -> None:
        from ..wire.codecs import parse_codec

        parse_codec(self.codec)
        try:
            parse_codec(self.codec_down)
        except ConfigError as exc:
            raise ConfigError("wire.codec_down", self.codec_down, exc.expected) from None
        check(
            self.max_frame_bytes >= 1024,
            "wire.max_frame_bytes",
            self.max_frame_bytes,
            "an integer >= 1024",
        )
        check(
            256 <= self.max_header_bytes <= self.max_frame_bytes,
            "wire.max_header_bytes",
            self.max_header_bytes,
            "an integer in [256, max_frame_bytes]",
        )
        check(
            self.max_inbound_frames >= 1,
            "wire.max_inbound_frames",
            self.max_inbound_frames,
            "an integer >= 1",
        )
        check(
            1 <= self.max_inbound_frames_per_peer <= self.max_inbound_frames,
            "wire.max_inbound_frames_per_peer",
            self.max_inbound_frames_per_peer,
            "an integer in [1, max_inbound_frames]",
        )
        check(
            self.max_clock_skew_s > 0,
            "wire.max_clock_skew_s",
            self.max_clock_skew_s,
            "a float > 0 (seconds)",
        )


@dataclass(frozen=True)
class AggregationParams:
    """How updates are combined: the ``[aggregation]`` table (docs/ROBUSTNESS.md).

    ``rule`` is used wherever client updates are combined: by a regional aggregator over
    its clients, by the coordinator in a star and by a FedBuff buffer. ``root_rule`` (""
    = the same as ``rule``) is the coordinator's own rule, over its direct children: in a
    two-tier tree those are a handful of regional aggregates, where e.g. ``krum:1`` needs
    at least 5 of them, so the two levels are configured separately.
    """

    #: ``fedavg``, ``median``, ``trimmed:<beta>``, ``krum:<f>``, ``multikrum:<f>[:<m>]``,
    #: ``bulyan:<f>``, ``centered_clip:<tau>[:<iters>]``, ``geomed[:<iters>]``, after
    #: optional ``norm_bound:<c>+`` / ``nnm[:<f>]+`` stages
    rule: str = "fedavg"
    #: the coordinator's rule over its direct children ("" = ``rule``)
    root_rule: str = ""
    #: most examples one update may claim (0 = no absolute cap)
    max_examples: int = 0
    #: a claim is cut to this many times the previous round's median claim (0 = off)
    max_examples_ratio: float = 10.0
    #: flag an update whose norm exceeds this many times the round's median (0 = off)
    flag_norm_ratio: float = 10.0

    def validate(self) -> None:
        from ..training.rulespec import parse_rule

        parse_rule(self.rule, "aggregation.rule")
        if self.root_rule:
            parse_rule(self.root_rule, "aggregation.root_rule")
        check(
            self.max_examples >= 0,
            "aggregation.max_examples",
            self.max_examples,
            "an integer >= 0 (0 = no cap)",
        )
        for name in ("max_examples_ratio", "flag_norm_ratio"):
            value = getattr(self, name)
            check(
                value == 0 or (value >= 1 and math.isfinite(value)),
                f"aggregation.{name}",
                value,
                "0 (off) or a finite float >= 1",
            )


#: gossip averaging modes (``gossip.mode``)
GOSSIP_MODES = ("sync", "async")


@dataclass(frozen=True)
class GossipParams:
    """How a gossip peer (``--role peer``) gossips: the ``[gossip]`` table.

    Times are seconds of the node's clock (virtual seconds in the simulator); ``repr``
    shows everything, so one log line tells the whole setup.
    """

    #: "sync": rounds with Metropolis-Hastings weights; "async": randomized pairwise gossip
    mode: str = "sync"
    #: False: pure averaging (no local training), e.g. to measure consensus
    train: bool = True
    #: sync: averaging steps per round (after the round's local training)
    steps: int = 1
    #: neighbours a peer looks for when no explicit neighbour set is given
    degree: int = 4
    #: most links a peer accepts (explicit neighbours are always accepted)
    max_degree: int = 8
    #: sync: how long a step waits for its neighbours' models
    round_timeout_s: float = 30.0
    #: async: length of a round (one local training job + exchanges meanwhile)
    round_s: float = 1.0
    #: async: expected exchanges a peer starts per round (its Poisson clock rate x round_s);
    #: 0 = automatic: half the peer's current degree, at least 1 — about one exchange per
    #: link per round, the traffic of one sync step (:meth:`exchange_rate`)
    exchanges_per_round: float = 0.0
    #: async: how long an initiator waits for the pull before it moves on
    exchange_timeout_s: float = 5.0
    #: how long a hello waits for its welcome
    hello_timeout_s: float = 10.0
    #: how long a starting peer waits for its links before its first round
    join_wait_s: float = 5.0
    #: consecutive missed steps / exchanges after which a silent neighbour is dropped
    miss_limit: int = 3
    #: consensus step size gamma (CHOCO-gossip); 0 = automatic (1, or 2F for top-k:F)
    step_size: float = 0.0
    #: test the peer's own model on the task's held-out data every this many rounds (a
    #: ``gossip_eval`` event); 0 = never; -1 = automatic: every round on a node
    #: (``fednode run``), never in the simulator (thousands of peers evaluating is slow)
    eval_every: int = -1
    #: robust averaging: "" (off), "clip:<tau>" or "clip:auto[:<delta>]" (ClippedGossip,
    #: fednode.training.clipping): bounds what one neighbour moves this peer per step
    robust: str = ""

    def validate(self) -> None:
        from ..training.clipping import parse_gossip_robust

        parse_gossip_robust(self.robust, "gossip.robust")
        check(
            self.mode in GOSSIP_MODES,
            "gossip.mode",
            self.mode,
            f"one of {', '.join(GOSSIP_MODES)}",
        )
        check(self.steps >= 1, "gossip.steps", self.steps, "an integer >= 1")
        check(self.degree >= 1, "gossip.degree", self.degree, "an integer >= 1")
        check(
            self.max_degree >= self.degree,
            "gossip.max_degree",
            self.max_degree,
            f"an integer >= degree ({self.degree})",
        )
        check(
            self.exchanges_per_round >= 0 and math.isfinite(self.exchanges_per_round),
            "gossip.exchanges_per_round",
            self.exchanges_per_round,
            "a float >= 0 (0 = automatic: half the degree)",
        )
        for name in (
            "round_timeout_s",
            "round_s",
            "exchange_timeout_s",
            "hello_timeout_s",
            "join_wait_s",
        ):
            value = getattr(self, name)
            check(value > 0 and math.isfinite(value), f"gossip.{name}", value, "a float > 0")
        check(self.miss_limit >= 1, "gossip.miss_limit", self.miss_limit, "an integer >= 1")
        check(
            self.eval_every >= -1,
            "gossip.eval_every",
            self.eval_every,
            "an integer >= 0 (0 = never), or -1 (automatic)",
        )
        check(
            0 <= self.step_size <= 1,
            "gossip.step_size",
            self.step_size,
            "a float in [0, 1] (0 = automatic)",
        )

    def exchange_rate(self, degree: int) -> float:
        """Async: exchanges a peer with ``degree`` links starts per second of its clock.

        The automatic rate, ``max(1, degree / 2)`` per round, gives each link about one
        exchange per round (both ends start them): every neighbour's model is mixed in
        once a round, as in a sync step, for the same bytes. One exchange per peer per
        round, whatever the degree, leaves the models too far apart under non-IID data
        (docs/GOSSIP.md, "Learning").
        """
        per_round = self.exchanges_per_round or max(1.0, degree / 2)
        return per_round / self.round_s
