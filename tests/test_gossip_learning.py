"""Gossip learning on digits against star FedAvg, under churn and partitions (simulated).

16 peers on the exponential graph, task ``digits:linear``, E = 2 local epochs, 30 rounds,
one synchronous averaging step per round, or (async) the default Poisson clock of half
the degree exchanges per round, unless stated. Accuracy is the mean over peers
of each peer's own model on the digits test split (the tracker evaluates every round).
"""

from __future__ import annotations

import pytest

from fednode.config import load_config
from fednode.sim.gossip import Schedule, run_gossip
from fednode.sim.scenarios import run_star
from fednode.sim.topology import exponential_graph

pytestmark = pytest.mark.slow
ROUNDS = 30


def config(partition: str = "iid"):
    return load_config(
        None,
        {
            "data.task": "digits:linear",
            "data.partition": partition,
            "train.local_epochs": 2,
            "rounds.rounds": ROUNDS,
        },
    )


@pytest.fixture(scope="module")
def star_accuracy():
    """Star FedAvg's final accuracy per partition (16 clients, same data split), cached."""
    cache: dict[str, float] = {}

    def get(partition: str) -> float:
        if partition not in cache:
            cache[partition] = run_star(config(partition), 16).final_accuracy
        return cache[partition]

    return get


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("partition", "points"), [("iid", 0.01), ("dirichlet:0.5", 0.03)])
def test_gossip_learning_matches_star_fedavg(mode, partition, points, star_accuracy):
    """Both protocols with their defaults; async's default clock (half the degree: about one
    exchange per link per round) is what keeps it within 3 points under label skew
    (measured in docs/GOSSIP.md: 0.910 vs star 0.917; one exchange per round gives 0.829)."""
    star = star_accuracy(partition)
    gossip = run_gossip(config(partition), exponential_graph(16), mode=mode)
    assert gossip.final_accuracy >= star - points, (gossip.final_accuracy, star)
    reached = gossip.rounds_to(star - points)
    assert reached is not None and reached <= ROUNDS
    assert all(r["peers"] == 16 for r in gossip.rounds)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_training_survives_20_percent_churn(mode):
    cfg = config()
    calm = run_gossip(cfg, exponential_graph(16), mode=mode, spare=3)
    churn = run_gossip(
        cfg,
        exponential_graph(16),
        mode=mode,
        spare=3,  # the same 19-way data split: leavers take their data, joiners bring theirs
        schedule=Schedule(crash={10: [3, 8, 13]}, join={10: 3}),
    )
    joined = [e for e in churn.events if e["event"] == "gossip_bootstrap"]
    assert len(joined) == 3 and all(e["node"] >= 16 for e in joined)
    assert churn.rounds[-1]["round"] == ROUNDS and churn.rounds[-1]["peers"] == 16
    assert abs(churn.final_accuracy - calm.final_accuracy) <= 0.02


def test_partitioned_halves_keep_training_and_reconverge_after_healing():
    split, heal = 10, 20
    halves = [list(range(8)), list(range(8, 16))]
    result = run_gossip(
        config(),
        exponential_graph(16),
        schedule=Schedule(partition={split: halves}, heal=[heal]),
    )
    by_round = {r["round"]: r for r in result.rounds}
    assert by_round[heal]["accuracy"] > by_round[split]["accuracy"]  # both halves trained
    assert by_round[heal]["consensus_error"] > by_round[split]["consensus_error"]  # drifted
    back = next(r for r in range(heal + 1, ROUNDS + 1) if by_round[r]["consensus_error"] < 1e-2)
    assert back - heal <= 8
