"""[privacy] end to end: config errors name fields, the CLI flags reach the config, and
DP runs in a star on both drivers (same results), in a two-tier tree, under FedBuff, and
as local DP on gossip peers (docs/PRIVACY.md)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from fednode.cli import main
from fednode.config import load_config, replace
from fednode.dashboard import Board
from fednode.dashboard.nodeview import NodeView
from fednode.dashboard.state import Cursor
from fednode.errors import ConfigError
from fednode.factory import make_role
from fednode.loop import RunStats
from fednode.privacy import epsilon_of
from fednode.prometheus import NodeMetrics
from fednode.sim import SimOptions, build_topology, run_experiment

DP = {"privacy.mode": "central", "privacy.noise_multiplier": 1.0, "privacy.clip": 1.0}


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"privacy.mode": "distributed"}, "privacy.mode", "needs secure aggregation"),
        ({"privacy.mode": "on"}, "privacy.mode", "off, central, local or distributed"),
        ({"privacy.clip": "big"}, "privacy.clip", '"adaptive"'),
        ({"privacy.clip": -1}, "privacy.clip", "float > 0"),
        ({"privacy.noise_multiplier": 0}, "privacy.noise_multiplier", "float > 0"),
        ({"privacy.delta": 1.5}, "privacy.delta", "(0, 1)"),
        ({"privacy.epsilon_budget": -2}, "privacy.epsilon_budget", ">= 0"),
        ({"privacy.accountant": "moments"}, "privacy.accountant", "rdp or pld"),
        ({"privacy.target_quantile": 1.0}, "privacy.target_quantile", "(0, 1)"),
        ({"privacy.clip_lr": 0}, "privacy.clip_lr", "float > 0"),
        ({"privacy.seed": -5}, "privacy.seed", "os.urandom"),
        ({"privacy.mode": "local", "privacy.clip": "adaptive"}, "privacy.clip", "aggregator"),
        ({**DP, "aggregation.rule": "krum:1"}, "aggregation.rule", "fedavg or norm_bound"),
        ({**DP, "aggregation.root_rule": "median"}, "aggregation.root_rule", "robust rule"),
    ],
)
def test_bad_privacy_config_fails_at_load_naming_the_field(overrides, field, says):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.field == field
    assert says in err.value.expected


def test_norm_bound_then_fedavg_is_accepted_under_central_dp():
    cfg = load_config(None, {**DP, "aggregation.rule": "norm_bound:5+fedavg"})
    assert cfg.privacy.clip_norm == 1.0


def test_a_mode_a_role_cannot_run_is_refused_at_start_naming_privacy_mode():
    params = np.zeros(4, np.float32)
    client = load_config(None, {"privacy.mode": "local", "role": "client"})
    with pytest.raises(ConfigError, match=r"privacy\.mode"):
        make_role(client, 4)
    peer = load_config(None, {**DP, "role": "peer"})
    with pytest.raises(ConfigError, match="no aggregator"):
        make_role(peer, 4, params, me="p")
    coord = load_config(None, {**DP, "role": "coordinator"})
    with pytest.raises(ConfigError, match="not checkpointed"):
        make_role(coord, 4, params, resume_from="/nonexistent")


def test_the_dp_flags_set_the_privacy_fields(tmp_path, capsys):
    """`fednode sim --dp ...` reaches [privacy] and prints epsilon in the round table."""
    code = main(
        [
            "sim",
            "--nodes",
            "4",
            "--rounds",
            "2",
            "--task",
            "synthetic",
            "--local-epochs",
            "1",
            "--dp",
            "central",
            "--dp-clip",
            "0.5",
            "--dp-noise",
            "2",
            "--dp-delta",
            "1e-6",
            "--dp-accountant",
            "pld",
            "--dp-seed",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "epsilon" in out and "privacy (central)" in out
    summary = json.loads((tmp_path / "summary.json").read_text())["privacy"]
    assert summary["clip"] == 0.5 and summary["noise_multiplier"] == 2.0
    assert summary["delta"] == 1e-6 and summary["accountant"] == "pld" and summary["seed"] == 3
    assert summary["epsilon"] == pytest.approx(epsilon_of({1.0: 2}, 2.0, 1e-6, "pld"), rel=1e-9)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["dp_rounds"] for r in rows] == [1, 2]
    assert all(r["dp_clip"] == 0.5 for r in rows)


def test_run_help_lists_the_dp_flags(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for flag in ("--dp ", "--dp-clip", "--dp-noise", "--dp-budget", "--dp-accountant"):
        assert flag in out


@functools.cache
def star(driver: str):
    topo = build_topology("star", "star", 7, links={"latency_s": 0.005})
    overrides = {
        "data.task": "digits:numpy",
        "rounds.rounds": 3,
        "train.local_epochs": 1,
        "rounds.fraction_fit": 0.5,
        **DP,
    }
    return run_experiment(topo, overrides=overrides, options=SimOptions(driver=driver))


def test_both_drivers_give_the_same_dp_rounds():
    des, trio = star("des"), star("trio")
    assert des.error is None and trio.error is None and len(des.rounds) == 3
    np.testing.assert_array_equal(des.accuracy, trio.accuracy)
    a, b = des.table(), trio.table()
    assert [r["dp_epsilon"] for r in a] == [r["dp_epsilon"] for r in b]
    assert [r["dp_q"] for r in a] == [0.5, 0.5, 0.5]


def test_the_noise_changes_the_model_and_the_seed_fixes_it():
    topo = build_topology("star", "star", 7, links={"latency_s": 0.005})
    base = {"data.task": "digits:numpy", "rounds.rounds": 3, "train.local_epochs": 1}
    plain = run_experiment(topo, overrides={**base, "rounds.fraction_fit": 0.5})
    other_seed = run_experiment(
        topo, overrides={**base, "rounds.fraction_fit": 0.5, **DP, "privacy.seed": 99}
    )
    again = run_experiment(topo, overrides={**base, "rounds.fraction_fit": 0.5, **DP})
    assert not np.array_equal(plain.loss, star("des").loss)
    assert not np.array_equal(other_seed.loss, star("des").loss)
    np.testing.assert_array_equal(again.loss, star("des").loss)


def test_two_tier_regions_noise_and_the_coordinator_accounts():
    topo = build_topology("two-tier", "two_tier", 9, regions=2)
    res = run_experiment(
        topo,
        overrides={"data.task": "synthetic", "rounds.rounds": 2, "train.local_epochs": 1, **DP},
    )
    assert res.error is None and len(res.rounds) == 2
    rows = res.table()
    assert all(r["dp_epsilon"] > 0 for r in rows)
    assert rows[0]["agg_rule"] == "fedavg"  # the coordinator adds no noise of its own
    assert res.summary()["privacy"]["rounds_released"] == 2


def test_fedbuff_clips_and_noises_each_buffer_step():
    topo = build_topology("star", "star", 9)
    overrides = {
        "data.task": "synthetic",
        "rounds.rounds": 3,
        "train.local_epochs": 1,
        "server.mode": "async",
        "server.buffer_size": 4,
        **DP,
    }
    res = run_experiment(topo, overrides=overrides)
    assert res.error is None and len(res.rounds) == 3
    rows = res.table()
    assert all(r["agg_rule"] == "dp+fedavg" for r in rows)
    assert [r["dp_rounds"] for r in rows] == [1, 2, 3]
    assert rows[-1]["dp_epsilon"] == pytest.approx(
        epsilon_of({0.5: 3}, 1.0, 1e-5), rel=1e-9
    )  # 4 updates of 8 clients per step


def test_local_dp_on_gossip_peers_runs_and_reports_epsilon():
    topo = build_topology("gossip", "cycle_graph", 6)
    rounds, sigma = 3, 2.0
    overrides = {
        "data.task": "synthetic",
        "rounds.rounds": rounds,
        "train.local_epochs": 1,
        "privacy.mode": "local",
        "privacy.noise_multiplier": sigma,
    }
    res = run_experiment(topo, overrides=overrides)
    assert res.error is None and len(res.rounds) == rounds
    eps = [r["dp_epsilon"] for r in res.table() if "dp_epsilon" in r]
    # each round: a Gaussian mechanism of multiplier sigma / 2 (replace-one sensitivity 2C)
    assert eps == [pytest.approx(epsilon_of({1.0: r}, sigma / 2, 1e-5)) for r in (1, 2, 3)]
    assert res.summary()["privacy"]["epsilon"] == pytest.approx(eps[-1])


def test_local_dp_budget_caps_a_peers_rounds_at_start():
    cfg = load_config(
        None,
        {
            "role": "peer",
            "rounds.rounds": 50,
            "privacy.mode": "local",
            "privacy.noise_multiplier": 4.0,
            "privacy.epsilon_budget": 3.0,
        },
    )
    peer = make_role(cfg, 4, np.zeros(4, np.float32), me="p")
    within = max(r for r in range(1, 51) if epsilon_of({1.0: r}, 2.0, 1e-5) <= 3.0)
    assert peer.rounds == within < 50
    with pytest.raises(ConfigError, match=r"privacy\.epsilon_budget"):
        make_role(
            replace(cfg, privacy=replace(cfg.privacy, epsilon_budget=0.01)),
            4,
            np.zeros(4, np.float32),
            me="p",
        )


def test_prometheus_exports_epsilon_and_the_budget_stop():
    metrics = NodeMetrics(
        role="coordinator", peer_id="x", federation="f", stats=RunStats(), peers=lambda: 0
    )
    metrics.on_event("round", {"round": 1, "accuracy": 0.5, "dp_epsilon": 1.25, "dp_delta": 1e-5})
    metrics.on_event("privacy_budget", {"round": 2, "reason": "r"})
    text = metrics.exposition().decode()
    assert 'fednode_dp_epsilon{delta="1e-05"} 1.25' in text
    assert "fednode_dp_budget_stopped 1.0" in text


def test_the_dashboard_round_rows_carry_epsilon_under_dp():
    board = Board(title="c", kind="coordinator")
    view = NodeView(board, "me", "coordinator", lambda: {"round": 1, "tree": {}}, clock=lambda: 1.0)
    view.on_event("me", "round", {"round": 1, "accuracy": 0.5, "loss": 1.0, "dp_epsilon": 2.5})
    view.on_event("me", "round", {"round": 2, "accuracy": 0.6, "loss": 0.9})
    out, _ = board.delta(Cursor())
    assert [r.get("epsilon") for r in out["rounds"]] == [2.5, None]
