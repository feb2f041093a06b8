"""Shamir secret sharing over GF(2**61 - 1), vectorised in uint64."""

import contextlib
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.crypto import shamir
from fednode.crypto.shamir import P
from fednode.errors import PayloadError

elements = st.integers(0, P - 1)


@settings(max_examples=300, deadline=None)
@given(a=st.lists(elements, min_size=1, max_size=30), data=st.data())
def test_mulmod_equals_python_integer_arithmetic(a, data):
    b = data.draw(st.lists(elements, min_size=len(a), max_size=len(a)))
    got = shamir.mulmod(np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64))
    assert got.tolist() == [x * y % P for x, y in zip(a, b, strict=True)]


def test_mulmod_at_the_extremes():
    edge = np.array([0, 1, 2, P - 1, P - 2, 2**32, 2**32 - 1, 2**60], dtype=np.uint64)
    a, b = np.meshgrid(edge, edge)
    got = shamir.mulmod(a.ravel(), b.ravel())
    assert got.tolist() == [int(x) * int(y) % P for x, y in zip(a.ravel(), b.ravel())]


@settings(max_examples=100, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    holders=st.integers(1, 12),
    data=st.data(),
)
def test_any_threshold_shares_reconstruct_the_secret(secret, holders, data):
    t = data.draw(st.integers(1, holders))
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=holders, max_size=holders, unique=True))
    shares = shamir.split(secret, t, xs)
    subset = data.draw(st.permutations(shares))[:t]
    assert shamir.combine(subset, len(secret)) == secret
    assert shamir.combine(shares, len(secret)) == secret  # more than t is fine


def test_every_subset_of_threshold_shares_reconstructs():
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    for subset in itertools.combinations(shares, 3):
        assert shamir.combine(list(subset), 32) == secret


@settings(max_examples=50, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), other=st.binary(min_size=32, max_size=32))
def test_threshold_minus_one_shares_are_consistent_with_any_secret(secret, other):
    """For t-1 real shares and ANY candidate secret there is a degree t-1 polynomial
    through both: the one holder more that completes it has a share like any other."""
    t = 4
    shares = shamir.split(secret, t, [1, 2, 3, 4, 5, 6])
    seen = shares[: t - 1]
    # the t-th share value that makes (seen + it) reconstruct `other`: solve the linear
    # equation other = sum l_i y_i for the unknown y at x = 7
    xs = [x for x, _ in seen] + [7]
    lam = shamir.lagrange_at_zero(xs)
    target = np.array([int(v) for v in shamir._to_elements(other)], dtype=object)
    partial = sum(
        lam[i] * np.array([int(v) for v in y], dtype=object) for i, (_, y) in enumerate(seen)
    )
    y7 = [int(v) for v in (target - partial) * pow(lam[-1], -1, P) % P]
    completed = [*seen, (7, np.array(y7, dtype=np.uint64))]
    assert shamir.combine(completed, 32) == other
    assert shamir.combine(shares[:t], 32) == secret


def test_threshold_minus_one_shares_do_not_give_the_secret():
    secret = bytes(range(32))
    hits = 0
    for _ in range(20):
        shares = shamir.split(secret, 5, list(range(1, 9)))
        with contextlib.suppress(PayloadError):  # usually not even a byte string
            hits += shamir.combine(shares[:4], 32) == secret
    assert hits == 0


def test_one_share_alone_is_uniform_whatever_the_secret():
    """A single share's elements, over many splits of a fixed secret, spread over the
    field: their top 4 bits are uniform (chi-square, 16 bins)."""
    tops = []
    for _ in range(400):
        (_, y), *_ = shamir.split(bytes(32), 2, [1, 2])
        tops.extend((y >> np.uint64(57)).tolist())
    counts = np.bincount(tops, minlength=16)
    expected = len(tops) / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.5  # df=15: P(chi2 > 50.5) = 1e-5


def test_share_bytes_round_trip_and_checks():
    (_, y), *_ = shamir.split(b"k" * 32, 2, [3, 4])
    raw = shamir.share_to_bytes(y)
    assert len(raw) == 40
    assert np.array_equal(shamir.share_from_bytes(raw, 32), y)
    with pytest.raises(PayloadError):
        shamir.share_from_bytes(raw[:-1], 32)
    with pytest.raises(PayloadError):
        shamir.share_from_bytes(b"\xff" * 40, 32)  # not below p


@pytest.mark.parametrize(
    ("t", "xs"), [(0, [1, 2]), (3, [1, 2]), (2, [1, 1]), (2, [0, 1]), (2, [1, P])]
)
def test_split_refuses_bad_threshold_or_coordinates(t, xs):
    with pytest.raises(ValueError):
        shamir.split(b"secret", t, xs)
