"""Both simulator drivers carry out one network model: the same faults, the same rounds."""

import numpy as np

from fednode.sim import SimOptions, build_topology, run_experiment

OVERRIDES = {"data.task": "digits:numpy", "rounds.rounds": 5, "train.local_epochs": 1}
KEYS = ("round", "accuracy", "selected", "completed", "failed")


def both(faults):
    # 5 ms links: with zero latency a reply and a peer event share an instant, which the
    # drivers order differently (FIFO / trio's seeded shuffle), not a network difference
    topo = build_topology("star", "star", 6, faults=faults, links={"latency_s": 0.005})
    des = run_experiment(topo, overrides=OVERRIDES)
    trio = run_experiment(topo, overrides=OVERRIDES, options=SimOptions(driver="trio"))
    assert des.error is None and trio.error is None
    assert trio.faults == des.faults
    return des, trio


def test_crash_and_restart_faults_give_identical_rounds_on_both_drivers():
    des, trio = both([{"type": "crash", "node": 2, "round": 2, "restart_round": 4}])
    assert [f["fault"] for f in des.faults] == ["crash", "restart"]
    assert [{k: r[k] for k in KEYS} for r in trio.records] == [
        {k: r[k] for k in KEYS} for r in des.records
    ]
    np.testing.assert_array_equal(trio.accuracy, des.accuracy)
    np.testing.assert_array_equal(trio.bytes, des.bytes)
    # one client down in rounds 2-3; restarted at 4, it advertises during round 4
    assert [r["completed"] for r in des.records] == [5, 4, 4, 4, 5]


def test_a_loss_fault_loses_the_same_frames_on_both_drivers():
    """Loss is a counter-based draw per link (netmodel.loss_draw): sends of several nodes
    at one instant, which the drivers order differently, lose the same frames."""
    des, trio = both([{"type": "loss", "rate": 0.3, "from_round": 2, "to_round": 4}])
    assert [f["fault"] for f in des.faults] == ["loss", "loss"]
    assert [f["round"] for f in des.faults] == [2, 4]
    assert [{k: r[k] for k in KEYS} for r in trio.records] == [
        {k: r[k] for k in KEYS} for r in des.records
    ]
    np.testing.assert_array_equal(trio.bytes, des.bytes)
    completed = [r["completed"] for r in des.records]
    assert completed[0] == 5 and completed[4] == 5  # no loss outside rounds 2-3
    assert min(completed[1:3]) < 5  # lost frames cost results inside them
