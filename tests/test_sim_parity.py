"""One runtime: the discrete-event driver and the trio driver run the same NodeLoop, the
same wire path (signed frames), the same network model and the same roles, so for one seed
they give the same rounds — accuracy, loss and bytes — in star, two-tier and gossip (sync
and async), clean and with each kind of fault.

Events of one virtual instant run in FIFO order on the discrete-event driver and in trio's
seeded shuffle on the other; what makes the rounds equal anyway is the network model's
rules for such ties (docs/SIMULATION.md, "Ties at one instant"): loss is a counter-based
draw per link; frames and peer events due at one instant reach each node in the rank of
their sender; frames due at the instant of a change see the network as it was when the
instant began; peer events come ANNOUNCE_S after the change; gossip faults apply ANNOUNCE_S
after the fastest peer reached their round. Links have 5 ms latency: with zero latency
frames are handed over at once and the drivers' orders show.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fednode.sim import SimOptions, build_topology, run_experiment

LINKS = {"latency_s": 0.005}
ROUNDS = 4
#: kind, graph generator, nodes, generator parameters, task, the node a crash takes down
CASES = {
    "star": ("star", "star", 6, {}, "digits:numpy", 2),
    "two-tier": ("two-tier", "two_tier", 9, {"regions": 2}, "digits:numpy", 5),
    "gossip-sync": ("gossip", "cycle_graph", 8, {}, "synthetic", 2),
    "gossip-async": ("gossip", "cycle_graph", 8, {}, "synthetic", 2),
}


def faults(kind: str, node: int) -> list[dict]:
    return {
        "clean": [],
        "loss": [{"type": "loss", "rate": 0.3, "from_round": 2, "to_round": 4}],
        "crash+restart": [{"type": "crash", "node": node, "round": 2, "restart_round": 3}],
        "partition+heal": [
            {"type": "partition", "groups": "halves", "from_round": 2, "to_round": 3}
        ],
    }[kind]


FIRED = {
    "clean": [],
    "loss": ["loss", "loss"],
    "crash+restart": ["crash", "restart"],
    "partition+heal": ["partition", "heal"],
}


@functools.cache
def run(case: str, fault: str, driver: str):
    kind, generator, n, params, task, node = CASES[case]
    topo = build_topology(kind, generator, n, faults=faults(fault, node), links=LINKS, **params)
    mode = "async" if case == "gossip-async" else "sync"
    overrides = {"data.task": task, "rounds.rounds": ROUNDS, "train.local_epochs": 1}
    return run_experiment(
        topo, overrides=overrides, options=SimOptions(driver=driver, gossip_mode=mode)
    )


@pytest.mark.parametrize("fault", list(FIRED))
@pytest.mark.parametrize("case", list(CASES))
def test_both_drivers_give_the_same_rounds(case, fault):
    des, trio = run(case, fault, "des"), run(case, fault, "trio")
    assert des.error is None and trio.error is None
    assert len(des.rounds) == len(trio.rounds) == ROUNDS
    assert [f["fault"] for f in des.faults] == FIRED[fault]
    assert des.faults == trio.faults  # the same faults fired at the same rounds
    np.testing.assert_array_equal(des.accuracy, trio.accuracy)
    np.testing.assert_array_equal(des.bytes, trio.bytes)
    np.testing.assert_allclose(des.loss, trio.loss, rtol=1e-6)
    assert des.messages == trio.messages
    if des.consensus is not None:
        np.testing.assert_allclose(des.consensus, trio.consensus, rtol=1e-6)
    if fault != "clean":  # the fault is real: it changed the traffic of the clean run
        clean = run(case, "clean", "des")
        assert not np.array_equal(des.bytes, clean.bytes)


DELTAS = {"wire.codec": "topk:0.1+int8", "wire.codec_down": "topk:0.1+int8"}


@pytest.mark.parametrize("fault", ["clean", "crash+restart"])
@pytest.mark.parametrize("case", ["star", "two-tier"])
def test_both_drivers_agree_with_delta_broadcasts(case, fault):
    """[wire] codec_down: per-receiver Fits (a step or the full public model) and a node
    that crashed and restarted (sent the full model again) give the same rounds too."""
    kind, generator, n, params, task, node = CASES[case]
    topo = build_topology(kind, generator, n, faults=faults(fault, node), links=LINKS, **params)
    overrides = {"data.task": task, "rounds.rounds": ROUNDS, "train.local_epochs": 1, **DELTAS}
    des, trio = (
        run_experiment(topo, overrides=overrides, options=SimOptions(driver=driver))
        for driver in ("des", "trio")
    )
    assert des.error is None and trio.error is None
    np.testing.assert_array_equal(des.accuracy, trio.accuracy)
    np.testing.assert_array_equal(des.bytes, trio.bytes)
    assert des.messages == trio.messages
    dense = run(case, fault, "des")
    assert des.bytes.sum() < dense.bytes.sum() / 2  # the deltas are on the wire
