"""Attacker clients in simulated federations: what reaches the coordinator is poisoned,
plain FedAvg suffers, and both drivers run the attacker through the same node loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fednode.config import load_config
from fednode.sim.attackers import AttackerMarks
from fednode.sim.experiment import SimOptions, run_experiment
from fednode.sim.scenarios import build_star, client_task
from fednode.sim.topology import build_topology
from fednode.training.attacks import alie_z
from fednode.wire import messages as m

BASE = {"rounds.rounds": 1, "train.local_epochs": 1, "seed": 0}


def _captured_star(overrides: dict[str, Any], clients: int, attackers: list[int]):
    """A trio star; returns (per-sender list of update vectors, Fit seen by each client)."""
    sizes = {"rounds.min_fit_clients": clients, "rounds.min_available_clients": clients}
    config = load_config(None, {**BASE, **overrides, **sizes})
    sim, root = build_star(config, clients, attackers=attackers)
    updates: dict[int, list[np.ndarray]] = {}
    fits: dict[int, m.Fit] = {}
    coordinator = sim.nodes[0].role
    handle = coordinator.handle

    def spy(msg: m.Message, now: float):
        if isinstance(msg, m.Update) and msg.vector is not None:
            updates.setdefault(sim.node(msg.sender).index - 1, []).append(msg.vector.copy())
        return handle(msg, now)

    coordinator.handle = spy  # type: ignore[method-assign]
    for node in sim.nodes[1:]:
        client_handle = node.role.handle

        def client_spy(msg: m.Message, now: float, i=node.index - 1, h=client_handle):
            if isinstance(msg, m.Fit):
                fits.setdefault(i, msg)
            return h(msg, now)

        node.role.handle = client_spy  # type: ignore[method-assign]
    res = sim.run(root)
    assert res.stop is not None and res.stop.error is None, res.stop
    return config, updates, fits


def _honest_delta(config, i: int, clients: int, fit: m.Fit) -> np.ndarray:
    task = client_task(config, i, clients)
    params, _n, _ = task.train(fit.vector, {**fit.config, "round": fit.round})
    return np.subtract(params, fit.vector, dtype=np.float32)


def test_scale_attacker_sends_k_times_its_honest_update_to_the_coordinator():
    config, updates, fits = _captured_star({"attack.kind": "scale:100"}, 3, [1])
    assert set(updates) == {0, 1, 2}
    honest = _honest_delta(config, 1, 3, fits[1])
    np.testing.assert_allclose(updates[1][0], 100 * honest, rtol=1e-4, atol=1e-6)
    # the honest clients send their own updates
    np.testing.assert_allclose(updates[0][0], _honest_delta(config, 0, 3, fits[0]), atol=1e-6)


def test_colluding_alie_attackers_send_mean_minus_z_std_of_their_honest_updates():
    config, updates, fits = _captured_star({"attack.kind": "alie"}, 4, [0, 1])
    own = np.stack([_honest_delta(config, i, 4, fits[i]) for i in (0, 1)])
    z = alie_z(4, 2)
    expected = own.mean(axis=0) - z * own.std(axis=0)
    np.testing.assert_allclose(updates[0][0], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(updates[0][0], updates[1][0])  # one board, one vector


def test_omniscient_alie_uses_the_honest_clients_updates():
    overrides = {"attack.kind": "alie", "attack.omniscient": True}
    config, updates, fits = _captured_star(overrides, 4, [0, 1])
    honest = np.stack([_honest_delta(config, i, 4, fits[i]) for i in (2, 3)])
    expected = honest.mean(axis=0) - alie_z(4, 2) * honest.std(axis=0)
    np.testing.assert_allclose(updates[1][0], expected, rtol=1e-4, atol=1e-6)


def _star_accuracy(attack: str | None, driver: str = "des") -> tuple[float, list[str]]:
    topo = build_topology("star", "star", 7)
    overrides = {**BASE, "rounds.rounds": 4, **({"attack.kind": attack} if attack else {})}
    res = run_experiment(
        topo,
        overrides=overrides,
        options=SimOptions(driver=driver),
        attackers=AttackerMarks(nodes=(3,)) if attack else None,
    )
    assert res.error is None
    return res.final_accuracy, res.notes


def test_a_scale_attacker_visibly_hurts_plain_fedavg_and_the_run_says_who_attacked():
    clean, notes = _star_accuracy(None)
    attacked, attacked_notes = _star_accuracy("scale:100")
    # measured (seed 0, 6 clients, 4 rounds, E=1): clean 0.800, attacked 0.114
    assert clean > 0.7
    assert attacked < clean - 0.4
    assert not any("attackers" in n for n in notes)
    assert "attackers (scale:100): nodes [3]" in attacked_notes


@pytest.mark.parametrize("attack", ["signflip", "gaussian:1", "ipm:0.5"])
def test_other_attacks_also_hurt_plain_fedavg(attack):
    # measured (as above, clean 0.800): signflip 0.544, gaussian:1 0.483, ipm:0.5 0.644
    clean, _ = _star_accuracy(None)
    attacked, _ = _star_accuracy(attack)
    assert attacked < clean - 0.1


def test_the_trio_driver_runs_the_attacker_through_the_same_loop():
    des, _ = _star_accuracy("scale:100", "des")
    trio, notes = _star_accuracy("scale:100", "trio")
    clean, _ = _star_accuracy(None, "trio")
    assert trio < clean - 0.4
    assert trio == pytest.approx(des, abs=0.02)  # measured: equal (0.114 both)
    assert "attackers (scale:100): nodes [3]" in notes
