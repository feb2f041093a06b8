"""[secagg] config: bad values and the combinations secure aggregation cannot run with
fail at load naming the field; the CLI flags reach the config."""

from __future__ import annotations

import argparse

import pytest

from fednode.cli.common import add_privacy, privacy_overrides
from fednode.config import load_config
from fednode.errors import ConfigError

ON = {"secagg.enabled": True}


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"secagg.neighbours": 1}, "secagg.neighbours", ">= 2"),
        ({"secagg.threshold": 1.5}, "secagg.threshold", "count >= 2"),
        ({"secagg.threshold": 0}, "secagg.threshold", "fraction"),
        ({"secagg.stage_timeout_s": 0}, "secagg.stage_timeout_s", "> 0"),
        ({"secagg.clip": -1}, "secagg.clip", "> 0"),
        ({"secagg.frac_bits": 50}, "secagg.frac_bits", "[0, 40]"),
        ({**ON, "aggregation.rule": "krum:1"}, "aggregation.rule", "every individual update"),
        ({**ON, "aggregation.root_rule": "median"}, "aggregation.root_rule", "robust rule"),
        ({**ON, "aggregation.rule": "nnm:1+fedavg"}, "aggregation.rule", "norm_bound"),
        ({**ON, "wire.codec": "topk:0.1"}, "wire.codec", "lossy uplink"),
        ({**ON, "server.mode": "async"}, "server.mode", "'sync'"),
        ({**ON, "topology": "gossip"}, "topology", "'star'"),
        ({**ON, "topology": "two-tier", "privacy.mode": "distributed"}, "privacy.mode", "star"),
        ({**ON, "role": "peer"}, "topology", "gossip has no aggregator"),
        ({**ON, "tier.promote_at": 3}, "tier.promote_at", "promoted client"),
    ],
)
def test_bad_secagg_config_fails_at_load_naming_the_field(overrides, field, says):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.field == field
    assert says in err.value.expected


def test_norm_bound_then_fedavg_is_accepted_and_thresholds_resolve():
    cfg = load_config(None, {**ON, "aggregation.rule": "norm_bound:5+fedavg"})
    sa = cfg.secagg
    assert sa.neighbours_for(100) == 14  # 2 * ceil(log2 100)
    assert sa.threshold_for(100) == 9  # ceil(0.6 * 15 share holders)
    assert sa.threshold_for(4) == 3  # 4 members: everyone holds shares (k >= n - 1)
    fixed = load_config(None, {**ON, "secagg.threshold": 5}).secagg
    assert fixed.threshold_for(3) == 5  # a count is kept: such a round cannot run


def test_the_secagg_flags_set_the_secagg_fields():
    parser = argparse.ArgumentParser()
    add_privacy(parser)
    args = parser.parse_args(
        ["--secagg", "--secagg-neighbours", "6", "--secagg-threshold", "4", "--secagg-timeout", "9"]
    )
    cfg = load_config(None, privacy_overrides(args))
    assert cfg.secagg.enabled and cfg.secagg.neighbours == 6
    assert cfg.secagg.threshold == 4 and cfg.secagg.stage_timeout_s == 9
    assert "secagg.enabled" not in privacy_overrides(parser.parse_args([]))


def test_the_secure_coordinator_refuses_an_operator_promotion():
    import numpy as np

    from fednode.factory import make_role

    cfg = load_config(None, {**ON, "role": "coordinator"})
    role = make_role(cfg, 4, np.zeros(4, np.float32))
    answer = role.control({"op": "promote", "peer": "somebody"})
    assert answer["ok"] is False and "secure aggregation" in answer["error"]
