"""Selection strategies as pure functions, and power-of-choice vs uniform in the simulator."""

import random
import statistics

import pytest

from fednode.config import SelectionParams, load_config
from fednode.hierarchy.selection import (
    Candidate,
    DeadlineAware,
    OortSelection,
    PowerOfChoice,
    UniformSelection,
    make_selection,
)
from fednode.sim.scenarios import run_star


def cands(n, **per_peer):
    return [Candidate(f"p{i:02d}", **{k: v[i] for k, v in per_peer.items()}) for i in range(n)]


def test_uniform_is_a_seeded_sample_without_replacement():
    pool = cands(10)
    a = UniformSelection().select(pool, 4, random.Random(1))
    assert a == UniformSelection().select(pool, 4, random.Random(1))
    assert len(set(a)) == 4 and a == sorted(a)


def test_power_of_choice_keeps_the_highest_loss_of_its_candidate_set():
    pool = cands(6, loss=[0.1, 0.9, 0.3, 0.8, 0.2, 0.7], examples=[10] * 6)
    picked = PowerOfChoice(d=6).select(pool, 3, random.Random(0))  # d = n: global top-k
    assert picked == ["p01", "p03", "p05"]
    some = PowerOfChoice(d=4).select(pool, 2, random.Random(0))
    assert len(some) == 2


def test_power_of_choice_tries_unknown_children_first():
    pool = cands(4, loss=[5.0, None, 9.0, None], examples=[10, 0, 10, 0])
    assert PowerOfChoice(d=4).select(pool, 2, random.Random(0)) == ["p01", "p03"]


def test_power_of_choice_samples_candidates_by_data_size():
    pool = cands(3, loss=[1.0, 1.0, 1.0], examples=[1, 1, 1000])
    rng = random.Random(0)
    hits = sum("p02" in PowerOfChoice(d=1).select(pool, 1, rng) for _ in range(200))
    assert hits > 190


def test_deadline_aware_skips_children_that_would_miss_the_budget():
    pool = cands(6, duration_s=[1.0, 50.0, 2.0, None, 40.0, 3.0])
    picked = DeadlineAware(budget_s=10.0).select(pool, 4, random.Random(0))
    assert picked == ["p00", "p02", "p03", "p05"]
    filled = DeadlineAware(budget_s=10.0).select(pool, 5, random.Random(0))
    assert "p04" in filled and "p01" not in filled  # the faster of the slow fills up


def test_oort_explores_unseen_and_prefers_useful_fast_children():
    losses = [2.0, 2.0, 0.1, None, None, 2.0]
    durations = [1.0, 100.0, 1.0, None, None, 1.0]
    pool = cands(6, loss=losses, duration_s=durations, examples=[50] * 6)
    oort = OortSelection(budget_s=10.0, explore=0.34)
    picked = oort.select(pool, 3, random.Random(0))
    assert len([p for p in picked if p in ("p03", "p04")]) == 1  # one exploration pick
    assert "p01" not in picked and "p02" not in picked  # slow one and low-loss one lose
    assert oort.utility(pool[1]) < oort.utility(pool[0])


def test_make_selection_builds_each_strategy():
    kinds = {
        "uniform": UniformSelection,
        "power_of_choice": PowerOfChoice,
        "deadline": DeadlineAware,
        "oort": OortSelection,
    }
    for name, cls in kinds.items():
        assert isinstance(make_selection(SelectionParams(strategy=name), 30.0), cls)


def rounds_to(strategy: str, seed: int, target: float, max_rounds: int) -> int:
    cfg = load_config(
        None,
        {
            "rounds.rounds": max_rounds,
            "rounds.target_accuracy": target,
            "seed": seed,
            "rounds.min_available_clients": 100,
            "rounds.min_fit_clients": 10,
            "rounds.fraction_fit": 0.1,
            "data.partition": "dirichlet:0.3",
            "selection.strategy": strategy,
        },
    )
    result = run_star(cfg, 100)
    return result.rounds_to(target) or max_rounds + 1


@pytest.mark.slow
def test_power_of_choice_reaches_target_in_fewer_rounds_than_uniform():
    """Dirichlet(0.3) digits, 100 clients, 10 per round, 3 seeds (measured: uniform 23.0,
    power-of-choice 18.0 rounds to 85% on average; see docs/HIERARCHY.md)."""
    uniform = [rounds_to("uniform", s, 0.85, 40) for s in (0, 1, 2)]
    power = [rounds_to("power_of_choice", s, 0.85, 40) for s in (0, 1, 2)]
    assert statistics.mean(power) < statistics.mean(uniform) - 2, (power, uniform)
