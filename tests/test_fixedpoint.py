"""Fixed-point encoding for secure aggregation: clipping reported, the sum cannot wrap."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.crypto.fixedpoint import FixedPoint
from fednode.errors import ConfigError, PayloadError

clips = st.sampled_from([0.01, 0.5, 1.0, 3.0, 8.0, 100.0, 1e4])
ns = st.integers(1, 100_000)


@settings(max_examples=200, deadline=None)
@given(n=ns, clip=clips, data=st.data())
def test_n_values_of_max_magnitude_decode_exactly_at_the_largest_precision_that_fits(n, clip, data):
    f = FixedPoint.max_frac_bits(n, clip)
    fp = FixedPoint(n, clip, f)
    sign = data.draw(st.sampled_from([1.0, -1.0]))
    one, clipped = fp.encode(np.array([sign * clip, sign * clip * 7]))  # second is clipped
    assert clipped == 1
    total = np.zeros(2, dtype=np.uint64)
    for _ in range(min(n, 50)):  # the first 50 adds, then the rest at once
        total += one
    total += one * np.uint64(n - min(n, 50))
    total &= fp.mask
    want = int(sign) * n * fp.q_max
    assert fp.decode_int(total).tolist() == [want, want]
    assert n * fp.q_max < 2 ** (fp.modulus_bits - 1)  # the documented condition


@settings(max_examples=200, deadline=None)
@given(n=ns, clip=clips)
def test_one_more_bit_of_precision_than_fits_is_refused_naming_frac_bits(n, clip):
    f = FixedPoint.max_frac_bits(n, clip)
    if f + 1 > 62:
        return
    with pytest.raises(ConfigError) as info:
        FixedPoint(n, clip, f + 1)
    assert info.value.field == "secagg.frac_bits"
    assert str(f) in info.value.expected


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 1000), clip=clips, f=st.integers(0, 40))
def test_width_is_the_fewest_bytes_that_hold_the_worst_sum(n, clip, f):
    try:
        fp = FixedPoint(n, clip, f)
    except ConfigError:
        assert n * round(clip * 2**f) >= 2**63
        return
    assert n * fp.q_max < 2 ** (8 * fp.width - 1)
    assert fp.width == 1 or n * fp.q_max >= 2 ** (8 * (fp.width - 1) - 1)


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 30),
    f=st.integers(0, 24),
    clip=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_sum_of_encodings_decodes_to_the_sum_of_the_quantised_inputs(data, n, f, clip):
    fp = FixedPoint(n, clip, f)
    vals = st.floats(-3 * clip, 3 * clip, allow_nan=False)
    xs = [np.array(data.draw(st.lists(vals, min_size=3, max_size=3))) for _ in range(n)]
    total = np.zeros(3, dtype=np.uint64)
    want = np.zeros(3, dtype=np.int64)
    for x in xs:
        enc, clipped = fp.encode(x)
        assert clipped == int(np.sum(np.abs(x) > clip))
        assert (enc <= fp.mask).all()
        total = (total + enc) & fp.mask
        want += fp.quantise(x)[0]
    assert fp.decode_int(total).tolist() == want.tolist()
    assert np.array_equal(fp.decode(total), want * 2.0**-f)


def test_quantisation_error_is_at_most_half_a_quantum_inside_the_range():
    fp = FixedPoint(10, 1.0, 12)
    x = np.linspace(-1, 1, 10001)
    q, clipped = fp.quantise(x)
    assert clipped == 0
    assert np.max(np.abs(q * fp.quantum - x)) <= fp.quantum / 2


def test_clipping_is_counted_not_silent():
    fp = FixedPoint(4, 8.0, 10)
    q, clipped = fp.quantise(np.array([9.0, -20.0, 8.0, 0.5, -8.0]))
    assert clipped == 2
    assert q.tolist() == [8 * 1024, -8 * 1024, 8 * 1024, 512, -8 * 1024]


def test_sums_above_eight_come_out_right_unlike_flowers_packing():
    fp = FixedPoint(100, 8.0, 20)
    one, _ = fp.encode(np.array([8.0, -8.0, 3.25]))
    total = (one * np.uint64(100)) & fp.mask
    assert fp.decode(total).tolist() == [800.0, -800.0, 325.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_a_payload_error(bad):
    with pytest.raises(PayloadError):
        FixedPoint(2, 1.0, 8).encode(np.array([0.0, bad]))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 0, "clip": 1.0, "frac_bits": 8}, "secagg.n"),
        ({"n": 2, "clip": 0.0, "frac_bits": 8}, "secagg.clip"),
        ({"n": 2, "clip": float("inf"), "frac_bits": 8}, "secagg.clip"),
        ({"n": 2, "clip": 1.0, "frac_bits": -1}, "secagg.frac_bits"),
        ({"n": 2, "clip": 1.0, "frac_bits": 63}, "secagg.frac_bits"),
    ],
)
def test_bad_parameters_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        FixedPoint(**kwargs)
    assert info.value.field == field


@settings(max_examples=50, deadline=None)
@given(f=st.integers(0, 60), n=st.integers(1, 8), data=st.data())
def test_bytes_round_trip_at_every_width(f, n, data):
    fp = FixedPoint(n, 1.0, f)
    x = np.array(data.draw(st.lists(st.floats(-1, 1), min_size=1, max_size=20)))
    enc, _ = fp.encode(x)
    raw = fp.to_bytes(enc)
    assert len(raw) == x.size * fp.width
    assert np.array_equal(fp.from_bytes(raw, x.size), enc)


def test_bytes_of_the_wrong_length_are_refused():
    fp = FixedPoint(10, 1.0, 16)
    with pytest.raises(PayloadError):
        fp.from_bytes(bytes(fp.width * 5 - 1), 5)
