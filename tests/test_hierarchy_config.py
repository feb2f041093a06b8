"""Hierarchy config groups ([tier], [selection], [server]) and the role factory."""

import numpy as np
import pytest

from fednode.config import load_config
from fednode.errors import ConfigError
from fednode.factory import make_role
from fednode.hierarchy.aggregator import RegionalAggregator
from fednode.hierarchy.client import Client
from fednode.hierarchy.coordinator import Coordinator
from fednode.hierarchy.fedbuff import AsyncCoordinator
from fednode.hierarchy.selection import PowerOfChoice
from fednode.training.server_opt import FedYogi


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("tier.placement", "random", "one of least_loaded, region, none"),
        ("tier.edge_rounds", 0, "integer >= 1"),
        ("tier.aggregator_deadline_fraction", 1.0, "(0, 1)"),
        ("tier.promote_at", 1, "0 (off) or an integer >= 2"),
        ("tier.settle_s", 0, "> 0"),
        ("tier.region", "x" * 65, "at most 64"),
        ("selection.strategy", "best", "one of uniform, power_of_choice"),
        ("selection.candidates", -1, ">= 0"),
        ("selection.explore", 2, "[0, 1]"),
        ("server.optimizer", "sgd", "one of fedavg, fedavgm, fedadam, fedyogi"),
        ("server.lr", -0.1, ">= 0"),
        ("server.mode", "semi", "one of sync, async"),
        ("server.buffer_size", 0, ">= 1"),
        ("server.max_staleness", -1, ">= 0"),
        ("server.checkpoint_keep", 0, ">= 1"),
        ("rounds.cutoff_fraction", 0, "(0, 1]"),
        ("rounds.max_retries", -1, ">= 0"),
    ],
)
def test_bad_hierarchy_values_name_the_field(key, value, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, {key: value})
    assert info.value.field == key and fragment in str(info.value)


def test_toml_groups_load(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(
        '[tier]\nedge_rounds = 3\nregion = "eu"\n[selection]\nstrategy = "oort"\n'
        '[server]\noptimizer = "fedadam"\nmode = "async"\n'
    )
    config = load_config(path)
    assert config.tier.edge_rounds == 3 and config.tier.region == "eu"
    assert config.selection.strategy == "oort" and config.server.mode == "async"


def test_factory_builds_each_role_from_config(tmp_path):
    params = np.zeros(8, np.float32)
    sync = make_role(
        load_config(
            None,
            {
                "role": "coordinator",
                "selection.strategy": "power_of_choice",
                "server.optimizer": "fedyogi",
                "server.checkpoint_dir": str(tmp_path),
            },
        ),
        8,
        params,
    )
    assert isinstance(sync, Coordinator) and isinstance(sync.selection, PowerOfChoice)
    assert isinstance(sync.server_update, FedYogi) and sync.checkpoints is not None
    fedbuff = make_role(
        load_config(None, {"role": "coordinator", "server.mode": "async"}), 8, params
    )
    assert isinstance(fedbuff, AsyncCoordinator)
    agg = make_role(load_config(None, {"role": "aggregator", "tier.region": "eu"}), 8)
    assert isinstance(agg, RegionalAggregator) and agg.region == "eu"
    client = make_role(load_config(None, {"role": "client", "tier.region": "us"}), 8)
    assert isinstance(client, Client) and client.region == "us"
    with pytest.raises(ConfigError, match="initial model"):
        make_role(load_config(None, {"role": "coordinator"}), 8)
