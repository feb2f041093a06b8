"""Fixed-point encoding of float vectors into the ring Z_M for secure aggregation.

A value ``x`` is clipped to ``[-clip, clip]`` (every clipped coordinate is counted and
returned, never silently), scaled by ``2**frac_bits`` and rounded to the nearest integer
``q`` with ``|q| <= Q = round(clip * 2**frac_bits)``. ``q`` is stored in two's complement
modulo ``M = 2**(8 * width)``: a ring whose elements are ``width`` whole bytes, so a
uniform mask leaves every byte of a masked update uniform.

The sum of ``n`` encoded vectors is a sum of integers in ``[-n*Q, n*Q]``; it decodes
without wrapping iff ``n*Q <= M/2 - 1``, so ``width`` is the smallest byte count with::

    n * Q  <  2**(8 * width - 1),    width <= 8 (uint64 arithmetic; M <= 2**64)

and :class:`FixedPoint` refuses (``ConfigError`` naming ``frac_bits``) a combination of
``n``, ``clip`` and ``frac_bits`` that needs more than 64 bits. Arithmetic is plain numpy
``uint64`` (it wraps modulo 2**64, a multiple of every ``M`` used), reduced with a mask.

:meth:`FixedPoint.decode_int` returns the exact integer sum; :meth:`FixedPoint.decode`
divides it by ``2**frac_bits`` in float64, exact while ``|sum| < 2**53`` (always so when
``width <= 6``).

Unlike Flower's SecAgg+ (which clips silently to ±8 and packs into 32 bits), the range is
configured, clipping is reported, and a sum that could wrap is refused at start.

Errors: ``ConfigError`` for impossible parameters; ``PayloadError`` for a non-finite
input or an encoded vector of the wrong shape or dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fednode.errors import ConfigError, PayloadError

__all__ = ["MAX_BITS", "FixedPoint"]

#: the widest ring: numpy uint64 arithmetic
MAX_BITS = 64


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """Encoding for sums of up to ``n`` vectors with values in ``[-clip, clip]``."""

    n: int
    clip: float
    frac_bits: int
    #: bytes per coordinate on the wire; derived, see the module docstring
    width: int = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ConfigError("secagg.n", self.n, "an integer >= 1 (the number of summands)")
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError("secagg.clip", self.clip, "a finite number > 0")
        if not isinstance(self.frac_bits, int) or not 0 <= self.frac_bits <= 62:
            raise ConfigError("secagg.frac_bits", self.frac_bits, "an integer in [0, 62]")
        bound = self.n * self.q_max  # |sum| <= bound
        bits = bound.bit_length() + 1  # sign bit
        if bits > MAX_BITS:
            raise ConfigError(
                "secagg.frac_bits",
                self.frac_bits,
                f"at most {self.max_frac_bits(self.n, self.clip)} for n={self.n} and "
                f"clip={self.clip}: n * round(clip * 2**frac_bits) must be < 2**63 so that "
                "the sum cannot wrap in 64-bit arithmetic",
            )
        object.__setattr__(self, "width", max(1, math.ceil(bits / 8)))

    # ------------------------------------------------------------------ derived numbers
    @property
    def q_max(self) -> int:
        """``Q``: the largest magnitude of an encoded value (the clip range, quantised)."""
        return round(self.clip * 2**self.frac_bits)

    @property
    def modulus_bits(self) -> int:
        return 8 * self.width

    @property
    def modulus(self) -> int:
        return 1 << self.modulus_bits

    @property
    def mask(self) -> np.uint64:
        """``M - 1``: reducing a uint64 modulo ``M`` is ``& mask``."""
        return np.uint64(self.modulus - 1)

    @property
    def quantum(self) -> float:
        """The encoding step ``2**-frac_bits``; rounding error per value <= quantum / 2."""
        return 2.0**-self.frac_bits

    @staticmethod
    def max_frac_bits(n: int, clip: float) -> int:
        """The largest ``frac_bits`` for which ``n`` values of magnitude ``clip`` fit."""
        best = -1
        for f in range(63):
            if n * round(clip * 2**f) < 2 ** (MAX_BITS - 1):
                best = f
        return best

    # ------------------------------------------------------------------ encode / decode
    def quantise(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """The integers ``q`` (int64) that :meth:`encode` stores, and the clipped count."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 1:
            raise PayloadError(f"secagg input must be a 1-d vector, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise PayloadError("secagg input has non-finite values (nan or inf)")
        clipped = int(np.count_nonzero(np.abs(arr) > self.clip))
        q = np.rint(np.clip(arr, -self.clip, self.clip) * 2.0**self.frac_bits)
        q = np.clip(q, -self.q_max, self.q_max).astype(np.int64)
        return q, clipped

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """``(encoded uint64 vector in [0, M), number of clipped coordinates)``."""
        q, clipped = self.quantise(x)
        return q.view(np.uint64) & self.mask, clipped

    def decode_int(self, total: np.ndarray) -> np.ndarray:
        """The exact integer sum (int64) from a sum of encodings taken modulo ``M``."""
        arr = self._check(total) & self.mask
        if self.width == 8:
            return arr.view(np.int64).copy()
        half = np.uint64(self.modulus >> 1)
        signed = arr.astype(np.int64)
        signed[arr >= half] -= np.int64(self.modulus)
        return signed

    def decode(self, total: np.ndarray) -> np.ndarray:
        """The sum as float64: :meth:`decode_int` times ``2**-frac_bits``."""
        return self.decode_int(total).astype(np.float64) * self.quantum

    # ------------------------------------------------------------------ bytes on the wire
    def to_bytes(self, encoded: np.ndarray) -> bytes:
        """``width`` little-endian bytes per coordinate (the masked vector on the wire)."""
        arr = self._check(encoded)
        raw = arr.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)
        return raw[:, : self.width].tobytes()

    def from_bytes(self, data: bytes, dim: int) -> np.ndarray:
        """Inverse of :meth:`to_bytes`; ``PayloadError`` if the length is not ``dim * width``."""
        if len(data) != dim * self.width:
            raise PayloadError(
                f"secagg vector: expected {dim} x {self.width} = {dim * self.width} bytes, "
                f"got {len(data)}"
            )
        out = np.zeros((dim, 8), dtype=np.uint8)
        out[:, : self.width] = np.frombuffer(data, dtype=np.uint8).reshape(dim, self.width)
        return out.view("<u8").reshape(dim).astype(np.uint64, copy=False)

    def _check(self, arr: np.ndarray) -> np.ndarray:
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint64 or arr.ndim != 1:
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise PayloadError(f"secagg: expected a 1-d uint64 vector, got {got}")
        return arr
