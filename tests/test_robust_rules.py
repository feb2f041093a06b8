"""The rule grammar, the (n, d) block and what each rule reports, without a federation."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fednode.config import load_config
from fednode.errors import ConfigError, PayloadError, RoundFailed
from fednode.training import robust
from fednode.training.aggregate import StreamingMean
from fednode.training.buffered import BufferedAggregator, make_aggregator
from fednode.training.claims import ClaimLimits
from fednode.training.rulespec import RuleUnavailable, parse_rule


# --- grammar ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "name", "stages", "fields"),
    [
        ("fedavg", "fedavg", (), {}),
        ("median", "median", (), {}),
        ("trimmed:0.2", "trimmed", (), {"beta": 0.2}),
        ("krum:2", "krum", (), {"f": 2}),
        ("multikrum:1:4", "multikrum", (), {"f": 1, "m": 4}),
        ("multikrum:1", "multikrum", (), {"f": 1, "m": 0}),
        ("bulyan:1", "bulyan", (), {"f": 1}),
        ("centered_clip:2.5", "centered_clip", (), {"tau": 2.5, "iters": 3}),
        ("centered_clip:2.5:7", "centered_clip", (), {"tau": 2.5, "iters": 7}),
        ("geomed", "geomed", (), {"iters": 100}),
        ("nnm+krum:2", "krum", ("nnm",), {"f": 2}),
        ("norm_bound:5+median", "median", ("norm_bound",), {}),
        ("norm_bound:5", "fedavg", ("norm_bound",), {}),
        ("norm_bound:5+nnm:1+geomed", "geomed", ("norm_bound", "nnm"), {}),
    ],
)
def test_grammar(text, name, stages, fields):
    spec = parse_rule(text)
    assert spec.name == name and tuple(s.name for s in spec.stages) == stages
    for key, value in fields.items():
        assert getattr(spec, key) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("average", "'fedavg', 'median'"),
        ("trimmed:0.7", "beta in [0, 0.5)"),
        ("trimmed:x", "beta in [0, 0.5)"),
        ("trimmed", "trimmed:<beta>"),
        ("krum:-1", "an integer >= 0"),
        ("krum:1.5", "an integer >= 0"),
        ("krum", "krum:<f>"),
        ("multikrum:1:0", "an integer >= 1"),
        ("centered_clip:0", "tau > 0"),
        ("centered_clip:nan", "tau a number > 0"),
        ("median:3", "'median'"),
        ("norm_bound:0+median", "c > 0"),
        ("median+norm_bound:1", "one rule, last"),
        ("median+krum:1", "one rule, last"),
        ("nnm+median", "'nnm:<f>'"),
        ("", "'fedavg'"),
        ("median+", "'fedavg'"),
    ],
)
def test_bad_specs_fail_naming_the_field(text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, {"aggregation.rule": text})
    assert info.value.field == "aggregation.rule"
    assert expected in info.value.expected


def test_root_rule_and_limits_are_validated_by_name():
    with pytest.raises(ConfigError) as info:
        load_config(None, {"aggregation.root_rule": "krum:x"})
    assert info.value.field == "aggregation.root_rule"
    for name, value in (("max_examples", -1), ("max_examples_ratio", 0.5), ("flag_norm_ratio", -2)):
        with pytest.raises(ConfigError) as info:
            load_config(None, {f"aggregation.{name}": value})
        assert info.value.field == f"aggregation.{name}"


def test_min_updates():
    assert parse_rule("krum:2").min_updates() == 7
    assert parse_rule("multikrum:1:9").min_updates() == 9
    assert parse_rule("bulyan:1").min_updates() == 7
    assert parse_rule("nnm:4+median").min_updates() == 5
    assert parse_rule("median").min_updates() == 1
    with pytest.raises(RuleUnavailable, match="needs at least 7 updates, got 6"):
        parse_rule("krum:2").check_count(6)
    assert issubclass(RuleUnavailable, RoundFailed)


# --- the block ---------------------------------------------------------------------------
def _feed(agg, x, weights=None, capacity=0):
    agg.start(x.shape[1], capacity=capacity)
    for i, row in enumerate(x):
        agg.add(row, 1.0 if weights is None else float(weights[i]), f"p{i}")
    return agg.finish()


def test_block_grows_past_its_capacity_and_keeps_every_row():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(13, 50)).astype(np.float32)
    agg = make_aggregator("trimmed:0")
    assert isinstance(agg, BufferedAggregator)
    out, total = _feed(agg, x, capacity=3)
    assert agg.capacity >= 13 and total == 13.0
    np.testing.assert_allclose(out, x.astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-6)
    row = x[0].copy()
    agg.start(50, capacity=2)  # big enough already: the block is kept
    assert agg.capacity >= 13
    agg.add(row, 1.0)
    row[:] = 99.0  # the caller's array is copied, not kept
    assert np.array_equal(agg.finish()[0], x[0])


def test_rule_without_enough_updates_raises_round_failed():
    agg = make_aggregator("krum:1")
    with pytest.raises(RuleUnavailable):
        _feed(agg, np.ones((4, 3), np.float32))
    agg.start(3)
    with pytest.raises(RoundFailed, match="no updates"):
        agg.finish()


def test_bad_input_is_rejected_by_the_buffered_path_too():
    agg = make_aggregator("median")
    agg.start(3)
    with pytest.raises(PayloadError):
        agg.add(np.array([0, np.nan, 0], np.float32), 1.0)
    with pytest.raises(PayloadError):
        agg.add(np.zeros(3, np.float32), -1.0)
    assert agg.count == 0


def test_results_do_not_depend_on_the_chunk_width(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 1000)).astype(np.float32)
    specs = [
        "median",
        "trimmed:0.2",
        "multikrum:1",
        "bulyan:1",
        "centered_clip:3",
        "geomed",
        "nnm+krum:2",
        "norm_bound:10+median",
    ]
    wide = [_feed(make_aggregator(s), x)[0] for s in specs]
    monkeypatch.setattr(robust, "BUDGET", 9 * 7)  # 7 columns per chunk
    narrow = [_feed(make_aggregator(s), x)[0] for s in specs]
    for spec, a, b in zip(specs, wide, narrow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=spec)


@pytest.mark.parametrize(
    "spec",
    [
        "median",
        "trimmed:0.1",
        "krum:2",
        "bulyan:2",
        "geomed",
        "centered_clip:1:2",
        "nnm+multikrum:2",
    ],
)
def test_extra_memory_is_one_block_plus_chunks(spec):
    n, d = 12, 400_000
    rng = np.random.default_rng(1)
    row = rng.normal(size=d).astype(np.float32)
    agg = make_aggregator(spec)
    tracemalloc.start()
    agg.start(d, capacity=n)
    for i in range(n):
        agg.add(row * np.float32(1 + i / 10), 1.0, f"p{i}")  # temp row counted: one d
        agg.finish() if i == n - 1 else None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    block = n * d * 4
    chunk = robust.BUDGET * 8
    # the block, a few chunk temporaries and O(d) float64/float32 vectors
    assert peak <= block + 4 * chunk + 6 * d * 8, (spec, peak / block)


# --- reports ----------------------------------------------------------------------------
def _outlier_round(spec, limits=None):
    rng = np.random.default_rng(5)
    x = rng.normal(scale=0.1, size=(8, 20)).astype(np.float32)
    x[3] *= 1e6
    agg = make_aggregator(spec, limits)
    out, _ = _feed(agg, x)
    return agg.report, out


def test_reports_name_what_each_rule_did():
    report, _ = _outlier_round("krum:1")
    assert report.selected and "p3" in report.discarded and len(report.discarded) == 7
    assert report.flagged == ["p3"]
    report, _ = _outlier_round("multikrum:1:5")
    assert len(report.selected) == 5 and "p3" in report.discarded
    report, _ = _outlier_round("trimmed:0.25")
    assert report.trimmed == 2 and report.discarded == []
    report, _ = _outlier_round("norm_bound:1+median")
    assert report.clipped == ["p3"]
    report, _ = _outlier_round("centered_clip:0.5:2")
    assert "p3" in report.clipped
    report, _ = _outlier_round("bulyan:1")
    assert len(report.selected) == 6 and "p3" in report.discarded and report.trimmed == 2
    rec = report.record()
    assert rec["agg_rule"] == "bulyan:1" and rec["agg_flagged"] == ["p3"]


def test_flagging_needs_three_updates_and_can_be_off():
    agg = StreamingMean()
    _feed(agg, np.array([[1.0], [1e6]], np.float32))
    assert agg.report.flagged == []
    _feed(agg, np.array([[1.0], [1.1], [1e6]], np.float32))
    assert agg.report.flagged == ["p2"]
    off = StreamingMean(limits=ClaimLimits(flag_norm_ratio=0))
    _feed(off, np.array([[1.0], [1.1], [1e6]], np.float32))
    assert off.report.flagged == []


def test_claims_capped_from_the_second_round():
    x = np.ones((4, 2), np.float32)
    agg = StreamingMean(limits=ClaimLimits(max_examples_ratio=3.0))
    _feed(agg, x, weights=[100, 100, 100, 10_000])  # no reference yet
    assert agg.report.capped == [] and agg.total_weight == 10_300
    _feed(agg, x, weights=[100, 100, 100, 10_000])  # reference: median 100 -> cap 300
    assert agg.report.capped == ["p3"] and agg.total_weight == 600
    fixed = make_aggregator("median", ClaimLimits(max_examples=150, max_examples_ratio=0))
    _feed(fixed, x, weights=[100, 100, 100, 10_000])
    assert fixed.report.capped == ["p3"]


def test_norm_bound_fedavg_streams_and_clips():
    agg = make_aggregator("norm_bound:1")
    assert isinstance(agg, StreamingMean) and not agg.needs_all
    out, _ = _feed(agg, np.array([[3.0, 4.0], [0.3, 0.4]], np.float32))
    np.testing.assert_allclose(out, [0.45, 0.6], rtol=1e-6)
    assert agg.report.clipped == ["p0"]
