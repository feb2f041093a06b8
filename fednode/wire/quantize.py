"""The numeric kernels of the update codecs (``codecs.py``): fp16 with clipping, per-chunk
int8 quantisation and its checked inverse, and zstd frames of an exact size.

Pure functions on float32 arrays and byte views; the payload formats, their headers and
the checks before any allocation are ``codecs.py``'s. Errors: :class:`PayloadError` for
untrusted input (int8 scales, zstd frames).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import zstandard

from fednode.errors import PayloadError

F32 = npt.NDArray[np.float32]

ZSTD_LEVEL = 3
_F16_MAX = np.float32(65504.0)
# |q| <= 128 for any int8 q, so q * scale stays finite when scale <= f32max / 128.
_MAX_SCALE = np.float32(np.finfo(np.float32).max / 128)


def to_f16(x: F32) -> npt.NDArray[np.float16]:
    return np.clip(x, -_F16_MAX, _F16_MAX).astype("<f2")


def int8_body_size(m: int, chunk: int) -> int:
    return 4 * (-(-m // chunk)) + m


def quantize_int8(
    x: F32, chunk: int, rng: np.random.Generator | None
) -> tuple[F32, npt.NDArray[np.int8]]:
    """Per-chunk absmax scales and int8 codes; ``|x - q*scale| <= scale/2`` when rng is None."""
    m = x.size
    nfull, rem = divmod(m, chunk)
    full = nfull * chunk
    nchunks = nfull + (rem > 0)
    y: F32 = np.abs(x)
    amax = np.empty(nchunks, dtype=np.float32)
    if nfull:
        amax[:nfull] = y[:full].reshape(nfull, chunk).max(axis=1)
    if rem:
        amax[nfull] = y[full:].max()
    scales = (amax / np.float32(127.0)).astype("<f4")
    # A zero scale means the chunk is (numerically) zero: divide by 1 instead of 0.
    safe = np.where(scales > 0, scales, np.float32(1.0))
    if nfull:
        np.divide(
            x[:full].reshape(nfull, chunk), safe[:nfull, None], out=y[:full].reshape(nfull, chunk)
        )
    if rem:
        np.divide(x[full:], safe[nfull], out=y[full:])
    if rng is None:
        np.rint(y, out=y)
    else:  # floor(y + U[0,1)) is y rounded up with probability frac(y): unbiased
        y += rng.random(m, dtype=np.float32)
        np.floor(y, out=y)
    np.clip(y, np.float32(-127), np.float32(127), out=y)
    return scales, y.astype(np.int8)


def dequantize_int8(body: memoryview, m: int, chunk: int) -> F32:
    nfull, rem = divmod(m, chunk)
    full = nfull * chunk
    nchunks = nfull + (rem > 0)
    scales = np.frombuffer(body, dtype="<f4", count=nchunks)
    ok = (scales >= 0) & (scales <= _MAX_SCALE)  # NaN compares False: rejected too
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise PayloadError(
            f"int8 scale {i} is {float(scales[i])!r}, expected a finite value in "
            f"[0, {float(_MAX_SCALE):.3e}]"
        )
    out = np.frombuffer(body, dtype=np.int8, count=m, offset=4 * nchunks).astype(np.float32)
    if nfull:
        view = out[:full].reshape(nfull, chunk)
        np.multiply(view, scales[:nfull, None], out=view)
    if rem:
        out[full:] *= scales[nfull]
    return out


def unzstd(body: memoryview, expected: int) -> memoryview:
    """Decompress one zstd frame whose content must be exactly ``expected`` bytes."""
    try:
        declared = zstandard.get_frame_parameters(body).content_size
    except zstandard.ZstdError as exc:
        raise PayloadError(f"zstd body has no valid frame header: {exc}") from exc
    if declared != expected:  # also rejects CONTENTSIZE_UNKNOWN; checked before allocating
        got = "unknown" if declared == zstandard.CONTENTSIZE_UNKNOWN else str(declared)
        raise PayloadError(f"zstd frame declares {got} bytes, expected exactly {expected}")
    try:
        if expected == 0:  # one-shot decompress() returns b"" for these without reading on
            dobj = zstandard.ZstdDecompressor().decompressobj()
            out = dobj.decompress(body)
            if not dobj.eof or dobj.unused_data:
                raise zstandard.ZstdError("truncated frame or trailing data")
        else:
            out = zstandard.ZstdDecompressor().decompress(
                body, max_output_size=expected, allow_extra_data=False
            )
    except zstandard.ZstdError as exc:
        raise PayloadError(f"zstd body does not decompress: {exc}") from exc
    if len(out) != expected:
        raise PayloadError(f"zstd body decompressed to {len(out)} bytes, expected {expected}")
    return memoryview(out)


def zstd_frame(parts: Sequence[bytes | memoryview]) -> bytes:
    """One zstd frame (level ZSTD_LEVEL) of ``parts`` one after the other, declaring its
    content size (which :func:`unzstd` insists on)."""
    cobj = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj(size=sum(len(p) for p in parts))
    return b"".join([cobj.compress(p) for p in parts] + [cobj.flush()])
