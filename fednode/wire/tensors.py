"""Model parameters <-> one contiguous float32 vector plus a layout.

Everything that moves or aggregates models works on the flat vector: codecs compress it,
aggregators accumulate it, the wire carries its bytes. The :class:`Layout` (names and
shapes, in order) turns it back into named arrays as zero-copy views.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import PayloadError

DTYPE = np.dtype("<f4")
#: vectors from this many values on are checked with the sum-of-squares fast path
FAST_FINITE_MIN = 1 << 16


@dataclass(frozen=True, slots=True)
class Layout:
    """Names and shapes of a model's parameters, in vector order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]) -> Layout:
        items = list(arrays.items()) if isinstance(arrays, Mapping) else list(arrays)
        return cls(
            names=tuple(name for name, _ in items),
            shapes=tuple(tuple(int(d) for d in np.shape(a)) for _, a in items),
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """Number of float32 values in the flat vector."""
        return sum(self.sizes)

    @property
    def nbytes(self) -> int:
        return self.size * DTYPE.itemsize

    def fingerprint(self) -> str:
        """Short stable id of the layout; peers compare it to agree on the model."""
        text = ";".join(f"{n}:{'x'.join(map(str, s))}" for n, s in zip(self.names, self.shapes))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def views(self, vec: np.ndarray) -> dict[str, np.ndarray]:
        """Named, shaped views into ``vec`` (no copy)."""
        check_vector(vec, self.size)
        out: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = vec[offset : offset + size].reshape(shape)
            offset += size
        return out


def flatten(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Layout]:
    """Copy named arrays into one new contiguous float32 vector."""
    layout = Layout.of(arrays)
    vec = np.empty(layout.size, dtype=DTYPE)
    offset = 0
    for a, size in zip(arrays.values(), layout.sizes):
        vec[offset : offset + size] = np.asarray(a, dtype=DTYPE).reshape(-1)
        offset += size
    return vec, layout


def check_vector(vec: np.ndarray, size: int) -> None:
    """Raise :class:`PayloadError` unless ``vec`` is a 1-D float32 vector of ``size`` values."""
    if not isinstance(vec, np.ndarray) or vec.dtype != DTYPE or vec.ndim != 1:
        got = f"{type(vec).__name__} {getattr(vec, 'dtype', '?')} ndim={getattr(vec, 'ndim', '?')}"
        raise PayloadError(f"expected a 1-D float32 vector, got {got}")
    if vec.shape[0] != size:
        raise PayloadError(f"expected {size} values for this model, got {vec.shape[0]}")


#: ``ndarray.all()`` without its Python-level wrapper (~1 µs a call on small vectors)
_all_true = np.logical_and.reduce


def _squares_finite(vec: np.ndarray) -> bool:
    """True if ``vec`` is a large 1-D float vector whose sum of squares is finite, which
    proves every value finite: NaN and Inf propagate through one BLAS pass and squares
    cannot cancel. False decides nothing (a small vector, a NaN/Inf, or squares
    overflowing: float32 values around 1e19 and above). About 1.5x faster than
    ``np.isfinite(vec).all()`` on 20 MB, which also allocates a boolean array of the
    vector's length (``scripts/bench/wire.py``)."""
    if vec.ndim != 1 or vec.dtype.char not in "fd" or vec.size < FAST_FINITE_MIN:
        return False  # small: the exact check's temporary is cheap
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is the exact check's case
        return math.isfinite(float(np.dot(vec, vec)))


def all_finite(vec: np.ndarray) -> bool:
    """True iff no value of the float vector ``vec`` is NaN or infinite (the fast path
    above, else one exact element-wise pass)."""
    return _squares_finite(vec) or bool(_all_true(np.isfinite(vec)))


def check_finite(vec: np.ndarray) -> None:
    """Raise :class:`PayloadError` if any value is NaN or infinite.

    The receiver's one finiteness check of a decoded payload (codecs leave it to it): the
    fast path, and only if that does not decide, one exact pass whose mask also gives the
    count of bad values for the message.
    """
    if _squares_finite(vec):
        return
    bad = vec.size - int(np.count_nonzero(np.isfinite(vec)))
    if bad:
        raise PayloadError(f"expected finite values, got {bad} NaN/Inf of {vec.size}")


def from_bytes(buf: bytes | bytearray | memoryview, size: int) -> np.ndarray:
    """Zero-copy read-only float32 view of ``buf``; validates the length first."""
    if len(buf) != size * DTYPE.itemsize:
        raise PayloadError(
            f"expected {size * DTYPE.itemsize} bytes for {size} float32 values, got {len(buf)}"
        )
    vec = np.frombuffer(buf, dtype=DTYPE)
    if vec.flags.writeable:
        vec = vec.view()
        vec.flags.writeable = False
    return vec


def readonly(vec: np.ndarray) -> np.ndarray:
    """``vec`` if it is read-only, else a read-only view of it: safe to hand to many
    receivers without copying."""
    if vec.flags.writeable:
        vec = vec.view()
        vec.flags.writeable = False
    return vec
