"""Distributed DP under secure aggregation (privacy/distributed.py): each member clips and
adds its noise share before masking; the coordinator's ledger accounts for the noise
guaranteed in the worst release it allows, reports epsilon and stops at the budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fednode.config import load_config
from fednode.errors import ConfigError
from fednode.hierarchy.secure_client import input_vector
from fednode.privacy import epsilon_of
from fednode.privacy.distributed import NoiseShare
from fednode.sim import SimOptions, build_topology, run_experiment

DIST = {
    "secagg.enabled": True,
    "privacy.mode": "distributed",
    "privacy.noise_multiplier": 1.0,
    "privacy.clip": 1.0,
    "privacy.seed": 7,
}


def test_a_member_clips_to_c_and_adds_noise_of_std_sigma_c_over_sqrt_m():
    rng = np.random.default_rng(0)
    share = NoiseShare(clip=0.5, noise_multiplier=2.0, rng=np.random.default_rng(1))
    delta = rng.normal(size=40_000).astype(np.float32)  # norm ~200: clipped to 0.5
    x = input_vector(delta, 123, 0.75, noise=share, min_survivors=16)
    head = x[:-2]
    clipped = delta * np.float32(0.5 / np.linalg.norm(delta.astype(np.float64)))
    noise = head - clipped.astype(np.float64)
    want = 2.0 * 0.5 / math.sqrt(16)
    # the sample std of 40,000 draws is within 2% of sigma with overwhelming probability
    assert abs(noise.std() / want - 1) < 0.02
    assert list(x[-2:]) == [1.0, 0.75]  # weight 1 (unweighted), not num_examples
    assert share.clipped == 1


def test_distributed_mode_needs_secagg_and_refuses_adaptive_clipping():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"privacy.mode": "distributed"})
    assert err.value.field == "privacy.mode"
    with pytest.raises(ConfigError) as err:
        load_config(None, {**DIST, "privacy.clip": "adaptive"})
    assert err.value.field == "privacy.clip"
    with pytest.raises(ConfigError) as err:
        load_config(None, {"secagg.enabled": True, "privacy.mode": "central"})
    assert err.value.field == "privacy.mode"


@pytest.mark.parametrize("driver", ["des", "trio"])
def test_epsilon_is_reported_and_the_budget_stops_training_with_secagg_on(driver):
    sigma, delta = 1.0, 1e-5
    two, three = (epsilon_of({1.0: r}, sigma, delta, "rdp") for r in (2, 3))
    budget = (two + three) / 2  # allows two releases, not a third
    topo = build_topology("star", "star", 6, links={"latency_s": 0.005})
    over = {
        "data.task": "digits:numpy",
        "rounds.rounds": 10,
        "train.local_epochs": 1,
        "rounds.min_available_clients": 5,
        "privacy.epsilon_budget": budget,
        **DIST,
    }
    res = run_experiment(topo, overrides=over, options=SimOptions(driver=driver))
    assert res.error is None
    table = res.table()
    assert [r["dp_q"] for r in table] == [1.0, 1.0]
    for r, row in enumerate(table, start=1):
        assert row["dp_epsilon"] == pytest.approx(epsilon_of({1.0: r}, sigma, delta, "rdp"))
    summary = res.privacy_summary()["privacy"]
    assert summary["rounds_released"] == 2 and summary["stopped_by_budget"] is True
    assert summary["mode"] == "distributed"
    assert all(row["completed"] == 5 for row in table)
