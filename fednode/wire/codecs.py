"""Update codecs: compress a flat float32 model delta for the wire.

A model update is one contiguous 1-D float32 vector (``wire/tensors.py``). A codec
turns it into payload bytes and back (the numeric kernels are ``wire/quantize.py``'s).
The sender keeps an :class:`ErrorFeedback` residual so that what compression drops this
round is sent in a later one.

Spec strings (``parse_codec``; ``Codec.spec`` is the canonical form)::

    spec   := base ["+zstd"]
    base   := "none" | "fp16" | int8 | "topk:" F ["+fp16" | "+" int8]
    int8   := "int8" [":stochastic"] [":chunk=" N]      N in 1..2**24, default 4096

``none`` is raw little-endian float32 (decode is a zero-copy read-only view);
``fp16`` casts to IEEE half, clipping to +-65504 so a finite input never turns into
Inf; ``int8`` stores one float32 scale ``max|x|/127`` per chunk of N values and
rounds to nearest (or stochastically, unbiased, with ``:stochastic``; QSGD, Alistarh
et al. 2017); ``topk:F`` keeps the ``k = clamp(round(F*n), 1, n)`` largest-|x|
entries (``k = 0`` when ``n = 0``) with fp16 or int8 values (Stich et al. 2018,
"Sparsified SGD with memory"; Lin et al. 2018, "Deep Gradient Compression").
``+zstd`` compresses the body with zstandard level 3.

Payload layout (all integers little-endian)::

    header  8 bytes  magic 0xFD, version 1, codec id, flags (bit 0 = zstd body), n (u32)
    ext              int8: chunk (u32) | topk: k (u32), index width (u8) [, chunk (u32)]
    body             none: f32[n] | fp16: f16[n] | int8: f32 scales[ceil(n/chunk)], i8[n]
                     topk: gaps uW[k], then the k values as f16[k] or as the int8 body
    (with +zstd the body is one zstd frame that must declare its exact content size)

Top-k indices are sorted and delta-encoded: ``gap[0] = idx[0]``, ``gap[i] = idx[i] -
idx[i-1]`` (so ``gap[i] >= 1`` for i >= 1), stored with the narrowest width W of
u8/u16/u32 that holds the largest gap. At 1% density gaps average 100, so indices
usually cost 2 bytes each.

Decode is the untrusted path. Before anything of size O(n) is allocated it checks
the header against the codec and ``n``, the ext fields (``k`` must equal the ``k``
this spec implies for ``n``; the chunk must equal the codec's), and the body size
(exact; for zstd the declared content size must equal the expected body size before
decompression, and trailing data is refused). Then int8 scales must be finite, >= 0
and small enough that no product overflows, and top-k indices must be strictly
increasing and below ``n``. Decoded values are not checked for NaN/Inf here: the
receiver checks every decoded update once, whatever the codec (``tensors.check_finite``).

Errors:
    ``parse_codec`` and constructors raise ``ConfigError("codec", ...)``.
    ``decode`` raises ``PayloadError`` for any malformed payload, and nothing else
    (``ValueError`` only if the caller's ``n`` is not in 0..2**32-1).
    ``encode`` raises ``ValueError`` for a non-1-D / non-float32 input (a caller bug)
    and ``LocalProtocolError`` if the vector holds NaN/Inf (sending it is forbidden).

Codec objects are immutable apart from the stochastic rounding generator; use one
codec instance per sending task.
"""

from __future__ import annotations

import copyreg
import functools
import operator
import re
import struct
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fednode.errors import ConfigError, FednodeError, LocalProtocolError, PayloadError
from fednode.wire.frames import byte_view
from fednode.wire.quantize import (
    F32,
    dequantize_int8,
    int8_body_size,
    quantize_int8,
    to_f16,
    unzstd,
    zstd_frame,
)
from fednode.wire.tensors import all_finite

__all__ = [
    "Codec",
    "ErrorFeedback",
    "Fp16Codec",
    "Int8Codec",
    "RawCodec",
    "TopKCodec",
    "codec_for",
    "parse_codec",
]

Seed = int | np.random.Generator | None

MAGIC = 0xFD
VERSION = 1
FLAG_ZSTD = 0x01
DEFAULT_CHUNK = 4096
MAX_CHUNK = 1 << 24
MAX_N = 0xFFFF_FFFF
MAX_SPEC_LEN = 100

# a codec holds a struct.Struct: make it deep-copyable (the simulator copies roles to restart)
copyreg.pickle(struct.Struct, lambda s: (struct.Struct, (s.format,)))
_HEADER = struct.Struct("<BBBBI")  # magic, version, codec id, flags, n
_ID_NONE, _ID_FP16, _ID_INT8, _ID_TOPK_FP16, _ID_TOPK_INT8 = 1, 2, 3, 4, 5
_ID_NAMES = {1: "none", 2: "fp16", 3: "int8", 4: "topk/fp16", 5: "topk/int8"}

_FRACTION_RE = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_CHUNK_RE = re.compile(r"chunk=([1-9]\d{0,8})")

_ACCEPTED = (
    "'none', 'fp16', 'int8[:stochastic][:chunk=N]' or 'topk:F[+fp16|+int8[:stochastic]"
    "[:chunk=N]]' (F in (0, 1], N in 1..16777216), optionally followed by '+zstd', "
    "e.g. 'topk:0.01+int8+zstd'"
)


class Codec(Protocol):
    """What every update codec provides; see the module docstring for the formats."""

    spec: str

    def encode(self, vec: F32) -> bytes: ...

    def encode_parts(self, vec: F32) -> tuple[bytes | memoryview, ...]: ...

    def decode(self, payload: bytes | memoryview, n: int) -> F32: ...


def _check_input(vec: F32) -> F32:
    if not isinstance(vec, np.ndarray) or vec.dtype != np.float32 or vec.ndim != 1:
        got = f"{vec.dtype}{list(vec.shape)}" if isinstance(vec, np.ndarray) else type(vec)
        raise ValueError(f"codec input must be a 1-D float32 numpy array, got {got}")
    if vec.size > MAX_N:
        raise ValueError(f"codec input has {vec.size} values, at most {MAX_N} supported")
    if not all_finite(vec):
        raise LocalProtocolError("update vector contains NaN or Inf; refusing to encode it")
    return np.ascontiguousarray(vec, dtype="<f4")


def _parse_int8_opts(arg: str) -> tuple[bool, int] | None:
    """``"stochastic:chunk=N"`` (any order, each at most once) -> (stochastic, chunk)."""
    stochastic, chunk = False, None
    for opt in arg.split(":") if arg else ():
        m = _CHUNK_RE.fullmatch(opt)
        if opt == "stochastic" and not stochastic:
            stochastic = True
        elif m and chunk is None:
            chunk = int(m.group(1))
        else:
            return None
    return stochastic, DEFAULT_CHUNK if chunk is None else chunk


def _int8_spec(stochastic: bool, chunk: int) -> str:
    tail = f":chunk={chunk}" if chunk != DEFAULT_CHUNK else ""
    return ("int8:stochastic" if stochastic else "int8") + tail


def _check_chunk(chunk: int, spec: str) -> None:
    if not 1 <= chunk <= MAX_CHUNK:
        raise ConfigError("codec", spec, f"an int8 chunk in 1..{MAX_CHUNK}")


# ---------------------------------------------------------------------------- codecs


class _BaseCodec:
    """Header, zstd and validation shared by all codecs; subclasses do the body."""

    spec: str
    _id: int
    _ext: struct.Struct | None = None

    def __init__(self, spec: str, *, zstd: bool) -> None:
        self._zstd = zstd
        self._flags = FLAG_ZSTD if zstd else 0
        self.spec = spec + ("+zstd" if zstd else "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    # subclass hooks
    def _encode_body(self, x: F32) -> tuple[tuple[int, ...], list[np.ndarray]]:
        raise NotImplementedError

    def _body_size(self, fields: tuple[int, ...], n: int) -> int:
        """Validate the ext fields against ``n`` and return the exact body size."""
        raise NotImplementedError

    def _decode_body(self, body: memoryview, fields: tuple[int, ...], n: int) -> F32:
        raise NotImplementedError

    def encode(self, vec: F32) -> bytes:
        """Encode a 1-D float32 vector. Errors: ValueError, LocalProtocolError."""
        return b"".join(self.encode_parts(vec))

    def encode_parts(self, vec: F32) -> tuple[bytes | memoryview, ...]:
        """The payload of :meth:`encode` as buffers to send one after the other.

        No copy is made to put them together: for ``none`` the last part is a view of
        ``vec`` itself (so ``vec`` must not change until the payload has been sent).
        Errors: ValueError, LocalProtocolError.
        """
        x = _check_input(vec)
        fields, arrays = self._encode_body(x)
        head = _HEADER.pack(MAGIC, VERSION, self._id, self._flags, x.size)
        if self._ext is not None:
            head += self._ext.pack(*fields)
        parts: list[bytes | memoryview] = [a.data.cast("B") for a in arrays]
        return (head, zstd_frame(parts)) if self._zstd else (head, *parts)

    def decode(self, payload: bytes | memoryview, n: int) -> F32:
        """Decode an untrusted payload into a float32 vector of length ``n``.

        Errors: PayloadError for anything malformed; ValueError if ``n`` is invalid.
        """
        n = operator.index(n)
        if not 0 <= n <= MAX_N:
            raise ValueError(f"n must be in 0..{MAX_N}, got {n}")
        mv = byte_view(payload)
        ext_size = self._ext.size if self._ext is not None else 0
        head_size = _HEADER.size + ext_size
        if len(mv) < head_size:
            raise PayloadError(
                f"{self.spec} payload too short: expected at least {head_size} bytes, got {len(mv)}"
            )
        magic, version, cid, flags, n_hdr = _HEADER.unpack_from(mv)
        if magic != MAGIC or version != VERSION:
            raise PayloadError(
                f"payload header: expected magic 0x{MAGIC:02x} version {VERSION}, "
                f"got 0x{magic:02x} version {version}"
            )
        if cid != self._id or flags != self._flags:
            got = _ID_NAMES.get(cid, f"unknown id {cid}") + ("+zstd" if flags == 1 else "")
            raise PayloadError(
                f"payload was encoded as {got} (flags 0x{flags:02x}), expected {self.spec}"
            )
        if n_hdr != n:
            raise PayloadError(f"payload holds {n_hdr} values, expected {n}")
        fields = self._ext.unpack_from(mv, _HEADER.size) if self._ext is not None else ()
        expected = self._body_size(fields, n)
        body = mv[head_size:]
        if self._zstd:
            body = unzstd(body, expected)
        elif len(body) != expected:
            raise PayloadError(
                f"{self.spec} body is {len(body)} bytes, expected exactly {expected} for n={n}"
            )
        return self._decode_body(body, fields, n)


class RawCodec(_BaseCodec):
    """``none``: raw little-endian float32; decode is a zero-copy read-only view."""

    _id = _ID_NONE

    def __init__(self, *, zstd: bool = False) -> None:
        super().__init__("none", zstd=zstd)

    def _encode_body(self, x: F32) -> tuple[tuple[int, ...], list[np.ndarray]]:
        return (), [x]

    def _body_size(self, fields: tuple[int, ...], n: int) -> int:
        return 4 * n

    def _decode_body(self, body: memoryview, fields: tuple[int, ...], n: int) -> F32:
        out = np.frombuffer(body, dtype="<f4", count=n)
        out.flags.writeable = False
        return out


class Fp16Codec(_BaseCodec):
    """``fp16``: IEEE half precision, clipped to +-65504 (relative error <= 2**-11)."""

    _id = _ID_FP16

    def __init__(self, *, zstd: bool = False) -> None:
        super().__init__("fp16", zstd=zstd)

    def _encode_body(self, x: F32) -> tuple[tuple[int, ...], list[np.ndarray]]:
        return (), [to_f16(x)]

    def _body_size(self, fields: tuple[int, ...], n: int) -> int:
        return 2 * n

    def _decode_body(self, body: memoryview, fields: tuple[int, ...], n: int) -> F32:
        return np.frombuffer(body, dtype="<f2", count=n).astype(np.float32)


class Int8Codec(_BaseCodec):
    """``int8``: per-chunk absmax scale, round-to-nearest or stochastic rounding."""

    _id = _ID_INT8
    _ext: struct.Struct | None = struct.Struct("<I")  # the base's declared type (mypyc)

    def __init__(
        self,
        *,
        chunk: int = DEFAULT_CHUNK,
        stochastic: bool = False,
        seed: Seed = None,
        zstd: bool = False,
    ) -> None:
        super().__init__(_int8_spec(stochastic, chunk), zstd=zstd)
        _check_chunk(chunk, self.spec)
        self.chunk = chunk
        self.stochastic = stochastic
        self._rng = np.random.default_rng(seed) if stochastic else None

    def _encode_body(self, x: F32) -> tuple[tuple[int, ...], list[np.ndarray]]:
        scales, q = quantize_int8(x, self.chunk, self._rng)
        return (self.chunk,), [scales, q]

    def _body_size(self, fields: tuple[int, ...], n: int) -> int:
        if fields[0] != self.chunk:
            raise PayloadError(f"int8 chunk is {fields[0]}, expected {self.chunk}")
        return int8_body_size(n, self.chunk)

    def _decode_body(self, body: memoryview, fields: tuple[int, ...], n: int) -> F32:
        return dequantize_int8(body, n, self.chunk)


class TopKCodec(_BaseCodec):
    """``topk:F``: the k largest-|x| entries as sorted delta-coded indices + values."""

    def __init__(
        self,
        fraction: float,
        *,
        values: str = "fp16",
        chunk: int = DEFAULT_CHUNK,
        stochastic: bool = False,
        seed: Seed = None,
        zstd: bool = False,
    ) -> None:
        fraction = float(fraction)
        spec = f"topk:{fraction!r}"
        if values == "int8":
            spec += "+" + _int8_spec(stochastic, chunk)
        if not 0.0 < fraction <= 1.0:
            raise ConfigError("codec", spec, "a top-k fraction F in (0, 1], e.g. 'topk:0.01'")
        if values not in ("fp16", "int8") or (values == "fp16" and stochastic):
            raise ConfigError("codec", spec, "top-k values 'fp16' or 'int8[:stochastic]'")
        super().__init__(spec, zstd=zstd)
        _check_chunk(chunk, self.spec)
        self.fraction = fraction
        self.int8 = values == "int8"
        self.chunk = chunk
        self._id = _ID_TOPK_INT8 if self.int8 else _ID_TOPK_FP16
        self._ext = struct.Struct("<IBI" if self.int8 else "<IB")
        self._rng = np.random.default_rng(seed) if stochastic else None

    def k_for(self, n: int) -> int:
        """How many entries this spec keeps out of ``n``."""
        return 0 if n == 0 else min(n, max(1, round(self.fraction * n)))

    def _values_size(self, k: int) -> int:
        return int8_body_size(k, self.chunk) if self.int8 else 2 * k

    def _encode_body(self, x: F32) -> tuple[tuple[int, ...], list[np.ndarray]]:
        n = x.size
        k = self.k_for(n)
        idx: npt.NDArray[np.intp]
        if k < n:
            idx = np.argpartition(np.abs(x), n - k)[n - k :]
            idx.sort()
        else:
            idx = np.arange(n, dtype=np.intp)
        gaps = np.diff(idx, prepend=np.intp(0))
        top = int(gaps.max()) if k else 0
        width = 1 if top <= 0xFF else 2 if top <= 0xFFFF else 4
        parts: list[np.ndarray] = [gaps.astype(f"<u{width}")]
        vals = x[idx]
        if self.int8:
            parts.extend(quantize_int8(vals, self.chunk, self._rng))
            return (k, width, self.chunk), parts
        parts.append(to_f16(vals))
        return (k, width), parts

    def _body_size(self, fields: tuple[int, ...], n: int) -> int:
        k, width = fields[0], fields[1]
        if k != self.k_for(n):
            raise PayloadError(f"top-k count is {k}, expected {self.k_for(n)} for n={n}")
        if width not in (1, 2, 4):
            raise PayloadError(f"top-k index width is {width}, expected 1, 2 or 4")
        if self.int8 and fields[2] != self.chunk:
            raise PayloadError(f"top-k int8 chunk is {fields[2]}, expected {self.chunk}")
        return k * width + self._values_size(k)

    def _decode_body(self, body: memoryview, fields: tuple[int, ...], n: int) -> F32:
        k, width = fields[0], fields[1]
        gaps = np.frombuffer(body, dtype=f"<u{width}", count=k)
        if k > 1 and not gaps[1:].all():
            i = int(np.flatnonzero(gaps[1:] == 0)[0]) + 1
            raise PayloadError(f"top-k indices must be strictly increasing; entry {i} repeats")
        idx = np.cumsum(gaps, dtype=np.int64)
        if k and idx[-1] >= n:
            raise PayloadError(f"top-k index {int(idx[-1])} out of range, expected < {n}")
        vbody = body[k * width :]
        if self.int8:
            vals = dequantize_int8(vbody, k, self.chunk)
        else:
            vals = np.frombuffer(vbody, dtype="<f2", count=k).astype(np.float32)
        out = np.zeros(n, dtype=np.float32)
        out[idx] = vals
        return out


# ----------------------------------------------------------------------- entry points


def parse_codec(spec: str, *, seed: Seed = None) -> Codec:
    """Build the codec a spec string names; ``seed`` feeds stochastic rounding.

    Errors: ``ConfigError("codec", spec, <what is accepted>)``.
    """
    if not isinstance(spec, str) or len(spec) > MAX_SPEC_LEN:
        raise ConfigError("codec", spec, f"a string of at most {MAX_SPEC_LEN} chars: {_ACCEPTED}")
    parts = spec.strip().split("+")
    zstd = len(parts) > 1 and parts[-1] == "zstd"
    if zstd:
        parts.pop()
    try:
        codec = _build(parts, zstd, seed)
    except ConfigError as exc:  # report the spec as the user wrote it
        raise ConfigError("codec", spec, exc.expected) from None
    if codec is None:
        raise ConfigError("codec", spec, _ACCEPTED)
    return codec


def _build(parts: list[str], zstd: bool, seed: Seed) -> Codec | None:
    name, _, arg = parts[0].partition(":")
    rest = parts[1:]
    if name == "topk" and len(rest) <= 1 and _FRACTION_RE.fullmatch(arg):
        vname, _, varg = (rest[0] if rest else "fp16").partition(":")
        opts = _parse_int8_opts(varg) if vname == "int8" else None
        if vname == "fp16" and not varg:
            return TopKCodec(float(arg), zstd=zstd)
        if opts is not None:
            stochastic, chunk = opts
            return TopKCodec(
                float(arg), values="int8", chunk=chunk, stochastic=stochastic, seed=seed, zstd=zstd
            )
    elif not rest and name in ("none", "fp16") and not arg:
        return RawCodec(zstd=zstd) if name == "none" else Fp16Codec(zstd=zstd)
    elif not rest and name == "int8" and (opts := _parse_int8_opts(arg)) is not None:
        stochastic, chunk = opts
        return Int8Codec(chunk=chunk, stochastic=stochastic, seed=seed, zstd=zstd)
    return None


@functools.lru_cache(maxsize=64)
def _codec(spec: str) -> Codec:
    return parse_codec(spec)


def codec_for(spec: str) -> Codec:
    """The (cached) codec named by ``spec`` for decoding.

    Errors: PayloadError if ``spec`` is unknown or not in canonical form (``Codec.spec``:
    one spelling per codec, as senders write it).
    """
    try:
        codec = _codec(spec)
    except FednodeError as exc:
        raise PayloadError(f"unknown codec {spec!r}: {exc}") from exc
    if codec.spec != spec:
        raise PayloadError(f"codec {spec!r} is not in canonical form {codec.spec!r}")
    return codec


class ErrorFeedback:
    """Sender-side residual memory (EF-SGD, Karimireddy et al. 2019; DGC, Lin et al. 2018).

    Each call encodes ``vec + residual`` and keeps what the codec lost as the new
    residual, so over many rounds the sum of decoded updates equals the sum of true
    updates minus the (bounded) current residual. If ``encode`` raises, the residual
    is unchanged.
    """

    def __init__(self, codec: Codec, n: int) -> None:
        self.codec = codec
        self.n = n
        self.residual: F32 = np.zeros(n, dtype=np.float32)

    def encode(self, vec: F32) -> bytes:
        """Encode ``vec`` plus the carried residual. Errors: as ``Codec.encode``."""
        if not isinstance(vec, np.ndarray) or vec.shape != (self.n,) or vec.dtype != np.float32:
            got = f"{vec.dtype}{list(vec.shape)}" if isinstance(vec, np.ndarray) else type(vec)
            raise ValueError(f"expected a float32 vector of length {self.n}, got {got}")
        corrected = vec + self.residual
        payload = self.codec.encode(corrected)
        np.subtract(corrected, self.codec.decode(payload, self.n), out=self.residual)
        return payload

    def reset(self) -> None:
        """Forget the residual (e.g. after the global model was replaced)."""
        self.residual.fill(0)
