"""Two-tier federation in the simulator: parity with star, crashes, failover, restart, promotion.

Every node runs the real role code under the real runner over the memory transport, in
virtual time (see fednode/sim/engine.py). Node indices: 0 coordinator, 1..3 aggregators,
4..33 clients.
"""

import numpy as np
import pytest

from fednode.config import load_config
from fednode.factory import make_role
from fednode.hierarchy.checkpoint import load_checkpoint
from fednode.sim.scenarios import (
    build_star,
    build_two_tier,
    crash_at_round,
    run_star,
    run_two_tier,
    run_with_restart,
)

TOTAL_EXAMPLES = 1437  # the digits training split


def config(**overrides):
    base = {"rounds.rounds": 3, "rounds.min_available_clients": 30, "rounds.min_fit_clients": 1}
    base.update(overrides)
    return load_config(None, base)


def tree_counts(coordinator):
    """How often each peer appears as a child anywhere in the tree."""
    seen = {}
    for children in coordinator.hierarchy().values():
        for c in children:
            seen[c] = seen.get(c, 0) + 1
    return seen


@pytest.mark.slow
def test_two_tier_accuracy_matches_star_in_the_same_rounds():
    cfg = config(**{"rounds.rounds": 8})
    star = run_star(cfg, 30)
    tier = run_two_tier(cfg, 3, 30, assignment="coordinator")
    assert [r["round"] for r in tier.rounds] == list(range(1, 9))
    for s, t in zip(star.rounds, tier.rounds):
        assert abs(s["accuracy"] - t["accuracy"]) <= 0.01
        assert t["examples"] == TOTAL_EXAMPLES and t["clients_completed"] == 30
        assert t["selected"] == 3 and t["aggregators"] == 3
    assert tier.final_accuracy >= 0.9


def test_clients_join_their_region_aggregator_and_the_coordinator_keeps_the_tree():
    sim, root = build_two_tier(config(**{"rounds.rounds": 1}), 3, 30, assignment="region")
    result = sim.run(root)
    tree = root.role.hierarchy()
    aggregators = [n.peer for n in sim.nodes[1:4]]
    assert sorted(tree[root.peer]) == sorted(aggregators)
    for j, agg in enumerate(aggregators):  # client i is in region r{i % 3}
        expected = {sim.nodes[4 + i].peer for i in range(30) if i % 3 == j}
        assert set(tree[agg]) == expected
    assert result.rounds[0]["examples"] == TOTAL_EXAMPLES


def test_thirty_percent_of_clients_killed_mid_round_round_completes_with_failure_rate():
    cfg = config(**{"rounds.min_available_clients": 20})
    sim, root = build_two_tier(cfg, 3, 30, assignment="region")
    victims = [4 + i for i in range(0, 30, 10)] + [4 + i for i in range(1, 30, 5)]
    sim.fault_hooks.append(crash_at_round(2, victims[:9]))
    result = sim.run(root)
    assert result.stop is not None and result.stop.error is None, result.stop
    second = result.rounds[1]
    assert second["completed"] == 3 and second["failed"] == 0  # every region answered
    assert second["clients_selected"] == 30 and second["clients_completed"] == 21
    assert second["client_failure_rate"] == pytest.approx(0.3)
    assert second["examples"] < TOTAL_EXAMPLES
    assert result.rounds[2]["clients_selected"] == 21  # the dead are gone from the tree
    assert result.virtual_s < 10  # crashes are noticed at once, not at a deadline


def test_aggregator_killed_mid_round_clients_rehome_within_one_round_no_double_count():
    sim, root = build_two_tier(config(**{"rounds.rounds": 4}), 3, 30, assignment="region")
    dead = sim.nodes[1].peer
    orphans = {n.peer for n in sim.nodes[4:] if n.role.region == "r0"}
    sim.fault_hooks.append(crash_at_round(2, [1]))
    result = sim.run(root)
    assert result.stop.error is None, result.stop
    r1, r2, r3, r4 = result.rounds
    assert r1["examples"] == TOTAL_EXAMPLES
    # round 2 completes from the two surviving regions
    assert (r2["completed"], r2["failed"], r2["clients_completed"]) == (2, 1, 20)
    assert r2["examples"] < TOTAL_EXAMPLES
    # within the next round every client is back, each counted once
    for r in (r3, r4):
        assert r["examples"] == TOTAL_EXAMPLES and r["clients_completed"] == 30
    tree = root.role.hierarchy()
    assert dead not in tree and dead not in tree[root.peer]
    counts = tree_counts(root.role)
    assert all(counts[p] == 1 for p in orphans)
    rehomed = [e for e in result.events if e["event"] == "rehomed"]
    assert len(rehomed) == len(orphans) == 10


def test_aggregator_loss_beyond_max_failure_fraction_retries_the_round():
    cfg = config(
        **{
            "rounds.rounds": 3,
            "rounds.max_failure_fraction": 0.2,
            "rounds.max_retries": 1,
            "rounds.min_available_clients": 20,
        }
    )
    sim, root = build_two_tier(cfg, 3, 30, assignment="coordinator")
    sim.fault_hooks.append(crash_at_round(2, [2]))
    result = sim.run(root)
    assert result.stop.error is None, result.stop
    failed = [e for e in result.events if e["event"] == "round_failed"]
    assert len(failed) == 1 and failed[0]["round"] == 2
    second = result.rounds[1]
    assert second["round"] == 2 and second["attempt"] == 1
    assert second["examples"] <= TOTAL_EXAMPLES
    assert result.rounds[2]["examples"] == TOTAL_EXAMPLES


def test_coordinator_restart_resumes_from_its_checkpoint(tmp_path):
    cfg = load_config(
        None,
        {
            "role": "coordinator",
            "rounds.rounds": 5,
            "rounds.min_available_clients": 10,
            "rounds.min_fit_clients": 5,
            "server.optimizer": "fedavgm",
        },
    )
    sim, root = build_star(cfg, 10, checkpoint_dir=tmp_path)
    init = root.role.params
    resumed = []

    def restart():
        coordinator = make_role(cfg, init.size, init, checkpoint_dir=tmp_path, resume_from=tmp_path)
        resumed.append(coordinator)
        return coordinator

    result = run_with_restart(sim, root, crash_round=3, make_root=restart)
    assert result.stop.error is None, result.stop
    (coordinator,) = resumed
    snap = coordinator.resumed_from
    assert snap.round == 2 and snap.model_version == 2  # round 3 was in flight: not saved
    assert coordinator is root.role and coordinator.round_number == 5
    # round numbers continue; no completed round lost or repeated
    assert [r["round"] for r in result.rounds] == [1, 2, 3, 4, 5]
    assert [r["model_version"] for r in result.rounds] == [1, 2, 3, 4, 5]
    starts = [e["round"] for e in result.events if e["event"] == "round_start"]
    assert starts == [1, 2, 3, 3, 4, 5]
    assert load_checkpoint(tmp_path).round == 5
    np.testing.assert_array_equal(load_checkpoint(tmp_path).params, coordinator.params)
    # the model it resumed from is the checkpoint of round 2, bit for bit: the run ends
    # exactly where an uninterrupted one does
    clean = run_star(cfg, 10)
    assert [r["accuracy"] for r in result.rounds] == [r["accuracy"] for r in clean.rounds]


def test_promoted_client_aggregates_from_the_next_round():
    cfg = config(**{"rounds.rounds": 3, "rounds.min_available_clients": 12})
    sim, root = build_star(cfg, 12)
    chosen = sim.nodes[1]

    def promote_during_round_2(s, peer, event, data):
        if peer == root.peer and event == "round_start" and data["round"] == 2:
            root.role.request_promotion(chosen.peer, share=0.5)

    sim.fault_hooks.append(promote_during_round_2)
    result = sim.run(root)
    assert result.stop.error is None, result.stop
    r2, r3 = result.rounds[1], result.rounds[2]
    assert (r2["selected"], r2["aggregators"]) == (12, 0)
    assert chosen.role.role == "aggregator"  # same object, same node, no restart
    assert (r3["selected"], r3["aggregators"]) == (6, 1)  # 5 direct + the new aggregator
    assert r3["clients_completed"] == 12 and r3["examples"] == TOTAL_EXAMPLES
    tree = root.role.hierarchy()
    assert len(tree[chosen.peer]) == 6 and all(n == 1 for n in tree_counts(root.role).values())


def test_regions_that_reach_promote_at_get_an_aggregator_automatically():
    cfg = config(**{"rounds.rounds": 1, "rounds.min_available_clients": 12, "tier.promote_at": 4})
    sim, root = build_star(cfg, 12, regions=2)
    result = sim.run(root)
    assert result.stop.error is None, result.stop
    first = result.rounds[0]
    assert first["aggregators"] == 2 and first["clients_completed"] == 12
    assert first["examples"] == TOTAL_EXAMPLES
    promoted = [n for n in sim.nodes[1:] if n.role.role == "aggregator"]
    assert sorted(n.role.region for n in promoted) == ["r0", "r1"]


def test_edge_rounds_hierfavg_gains_more_per_global_round():
    overrides = {"rounds.rounds": 2, "train.local_epochs": 2}
    flat = run_two_tier(config(**overrides), 3, 30)
    hier = run_two_tier(config(**overrides, **{"tier.edge_rounds": 2}), 3, 30)
    assert hier.stop.error is None, hier.stop
    edge = [e for e in hier.events if e["event"] == "edge_round"]
    assert len(edge) == 3 * 2 * 2  # 3 aggregators x 2 edge rounds x 2 global rounds
    for f, h in zip(flat.rounds, hier.rounds):
        assert h["accuracy"] > f["accuracy"] + 0.05
        assert h["examples"] == f["examples"] == TOTAL_EXAMPLES


def test_declining_clients_are_counted_apart_from_failures():
    cfg = config(**{"rounds.rounds": 2, "rounds.min_available_clients": 10})
    sim, root = build_star(cfg, 10)

    def decline(s, peer, event, data):
        if peer == root.peer and event == "round_start" and data["round"] == 2:
            for node in s.nodes[1:3]:
                node.role.accepting = False  # e.g. the phone left its charger mid-round

    sim.fault_hooks.append(decline)
    second = sim.run(root).rounds[1]
    assert (second["declined"], second["failed"], second["completed"]) == (2, 0, 8)
    assert second["failure_rate"] == 0.0 and second["participation_rate"] == pytest.approx(0.8)
