"""Masks and neighbourhoods of secure aggregation: key derivation, the ChaCha20 mask
stream, X25519 key agreement and the SecAgg+ neighbour graph. Pure functions.

Key derivation (HKDF-SHA256, RFC 5869, from ``cryptography``), one key per purpose,
round and pair, so no two masks of a run share a stream::

    self mask key  = HKDF(ikm=b_u,         salt=round_seed, info=SELF  || round || u)
    pair mask key  = HKDF(ikm=X25519(sk_u, pk_v), salt=round_seed,
                          info=PAIR || round || min(u, v) || max(u, v))

where ``round`` is 8 bytes big-endian and each id is its UTF-8 bytes prefixed by a 2-byte
big-endian length. The mask of a key is the ChaCha20 keystream (RFC 7539 block
function, ``cryptography``'s ``algorithms.ChaCha20``, 16-byte nonce of zeros: each key
is used once) read as little-endian uint64s, one per coordinate, reduced modulo the
encoding ring ``M = 2**(8 width)`` (a power of two: no modular bias). numpy's random
generators are never used for masks (Flower's SecAgg+ expands 32-bit seeds with
``np.random.RandomState``).

The neighbour graph (Bell et al. 2020, SecAgg+): the round's members are put in a
pseudo-random order by ``SHA-256(round_seed || id)`` and each is joined to the
``ceil(k / 2)`` members on either side of it on the ring (a random Harary graph). Its
degree is ``k`` rounded up to even, or ``n - 1`` (everyone: classic SecAgg, Bonawitz et
al. 2017) when that is not smaller. Every member computes the same graph from public
inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import nacl.bindings
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fednode.errors import AuthError

__all__ = [
    "agree",
    "mask_stream",
    "neighbours",
    "pair_mask_key",
    "self_mask_key",
]

DOMAIN = b"fednode-secagg-v1 "
SELF = DOMAIN + b"self-mask "
PAIR = DOMAIN + b"pair-mask "
_ZERO_NONCE = bytes(16)


def _id_bytes(peer: str) -> bytes:
    raw = peer.encode()
    return len(raw).to_bytes(2, "big") + raw


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def self_mask_key(seed_b: bytes, round_seed: bytes, round_no: int, peer: str) -> bytes:
    """The ChaCha20 key of member ``peer``'s self mask ``PRG(b)``."""
    return _hkdf(seed_b, round_seed, SELF + round_no.to_bytes(8, "big") + _id_bytes(peer))


def pair_mask_key(shared: bytes, round_seed: bytes, round_no: int, a: str, b: str) -> bytes:
    """The ChaCha20 key of the mask between ``a`` and ``b`` (symmetric in a, b)."""
    lo, hi = sorted((a, b))
    info = PAIR + round_no.to_bytes(8, "big") + _id_bytes(lo) + _id_bytes(hi)
    return _hkdf(shared, round_seed, info)


def agree(secret_key: bytes, public_key: bytes) -> bytes:
    """Raw X25519 shared secret. Errors: AuthError for a low-order public key (the
    all-zero result that would make the mask public)."""
    try:
        shared = nacl.bindings.crypto_scalarmult(secret_key, public_key)
    except Exception as exc:  # nacl raises RuntimeError/TypeError/ValueError here
        raise AuthError(f"X25519 key agreement failed: {exc}") from exc
    if shared == bytes(32):
        raise AuthError("X25519 public key of low order: refusing an all-zero shared secret")
    return shared


def mask_stream(key: bytes, dim: int, mask: np.uint64) -> np.ndarray:
    """``dim`` uint64 mask values from the ChaCha20 keystream of ``key``, each ``& mask``."""
    enc = Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), mode=None).encryptor()
    stream = enc.update(bytes(8 * dim))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64) & mask


def ring_order(members: Sequence[str], round_seed: bytes) -> list[str]:
    """The members in the round's pseudo-random ring order (public, deterministic)."""
    return sorted(members, key=lambda m: hashlib.sha256(round_seed + _id_bytes(m)).digest())


def neighbours(members: Sequence[str], round_seed: bytes, k: int) -> dict[str, frozenset[str]]:
    """Each member's neighbour set in the round's SecAgg+ graph (never itself)."""
    ring = ring_order(members, round_seed)
    n = len(ring)
    half = -(-k // 2)
    if 2 * half >= n - 1:
        everyone = frozenset(ring)
        return {m: everyone - {m} for m in ring}
    out: dict[str, frozenset[str]] = {}
    for pos, m in enumerate(ring):
        out[m] = frozenset(ring[(pos + d) % n] for d in range(-half, half + 1) if d != 0)
    return out
