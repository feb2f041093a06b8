"""Top-k 1% + int8 updates with error feedback on the built-in digits task (10 clients, IID).

Issue 4 claims: final accuracy within 1 point of uncompressed FedAvg with >= 50x fewer
bytes up per round than dense float32, and without error feedback a visibly larger gap.
Measured over the simulator's real path (``run_star``: signed frames, codecs, the
coordinator's ``bytes_up`` = payload bytes of a round's updates), default round
settings, E=5, seed 0. Seeds 0-4 and the investigation: ``docs/BENCHMARKS.md``, "Wire".

* bytes: 117x fewer per round (48 of 4,810 values per client: 2-byte index gaps, int8
  values, one scale) — holds;
* error feedback: without it the 15-round gap is larger in all 10 runs (seeds 0-4 x two
  trio schedules; mean 3.9 vs 2.1 points) and the mean accuracy over the run is lower in
  every run — holds;
* within 1 point after the default 15 rounds: **does not hold** (mean gap over the 10
  runs 2.1 points; 1 of 10 within 1 point). With 30 rounds for both runs the mean gap is
  1.0 (7 of 10 within 1 point). Top-1% moves 48 coordinates per client per round while
  each update is a delta over 5 local epochs, so the compressed model lags, then settles
  slightly below dense. fp16 instead of int8 values changes nothing, decaying the
  residual (x0.5, x0.8) is worse, E=1 is far worse. The 15-round claim is not asserted (it is
  schedule-sensitive: it passes or fails by a fraction of a point); a 2-point guard
  after 30 rounds catches regressions.

Single-seed final accuracies are noisy at this threshold: the test set has 360 images
(one is 0.28 points), and the same seed gives a different trio schedule, hence different
numbers, with and without pytest-trio loaded (it switches trio to its deterministic
shuffling). Seed 0 here: gap 0.6 after 15 rounds, 1.7 after 30; in a plain script 1.1
and 0.8.
"""

from __future__ import annotations

from typing import Any

import pytest

from fednode.config import load_config
from fednode.sim.engine import SimResult
from fednode.sim.scenarios import run_star

CLIENTS = 10
ROUNDS = 15  # the default (the setting)
LONG = 30  # more rounds for both runs
CODEC = "topk:0.01+int8"

pytestmark = pytest.mark.slow


def run(codec: str, error_feedback: bool, *, seed: int = 0, rounds: int = LONG) -> SimResult:
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


def acc(result: SimResult, rounds: int) -> float:
    return float(result.rounds[rounds - 1]["accuracy"])


def mean_acc(result: SimResult, rounds: int) -> float:
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
