"""Configuration: TOML file + CLI overrides -> frozen, validated dataclasses.

A config file is optional; every field has a default that gives a working node. The file
has one table per group (``[train]``, ``[rounds]``, ``[data]``, ``[net]``, ``[wire]``,
``[tier]``, ``[selection]``, ``[server]``, ``[gossip]``, ``[aggregation]``, ``[attack]``,
``[dashboard]``, ``[privacy]``, ``[personal]``) and top-level keys for the node itself::

    role = "client"
    seed = 0
    [data]
    task = "digits"
    partition = "dirichlet:0.5"
    client_index = 3
    num_clients = 10

CLI flags override single fields by dotted name (``rounds.rounds=20``). Validation runs
once, in :func:`load_config`; every problem raises :class:`ConfigError` naming the field,
the value received and what was expected, before the node starts.
"""

from .attack import AttackParams
from .dashboard import DashboardParams
from .load import ROLES, NodeConfig, load_config, replace
from .net import NetParams
from .personal import PERSONAL_MODES, PersonalParams
from .privacy import ACCOUNTANTS, PRIVACY_MODES, PrivacyParams
from .sections import (
    GOSSIP_MODES,
    AggregationParams,
    DataParams,
    GossipParams,
    RoundParams,
    SelectionParams,
    ServerParams,
    TierParams,
    TrainParams,
    WireParams,
)

__all__ = [
    "ACCOUNTANTS",
    "GOSSIP_MODES",
    "PERSONAL_MODES",
    "PRIVACY_MODES",
    "ROLES",
    "AggregationParams",
    "AttackParams",
    "DashboardParams",
    "DataParams",
    "GossipParams",
    "NetParams",
    "NodeConfig",
    "PersonalParams",
    "PrivacyParams",
    "RoundParams",
    "SelectionParams",
    "ServerParams",
    "TierParams",
    "TrainParams",
    "WireParams",
    "load_config",
    "replace",
]
