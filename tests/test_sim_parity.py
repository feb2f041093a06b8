"""One runtime: the discrete-event driver and the trio driver run the same NodeLoop, the
same wire path and the same roles, so for one seed they give the same rounds — accuracy,
loss and bytes — in star, two-tier and gossip (sync and async), with faults."""

from __future__ import annotations

import numpy as np
import pytest

from fednode.sim import SimOptions, build_topology, run_experiment

CRASH = [{"type": "crash", "node": 2, "round": 2}]
PARTITION = [{"type": "partition", "groups": "halves", "from_round": 2, "to_round": 3}]
STRAGGLER = [{"type": "straggler", "nodes": [3], "slowdown": 4.0}]
LINKS = {"latency_s": 0.005}

CASES = {
    "star+crash+straggler": (
        build_topology("star", "star", 6, faults=CRASH + STRAGGLER),
        "digits:numpy",
        "sync",
    ),
    "two-tier+crash": (
        build_topology("two-tier", "two_tier", 9, regions=2, faults=CRASH),
        "digits:numpy",
        "sync",
    ),
    "gossip-sync+partition+crash": (
        build_topology("gossip", "cycle_graph", 8, faults=PARTITION + CRASH, links=LINKS),
        "synthetic",
        "sync",
    ),
    "gossip-async+straggler": (
        build_topology("gossip", "cycle_graph", 8, faults=STRAGGLER, links=LINKS),
        "synthetic",
        "async",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_des_and_trio_drivers_give_identical_rounds(case):
    topo, task, mode = CASES[case]
    overrides = {"data.task": task, "rounds.rounds": 4, "train.local_epochs": 1}
    runs = {
        driver: run_experiment(
            topo, overrides=overrides, options=SimOptions(driver=driver, gossip_mode=mode)
        )
        for driver in ("des", "trio")
    }
    des, trio = runs["des"], runs["trio"]
    assert des.error is None and trio.error is None
    assert len(des.rounds) == len(trio.rounds) == 4
    assert des.faults == trio.faults and des.faults  # the same faults fired, in both
    np.testing.assert_array_equal(des.accuracy, trio.accuracy)
    np.testing.assert_allclose(des.loss, trio.loss, rtol=1e-6)
    np.testing.assert_array_equal(des.bytes, trio.bytes)
    if des.consensus is not None:
        np.testing.assert_allclose(des.consensus, trio.consensus, rtol=1e-6)
