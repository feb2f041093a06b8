"""Both simulator drivers carry out one network model: the same faults, the same rounds."""

import numpy as np

from fednode.sim import SimOptions, build_topology, run_experiment


def test_crash_restart_and_loss_faults_give_identical_rounds_on_both_drivers():
    faults = [
        {"type": "crash", "node": 2, "round": 2, "restart_round": 4},
        {"type": "loss", "rate": 0.3, "from_round": 2, "to_round": 4},
    ]
    # 5 ms links: with zero latency a reply and a peer event share an instant, which the
    # drivers order differently (FIFO / trio's seeded shuffle), not a network difference
    topo = build_topology("star", "star", 6, faults=faults, links={"latency_s": 0.005})
    overrides = {"data.task": "digits:numpy", "rounds.rounds": 5, "train.local_epochs": 1}
    des = run_experiment(topo, overrides=overrides)
    trio = run_experiment(topo, overrides=overrides, options=SimOptions(driver="trio"))
    assert des.error is None and trio.error is None
    assert trio.faults == des.faults
    assert [f["fault"] for f in des.faults] == ["crash", "loss", "restart", "loss"]
    keys = ("round", "accuracy", "selected", "completed", "failed")
    assert [{k: r[k] for k in keys} for r in trio.records] == [
        {k: r[k] for k in keys} for r in des.records
    ]
    np.testing.assert_array_equal(trio.accuracy, des.accuracy)
    np.testing.assert_array_equal(trio.bytes, des.bytes)
    # the faults showed: one client down in rounds 2-3, frames lost in round 2
    assert [r["completed"] for r in des.records] == [5, 3, 3, 4, 5]
