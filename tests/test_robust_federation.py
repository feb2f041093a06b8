"""Robust aggregation through whole federations in the simulator: star, two-tier, FedBuff.

One member is poisoned by a test-only executor (:class:`Poisoned`): it trains honestly,
then sends ``model + scale x (its delta)`` and claims ``claim`` examples, signed like any
update (the issue's scenario: x1e6 claiming 700). The attacker nodes of ``[attack]`` come
from elsewhere; this only needs one bad update per round.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import trio

from fednode.actions import TrainJob, TrainResult
from fednode.config import load_config
from fednode.errors import ConfigError
from fednode.runner import InlineExecutor
from fednode.sim.scenarios import build_star, build_two_tier


@dataclasses.dataclass
class Poisoned(InlineExecutor):
    scale: float = 1e6
    claim: int = 700
    #: honest before this round
    from_round: int = 1
    honest: int = 0

    async def run(self, job):  # type: ignore[override]
        """Charge the virtual train time of the honest examples, not of the claim (a
        member faster than the rest would fill FedBuff's buffers by itself)."""
        result = self.timed(job)
        if isinstance(job, TrainJob):
            await trio.sleep(self.train_cost_s * job.work * self.honest / 100)
        return result

    def timed(self, job):  # type: ignore[override]
        result = super().timed(job)
        if not isinstance(job, TrainJob):
            return result
        assert isinstance(result, TrainResult)
        self.honest = result.num_examples
        if job.round < self.from_round:
            return result
        delta = result.params.astype(np.float64) - job.params
        params = (job.params + self.scale * delta).astype(np.float32)
        return TrainResult(result.round, params, self.claim, result.metrics)


def poison(sim, index: int, **kw) -> None:
    node = sim.nodes[index]
    old = node.executor
    node.executor = Poisoned(old.task, train_cost_s=old.train_cost_s, **kw)


def config(rule: str = "fedavg", **extra):
    base = {
        "rounds.rounds": 3,
        "rounds.min_available_clients": 8,
        "rounds.min_fit_clients": 5,
        "train.local_epochs": 2,
        "aggregation.rule": rule,
    }
    base.update(extra)
    return load_config(None, base)


def events(result, name):
    return [e for e in result.events if e["event"] == name]


def run_star(rule: str, clients: int = 8, bad: int = 1, **extra):
    sim, root = build_star(config(rule, **extra), clients)
    peer = sim.nodes[bad].peer
    poison(sim, bad)
    return sim.run(root), peer


@pytest.fixture(scope="module")
def clean_accuracy() -> float:
    """Final accuracy of clean FedAvg on the same federation (no poisoned member)."""
    sim, root = build_star(config("fedavg"), 8)
    return float(sim.run(root).rounds[-1]["accuracy"])


def test_star_fedavg_flags_the_scaled_update_and_is_wrecked():
    result, bad = run_star("fedavg")
    flagged = events(result, "update_flagged")
    assert flagged and {e["peer"] for e in flagged} == {bad}
    assert all(r["agg_flagged"] == [bad] for r in result.rounds)
    assert result.rounds[-1]["accuracy"] < 0.3  # plain FedAvg averages it in


RULES = [
    "median",
    "trimmed:0.2",
    "krum:1",
    "multikrum:1",
    "bulyan:1",
    "geomed",
    "centered_clip:1",
    "norm_bound:1+fedavg",
    "nnm+krum:1",
]


@pytest.mark.parametrize("rule", RULES)
def test_star_robust_rules_survive_the_scaled_update(rule, clean_accuracy):
    result, bad = run_star(rule)
    assert len(result.rounds) == 3
    assert result.rounds[-1]["accuracy"] >= clean_accuracy - 0.1, result.rounds[-1]
    assert all(r["agg_flagged"] == [bad] for r in result.rounds)  # flagged under any rule
    assert all(r["agg_rule"] == rule for r in result.rounds)
    if "krum" in rule or "bulyan" in rule:  # the selecting rules leave it out
        assert all(bad in r["agg_discarded"] for r in result.rounds)
    if rule.startswith("krum"):
        assert all(len(r["agg_selected"]) == 1 for r in result.rounds)
    if rule.startswith("norm_bound"):
        assert all(r["agg_clipped"] >= 1 for r in result.rounds)
    if rule.startswith("trimmed"):
        assert all(r["agg_trimmed"] == 1 for r in result.rounds)  # floor(0.2 x 8)


def test_claim_cap_bounds_an_inflated_weight():
    """A member honest in round 1 sends sign-flipped updates claiming a million examples
    from round 2: with max_examples_ratio = 3 its weight is cut to 3 x the previous round's
    median claim (540 against the other seven's 1257), and FedAvg keeps learning."""
    clients = 8
    cfg = config("fedavg", **{"rounds.rounds": 4, "aggregation.max_examples_ratio": 3.0})
    sim, root = build_star(cfg, clients)
    bad = sim.nodes[1].peer
    poison(sim, 1, scale=-1.0, claim=1_000_000, from_round=2)
    result = sim.run(root)
    capped = events(result, "claim_capped")
    assert {e["peer"] for e in capped} == {bad}
    assert [r["agg_capped"] for r in result.rounds] == [[], [bad], [bad], [bad]]
    assert result.rounds[-1]["accuracy"] > result.rounds[0]["accuracy"] + 0.05
    # without the cap the same member drags the model backwards every round
    sim, root = build_star(
        config("fedavg", **{"rounds.rounds": 4, "aggregation.max_examples_ratio": 0}), clients
    )
    poison(sim, 1, scale=-1.0, claim=1_000_000, from_round=2)
    uncapped = sim.run(root)
    assert uncapped.rounds[-1]["accuracy"] < result.rounds[-1]["accuracy"] - 0.3


def test_krum_round_with_too_few_updates_fails_and_the_next_round_runs():
    """krum:2 needs 7 updates; with 6 clients every round fails with a typed reason, the
    model is unchanged and the coordinator goes through its rounds and stops normally."""
    cfg = config("krum:2", **{"rounds.min_available_clients": 6, "rounds.min_fit_clients": 5})
    sim, root = build_star(cfg, 6)
    result = sim.run(root)
    failed = events(result, "round_failed")
    assert [e["round"] for e in failed] == [1, 2, 3]
    assert all("needs at least 7 updates, got 6" in e["reason"] and e["rule"] for e in failed)
    assert result.rounds == []
    assert root.role.model_version == 0
    assert root.stop is not None and root.stop.error is None


def test_krum_runs_when_enough_updates_arrive():
    cfg = config("krum:2", **{"rounds.min_available_clients": 7, "rounds.min_fit_clients": 7})
    sim, root = build_star(cfg, 7)
    result = sim.run(root)
    assert len(result.rounds) == 3 and not events(result, "round_failed")


def two_tier_config(rule: str, **extra):
    base = {"rounds.min_available_clients": 12, "rounds.min_fit_clients": 3}
    return config(rule, **{**base, **extra})


@pytest.fixture(scope="module")
def clean_two_tier() -> float:
    sim, root = build_two_tier(two_tier_config("fedavg"), 3, 12)
    return float(sim.run(root).rounds[-1]["accuracy"])


def test_two_tier_each_region_runs_the_rule(clean_two_tier):
    """3 regions x 4 clients, one poisoned client in region 0: each aggregator's median
    discards it, the coordinator averages the three regional means (root_rule fedavg)."""
    sim, root = build_two_tier(
        two_tier_config("median", **{"aggregation.root_rule": "fedavg"}), 3, 12
    )
    first_client = 1 + 3
    bad = sim.nodes[first_client].peer
    poison(sim, first_client)
    result = sim.run(root)
    assert result.rounds[-1]["accuracy"] >= clean_two_tier - 0.15, clean_two_tier
    edge = events(result, "edge_round")
    assert edge and all(e["agg_rule"] == "median" for e in edge)
    assert any(e["agg_flagged"] == [bad] for e in edge)
    assert all(r["agg_rule"] == "fedavg" for r in result.rounds)


def test_two_tier_fedavg_is_wrecked_by_the_same_client():
    sim, root = build_two_tier(two_tier_config("fedavg"), 3, 12)
    poison(sim, 4)
    result = sim.run(root)
    assert result.rounds[-1]["accuracy"] < 0.3


def async_config(rule: str):
    return config(
        rule,
        **{
            "server.mode": "async",
            "server.buffer_size": 5,
            "rounds.rounds": 6,
            "server.max_staleness": 20,
        },
    )


@pytest.mark.parametrize(("rule", "survives"), [("median", True), ("fedavg", False)])
def test_fedbuff_runs_the_rule_per_buffer(rule, survives):
    sim, root = build_star(async_config(rule), 8)
    poison(sim, 1)
    result = sim.run(root)
    assert len(result.rounds) == 6
    assert all(r["agg_rule"] == rule for r in result.rounds)
    assert (result.rounds[-1]["accuracy"] > 0.7) is survives, result.rounds[-1]


def test_fedbuff_refuses_a_rule_its_buffer_cannot_feed():
    with pytest.raises(ConfigError, match=r"aggregation\.rule"):
        async_config("krum:2")  # needs 7 updates, the buffer holds 5


def test_cli_sim_reports_the_rule_in_rounds_jsonl_and_summary(tmp_path, capsys):
    from fednode.cli import main

    args = ["sim", "--nodes", "6", "--rounds", "2", "--local-epochs", "1"]
    code = main([*args, "--aggregation", "krum:1", "--out", str(tmp_path), "--json"])
    assert code == 0
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["agg_rule"] for r in rows] == ["krum:1", "krum:1"]
    assert all(len(r["agg_selected"]) == 1 and len(r["agg_discarded"]) == 5 for r in rows)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["aggregation"]["rule"] == "krum:1"
    assert summary["aggregation"]["discarded"] == 10


@pytest.mark.parametrize("command", ["sim", "run", "demo"])
def test_cli_refuses_a_bad_rule_naming_the_field(command, capsys):
    from fednode.cli import main

    assert main([command, "--aggregation", "trimmed:0.7"]) == 2
    out = capsys.readouterr()
    assert "aggregation.rule" in out.out + out.err
