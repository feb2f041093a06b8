"""Federations of real ``fednode run`` processes, one per network namespace, mDNS only.

No node is given an address or a bootstrap list: they find each other by mDNS on a
bridged LAN (``fednode.testing.netns``), as on a real one. Only the two-tier nodes get a
config file, with their region label. The runs are short
(a few rounds) and bounded in time; every namespace and process is removed afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fednode.testing.lan import LanResult, run_gossip, run_star, run_two_tier

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _log(result: LanResult) -> None:
    print(f"{result.topology}: {result.wall_s:.1f}s wall, {result.startup_s:.1f}s to start")
    for row in result.rounds:
        print({k: row[k] for k in ("round", "accuracy") if k in row})


def _assert_clean(result: LanResult, stopped_by_signal: set[str]) -> None:
    for node in result.nodes:
        assert node.exit_code == 0, node
        assert node.rejected == {}, node
        if node.role in stopped_by_signal:
            assert node.stopped == "SIGTERM", node


def test_star_federation_forms_by_mdns_and_learns(lan_dir: Path) -> None:
    result = run_star(lan_dir, clients=4, rounds=5)
    _log(result)

    assert [r["round"] for r in result.rounds] == [1, 2, 3, 4, 5]
    assert all(r["clients_completed"] == 4 and r["failed"] == 0 for r in result.rounds)
    accuracy = [r["accuracy"] for r in result.rounds]
    assert accuracy[-1] > accuracy[0] and accuracy[-1] > 0.9
    coordinator = next(n for n in result.nodes if n.role == "coordinator")
    assert coordinator.stopped == "finished 5 rounds"
    _assert_clean(result, stopped_by_signal={"client"})


def test_two_tier_federation_runs_through_aggregators(lan_dir: Path) -> None:
    # region labels r0/r1 (a two-line config file each) are the only setting beyond roles
    result = run_two_tier(lan_dir, aggregators=2, clients=4, rounds=3)
    _log(result)

    assert [r["round"] for r in result.rounds] == [1, 2, 3]
    for r in result.rounds:
        assert r["aggregators"] == 2 and r["completed"] == 2, r  # the coordinator's children
        assert r["clients_completed"] == 4, r  # leaf accounting through the aggregators
    accuracy = [r["accuracy"] for r in result.rounds]
    assert accuracy[-1] > accuracy[0]
    _assert_clean(result, stopped_by_signal={"aggregator", "client"})


def test_gossip_peers_with_only_the_consortium_key_reach_consensus(lan_dir: Path) -> None:
    result = run_gossip(lan_dir, peers=4, rounds=8)
    _log(result)

    assert [r["round"] for r in result.rounds] == list(range(1, 9))
    assert all(r["peers"] == 4 and r["neighbours"] == 3 for r in result.rounds)
    first, last = result.rounds[0], result.rounds[-1]
    assert last["distance"] < 0.6 * first["distance"]  # the peers' models draw together
    assert last["distance_max"] < 0.2
    assert last["accuracy"] > first["accuracy"] and last["accuracy_min"] > 0.9
    assert {n.stopped for n in result.nodes} == {"finished 8 rounds"}
    _assert_clean(result, stopped_by_signal=set())
