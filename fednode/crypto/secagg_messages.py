"""The messages and public round parameters of secure aggregation (:mod:`.secagg`).

Every message is a frozen dataclass of ints, strings, bytes and tuples of those, so it
maps field for field onto a CBOR array (:func:`to_cbor`; nothing is pickled). Client
messages carry an Ed25519 signature by the sender's node identity over
:func:`signed_bytes` (a CBOR array starting with a domain tag and the message kind, and
holding the round number), so a message is bound to its sender, its kind and its round
whatever transport carried it.

Stage by stage (Bonawitz et al. 2017, Fig. 4; SecAgg+ neighbourhoods, Bell et al. 2020)::

    0 client -> server  AdvertiseKeys      two X25519 public keys, signed
      server -> client  KeysForYou         the neighbours' AdvertiseKeys
    1 client -> server  ShareKeys          one EncryptedShare per neighbour (and itself)
      server -> client  SharesForYou       the EncryptedShares addressed to it
    2 client -> server  MaskedInput        y = x + PRG(b) + sum ±PRG(s_uv)  mod M
      server -> client  UnmaskRequest      who survived, who dropped
    3 client -> server  UnmaskResponse     shares of b (survivors), of sk (dropped)
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import cbor2

from fednode.crypto.fixedpoint import FixedPoint
from fednode.crypto.identity import public_key_from_peer_id, verify
from fednode.errors import AuthError, ConfigError

__all__ = [
    "AdvertiseKeys",
    "EncryptedShare",
    "KeysForYou",
    "MaskedInput",
    "SecAggParams",
    "ShareKeys",
    "SharesForYou",
    "UnmaskRequest",
    "UnmaskResponse",
    "check_signature",
    "signed_bytes",
    "to_cbor",
    "wire_size",
]

SIGN_DOMAIN = "fednode-secagg-v1"


@dataclass(frozen=True, slots=True)
class SecAggParams:
    """What every member and the server agree on before stage 0 (public).

    ``members`` are the selected clients' PeerIDs; a member's Shamir x coordinate is its
    index in ``members`` plus one. ``threshold`` is ``t``: shares needed to reconstruct
    a secret, and the fewest members allowed at any stage. ``neighbours`` is SecAgg+'s
    ``k`` (``>= len(members) - 1`` is classic SecAgg)."""

    round: int
    round_seed: bytes
    members: tuple[str, ...]
    threshold: int
    neighbours: int
    encoding: FixedPoint
    dim: int

    def __post_init__(self) -> None:
        n = len(self.members)
        if not isinstance(self.round, int) or self.round < 0:
            raise ConfigError("secagg.round", self.round, "an integer >= 0")
        if not isinstance(self.round_seed, bytes) or len(self.round_seed) != 32:
            raise ConfigError("secagg.round_seed", self.round_seed, "32 bytes")
        if n < 2 or len(set(self.members)) != n or tuple(sorted(self.members)) != self.members:
            raise ConfigError("secagg.members", self.members, "at least 2 distinct ids, sorted")
        if not isinstance(self.neighbours, int) or self.neighbours < 2:
            raise ConfigError("secagg.neighbours", self.neighbours, "an integer >= 2")
        holders = min(n - 1, 2 * (-(-self.neighbours // 2))) + 1
        if not isinstance(self.threshold, int) or not 2 <= self.threshold <= holders:
            raise ConfigError(
                "secagg.threshold",
                self.threshold,
                f"an integer in [2, {holders}] (neighbours + 1 share holders per member)",
            )
        if self.encoding.n < n:
            raise ConfigError(
                "secagg.encoding.n", self.encoding.n, f">= {n}, the number of members"
            )
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError("secagg.dim", self.dim, "an integer >= 1")

    def x_of(self, member: str) -> int:
        """The member's Shamir x coordinate (its index in ``members`` plus one)."""
        return _x_table(self.members)[member]


@functools.lru_cache(maxsize=16)
def _x_table(members: tuple[str, ...]) -> dict[str, int]:
    return {m: i + 1 for i, m in enumerate(members)}


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    round: int
    sender: str
    enc_pk: bytes  # X25519, for the EncryptedShares addressed to the sender
    mask_pk: bytes  # X25519, for the pairwise masks
    signature: bytes

    def payload(self) -> bytes:
        return signed_bytes("advertise", self.round, self.sender, self.enc_pk, self.mask_pk)


@dataclass(frozen=True, slots=True)
class KeysForYou:
    round: int
    receiver: str
    keys: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True, slots=True)
class EncryptedShare:
    """``sender``'s shares of its ``b`` and mask key for ``receiver``: a NaCl ``Box``
    (X25519 + XSalsa20-Poly1305, random nonce in front) from the sender's ``enc`` key to
    the receiver's, of the CBOR array ``[round, sender, receiver, b_share, sk_share]``."""

    round: int
    sender: str
    receiver: str
    ciphertext: bytes
    signature: bytes

    def payload(self) -> bytes:
        return signed_bytes("share", self.round, self.sender, self.receiver, self.ciphertext)


@dataclass(frozen=True, slots=True)
class ShareKeys:
    round: int
    sender: str
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, slots=True)
class SharesForYou:
    round: int
    receiver: str
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, slots=True)
class MaskedInput:
    round: int
    sender: str
    data: bytes  # dim x width little-endian bytes (FixedPoint.to_bytes)
    signature: bytes

    def payload(self) -> bytes:
        return signed_bytes("masked", self.round, self.sender, self.data)


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    round: int
    survivors: tuple[str, ...]  # members whose masked input the server holds
    dropped: tuple[str, ...]  # members that shared keys but sent no masked input


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Shares held by ``sender``: of ``b`` for survivors, of the mask key for dropped
    members; each entry is ``(owner, share bytes)``."""

    round: int
    sender: str
    seed_shares: tuple[tuple[str, bytes], ...]
    key_shares: tuple[tuple[str, bytes], ...]
    signature: bytes

    def payload(self) -> bytes:
        return signed_bytes(
            "unmask", self.round, self.sender, list(self.seed_shares), list(self.key_shares)
        )


def signed_bytes(kind: str, *fields: Any) -> bytes:
    """The bytes a client signs for a message of ``kind`` (a CBOR array)."""
    return cbor2.dumps([SIGN_DOMAIN, kind, *fields])


def check_signature(sender: str, payload: bytes, signature: bytes) -> None:
    """Errors: AuthError (peer=sender) unless ``signature`` is ``sender``'s over ``payload``."""
    pk = _public_key(sender)
    if not verify(pk, payload, signature):
        raise AuthError("secagg message signature does not verify", peer=sender)


@functools.lru_cache(maxsize=4096)
def _public_key(peer_id: str) -> bytes:
    return public_key_from_peer_id(peer_id)  # AuthError is not cached: it propagates


def to_cbor(msg: object) -> list[Any]:
    """The message as the CBOR array it will travel as (fields in declaration order)."""
    return list(dataclasses.astuple(msg))  # type: ignore[call-overload]


def wire_size(msg: object) -> int:
    """Bytes of the message CBOR-encoded (the body; the frame header is not counted)."""
    return len(cbor2.dumps(to_cbor(msg)))
