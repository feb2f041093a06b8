"""Flat parameter vector: round trip, zero-copy views, strict checks."""

import numpy as np
import pytest

from fednode.errors import PayloadError
from fednode.training.digits import DigitsTask
from fednode.wire.tensors import Layout, check_finite, flatten, from_bytes


def test_flatten_round_trip_and_views_share_memory():
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    vec, layout = flatten(arrays)
    assert vec.dtype == np.float32 and vec.flags.c_contiguous and vec.shape == (10,)
    views = layout.views(vec)
    assert np.array_equal(views["w"], arrays["w"]) and np.array_equal(views["b"], arrays["b"])
    views["w"][0, 0] = 42.0
    assert vec[0] == 42.0  # a view, not a copy


def test_from_bytes_is_zero_copy_and_read_only():
    buf = np.arange(5, dtype=np.float32).tobytes()
    vec = from_bytes(buf, 5)
    assert np.shares_memory(vec, np.frombuffer(buf, dtype=np.float32))
    assert not vec.flags.writeable
    with pytest.raises(PayloadError, match="expected 24 bytes"):
        from_bytes(buf, 6)


def test_layout_matches_digits_model():
    task = DigitsTask()
    layout = task.layout()
    assert layout.shapes == ((64, 64), (64,), (10, 64), (10,))
    assert layout.size == 64 * 64 + 64 + 640 + 10
    assert task.init_params(0).shape == (layout.size,)
    assert (
        layout.fingerprint()
        == Layout.of(zip(layout.names, [np.zeros(s) for s in layout.shapes])).fingerprint()
    )


def test_views_reject_wrong_size_and_dtype():
    layout = Layout(("a",), ((3,),))
    with pytest.raises(PayloadError, match="expected 3 values"):
        layout.views(np.zeros(4, np.float32))
    with pytest.raises(PayloadError, match="float32"):
        layout.views(np.zeros(3, np.float64))
    with pytest.raises(PayloadError, match="NaN"):
        check_finite(np.array([1.0, np.nan], np.float32))
