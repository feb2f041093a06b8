"""The node's whole config and how it is read: TOML file + dotted overrides -> validated."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .attack import AttackParams
from .dashboard import DashboardParams
from .net import NetParams
from .personal import PersonalParams
from .privacy import PrivacyParams
from .secagg import SecAggConfig, check_secagg
from .sections import (
    AggregationParams,
    DataParams,
    GossipParams,
    RoundParams,
    SelectionParams,
    ServerParams,
    TierParams,
    TrainParams,
    WireParams,
    check,
)

ROLES = ("client", "aggregator", "coordinator", "peer")


def check_gossip_aggregation(config: NodeConfig, gossip: bool = False) -> None:
    """A gossip peer (``role = "peer"``, ``topology = "gossip"`` or ``gossip`` True: the
    simulator's gossip specs) averages no round of updates, so ``[aggregation]`` would be
    silently ignored: a non-default rule fails at start, pointing to ``[gossip] robust``."""
    if not (gossip or config.role == "peer" or config.topology == "gossip"):
        return
    agg = config.aggregation
    for name, value, default in (("rule", agg.rule, "fedavg"), ("root_rule", agg.root_rule, "")):
        check(
            value == default,
            f"aggregation.{name}",
            value,
            f"'{default}' (the default) on a gossip peer: [aggregation] does not apply to "
            "gossip; robust gossip is [gossip] robust = 'clip:auto' (or clip:<tau>)",
        )


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs. Build with :func:`load_config`; frozen once built."""

    role: str = "client"
    seed: int = 0
    topology: str = "star"
    train: TrainParams = field(default_factory=TrainParams)
    rounds: RoundParams = field(default_factory=RoundParams)
    data: DataParams = field(default_factory=DataParams)
    net: NetParams = field(default_factory=NetParams)
    wire: WireParams = field(default_factory=WireParams)
    tier: TierParams = field(default_factory=TierParams)
    selection: SelectionParams = field(default_factory=SelectionParams)
    server: ServerParams = field(default_factory=ServerParams)
    gossip: GossipParams = field(default_factory=GossipParams)
    aggregation: AggregationParams = field(default_factory=AggregationParams)
    attack: AttackParams = field(default_factory=AttackParams)
    dashboard: DashboardParams = field(default_factory=DashboardParams)
    privacy: PrivacyParams = field(default_factory=PrivacyParams)
    personal: PersonalParams = field(default_factory=PersonalParams)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)

    def validate(self) -> None:
        check(self.role in ROLES, "role", self.role, f"one of {', '.join(ROLES)}")
        check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        for f in dataclasses.fields(self):
            group = getattr(self, f.name)
            if dataclasses.is_dataclass(group):
                group.validate()  # type: ignore[union-attr]
        check_gossip_aggregation(self)  # byz: [aggregation] is refused on a gossip peer
        if self.server.mode == "async":
            from ..training.rulespec import parse_rule

            name = "aggregation.root_rule" if self.aggregation.root_rule else "aggregation.rule"
            spec = parse_rule(self.aggregation.root_rule or self.aggregation.rule, name)
            check(
                spec.min_updates() <= self.server.buffer_size,
                name,
                spec.text,
                f"a rule that runs on server.buffer_size = {self.server.buffer_size} updates "
                f"(this one needs {spec.min_updates()})",
            )
        if self.privacy.mode == "central":
            _check_private_rule(self.aggregation)
        check_secagg(self)  # [secagg]: what secure aggregation cannot run with


def _check_private_rule(params: AggregationParams) -> None:
    """Central DP accounts for a sum of clipped updates: only fedavg (optionally after
    norm_bound) is such a sum; a robust rule's output moves by more than the clip when
    one member changes, so its noise cannot be accounted for."""
    from ..training.rulespec import parse_rule

    for name in ("aggregation.rule", "aggregation.root_rule"):
        text = getattr(params, name.split(".")[1])
        if text and parse_rule(text, name).needs_all:
            raise ConfigError(
                name,
                text,
                "fedavg or norm_bound:<c>+fedavg with privacy.mode = central (the DP noise "
                "is accounted for a sum of clipped updates; a robust rule is not one)",
            )


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a dataclass field annotation; coerce only lossless cases."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(name, value, "a boolean (true/false)")
    if annotation is int or annotation is float:
        expected = "an integer" if annotation is int else "a number"
        if isinstance(value, bool):
            raise ConfigError(name, value, expected)
        if isinstance(value, annotation) or (annotation is float and isinstance(value, int)):
            return annotation(value)
        if isinstance(value, str):
            try:
                return annotation(value)
            except ValueError:
                pass
        raise ConfigError(name, value, expected)
    if origin is types.UnionType and set(typing.get_args(annotation)) == {float, str}:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        raise ConfigError(name, value, "a number or a string")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(name, value, "a string")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(name, value, "a list of strings")
    raise ConfigError(name, value, f"a value of type {annotation}")


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(name, value, f"a known key (one of: {known})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(name, value, f"a table [{key}]")
            kwargs[key] = _build(hint, value, f"{name}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(name, value, hint)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, value, f"{part!r} to be a table")
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> NodeConfig:
    """Read ``path`` (TOML, optional), apply dotted ``overrides``, validate, return frozen config.

    Errors: :class:`ConfigError` naming the field for unknown keys, wrong types,
    out-of-range values, an unreadable file or invalid TOML.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except OSError as exc:
            raise ConfigError("config", str(path), f"a readable TOML file ({exc})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", str(path), f"valid TOML ({exc})") from exc
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    config: NodeConfig = _build(NodeConfig, tree, "")
    config.validate()
    return config


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that re-validates the result."""
    new = dataclasses.replace(config, **changes)
    new.validate()
    return new
