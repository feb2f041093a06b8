"""Secure aggregation, client side: SecAgg+ (Bell et al. 2020) on the stages of Bonawitz
et al. 2017, sans-IO. The server side is :mod:`.secagg_server`; messages and the public
round parameters are :mod:`.secagg_messages`; masks and neighbourhoods :mod:`.masking`;
the encoding :mod:`.fixedpoint`; secret sharing :mod:`.shamir`.

A :class:`SecAggClient` is one member in one round. Its methods take the server's
message and return the member's next message; nothing here does I/O, reads a clock or
keeps state between rounds::

    c = SecAggClient(params, identity)
    adv = c.advertise()                    # stage 0
    share = c.share_keys(keys_for_you)     # stage 1
    masked = c.masked_input(shares_for_you, x)   # stage 2 (c.clipped: clipped count)
    reply = c.unmask(unmask_request)       # stage 3

Per round the member draws two X25519 key pairs (``enc``: the boxes its shares travel
in; ``mask``: pairwise mask agreement) and a 32-byte self-mask seed ``b``, all from the
OS CSPRNG. It Shamir-shares ``b`` and the mask secret key with threshold ``t`` among its
share holders: itself and its neighbours that advertised keys. Its masked input is::

    y = encode(x) + PRG(b) + sum over neighbours v that shared keys of ±PRG(s_uv)  mod M

(``+`` when ``u < v`` as strings, ``-`` otherwise). In unmasking it reveals, for each
member it holds shares of, the share of ``b`` if the server lists the member as a
survivor, or the share of the mask key if listed as dropped, never both: a request
listing a member as both, or this member as dropped (it sent its masked input: the
"came back" case), or asked twice, is refused.

Errors: ``RemoteProtocolError`` for a server message that breaks the protocol;
``AuthError`` for a bad signature or undecryptable share; ``PayloadError`` for malformed
share contents; ``SecAggAborted`` when fewer than ``t`` members remain;
``LocalProtocolError`` when a method is called out of order. State is unchanged by an
error.
"""

from __future__ import annotations

import enum
import os
from dataclasses import replace
from typing import Any

import cbor2
import nacl.exceptions
import nacl.public
import numpy as np

from fednode.crypto import shamir
from fednode.crypto.identity import Identity
from fednode.crypto.masking import agree, mask_stream, neighbours, pair_mask_key, self_mask_key
from fednode.crypto.secagg_messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeysForYou,
    MaskedInput,
    SecAggParams,
    ShareKeys,
    SharesForYou,
    UnmaskRequest,
    UnmaskResponse,
    check_signature,
)
from fednode.errors import (
    AuthError,
    ConfigError,
    LocalProtocolError,
    PayloadError,
    RemoteProtocolError,
    SecAggAborted,
)

__all__ = ["SECRET_BYTES", "SecAggClient", "ciphertext_size", "open_share"]

#: size of each shared secret: the seed ``b`` and an X25519 secret key
SECRET_BYTES = 32
SHARE_BYTES = 8 * shamir.elements_for(SECRET_BYTES)


class Stage(enum.Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASK = "mask"
    UNMASK = "unmask"
    DONE = "done"


def _plaintext(round_no: int, sender: str, receiver: str, b_share: bytes, k_share: bytes) -> bytes:
    return cbor2.dumps([round_no, sender, receiver, b_share, k_share])


def ciphertext_size(sender: str, receiver: str, round_no: int) -> int:
    """Length of an EncryptedShare's ciphertext (Box nonce + MAC + plaintext)."""
    plain = _plaintext(round_no, sender, receiver, bytes(SHARE_BYTES), bytes(SHARE_BYTES))
    return nacl.public.Box.NONCE_SIZE + 16 + len(plain)


def open_share(
    share: EncryptedShare, my_sk: nacl.public.PrivateKey, sender_enc_pk: bytes
) -> tuple[bytes, bytes]:
    """Decrypt and check one EncryptedShare; returns ``(b share, key share)`` bytes.

    Errors: AuthError if the box does not open; PayloadError if its contents are not
    ``[round, sender, receiver, 40 bytes, 40 bytes]`` matching the envelope."""
    try:
        plain = nacl.public.Box(my_sk, nacl.public.PublicKey(sender_enc_pk)).decrypt(
            share.ciphertext
        )
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise AuthError(f"secagg share does not decrypt: {exc}", peer=share.sender) from exc
    try:
        fields: Any = cbor2.loads(plain)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise PayloadError("secagg share plaintext is not CBOR", peer=share.sender) from exc
    expected = [share.round, share.sender, share.receiver]
    if not (isinstance(fields, list) and len(fields) == 5 and fields[:3] == expected):
        raise PayloadError("secagg share plaintext names another round/pair", peer=share.sender)
    b_share, k_share = fields[3], fields[4]
    for part in (b_share, k_share):  # checks length and field range
        shamir.share_from_bytes(part, SECRET_BYTES)
    return b_share, k_share


class SecAggClient:
    """One member's state in one secure-aggregation round (see the module docstring)."""

    def __init__(self, params: SecAggParams, identity: Identity) -> None:
        self.params = params
        self.identity = identity
        self.me = identity.peer_id
        if self.me not in params.members:
            raise ConfigError("secagg.members", len(params.members), f"to include {self.me}")
        self.neighbours = neighbours(params.members, params.round_seed, params.neighbours)[self.me]
        self._enc_sk = nacl.public.PrivateKey.generate()
        self._mask_sk = nacl.public.PrivateKey.generate()
        self._b = os.urandom(SECRET_BYTES)
        self._stage = Stage.ADVERTISE
        self._keys: dict[str, AdvertiseKeys] = {}
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (b share, key share)
        #: coordinates clipped by this member's encoding (set in stage 2)
        self.clipped: int | None = None

    @property
    def stage(self) -> Stage:
        return self._stage

    def _expect(self, stage: Stage, what: str) -> None:
        if self._stage is not stage:
            raise LocalProtocolError(f"secagg client: {what} in stage {self._stage.value}")

    def _check_round(self, round_no: int, what: str) -> None:
        if round_no != self.params.round:
            raise RemoteProtocolError(
                f"secagg {what} for round {round_no}, this round is {self.params.round}"
            )

    # ------------------------------------------------------------------ stage 0
    def advertise(self) -> AdvertiseKeys:
        self._expect(Stage.ADVERTISE, "advertise")
        unsigned = AdvertiseKeys(
            self.params.round,
            self.me,
            bytes(self._enc_sk.public_key),
            bytes(self._mask_sk.public_key),
            b"",
        )
        self._stage = Stage.SHARE
        return replace(unsigned, signature=self.identity.sign(unsigned.payload()))

    # ------------------------------------------------------------------ stage 1
    def share_keys(self, msg: KeysForYou) -> ShareKeys:
        """Check the neighbours' signed keys; share ``b`` and the mask key with them."""
        self._expect(Stage.SHARE, "share_keys")
        self._check_round(msg.round, "keys")
        if msg.receiver != self.me:
            raise RemoteProtocolError(f"secagg keys addressed to {msg.receiver}, not to us")
        keys: dict[str, AdvertiseKeys] = {}
        for adv in msg.keys:
            self._check_round(adv.round, "advertised keys")
            if adv.sender not in self.neighbours:
                raise RemoteProtocolError(f"secagg keys of {adv.sender}, not a neighbour")
            if adv.sender in keys:
                raise RemoteProtocolError(f"secagg keys of {adv.sender} twice")
            if len(adv.enc_pk) != 32 or len(adv.mask_pk) != 32:
                raise PayloadError("secagg advertised keys are not 32 bytes", peer=adv.sender)
            check_signature(adv.sender, adv.payload(), adv.signature)
            keys[adv.sender] = adv
        holders = sorted([self.me, *keys])
        t = self.params.threshold
        if len(holders) < t:
            raise SecAggAborted(f"secagg: {len(holders)} share holders, threshold is {t}")
        xs = [self.params.x_of(h) for h in holders]
        b_shares = shamir.split(self._b, t, xs)
        k_shares = shamir.split(bytes(self._mask_sk), t, xs)
        own_enc = bytes(self._enc_sk.public_key)
        out = []
        for h, (_, yb), (_, yk) in zip(holders, b_shares, k_shares, strict=True):
            pk = own_enc if h == self.me else keys[h].enc_pk
            box = nacl.public.Box(self._enc_sk, nacl.public.PublicKey(pk))
            plain = _plaintext(
                self.params.round, self.me, h, shamir.share_to_bytes(yb), shamir.share_to_bytes(yk)
            )
            ct = bytes(box.encrypt(plain))
            share = EncryptedShare(self.params.round, self.me, h, ct, b"")
            out.append(replace(share, signature=self.identity.sign(share.payload())))
        self._keys = keys
        self._stage = Stage.MASK
        return ShareKeys(self.params.round, self.me, tuple(out))

    # ------------------------------------------------------------------ stage 2
    def masked_input(self, msg: SharesForYou, x: np.ndarray) -> MaskedInput:
        """Store the shares addressed to us; return our masked, encoded input."""
        self._expect(Stage.MASK, "masked_input")
        self._check_round(msg.round, "shares")
        if msg.receiver != self.me:
            raise RemoteProtocolError(f"secagg shares addressed to {msg.receiver}, not to us")
        own_enc = bytes(self._enc_sk.public_key)
        held: dict[str, tuple[bytes, bytes]] = {}
        for share in msg.shares:
            self._check_round(share.round, "share")
            if share.receiver != self.me:
                raise RemoteProtocolError(f"secagg share for {share.receiver} sent to us")
            if share.sender != self.me and share.sender not in self._keys:
                raise RemoteProtocolError(f"secagg share from {share.sender}: no keys from it")
            if share.sender in held:
                raise RemoteProtocolError(f"secagg share from {share.sender} twice")
            check_signature(share.sender, share.payload(), share.signature)
            pk = own_enc if share.sender == self.me else self._keys[share.sender].enc_pk
            held[share.sender] = open_share(share, self._enc_sk, pk)
        t = self.params.threshold
        if self.me not in held:
            raise RemoteProtocolError("secagg shares: our own share is missing")
        if len(held) < t:
            raise SecAggAborted(f"secagg: {len(held)} members shared keys with us, need {t}")
        enc = self.params.encoding
        if np.asarray(x).shape != (self.params.dim,):
            raise PayloadError(
                f"secagg input shape {np.asarray(x).shape}, want ({self.params.dim},)"
            )
        y, clipped = enc.encode(x)
        self._add_masks(y, [p for p in held if p != self.me])
        self._held = held
        self.clipped = clipped
        self._stage = Stage.UNMASK
        data = enc.to_bytes(y & enc.mask)
        unsigned = MaskedInput(self.params.round, self.me, data, b"")
        return replace(unsigned, signature=self.identity.sign(unsigned.payload()))

    def _add_masks(self, y: np.ndarray, peers: list[str]) -> None:
        p = self.params
        mask = p.encoding.mask
        y += mask_stream(self_mask_key(self._b, p.round_seed, p.round, self.me), p.dim, mask)
        sk = bytes(self._mask_sk)
        for v in peers:
            shared = agree(sk, self._keys[v].mask_pk)
            m = mask_stream(pair_mask_key(shared, p.round_seed, p.round, self.me, v), p.dim, mask)
            if self.me < v:
                y += m
            else:
                y -= m

    # ------------------------------------------------------------------ stage 3
    def unmask(self, msg: UnmaskRequest) -> UnmaskResponse:
        """Reveal b-shares of survivors and key-shares of dropped members, never both."""
        if self._stage is Stage.DONE:
            raise RemoteProtocolError("secagg unmask asked twice in one round: refused")
        self._expect(Stage.UNMASK, "unmask")
        self._check_round(msg.round, "unmask request")
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        if len(survivors) != len(msg.survivors) or len(dropped) != len(msg.dropped):
            raise RemoteProtocolError("secagg unmask request repeats a member")
        both = survivors & dropped
        if both:
            raise RemoteProtocolError(
                f"secagg unmask request lists {sorted(both)[0]} as survivor and dropped: "
                "revealing both its self-mask and its mask key would expose its input"
            )
        if self.me not in survivors:
            raise RemoteProtocolError(
                "secagg unmask request does not list us as a survivor although we sent our "
                "masked input: refusing (it would reveal our mask key beside our input)"
            )
        if not (survivors | dropped) <= set(self.params.members):
            raise RemoteProtocolError("secagg unmask request names non-members")
        t = self.params.threshold
        if len(survivors) < t:
            raise SecAggAborted(f"secagg: {len(survivors)} survivors, threshold is {t}")
        seed = tuple((o, self._held[o][0]) for o in sorted(survivors) if o in self._held)
        keys = tuple((o, self._held[o][1]) for o in sorted(dropped) if o in self._held)
        unsigned = UnmaskResponse(self.params.round, self.me, seed, keys, b"")
        self._stage = Stage.DONE
        return replace(unsigned, signature=self.identity.sign(unsigned.payload()))
