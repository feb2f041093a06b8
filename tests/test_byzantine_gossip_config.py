"""[aggregation] on a gossip peer is refused at start (it would be silently ignored: a
peer averages no round of updates), pointing to [gossip] robust."""

from __future__ import annotations

import pytest

from fednode.config import load_config
from fednode.errors import ConfigError
from fednode.sim.experiment import run_experiment
from fednode.sim.topology import build_topology


@pytest.mark.parametrize(
    ("field", "value"), [("aggregation.rule", "median"), ("aggregation.root_rule", "krum:1")]
)
def test_a_peer_with_an_aggregation_rule_fails_at_load_naming_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, {"role": "peer", field: value})
    assert err.value.field == field
    assert "[gossip] robust" in str(err.value)


def test_the_gossip_topology_field_is_refused_the_same_way():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"topology": "gossip", "aggregation.rule": "trimmed:0.2"})
    assert err.value.field == "aggregation.rule"


def test_a_peer_with_the_default_rule_and_robust_gossip_loads():
    config = load_config(None, {"role": "peer", "gossip.robust": "clip:auto"})
    assert config.aggregation.rule == "fedavg"
    # the same rule on a client or coordinator is fine
    assert load_config(None, {"role": "coordinator", "aggregation.rule": "median"})


def test_a_simulated_gossip_run_with_an_aggregation_rule_is_refused_before_it_runs():
    topo = build_topology("gossip", "cycle_graph", 4)
    with pytest.raises(ConfigError) as err:
        run_experiment(topo, overrides={"rounds.rounds": 1, "aggregation.rule": "median"})
    assert err.value.field == "aggregation.rule"
