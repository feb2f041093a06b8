"""Top-k 1% + int8 updates with error feedback on the built-in digits task (10 clients, IID).

Issue 4 claims: final accuracy within 1 point of uncompressed FedAvg with >= 50x fewer
bytes up per round than dense float32, and without error feedback a visibly larger gap.
Measured over the simulator's real path (``run_star``: signed frames, codecs, the
coordinator's ``bytes_up`` = payload bytes of a round's updates), default round
settings, E=5, seed 0; "final accuracy" = accuracy after the last round, dense and
compressed run for the same number of rounds. Seeds 0-4, the investigation and every
variant tried: ``docs/BENCHMARKS.md``, "Top-k 1% + int8"; ``scripts/bench/topk_ef.py``.

* bytes: 117x fewer in every round (48 of 4,810 values per client: 2-byte index gaps,
  int8 values, one scale) — holds;
* error feedback: without it the gap is larger on every seed 0-4 after 15 rounds (mean
  3.5 vs 1.8 points) and the mean accuracy over the run is lower on every seed — holds;
* within 1 point: **does not hold** over seeds 0-4 (mean gap 1.8 points after 15 rounds,
  1.1 after 30). Seed 0, run here, happens to be within 1 point after 15 rounds (+0.6) and
  not after 30 (+1.7), so the claim is not asserted on one seed; a 2-point guard after 30
  rounds catches regressions. The clients pick mostly different coordinates, so the
  federation moves ~48 coordinates' worth per round and runs at about half dense's speed;
  the client-side error-feedback variants tried (partial EF, DGC momentum correction,
  per-layer k, step-ahead EF, ...) stay within seed noise of plain EF.

Single-seed final accuracies are noisy at this threshold: the test set has 360 images
(one is 0.28 points).
"""

from __future__ import annotations

from typing import Any

import pytest

from fednode.config import load_config
from fednode.sim.engine import RunResult
from fednode.sim.scenarios import run_star

CLIENTS = 10
ROUNDS = 15  # the default (the setting)
LONG = 30  # more rounds for both runs
CODEC = "topk:0.01+int8"

pytestmark = pytest.mark.slow


def run(codec: str, error_feedback: bool, *, seed: int = 0, rounds: int = LONG) -> RunResult:
    config = load_config(
        overrides={
            "seed": seed,
            "data.partition": "iid",
            "rounds.rounds": rounds,
            "wire.codec": codec,
            "wire.error_feedback": error_feedback,
        }
    )
    return run_star(config, CLIENTS)


def acc(result: RunResult, rounds: int) -> float:
    return float(result.rounds[rounds - 1]["accuracy"])


def mean_acc(result: RunResult, rounds: int) -> float:
    return sum(float(r["accuracy"]) for r in result.rounds[:rounds]) / rounds


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    out = {
        "dense": run("none", error_feedback=True),
        "ef": run(CODEC, error_feedback=True),
        "no_ef": run(CODEC, error_feedback=False),
    }
    assert all(len(r.rounds) == LONG for r in out.values())
    dense, ef = out["dense"], out["ef"]
    last = dense.rounds[-1]
    params = (last["bytes_up"] // last["clients_completed"] - 8) // 4  # codec none: 8 B header
    out["dense_f32"] = CLIENTS * params * 4
    out["up"] = max(r["bytes_up"] for r in ef.rounds)
    print(f"\n{CLIENTS} clients x {params:,} params, E=5, IID, seed 0")
    print(f"{'run':24} {'acc@15':>7} {'gap@15':>7} {'acc@30':>7} {'gap@30':>7} {'mean@30':>8}")
    for name, key in (
        ("dense float32", "dense"),
        (f"{CODEC} + EF", "ef"),
        ("  without EF", "no_ef"),
    ):
        res = out[key]
        gap15, gap30 = (100 * (acc(dense, r) - acc(res, r)) for r in (ROUNDS, LONG))
        print(
            f"{name:24} {acc(res, ROUNDS):7.4f} {gap15:+7.2f} {acc(res, LONG):7.4f} {gap30:+7.2f}"
            f" {mean_acc(res, LONG):8.4f}"
        )
    print(
        f"bytes up per round: dense float32 {out['dense_f32']:,}, {CODEC} at most {out['up']:,} "
        f"({out['dense_f32'] / out['up']:.0f}x fewer)"
    )
    return out


def test_topk_1pct_int8_sends_at_least_50x_fewer_bytes_than_dense_float32(runs):
    assert runs["dense_f32"] / runs["up"] >= 50


def test_without_error_feedback_the_gap_is_visibly_larger(runs):
    ef, no_ef = runs["ef"], runs["no_ef"]
    assert acc(no_ef, ROUNDS) < acc(ef, ROUNDS)
    assert mean_acc(no_ef, ROUNDS) <= mean_acc(ef, ROUNDS) - 0.01
    assert mean_acc(no_ef, LONG) <= mean_acc(ef, LONG) - 0.01


def test_topk_1pct_int8_with_error_feedback_stays_within_2_points_after_30_rounds(runs):
    """Regression guard, not the claim: measured 0.8-1.7 points over seeds 0-4."""
    assert acc(runs["dense"], LONG) - acc(runs["ef"], LONG) <= 0.02
