"""Shamir secret sharing (Shamir 1979) of byte strings over GF(p), p = 2**61 - 1.

Why this field: p is a Mersenne prime, so reduction is a shift and an add, and every
field element fits a numpy ``uint64``; a product of two elements (122 bits) is formed
from 32-bit halves without Python integers or object arrays (:func:`mulmod`). A secret
(a 32-byte seed or X25519 secret key) is cut into 7-byte chunks, each < 2**56 < p, so a
32-byte secret is 5 field elements and each share of it is 5 x 8 = 40 bytes. All chunks
share one polynomial evaluation loop (Horner over the degree, vectorised over chunks and
share holders).

A share is ``(x, y)`` with ``x`` in ``[1, p)`` (the holder's index, never 0: the secret
is the polynomial at 0) and ``y`` a uint64 vector. Any ``threshold`` shares reconstruct
the secret (Lagrange interpolation at 0); fewer are consistent with every secret, since
the ``threshold - 1`` random coefficients come from the OS's CSPRNG (``os.urandom``),
uniform over the field by rejection.

Errors: ``ValueError`` for a programming mistake (bad threshold, duplicate or zero x);
``PayloadError`` for share bytes of the wrong size or a non-canonical field element
(share bytes come from peers).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from fednode.errors import PayloadError

__all__ = [
    "CHUNK",
    "P",
    "combine",
    "elements_for",
    "mulmod",
    "share_from_bytes",
    "share_to_bytes",
    "split",
]

P = (1 << 61) - 1
_P = np.uint64(P)
#: bytes of secret per field element
CHUNK = 7
_M32 = np.uint64(0xFFFFFFFF)
_M29 = np.uint64((1 << 29) - 1)


def _reduce(x: np.ndarray) -> np.ndarray:
    """``x mod p`` for uint64 ``x`` (any value below 2**64)."""
    x = (x & _P) + (x >> np.uint64(61))  # < 2**61 + 8
    return np.where(x >= _P, x - _P, x)


def addmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a + b) mod p`` for field elements (no overflow: both < 2**61)."""
    s = a + b
    return np.where(s >= _P, s - _P, s)


def mulmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a * b) mod p`` for uint64 field elements, elementwise, in uint64 only.

    With ``a = a1 2**32 + a0`` and ``b = b1 2**32 + b0`` (``a1, b1 < 2**29``)::

        a b = a1 b1 2**64 + (a1 b0 + a0 b1) 2**32 + a0 b0
        2**64 = 8 (mod p);  mid 2**32 = (mid >> 29) 2**61 + (mid & (2**29-1)) 2**32
                                      = (mid >> 29) + ((mid & (2**29-1)) << 32)  (mod p)
    every partial term stays below 2**62 and their sum below 2**63.
    """
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    a1, a0 = a >> np.uint64(32), a & _M32
    b1, b0 = b >> np.uint64(32), b & _M32
    mid = a1 * b0 + a0 * b1  # < 2**62
    hi = (a1 * b1) << np.uint64(3)  # < 2**61
    mid_t = (mid >> np.uint64(29)) + ((mid & _M29) << np.uint64(32))  # < 2**33 + 2**61
    return _reduce(hi + mid_t + _reduce(a0 * b0))


def elements_for(n_bytes: int) -> int:
    """Field elements per share of an ``n_bytes`` secret."""
    return -(-n_bytes // CHUNK)


def _to_elements(secret: bytes) -> np.ndarray:
    m = elements_for(len(secret))
    padded = secret.ljust(m * CHUNK, b"\0")
    out = np.zeros((m, 8), dtype=np.uint8)
    out[:, :CHUNK] = np.frombuffer(padded, dtype=np.uint8).reshape(m, CHUNK)
    return out.view("<u8").reshape(m).astype(np.uint64)


def _from_elements(elems: np.ndarray, n_bytes: int) -> bytes:
    raw = elems.astype("<u8").view(np.uint8).reshape(-1, 8)
    if raw[:, CHUNK:].any():
        raise PayloadError("reconstructed secret is not a byte string: wrong shares")
    return raw[:, :CHUNK].tobytes()[:n_bytes]


def _random_elements(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform field elements from os.urandom (61 random bits, value p rejected)."""
    count = int(np.prod(shape))
    out = np.empty(count, dtype=np.uint64)
    filled = 0
    for _ in range(64):  # bounded: each draw is rejected with probability 2**-61
        draw = np.frombuffer(os.urandom(8 * (count - filled)), dtype="<u8").astype(np.uint64)
        draw = draw & _P
        draw = draw[draw != _P]
        out[filled : filled + draw.size] = draw
        filled += draw.size
        if filled == count:
            return out.reshape(shape)
    raise RuntimeError("os.urandom kept returning 2**61 - 1")  # pragma: no cover


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """Shares ``(x, y)`` of ``secret`` for holders ``xs``; any ``threshold`` of them
    reconstruct it. ``threshold == 1`` gives every holder the secret itself."""
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("the secret must be non-empty bytes")
    if threshold < 1 or threshold > len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}] (the holder count)")
    if len(set(xs)) != len(xs) or any(not 0 < x < P for x in xs):
        raise ValueError("holder x coordinates must be distinct and in [1, p)")
    s = _to_elements(secret)
    coeffs = _random_elements((threshold - 1, s.size))  # degree 1 .. t-1
    x = np.array(xs, dtype=np.uint64)[:, None]  # (holders, 1)
    y = np.zeros((len(xs), s.size), dtype=np.uint64)
    for c in coeffs[::-1]:  # Horner from the top coefficient down to the secret
        y = addmod(mulmod(y, x), c[None, :])
    y = addmod(mulmod(y, x), s[None, :])
    return [(int(xi), y[i].copy()) for i, xi in enumerate(xs)]


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Lagrange coefficients ``l_i`` with ``f(0) = sum l_i f(x_i)`` (mod p); cached, as
    the server reconstructs many secrets from the same holders."""
    return list(_lagrange(tuple(xs)))


@functools.lru_cache(maxsize=1024)
def _lagrange(xs: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % P
                den = den * (xj - xi) % P
        out.append(num * pow(den, -1, P) % P)
    return tuple(out)


def combine(shares: Sequence[tuple[int, np.ndarray]], n_bytes: int) -> bytes:
    """The ``n_bytes`` secret from shares (pass exactly ``threshold`` of them: more are
    fine, fewer give a wrong secret, usually refused as non-canonical)."""
    xs = [x for x, _ in shares]
    if not shares or len(set(xs)) != len(xs) or any(not 0 < x < P for x in xs):
        raise ValueError("shares need distinct x coordinates in [1, p)")
    ys = np.stack([np.asarray(y, dtype=np.uint64) for _, y in shares])
    if ys.shape[1] != elements_for(n_bytes) or (ys >= _P).any():
        raise PayloadError(f"shares of a {n_bytes}-byte secret must be field elements")
    coef = np.array(lagrange_at_zero(xs), dtype=np.uint64)[:, None]
    terms = mulmod(ys, coef)  # each < p
    acc = np.zeros(ys.shape[1], dtype=np.uint64)
    for i in range(0, len(terms), 6):  # six terms < 6 (2**61) plus acc < 2**64
        acc = _reduce(acc + terms[i : i + 6].sum(axis=0, dtype=np.uint64))
    return _from_elements(acc, n_bytes)


def share_to_bytes(y: np.ndarray) -> bytes:
    """A share's y as little-endian uint64s (8 bytes per field element)."""
    return np.asarray(y, dtype=np.uint64).astype("<u8").tobytes()


def share_from_bytes(data: bytes, n_bytes: int) -> np.ndarray:
    """Inverse of :func:`share_to_bytes` for a share of an ``n_bytes`` secret; checks
    the length and that every element is canonical (< p). Errors: PayloadError."""
    m = elements_for(n_bytes)
    if not isinstance(data, bytes) or len(data) != 8 * m:
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise PayloadError(f"a share of a {n_bytes}-byte secret is {8 * m} bytes, got {size}")
    y = np.frombuffer(data, dtype="<u8").astype(np.uint64)
    if (y >= _P).any():
        raise PayloadError("share element is not below the field prime 2**61 - 1")
    return y
