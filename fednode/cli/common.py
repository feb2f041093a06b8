"""What every command shares: the console, the common config flags, byte counts for people."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import NodeConfig, load_config

console = Console(highlight=False)

# CLI flag -> dotted config field
COMMON_FLAGS: dict[str, tuple[str, type, str]] = {
    "seed": ("seed", int, "random seed for model init, partitions and selection"),
    "rounds": ("rounds.rounds", int, "number of federated rounds"),
    "fraction_fit": ("rounds.fraction_fit", float, "fraction of available clients per round"),
    "min_fit_clients": ("rounds.min_fit_clients", int, "fewest results a round accepts"),
    "min_available_clients": (
        "rounds.min_available_clients",
        int,
        "clients needed before a round starts",
    ),
    "round_deadline": ("rounds.round_deadline_s", float, "seconds a round waits for results"),
    "target_accuracy": ("rounds.target_accuracy", float, "stop early at this test accuracy"),
    "local_epochs": ("train.local_epochs", int, "local epochs per round (E)"),
    "batch_size": ("train.batch_size", int, "local minibatch size"),
    "lr": ("train.lr", float, "local SGD learning rate"),
    "prox_mu": ("train.prox_mu", float, "FedProx proximal term (0 = off)"),
    "task": (
        "data.task",
        str,
        "digits, digits:linear, digits:numpy, synthetic[:<n>] or package.module:Class",
    ),
    "partition": ("data.partition", str, "'iid', 'dirichlet:<alpha>' or 'shards:<k>'"),
    "codec": ("wire.codec", str, "update codec: none, fp16, int8, topk:<f>[+int8][+zstd]"),
    "codec_down": (
        "wire.codec_down",
        str,
        "model broadcasts: none (dense) or a codec for deltas of the public model",
    ),
    "measure_accuracy": (
        "rounds.measure_accuracy",
        float,
        "report bytes and rounds until this accuracy (0: 0.95 on digits); never stops",
    ),
    "aggregation": (
        "aggregation.rule",
        str,
        "aggregation rule: fedavg, median, trimmed:<beta>, krum:<f>, multikrum:<f>[:<m>], "
        "bulyan:<f>, centered_clip:<tau>[:<iters>], geomed, after norm_bound:<c>+ / nnm+",
    ),
}


# --dashboard flags -> [dashboard] fields (the sim-only ones are added by `fednode sim`)
DASHBOARD_FLAGS: dict[str, tuple[str, type, str, str]] = {
    "dashboard": (
        "dashboard.listen",
        str,
        "HOST:PORT",
        "serve the live read-only dashboard at http://HOST:PORT/ (e.g. 127.0.0.1:8080)",
    ),
    "dashboard_token_file": (
        "dashboard.token_file",
        str,
        "PATH",
        "every dashboard request must carry the token on this file's first line "
        "(required for a non-loopback address)",
    ),
    "dashboard_max_connections": (
        "dashboard.max_connections",
        int,
        "N",
        "dashboard connections served at once; more get 503 (8)",
    ),
    "dashboard_event_log": (
        "dashboard.event_log",
        int,
        "N",
        "events kept for the dashboard's log (200)",
    ),
}
SIM_DASHBOARD_FLAGS: dict[str, tuple[str, type, str, str]] = {
    "dashboard_round_pause": (
        "dashboard.round_pause_s",
        float,
        "SECONDS",
        "with --dashboard: wall seconds to pause after each round, to follow the run (0)",
    ),
    "dashboard_linger": (
        "dashboard.linger_s",
        float,
        "SECONDS",
        "with --dashboard: keep the page up this long after the run ends (0)",
    ),
}


# --dp-* flags -> [privacy] fields (docs/PRIVACY.md)
PRIVACY_FLAGS: dict[str, tuple[str, type, str, str]] = {
    "dp": (
        "privacy.mode",
        str,
        "MODE",
        "differential privacy: off, central (the aggregator clips and noises; DP-FedAvg), "
        "local (gossip peers noise what they send) or distributed (with --secagg: each "
        "client adds its noise share before masking)",
    ),
    "dp_clip": (
        "privacy.clip",
        str,
        "C|adaptive",
        "L2 clipping norm of one member's update, or 'adaptive' (Andrew et al. 2021) (1.0)",
    ),
    "dp_noise": (
        "privacy.noise_multiplier",
        float,
        "SIGMA",
        "noise multiplier: Gaussian noise std is SIGMA * clip on the sum (1.0)",
    ),
    "dp_delta": ("privacy.delta", float, "DELTA", "epsilon is reported at this delta (1e-5)"),
    "dp_budget": (
        "privacy.epsilon_budget",
        float,
        "EPS",
        "stop training before epsilon would exceed EPS (0 = no budget)",
    ),
    "dp_accountant": ("privacy.accountant", str, "rdp|pld", "privacy accountant (rdp)"),
    "dp_seed": (
        "privacy.seed",
        int,
        "N",
        "noise seed for reproducible tests; never in a deployment (-1: os.urandom)",
    ),
}


# --secagg* flags -> [secagg] fields (docs/PRIVACY.md, "Secure aggregation")
SECAGG_FLAGS: dict[str, tuple[str, type, str, str]] = {
    "secagg_neighbours": (
        "secagg.neighbours",
        int,
        "K",
        "SecAgg+ neighbours per member (0 = 2*ceil(log2 n))",
    ),
    "secagg_threshold": (
        "secagg.threshold",
        float,
        "T",
        "shares needed: a count >= 2 or a fraction of a member's share holders (0.6)",
    ),
    "secagg_timeout": (
        "secagg.stage_timeout_s",
        float,
        "SECONDS",
        "deadline of each secure-aggregation stage after advertise (30)",
    ),
}


def add_privacy(p: argparse.ArgumentParser) -> None:
    """The ``--dp*`` and ``--secagg*`` flags."""
    group = p.add_argument_group("differential privacy ([privacy] in the config file)")
    for flag, (_dotted, typ, metavar, help_) in PRIVACY_FLAGS.items():
        group.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, type=typ, metavar=metavar, help=help_
        )
    sec = p.add_argument_group("secure aggregation ([secagg] in the config file)")
    sec.add_argument(
        "--secagg",
        action="store_true",
        default=None,
        help="secure aggregation in the star round: the coordinator sees only the sum",
    )
    for flag, (_dotted, typ, metavar, help_) in SECAGG_FLAGS.items():
        sec.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, type=typ, metavar=metavar, help=help_
        )


def privacy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--dp*`` and ``--secagg*`` flags given, as dotted ``privacy.*`` /
    ``secagg.*`` fields."""
    out = {
        dotted: getattr(args, flag)
        for flag, (dotted, *_rest) in {**PRIVACY_FLAGS, **SECAGG_FLAGS}.items()
        if getattr(args, flag, None) is not None
    }
    if getattr(args, "secagg", None):
        out["secagg.enabled"] = True
    return out


# --personal* flags -> [personal] fields (docs/PERSONALISATION.md)
PERSONAL_FLAGS: dict[str, tuple[str, type, str, str]] = {
    "personal": (
        "personal.mode",
        str,
        "MODE",
        "personalisation: none, fedper (named layers stay local), fedbn (normalisation "
        "layers stay local), ditto (a personal model pulled to the global one) or finetune",
    ),
    "personal_layers": (
        "personal.local_layers",
        str,
        "NAMES",
        "fedper / fedbn: comma-separated layer names that never leave the member "
        "(default: fedper the last layer, fedbn the normalisation layers)",
    ),
    "ditto_lambda": ("personal.ditto_lambda", float, "LAMBDA", "ditto: proximal pull (0.1)"),
    "finetune_steps": (
        "personal.finetune_steps",
        int,
        "K",
        "finetune: local mini-batches on the received model before scoring it (10)",
    ),
    "personal_holdout": (
        "personal.holdout",
        float,
        "SHARE",
        "share of each member's data kept aside to score its own model (personalised "
        "accuracy); 0 = not scored (0)",
    ),
    "warmup_steps": (
        "personal.warmup_steps",
        int,
        "K",
        "a member joining after round 1 first trains its personal part K mini-batches (0)",
    ),
}


def add_personal(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("personalisation ([personal] in the config file)")
    for flag, (_dotted, typ, metavar, help_) in PERSONAL_FLAGS.items():
        group.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, type=typ, metavar=metavar, help=help_
        )


def personal_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--personal*`` flags given, as dotted ``personal.*`` fields."""
    return {
        dotted: getattr(args, flag)
        for flag, (dotted, *_rest) in PERSONAL_FLAGS.items()
        if getattr(args, flag, None) is not None
    }


def add_dashboard(p: argparse.ArgumentParser, *, sim: bool = False) -> None:
    group = p.add_argument_group("dashboard ([dashboard] in the config file)")
    flags = {**DASHBOARD_FLAGS, **(SIM_DASHBOARD_FLAGS if sim else {})}
    for flag, (_dotted, typ, metavar, help_) in flags.items():
        group.add_argument(
            f"--{flag.replace('_', '-')}", dest=flag, type=typ, metavar=metavar, help=help_
        )


def dashboard_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--dashboard*`` flags given, as dotted ``dashboard.*`` fields."""
    flags = {**DASHBOARD_FLAGS, **SIM_DASHBOARD_FLAGS}
    return {
        dotted: getattr(args, flag)
        for flag, (dotted, *_rest) in flags.items()
        if getattr(args, flag, None) is not None
    }


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    for flag, (_dotted, typ, help_) in COMMON_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=typ, help=help_)
    p.add_argument(
        "--no-error-feedback",
        dest="error_feedback",
        action="store_const",
        const=False,
        help="disable error feedback for lossy codecs",
    )


def overrides(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The common flags given (and ``extra``) as dotted config fields; unset flags left out."""
    out = {dotted: getattr(args, flag, None) for flag, (dotted, _t, _h) in COMMON_FLAGS.items()}
    out["wire.error_feedback"] = getattr(args, "error_feedback", None)
    out.update(extra or {})
    return {k: v for k, v in out.items() if v is not None}


def config_of(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> NodeConfig:
    """``--config`` and the flags -> validated config (ConfigError names the field)."""
    return load_config(getattr(args, "config", None), overrides(args, extra))


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover
