"""Gossip averaging in the simulator: rates against the spectrum, conservation, faults.

Real runner, identities, signed frames and codecs over the memory transport in virtual
time. No training here (pure averaging), so every run takes a few seconds at most.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from fednode.config import load_config
from fednode.gossip import GossipPeer
from fednode.p2p.netmodel import ANNOUNCE_S, Link
from fednode.sim.gossip import Schedule, add_intruder, build_gossip, random_init, run_gossip
from fednode.sim.topology import exponential_graph

SIZE = 650  # digits:linear: the layout the simulated Receivers check payloads against


def config(rounds: int, codec: str = "none"):
    return load_config(
        None, {"data.task": "digits:linear", "rounds.rounds": rounds, "wire.codec": codec}
    )


def mh_spectrum(g: nx.Graph) -> tuple[float, float]:
    """(rho, next) of the Metropolis-Hastings matrix, computed here from scratch with numpy.

    ``rho`` is the second-largest eigenvalue modulus; ``next`` the largest modulus below it
    (how fast the transient of the faster modes dies out).
    """
    nodes = list(g)
    index = {v: i for i, v in enumerate(nodes)}
    n = len(nodes)
    w = np.zeros((n, n))
    for a, b in g.edges():
        i, j = index[a], index[b]
        w[i, j] = w[j, i] = 1.0 / (1 + max(g.degree[a], g.degree[b]))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    mods = np.sort(np.abs(np.linalg.eigvalsh(w)))[::-1][1:]
    rho = float(mods[0])
    below = mods[mods < rho - 1e-9]
    return rho, float(below[0]) if below.size else 0.0


def centred_init(seed: int, n: int):
    """Random initial models with zero network mean, so float32 keeps resolving the error."""
    x = np.random.default_rng(seed).standard_normal((n, SIZE))
    x -= x.mean(axis=0)
    return lambda i: x[i].astype(np.float32)


GRAPHS = {
    "ring16": nx.cycle_graph(16),
    "torus4x4": nx.grid_2d_graph(4, 4, periodic=True),
    "hypercube16": nx.hypercube_graph(4),
    "exponential16": exponential_graph(16),
    "complete16": nx.complete_graph(16),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_sync_averaging_contracts_at_the_mh_rate(name):
    g = GRAPHS[name]
    rho, nxt = mh_spectrum(g)
    if rho < 1e-9:  # complete graph: W = 11^T/n averages exactly in one step
        result = run_gossip(config(2), g, train=False, init=centred_init(0, 16))
        assert result.rounds[1]["rel_error"] < 1e-5
        return
    predicted = math.log(1e-3) / math.log(rho)
    # measure once the faster modes are below 10% of the slowest (the bound's regime)
    t0 = math.ceil(math.log(0.1) / math.log(nxt / rho)) if nxt > 0 else 1
    rounds = t0 + math.ceil(1.2 * predicted) + 3
    result = run_gossip(config(rounds), g, train=False, init=centred_init(0, 16))
    e = [r["rel_error"] for r in result.rounds]
    assert len(e) == rounds + 1 and all(r["peers"] == 16 for r in result.rounds)
    n = next(k for k in range(1, rounds - t0 + 1) if e[t0 + k] <= 1e-3 * e[t0])
    contraction = (e[t0 + n] / e[t0]) ** (1 / n)
    assert abs(contraction - rho) <= 0.1 * rho, (contraction, rho)
    assert abs(n - predicted) <= max(0.1 * predicted, 2), (n, predicted)
    # no step ever waited for its deadline: the run ends at the instant the peers heard
    # of each other (ANNOUNCE_S after they attached)
    assert result.virtual_s == ANNOUNCE_S


def mean_of(params: dict[str, np.ndarray]) -> np.ndarray:
    return np.mean([p.astype(np.float64) for p in params.values()], axis=0)


@pytest.mark.parametrize(
    ("mode", "codec"),
    [("sync", "none"), ("sync", "int8"), ("async", "none"), ("async", "topk:0.1")],
)
def test_network_average_is_conserved_exactly(mode, codec):
    init = random_init(1, SIZE)
    before = np.mean([init(i).astype(np.float64) for i in range(16)], axis=0)
    sim, _ = build_gossip(
        config(30, codec), exponential_graph(16), mode=mode, train=False, init=init
    )
    result = sim.run_all()
    after = mean_of(sim.current_params())
    assert len(sim.current_params()) == 16
    # float32 precision: a few ulps of the values (|x| ~ 3)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    assert result.rounds[-1]["rel_error"] < 0.5  # and they did mix (top-k async: slowly)


def test_async_pairwise_gossip_converges():
    result = run_gossip(
        config(60), exponential_graph(16), mode="async", train=False, init=centred_init(0, 16)
    )
    e = [r["rel_error"] for r in result.rounds]
    assert result.rounds_to(key="rel_error", at_most=1e-3) is not None
    assert e[-1] < 1e-6
    exchanges = [ev for ev in result.events if ev["event"] == "gossip_round"][-1]["exchanges"]
    assert exchanges > 0


def test_partition_then_heal_reconverges_within_bound():
    g = exponential_graph(16)
    rho, _ = mh_spectrum(g)
    halves = [list(range(8)), list(range(8, 16))]
    heal = 12
    result = run_gossip(
        config(40),
        g,
        train=False,
        init=random_init(2, SIZE),
        schedule=Schedule(partition={2: halves}, heal=[heal]),
        # rounds that take time: peers hear of a heal (ANNOUNCE_S after it), and of each
        # other again, before the rounds of a zero-latency network would all be over
        link=Link(latency_s=0.001),
    )
    e = {r["round"]: r["rel_error"] for r in result.rounds}
    # while split, each half agrees internally but the halves do not: the error stalls
    assert e[heal] > 1e-2 and e[heal] > 0.5 * e[heal - 3]
    bound = math.ceil(math.log(1e-2 / e[heal]) / math.log(rho)) + 3  # + handshake lag
    back = next(r for r in sorted(e) if r > heal and e[r] < 1e-2)
    assert back - heal <= bound, (back - heal, bound)
    assert all(r["peers"] == 16 for r in result.rounds)


def test_non_member_is_rejected_and_does_not_move_the_average():
    init = random_init(3, SIZE)
    sim, nodes = build_gossip(
        config(15), exponential_graph(16), train=False, init=init, allow_list=True
    )
    targets = [n.peer for n in nodes[:3]]
    intruder = add_intruder(sim, targets)
    result = sim.run_all()
    rejected = [
        ev for ev in result.events if ev["event"] == "rejected" and ev["peer"] == intruder.peer
    ]
    assert rejected and {ev["error"] for ev in rejected} == {"AuthError"}
    assert {ev["node"] for ev in rejected} <= {n.index for n in nodes[:3]}
    for node in nodes:
        assert isinstance(node.role, GossipPeer)
        assert intruder.peer not in node.role.links
    members = sim.current_params()
    assert intruder.peer not in members and len(members) == 16
    before = np.mean([init(i).astype(np.float64) for i in range(16)], axis=0)
    np.testing.assert_allclose(mean_of(members), before, rtol=0, atol=1e-6)
    assert result.rounds[-1]["rel_error"] < 1e-3
