"""Secure aggregation in each region of a two-tier tree (hierarchy/secure_region.py): every
regional aggregator unmasks only its region's sum and sends the mean up as an Update; the
models equal plain two-tier FedAvg within the fixed-point error on both drivers; a client
dropping between stages leaves its region's round going."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fednode.config import load_config
from fednode.errors import ConfigError
from fednode.hierarchy.secure_region import SecureRegion
from fednode.sim.des import DesSimulation
from fednode.sim.scenarios import build_two_tier

REGIONS, CLIENTS = 2, 8
FRAC_BITS = 20


def _config(secagg: bool, rounds: int = 3, **extra: Any):
    over = {
        "data.task": "digits:numpy",
        "train.local_epochs": 1,
        "seed": 1,
        "topology": "two-tier",
        "rounds.rounds": rounds,
        "rounds.min_available_clients": CLIENTS,
        "rounds.min_fit_clients": 1,
        "secagg.enabled": secagg,
        **extra,
    }
    return load_config(None, over)


def _run(cfg, driver: str, hook=None, prepare=None):
    sim, _ = build_two_tier(cfg, REGIONS, CLIENTS)
    if prepare is not None:
        prepare(sim)
    engine: Any = DesSimulation.from_simulation(sim) if driver == "des" else sim
    root = engine.nodes[0]
    snaps: list[np.ndarray] = []
    events: list[tuple[str, str, dict]] = []

    def listen(peer: str, event: str, data: dict) -> None:
        events.append((peer, event, data))
        if event == "round" and peer == root.peer:
            snaps.append(np.array(root.role.params))

    engine.listeners.append(listen)
    if hook is not None:
        engine.fault_hooks.append(hook)
    res = engine.run(root)
    assert res.stop is not None and res.stop.error is None, res.stop
    return snaps, root.role.history, events, engine


@pytest.mark.parametrize("driver", ["des", "trio"])
def test_secure_regions_give_plain_two_tier_models_within_the_fixed_point_error(driver):
    secure, sec_hist, events, engine = _run(_config(True), driver)
    plain, plain_hist, _, _ = _run(_config(False), driver)
    assert all(isinstance(n.role, SecureRegion) for n in engine.nodes[1 : 1 + REGIONS])
    assert [r["clients_completed"] for r in sec_hist] == [CLIENTS] * 3
    assert [r["examples"] for r in sec_hist] == [r["examples"] for r in plain_hist]
    region_rounds = [d for p, e, d in events if e == "secagg_round"]
    assert len(region_rounds) == 3 * REGIONS  # one secure round per region and round
    smallest = min(d["members"] for d in region_rounds)
    assert smallest >= 2
    for r, (a, b, rec) in enumerate(zip(secure, plain, sec_hist, strict=True), start=1):
        # a region of s members and W >= 1 examples is off by at most s * quantum / (2 W)
        # <= CLIENTS * quantum / 2 (loose: W is in the hundreds); the coordinator's
        # weighted mean of regions is no further off than its worst region; float32
        # rounds the region mean, its delta, the coordinator's mean and the server step:
        # one ulp of the model each
        fixed = CLIENTS * 2.0**-FRAC_BITS / 2
        ulp = float(np.spacing(np.float32(max(np.abs(a).max(), np.abs(b).max()))))
        assert float(np.abs(a - b).max()) <= r * (fixed + 4 * ulp)
        assert rec["accuracy"] == plain_hist[r - 1]["accuracy"]


def test_a_region_holds_one_unmasked_mean_per_round_not_its_clients_updates():
    added: dict[str, list[tuple[float, str]]] = {}

    def prepare(sim):
        for node in sim.nodes[1 : 1 + REGIONS]:
            agg, real = node.role.aggregator, node.role.aggregator.add

            def add(vec, weight, peer, _real=real, _peer=node.peer):
                added.setdefault(_peer, []).append((weight, peer))
                return _real(vec, weight, peer)

            agg.add = add

    _, hist, _, _ = _run(_config(True, rounds=2), "des", prepare=prepare)
    assert len(hist) == 2 and set(added) and len(added) == REGIONS
    for calls in added.values():
        assert [p for _, p in calls] == ["secagg", "secagg"]  # one input per round
    totals = [sum(w for w, _ in calls) for calls in added.values()]
    assert sum(totals) == sum(r["examples"] for r in hist)


def test_a_client_dropping_between_stages_leaves_its_region_going():
    crashed: list[str] = []

    def hook(sim: Any, peer: str, event: str, data: dict) -> None:
        role = sim.node(peer).role
        if event == "secagg_stage" and data["stage"] == "share" and not crashed:
            members = sorted(role.stages.params.members)
            crashed.append(members[0])
            sim.crash(members[0])  # shared its keys, will send no masked input

    _, hist, events, _ = _run(
        _config(True, rounds=1, **{"secagg.stage_timeout_s": 2.0}), "des", hook=hook
    )
    (rec,) = hist
    assert rec["clients_completed"] == CLIENTS - 1
    dropped = [d["dropped"] for _, e, d in events if e == "secagg_round"]
    assert sorted(dropped) == [0, 1]


def test_distributed_dp_is_refused_in_a_two_tier_tree():
    with pytest.raises(ConfigError) as err:
        _config(True, **{"privacy.mode": "distributed"})
    assert err.value.field == "privacy.mode"
