"""Central DP accounting: the epsilon fednode reports is dp-accounting's own, and the
budget stops training at the last round within it (docs/PRIVACY.md)."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fednode.privacy import PrivacyLedger, epsilon_of
from fednode.sim import build_topology, run_experiment

SIGMA, Q, ROUNDS, DELTA = 1.0, 0.1, 100, 1e-5


def independent_rdp(q: float, sigma: float, rounds: int, delta: float) -> float:
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    return rdp.RdpAccountant().compose(event, rounds).get_epsilon(delta)


def independent_pld(q: float, sigma: float, rounds: int, delta: float) -> float:
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    return pld.PLDAccountant().compose(event, rounds).get_epsilon(delta)


def star(clients: int, rounds: int, **privacy) -> object:
    topo = build_topology("star", "star", clients + 1)
    overrides = {
        "data.task": "synthetic",
        "rounds.rounds": rounds,
        "rounds.fraction_fit": Q,
        "train.local_epochs": 1,
        "privacy.mode": "central",
        "privacy.delta": DELTA,
        **{f"privacy.{k}": v for k, v in privacy.items()},
    }
    return run_experiment(topo, overrides=overrides)


@pytest.fixture(scope="module")
def hundred_rounds():
    return star(100, ROUNDS, noise_multiplier=SIGMA)


def test_a_simulated_run_reports_dp_accountings_rdp_epsilon_after_every_round(hundred_rounds):
    res = hundred_rounds
    assert res.error is None and len(res.rounds) == ROUNDS
    rows = res.table()
    assert all(row["dp_q"] == pytest.approx(Q) for row in rows)  # 10 of 100 each round
    assert [row["dp_rounds"] for row in rows] == list(range(1, ROUNDS + 1))
    for r in (1, 10, 50):
        assert rows[r - 1]["dp_epsilon"] == pytest.approx(
            independent_rdp(Q, SIGMA, r, DELTA), rel=1e-9
        )
    expected = independent_rdp(Q, SIGMA, ROUNDS, DELTA)
    assert rows[-1]["dp_epsilon"] == pytest.approx(expected, rel=1e-9)
    summary = res.summary()["privacy"]
    assert summary["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert summary["rounds_released"] == ROUNDS and not summary["stopped_by_budget"]
    eps = [row["dp_epsilon"] for row in rows]
    assert eps == sorted(eps) and eps[0] > 0


def test_pld_epsilon_equals_dp_accountings_pld_and_is_tighter_than_rdp():
    ours = epsilon_of({Q: ROUNDS}, SIGMA, DELTA, "pld")
    assert ours == pytest.approx(independent_pld(Q, SIGMA, ROUNDS, DELTA), rel=1e-9)
    assert ours < independent_rdp(Q, SIGMA, ROUNDS, DELTA)


def test_the_ledger_composes_rounds_at_different_rates_like_dp_accounting():
    ledger = PrivacyLedger(noise_multiplier=SIGMA, delta=DELTA, accountant="pld")
    for q in (0.1, 0.2, 0.1):
        ledger.spend(q)
    acc = pld.PLDAccountant()
    for q in (0.1, 0.2, 0.1):
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(SIGMA)))
    assert ledger.epsilon == pytest.approx(acc.get_epsilon(DELTA), rel=1e-6)
    assert ledger.record()["dp_rounds"] == 3


def test_the_budget_stops_training_at_the_last_round_within_it():
    budget = 3.0
    within = max(r for r in range(1, 60) if independent_rdp(Q, SIGMA, r, DELTA) <= budget)
    res = star(20, 60, noise_multiplier=SIGMA, epsilon_budget=budget)
    assert res.error is None  # a clean stop, not a failure
    assert len(res.rounds) == within < 60
    eps = [row["dp_epsilon"] for row in res.table()]
    assert max(eps) <= budget
    assert eps[-1] == pytest.approx(independent_rdp(Q, SIGMA, within, DELTA), rel=1e-9)
    summary = res.summary()["privacy"]
    assert summary["stopped_by_budget"] is True
    assert summary["rounds_released"] == within
    assert f"epsilon_budget {budget:g}" in summary["stop_reason"]
    assert f"round {within + 1}" in summary["stop_reason"]


def test_without_a_budget_the_ledger_allows_every_round():
    ledger = PrivacyLedger(noise_multiplier=0.3, delta=DELTA)
    assert all(ledger.allows(1.0) for _ in range(3))
    ledger.spend(1.0)
    assert ledger.epsilon > 0
