"""Aggregation: streaming FedAvg is exact and O(model) in memory; robust rules; bad input."""

import tracemalloc

import numpy as np
import pytest

from fednode.errors import ConfigError, PayloadError, RoundFailed
from fednode.training.aggregate import StreamingMean
from fednode.training.buffered import BufferedAggregator, make_aggregator


def test_streaming_mean_equals_float64_weighted_mean():
    rng = np.random.default_rng(0)
    vecs = [
        rng.normal(size=200_003).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 3))
        for _ in range(25)
    ]
    weights = rng.integers(1, 1000, size=25).astype(float)
    agg = StreamingMean()
    agg.start(200_003)
    for v, w in zip(vecs, weights):
        agg.add(v, w)
    out, total = agg.finish()
    ref = np.average(np.stack(vecs).astype(np.float64), axis=0, weights=weights)
    assert out.dtype == np.float32
    assert total == weights.sum()
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def _peak_bytes_for(clients: int, size: int) -> int:
    rng = np.random.default_rng(1)
    vec = rng.normal(size=size).astype(np.float32)  # one shared input: its memory is not counted
    agg = StreamingMean()
    tracemalloc.start()
    tracemalloc.reset_peak()
    agg.start(size)
    for i in range(clients):
        agg.add(vec, float(i + 1))
    agg.finish()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_streaming_mean_memory_does_not_grow_with_clients():
    size = 1_000_000
    few = _peak_bytes_for(2, size)
    many = _peak_bytes_for(50, size)
    accumulator = size * 8
    # one float64 accumulator + the float32 result + one chunk temp, whatever the client count
    assert many <= accumulator + size * 4 + 4 * (1 << 16) * 8 + 64 * 1024
    assert abs(many - few) < 64 * 1024


@pytest.mark.parametrize(
    ("vec", "weight", "match"),
    [
        (np.zeros(4, np.float32), 1.0, "expected 3 values"),
        (np.zeros(3, np.float64), 1.0, "float32"),
        (np.zeros(3, np.int32), 1.0, "float32"),
        (np.array([0, np.inf, 0], np.float32), 1.0, "finite values"),
        (np.zeros(3, np.float32), 0.0, "weight > 0"),
        (np.zeros(3, np.float32), float("nan"), "weight > 0"),
    ],
)
def test_bad_input_is_rejected_and_changes_nothing(vec, weight, match):
    agg = StreamingMean()
    agg.start(3)
    agg.add(np.ones(3, np.float32), 2.0)
    with pytest.raises(PayloadError, match=match):
        agg.add(vec, weight)
    out, total = agg.finish()
    assert total == 2.0 and np.array_equal(out, np.ones(3, np.float32))


def test_finish_without_input_fails():
    agg = StreamingMean()
    agg.start(3)
    with pytest.raises(RoundFailed):
        agg.finish()


def test_robust_rules_resist_one_outlier():
    honest = [np.full(5, 1.0 + 0.01 * i, np.float32) for i in range(6)]
    evil = np.full(5, 1e6, np.float32)
    for spec in ("median", "trimmed:0.2", "krum:1"):
        agg = make_aggregator(spec)
        assert agg.needs_all
        agg.start(5)
        for v in [*honest, evil]:
            agg.add(v, 1.0)
        out, _ = agg.finish()
        assert np.all(np.abs(out - 1.0) < 0.1), spec
    mean = StreamingMean()
    mean.start(5)
    for v in [*honest, evil]:
        mean.add(v, 1.0)
    assert mean.finish()[0][0] > 1000  # the plain mean is not robust


def test_make_aggregator_specs():
    assert isinstance(make_aggregator("fedavg"), StreamingMean)
    assert isinstance(make_aggregator("norm_bound:3"), StreamingMean)
    assert isinstance(make_aggregator("trimmed:0.2"), BufferedAggregator)
    with pytest.raises(ConfigError):
        make_aggregator("average")
