"""Update codecs: round-trip accuracy, compression, error feedback, hostile payloads."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fednode.errors import ConfigError, LocalProtocolError, PayloadError
from fednode.wire.codecs import (
    Codec,
    ErrorFeedback,
    Int8Codec,
    TopKCodec,
    parse_codec,
)

SPECS = [
    "none",
    "fp16",
    "int8",
    "int8:stochastic",
    "int8:chunk=7",
    "topk:0.1",
    "topk:0.3+int8:chunk=5",
    "none+zstd",
    "fp16+zstd",
    "int8+zstd",
    "topk:0.1+zstd",
    "topk:0.01+int8+zstd",
]
CODECS: dict[str, Codec] = {s: parse_codec(s, seed=0) for s in SPECS}
HEADER = struct.Struct("<BBBBI")


def vec(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def roundtrip(codec: Codec, x: np.ndarray) -> np.ndarray:
    return codec.decode(codec.encode(x), x.size)


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("none", "none"),
        (" fp16+zstd ", "fp16+zstd"),
        ("int8:chunk=4096", "int8"),
        ("int8:chunk=512:stochastic", "int8:stochastic:chunk=512"),
        ("topk:0.010", "topk:0.01"),
        ("topk:.5+fp16", "topk:0.5"),
        ("topk:1e-2+int8+zstd", "topk:0.01+int8+zstd"),
        ("topk:1+int8:stochastic", "topk:1.0+int8:stochastic"),
    ],
)
def test_spec_is_parsed_to_its_canonical_form(spec: str, canonical: str) -> None:
    codec = parse_codec(spec)
    assert codec.spec == canonical
    assert parse_codec(codec.spec).spec == canonical


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "zstd",
        "+zstd",
        "gzip",
        "fp32",
        "NONE",
        "none:1",
        "none+int8",
        "fp16+zstd+zstd",
        "int8:fast",
        "int8:chunk=0",
        "int8:chunk=99999999",
        "int8:stochastic:stochastic",
        "topk",
        "topk:",
        "topk:0",
        "topk:1.5",
        "topk:nan",
        "topk:-0.1",
        "topk:1_0",
        "topk:0.01+fp16+int8",
        "topk:0.01+fp16:stochastic",
        "topk:0.01+",
        "x" * 200,
    ],
)
def test_bad_spec_raises_config_error_naming_the_codec_field(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_codec(spec)
    assert info.value.field == "codec"
    assert info.value.value == spec
    assert "codec" in str(info.value)


def test_encode_rejects_wrong_dtype_shape_and_non_finite_input() -> None:
    codec = parse_codec("int8")
    with pytest.raises(ValueError, match="float32"):
        codec.encode(np.zeros(4, dtype=np.float64))
    with pytest.raises(ValueError, match="1-D"):
        codec.encode(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(LocalProtocolError, match="NaN or Inf"):
        codec.encode(np.array([1.0, np.inf], dtype=np.float32))


# ----------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("n", [0, 1, 2, 4095, 4096, 4097, 10_001])
def test_every_codec_round_trips_to_float32_of_length_n(spec: str, n: int) -> None:
    out = roundtrip(CODECS[spec], vec(n))
    assert out.dtype == np.float32
    assert out.shape == (n,)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("spec", ["none", "none+zstd"])
def test_none_is_exact(spec: str) -> None:
    x = vec(1000)
    np.testing.assert_array_equal(roundtrip(parse_codec(spec), x), x)


def test_none_decode_is_a_zero_copy_read_only_view() -> None:
    codec = parse_codec("none")
    x = vec(100)
    buf = bytearray(codec.encode(x))
    out = codec.decode(memoryview(buf), 100)
    assert not out.flags.writeable
    buf[-4:] = struct.pack("<f", 42.0)  # change the wire buffer: the view sees it
    assert out[-1] == 42.0


@pytest.mark.parametrize("spec", ["fp16", "fp16+zstd"])
def test_fp16_relative_error_is_within_half_precision(spec: str) -> None:
    rng = np.random.default_rng(1)
    x = (rng.choice([-1, 1], 5000) * 10 ** rng.uniform(-4, 4, 5000)).astype(np.float32)
    out = roundtrip(parse_codec(spec), x)
    assert np.all(np.abs(out - x) <= 2.0**-11 * np.abs(x))


def test_fp16_clips_out_of_range_values_instead_of_producing_inf() -> None:
    out = roundtrip(parse_codec("fp16"), np.array([1e6, -1e9, 3.0], dtype=np.float32))
    np.testing.assert_array_equal(out, [65504.0, -65504.0, 3.0])


@pytest.mark.parametrize("chunk", [4096, 100])
def test_int8_error_is_at_most_half_a_step_of_each_chunks_scale(chunk: int) -> None:
    n = 3 * 4096 + 123
    x = vec(n, seed=2)
    x[:chunk] *= 1000  # one loud chunk must not cost the others precision
    out = roundtrip(Int8Codec(chunk=chunk), x)
    pad = -n % chunk
    xc = np.concatenate([x, np.zeros(pad, np.float32)]).reshape(-1, chunk)
    oc = np.concatenate([out, np.zeros(pad, np.float32)]).reshape(-1, chunk)
    scale = np.abs(xc).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(oc - xc) <= scale / 2 * (1 + 1e-5))


def test_int8_keeps_an_all_zero_chunk_exactly_zero() -> None:
    x = np.zeros(5000, np.float32)
    x[4096:] = 1.0
    out = roundtrip(parse_codec("int8"), x)
    np.testing.assert_array_equal(out, x)


def test_int8_stochastic_rounding_is_unbiased_and_nearest_rounding_is_not() -> None:
    rng = np.random.default_rng(3)
    x = (rng.integers(-120, 120, 255) + rng.uniform(0.2, 0.8, 255)).astype(np.float32)
    x = np.concatenate([[np.float32(127.0)], x])  # scale is exactly 1.0
    trials = 2000
    stochastic = Int8Codec(chunk=256, stochastic=True, seed=4)
    mean = np.mean([roundtrip(stochastic, x) for _ in range(trials)], axis=0)
    nearest = roundtrip(Int8Codec(chunk=256), x)
    tolerance = 5 * 0.5 / trials**0.5  # 5 standard errors; per-trial sd <= scale/2
    assert np.abs(mean - x).max() < tolerance
    assert np.abs(nearest[1:] - x[1:]).min() > tolerance  # nearest is biased by >= 0.2
    assert np.abs(roundtrip(stochastic, x) - x).max() < 1.0  # never more than one step


def test_int8_stochastic_rounding_is_reproducible_from_the_seed() -> None:
    x = vec(1000)
    a = parse_codec("int8:stochastic", seed=7).encode(x)
    b = parse_codec("int8:stochastic", seed=7).encode(x)
    c = parse_codec("int8:stochastic", seed=8).encode(x)
    assert a == b
    assert a != c


@pytest.mark.parametrize("spec", ["topk:0.05", "topk:0.05+int8", "topk:0.05+zstd"])
def test_topk_keeps_exactly_the_k_largest_magnitudes(spec: str) -> None:
    x = vec(1000, seed=5)
    out = roundtrip(parse_codec(spec), x)
    kept = np.flatnonzero(out)
    assert set(kept) == set(np.argsort(np.abs(x))[-50:])
    tol = 2.0**-11 if "int8" not in spec else 0.5 / 127
    assert np.all(np.abs(out[kept] - x[kept]) <= tol * np.abs(x).max())


@pytest.mark.parametrize(
    ("fraction", "n", "k"), [(0.01, 100_000, 1000), (0.01, 10, 1), (0.5, 3, 2), (1.0, 7, 7)]
)
def test_topk_count_is_round_fraction_times_n_at_least_one(fraction: float, n: int, k: int) -> None:
    codec = TopKCodec(fraction)
    assert codec.k_for(n) == k
    assert np.count_nonzero(roundtrip(codec, vec(n) + np.float32(10))) == k


@pytest.mark.parametrize(("positions", "width"), [([3, 200], 1), ([3, 300], 2), ([3, 70_000], 4)])
def test_topk_gaps_use_the_narrowest_index_width(positions: list[int], width: int) -> None:
    n = 100_000
    x = np.zeros(n, np.float32)
    x[positions] = [5.0, -7.0]
    codec = TopKCodec(2 / n)  # k = 2
    payload = codec.encode(x)
    assert len(payload) == HEADER.size + 5 + 2 * width + 2 * 2
    np.testing.assert_array_equal(codec.decode(payload, n), x)


def test_topk_int8_compresses_at_least_50x_against_dense_float32() -> None:
    x = vec(100_000, seed=6)
    payload = parse_codec("topk:0.01+int8").encode(x)
    assert x.nbytes / len(payload) >= 50


# ------------------------------------------------------------------ error feedback


def test_error_feedback_makes_the_sum_of_decoded_updates_track_the_true_sum() -> None:
    rng = np.random.default_rng(8)
    n, steps = 2000, 200
    bias = rng.standard_normal(n).astype(np.float32)
    codec = parse_codec("topk:0.1")
    ef = ErrorFeedback(codec, n)
    true_sum, ef_sum, plain_sum = np.zeros(n), np.zeros(n), np.zeros(n)
    residual_norms = []
    for _ in range(steps):
        update = (0.1 * bias + rng.standard_normal(n)).astype(np.float32)
        true_sum += update
        ef_sum += codec.decode(ef.encode(update), n)
        plain_sum += roundtrip(codec, update)
        residual_norms.append(np.linalg.norm(ef.residual))

    np.testing.assert_allclose(ef_sum + ef.residual, true_sum, atol=1e-3)
    assert np.linalg.norm(ef_sum - true_sum) / np.linalg.norm(true_sum) < 0.15
    assert np.linalg.norm(plain_sum - true_sum) / np.linalg.norm(true_sum) > 0.4
    assert max(residual_norms[100:]) <= 1.2 * max(residual_norms[:100])  # bounded, not growing


def test_error_feedback_reset_and_failed_encode_leave_a_clean_residual() -> None:
    ef = ErrorFeedback(parse_codec("topk:0.1"), 100)
    ef.encode(vec(100))
    before = ef.residual.copy()
    assert np.any(before)
    with pytest.raises(LocalProtocolError):
        ef.encode(np.full(100, np.nan, np.float32))
    np.testing.assert_array_equal(ef.residual, before)
    ef.reset()
    assert not np.any(ef.residual)
    with pytest.raises(ValueError, match="length 100"):
        ef.encode(vec(99))


# ---------------------------------------------------------------- hostile payloads


def test_decode_rejects_wrong_n_naming_both_counts() -> None:
    payload = parse_codec("fp16").encode(vec(10))
    with pytest.raises(PayloadError, match=r"holds 10 values, expected 11"):
        parse_codec("fp16").decode(payload, 11)


@pytest.mark.parametrize(("sent", "expected"), [("fp16", "int8"), ("fp16", "fp16+zstd")])
def test_decode_rejects_a_payload_of_another_codec(sent: str, expected: str) -> None:
    payload = parse_codec(sent).encode(vec(10))
    with pytest.raises(PayloadError, match=f"encoded as {sent}"):
        parse_codec(expected).decode(payload, 10)


@pytest.mark.parametrize("spec", SPECS)
def test_decode_rejects_truncated_or_padded_payloads(spec: str) -> None:
    codec = CODECS[spec]
    payload = codec.encode(vec(300))
    for bad in (payload[:-1], payload[:3], payload + b"\0"):
        with pytest.raises(PayloadError):
            codec.decode(bad, 300)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 3e38])
def test_decode_rejects_int8_scales_that_are_not_finite_small_and_non_negative(
    bad: float,
) -> None:
    payload = bytearray(parse_codec("int8").encode(vec(10)))
    struct.pack_into("<f", payload, HEADER.size + 4, bad)  # the first scale
    with pytest.raises(PayloadError, match="int8 scale 0"):
        parse_codec("int8").decode(bytes(payload), 10)


def _topk_payload(gaps: list[int], n: int) -> bytes:
    head = HEADER.pack(0xFD, 1, 4, 0, n) + struct.pack("<IB", len(gaps), 4)
    return head + np.array(gaps, "<u4").tobytes() + np.ones(len(gaps), "<f2").tobytes()


def test_decode_rejects_repeated_topk_indices() -> None:
    with pytest.raises(PayloadError, match="strictly increasing"):
        TopKCodec(0.3).decode(_topk_payload([1, 4, 0], 10), 10)


def test_decode_rejects_out_of_range_topk_indices() -> None:
    with pytest.raises(PayloadError, match="out of range"):
        TopKCodec(0.3).decode(_topk_payload([1, 4, 5], 10), 10)
    with pytest.raises(PayloadError, match="out of range"):  # huge gaps must not wrap
        TopKCodec(0.3).decode(_topk_payload([2**32 - 1] * 3, 10), 10)


def test_decode_accepts_a_well_formed_handmade_topk_payload() -> None:
    out = TopKCodec(0.3).decode(_topk_payload([1, 4, 4], 10), 10)
    np.testing.assert_array_equal(np.flatnonzero(out), [1, 5, 9])


def test_decode_rejects_a_topk_count_other_than_the_spec_implies() -> None:
    payload = _topk_payload([1, 4, 4], 10)
    with pytest.raises(PayloadError, match="top-k count is 3, expected 2"):
        TopKCodec(0.2).decode(payload, 10)


def test_decode_refuses_a_zstd_bomb_before_allocating() -> None:
    n = 1000
    bomb = zstandard.ZstdCompressor().compress(bytes(200_000_000))  # ~6 kB on the wire
    payload = HEADER.pack(0xFD, 1, 2, 1, n) + bomb
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match="declares 200000000 bytes, expected exactly 2000"):
            parse_codec("fp16+zstd").decode(payload, n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


@pytest.mark.parametrize("how", ["no content size", "trailing data", "two frames"])
def test_decode_rejects_zstd_frames_that_are_not_exactly_one_sized_frame(how: str) -> None:
    n = 100
    body = np.zeros(n, "<f2").tobytes()
    frame = zstandard.ZstdCompressor(write_content_size=how != "no content size").compress(body)
    frame += {"no content size": b"", "trailing data": b"junk", "two frames": frame}[how]
    with pytest.raises(PayloadError, match="zstd"):
        parse_codec("fp16+zstd").decode(HEADER.pack(0xFD, 1, 2, 1, n) + frame, n)


# Property tests: whatever bytes arrive, decode returns a float32 vector of length n or
# raises PayloadError -- never another exception. 4 x 500 = 2,000 examples.

PROPERTY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
codec_specs = st.sampled_from(SPECS)
sizes = st.integers(0, 300)
seeds = st.integers(0, 2**32 - 1)


def assert_decodes_or_rejects(codec: Codec, payload: bytes, n: int) -> None:
    try:
        out = codec.decode(payload, n)
    except PayloadError:
        return
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.shape == (n,)


@PROPERTY
@given(spec=codec_specs, n=sizes, seed=seeds, keep=st.integers(0, 64), tail=st.binary(max_size=64))
def test_valid_prefix_plus_random_bytes_decodes_or_raises_payload_error(
    spec: str, n: int, seed: int, keep: int, tail: bytes
) -> None:
    codec = CODECS[spec]
    payload = codec.encode(vec(n, seed))[:keep] + tail
    assert_decodes_or_rejects(codec, payload, n)


@PROPERTY
@given(spec=codec_specs, n=sizes, seed=seeds, data=st.data())
def test_truncated_payload_always_raises_payload_error(
    spec: str, n: int, seed: int, data: st.DataObject
) -> None:
    codec = CODECS[spec]
    payload = codec.encode(vec(n, seed))
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(PayloadError):
        codec.decode(payload[:cut], n)


@PROPERTY
@given(spec=codec_specs, n=sizes, seed=seeds, data=st.data())
def test_bit_flipped_payload_decodes_or_raises_payload_error(
    spec: str, n: int, seed: int, data: st.DataObject
) -> None:
    codec = CODECS[spec]
    payload = bytearray(codec.encode(vec(n, seed)))
    bit = data.draw(st.integers(0, 8 * len(payload) - 1))
    payload[bit // 8] ^= 1 << (bit % 8)
    assert_decodes_or_rejects(codec, bytes(payload), n)


@PROPERTY
@given(spec=codec_specs, n=sizes, seed=seeds, data=st.data())
def test_overwritten_bytes_decode_or_raise_payload_error(
    spec: str, n: int, seed: int, data: st.DataObject
) -> None:
    codec = CODECS[spec]
    payload = bytearray(codec.encode(vec(n, seed)))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(payload) - 1))
        payload[pos] = data.draw(st.integers(0, 255))
    assert_decodes_or_rejects(codec, bytes(payload), n)
