"""The DP-FedAvg mechanism: clipping bounds each member's contribution, the noise has the
configured std, the denominator is fixed, adaptive clipping tracks its quantile."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fednode.errors import PayloadError
from fednode.privacy import DpAggregator, EqualWeights, LocalDp, clip_update, noise_rng
from fednode.training.aggregate import StreamingMean

D = 16
finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def dp(clip: float = 1.0, sigma: float = 1.0, seed: int = 7, **kw) -> DpAggregator:
    return DpAggregator(
        StreamingMean(), clip=clip, noise_multiplier=sigma, rng=noise_rng(seed), **kw
    )


def released(updates: list[np.ndarray], *, capacity: int, clip: float, seed: int) -> np.ndarray:
    agg = dp(clip=clip, seed=seed)
    agg.start(D, capacity)
    for i, u in enumerate(updates):
        agg.add(u, 1000.0 * (i + 1), f"p{i}")  # weights are ignored: unweighted
    out, total = agg.finish()
    assert total == capacity
    return out


@settings(max_examples=60, deadline=None)
@given(
    vec=arrays(np.float32, D, elements=finite),
    clip=st.floats(0.01, 100.0),
)
def test_clipping_scales_to_the_norm_and_keeps_the_direction(vec, clip):
    out, scaled = clip_update(vec, clip)
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    assert float(np.linalg.norm(out.astype(np.float64))) <= clip * (1 + 1e-5)
    assert scaled == (norm > clip)
    if not scaled:
        np.testing.assert_array_equal(out, vec)
    elif norm > 0:
        np.testing.assert_allclose(out * np.float32(norm / clip), vec, rtol=1e-4, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(
    others=st.lists(arrays(np.float32, D, elements=finite), min_size=1, max_size=6),
    extra=arrays(np.float32, D, elements=finite),
    clip=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**31),
)
def test_one_member_moves_the_released_sum_by_at_most_the_clip(others, extra, clip, seed):
    """Add/remove one member (same noise draw): the released sum moves by <= C, whatever
    the member sent and whatever it claimed as num_examples."""
    capacity = len(others) + 1
    without = released(others, capacity=capacity, clip=clip, seed=seed)
    with_it = released([*others, extra], capacity=capacity, clip=clip, seed=seed)
    moved = np.linalg.norm((with_it.astype(np.float64) - without) * capacity)
    assert moved <= clip * (1 + 1e-4) + 1e-3


def test_the_noise_on_the_sum_has_std_sigma_times_clip():
    d, n, clip, sigma = 200_000, 10, 2.0, 1.5
    agg = dp(clip=clip, sigma=sigma, seed=1)
    agg.start(d, n)
    for i in range(n):
        agg.add(np.zeros(d, np.float32), 1.0, f"p{i}")
    out, _ = agg.finish()
    noise_on_sum = out.astype(np.float64) * n
    assert abs(noise_on_sum.mean()) < 5 * sigma * clip / np.sqrt(d)
    assert noise_on_sum.std() == pytest.approx(sigma * clip, rel=0.02)
    assert agg.report.record()["dp_noise_std"] == pytest.approx(sigma * clip / n)


def test_the_denominator_is_the_number_selected_not_the_number_that_answered():
    agg = dp(clip=10.0, sigma=1e-9)
    agg.start(D, capacity=8)
    for i in range(4):  # half the selected members dropped out
        agg.add(np.full(D, 0.5, np.float32), 3.0, f"p{i}")
    out, total = agg.finish()
    np.testing.assert_allclose(out, np.full(D, 4 * 0.5 / 8), atol=1e-6)
    assert total == 8
    rec = agg.report.record()
    assert rec["dp_denominator"] == 8 and rec["dp_clipped"] == 0 and rec["agg_rule"] == "dp+fedavg"


def test_a_bad_update_is_refused_before_it_is_clipped():
    agg = dp()
    agg.start(D, 2)
    with pytest.raises(PayloadError):
        agg.add(np.full(D, np.nan, np.float32), 1.0)
    with pytest.raises(PayloadError):
        agg.add(np.zeros(D, np.float32), -1.0)
    assert agg.count == 0


def test_the_same_seed_gives_the_same_noise_and_unseeded_noise_differs():
    a, b = noise_rng(3, "x").normal(size=4), noise_rng(3, "x").normal(size=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, noise_rng(3, "y").normal(size=4))  # another aggregator
    assert not np.array_equal(noise_rng(-1).normal(size=4), noise_rng(-1).normal(size=4))


def test_adaptive_clipping_moves_the_clip_to_the_target_quantile():
    rng = np.random.default_rng(0)
    norms = np.linspace(1.0, 10.0, 100)  # median 5.5
    agg = dp(clip=0.1, sigma=1.0, adaptive=True, target_quantile=0.5, clip_lr=0.2)
    for _ in range(150):
        agg.start(D, len(norms))
        for i, r in enumerate(norms):
            v = rng.normal(size=D).astype(np.float32)
            agg.add((v / np.linalg.norm(v) * r).astype(np.float32), 1.0, f"p{i}")
        agg.finish()
    assert 4.0 < agg.clip < 7.5
    # the update noise is raised so the two releases make one Gaussian of multiplier sigma
    z = agg.update_noise_multiplier(100)
    assert 1.0 < z <= 1.0051
    assert z**-2 + (2 * agg.count_noise_std(100)) ** -2 == pytest.approx(1.0)


def test_equal_weights_averages_region_updates_without_their_example_counts():
    agg = EqualWeights(StreamingMean())
    agg.start(D, 2)
    agg.add(np.full(D, 1.0, np.float32), 1.0, "a")
    agg.add(np.full(D, 3.0, np.float32), 999.0, "b")
    out, _ = agg.finish()
    np.testing.assert_allclose(out, np.full(D, 2.0))


def test_local_dp_clips_and_noises_the_delta_and_spends_one_round():
    local = LocalDp(clip=1.0, noise_multiplier=1e-9, delta=1e-5, rng=noise_rng(0))
    base = np.zeros(D, np.float32)
    out = local.privatise(np.full(D, 10.0, np.float32), base)
    assert np.linalg.norm(out) == pytest.approx(1.0, rel=1e-5)
    assert local.clipped == 1 and local.ledger.count == 1
    assert local.record()["dp_epsilon"] > 0
