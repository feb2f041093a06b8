"""Secure aggregation, server side (the aggregator of one round), sans-IO.

The server relays keys and encrypted shares, sums masked inputs, and at the end
reconstructs exactly the masks it needs to cancel: each survivor's self mask ``PRG(b)``
and, for each member that shared keys but sent no masked input, the pairwise masks its
surviving neighbours added (from its reconstructed mask key). It never asks for both
secrets of one member, and it refuses a masked input that arrives after the dropout
list went out (the "came back" case). The role drives it; the deadlines are the role's::

    s = SecAggServer(params)
    s.receive_advertise(m) ...;  keys = s.close_advertise()     # {member: KeysForYou}
    s.receive_shares(m) ...;     shares = s.close_shares()      # {member: SharesForYou}
    s.receive_masked(m) ...;     request = s.close_masked()     # UnmaskRequest, to survivors
    s.receive_unmask(m) ...;     result = s.finish()            # SecAggResult

Each ``close_*`` / ``finish`` raises ``SecAggAborted`` (and the server stays aborted)
when fewer than ``t`` members took part in that stage or a needed secret has fewer than
``t`` shares; no partial sum is ever returned. ``receive_*`` raise ``AuthError`` (bad
signature), ``RemoteProtocolError`` (wrong round, unknown or repeated sender, share to a
non-neighbour, message for a closed stage) or ``PayloadError`` (wrong lengths), and
leave the state unchanged. Calling a method out of order is ``LocalProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import nacl.bindings
import numpy as np

from fednode.crypto import shamir
from fednode.crypto.masking import agree, mask_stream, neighbours, pair_mask_key, self_mask_key
from fednode.crypto.secagg import SECRET_BYTES, Stage, ciphertext_size
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
from fednode.errors import LocalProtocolError, PayloadError, RemoteProtocolError, SecAggAborted

__all__ = ["SecAggResult", "SecAggServer"]


@dataclass(frozen=True, slots=True)
class SecAggResult:
    """The round's output: the sum of the survivors' quantised inputs."""

    round: int
    total: np.ndarray  # float64: total_int * 2**-frac_bits
    total_int: np.ndarray  # int64, exact
    survivors: tuple[str, ...]  # whose inputs are in the sum
    dropped: tuple[str, ...]  # shared keys, sent no masked input (masks removed)


class SecAggServer:
    """The aggregator's state in one secure-aggregation round."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.graph = neighbours(params.members, params.round_seed, params.neighbours)
        self._stage = Stage.ADVERTISE
        self._aborted: SecAggAborted | None = None
        self._keys: dict[str, AdvertiseKeys] = {}
        self._shares: dict[str, ShareKeys] = {}
        self._acc = np.zeros(params.dim, dtype=np.uint64)
        self._masked: set[str] = set()
        self._survivors: tuple[str, ...] = ()
        self._dropped: tuple[str, ...] = ()
        self._replies: dict[str, UnmaskResponse] = {}
        self._holders: dict[str, frozenset[str]] = {}

    @property
    def stage(self) -> Stage:
        return self._stage

    # ------------------------------------------------------------------ helpers
    def _receive(self, stage: Stage, round_no: int, sender: str, seen: object, what: str) -> None:
        if self._aborted is not None:
            raise RemoteProtocolError(f"secagg {what} after the round aborted", peer=sender)
        if self._stage is not stage:
            raise RemoteProtocolError(
                f"secagg {what} in stage {self._stage.value}: that stage is closed", peer=sender
            )
        if round_no != self.params.round:
            raise RemoteProtocolError(
                f"secagg {what} for round {round_no}, this is round {self.params.round}",
                peer=sender,
            )
        if sender not in self.params.members:
            raise RemoteProtocolError(f"secagg {what} from a non-member", peer=sender)
        if sender in seen:  # type: ignore[operator]
            raise RemoteProtocolError(f"secagg {what} twice from one member", peer=sender)

    def _close(self, stage: Stage, count: int, what: str) -> None:
        if self._aborted is not None:
            raise self._aborted
        if self._stage is not stage:
            raise LocalProtocolError(f"secagg server: close {what} in stage {self._stage.value}")
        t = self.params.threshold
        if count < t:
            self._abort(f"secagg round {self.params.round}: {count} members {what}, need {t}")

    def _abort(self, reason: str) -> NoReturn:
        self._aborted = SecAggAborted(reason)
        self._acc = np.zeros(0, dtype=np.uint64)  # nothing partial survives an abort
        raise self._aborted

    def holders(self, owner: str) -> frozenset[str]:
        """Who holds shares of ``owner``'s secrets: itself and its neighbours with keys."""
        if self._stage is Stage.ADVERTISE:
            return frozenset({owner} | (self.graph[owner] & self._keys.keys()))
        cached = self._holders.get(owner)
        if cached is None:  # fixed once the advertise stage is closed
            cached = self._holders[owner] = frozenset(
                {owner} | (self.graph[owner] & self._keys.keys())
            )
        return cached

    # ------------------------------------------------------------------ stage 0
    def receive_advertise(self, msg: AdvertiseKeys) -> None:
        self._receive(Stage.ADVERTISE, msg.round, msg.sender, self._keys, "keys")
        if len(msg.enc_pk) != 32 or len(msg.mask_pk) != 32:
            raise PayloadError("secagg advertised keys are not 32 bytes", peer=msg.sender)
        check_signature(msg.sender, msg.payload(), msg.signature)
        self._keys[msg.sender] = msg

    def close_advertise(self) -> dict[str, KeysForYou]:
        self._close(Stage.ADVERTISE, len(self._keys), "advertised keys")
        self._stage = Stage.SHARE
        r = self.params.round
        return {
            u: KeysForYou(r, u, tuple(self._keys[v] for v in sorted(self.holders(u) - {u})))
            for u in sorted(self._keys)
        }

    # ------------------------------------------------------------------ stage 1
    def receive_shares(self, msg: ShareKeys) -> None:
        self._receive(Stage.SHARE, msg.round, msg.sender, self._shares, "shares")
        if msg.sender not in self._keys:
            raise RemoteProtocolError("secagg shares from a member with no keys", peer=msg.sender)
        want = self.holders(msg.sender)
        got = [s.receiver for s in msg.shares]
        for share in msg.shares:
            if share.round != self.params.round or share.sender != msg.sender:
                raise RemoteProtocolError("secagg share of another round/sender", peer=msg.sender)
            if share.receiver not in want:
                raise RemoteProtocolError(
                    f"secagg share for {share.receiver}, not a neighbour", peer=msg.sender
                )
            size = ciphertext_size(share.sender, share.receiver, share.round)  # cheap
            if len(share.ciphertext) != size:
                raise PayloadError(
                    f"secagg share ciphertext of {len(share.ciphertext)} bytes, want {size}",
                    peer=msg.sender,
                )
        if len(set(got)) != len(got) or set(got) != want:
            raise RemoteProtocolError(
                f"secagg shares for {len(set(got))} holders, want its {len(want)}",
                peer=msg.sender,
            )
        for share in msg.shares:
            check_signature(share.sender, share.payload(), share.signature)
        self._shares[msg.sender] = msg

    def close_shares(self) -> dict[str, SharesForYou]:
        self._close(Stage.SHARE, len(self._shares), "shared keys")
        self._stage = Stage.MASK
        inbox: dict[str, list[EncryptedShare]] = {u: [] for u in self._shares}
        for sender in sorted(self._shares):
            for share in self._shares[sender].shares:
                if share.receiver in inbox:
                    inbox[share.receiver].append(share)
        r = self.params.round
        return {u: SharesForYou(r, u, tuple(inbox[u])) for u in sorted(inbox)}

    # ------------------------------------------------------------------ stage 2
    def receive_masked(self, msg: MaskedInput) -> None:
        self._receive(Stage.MASK, msg.round, msg.sender, self._masked, "masked input")
        if msg.sender not in self._shares:
            raise RemoteProtocolError("secagg masked input without shares", peer=msg.sender)
        y = self.params.encoding.from_bytes(msg.data, self.params.dim)  # PayloadError
        check_signature(msg.sender, msg.payload(), msg.signature)
        self._acc += y
        self._masked.add(msg.sender)

    def close_masked(self) -> UnmaskRequest:
        self._close(Stage.MASK, len(self._masked), "sent masked input")
        self._stage = Stage.UNMASK
        self._survivors = tuple(sorted(self._masked))
        self._dropped = tuple(sorted(set(self._shares) - self._masked))
        return UnmaskRequest(self.params.round, self._survivors, self._dropped)

    # ------------------------------------------------------------------ stage 3
    def receive_unmask(self, msg: UnmaskResponse) -> None:
        self._receive(Stage.UNMASK, msg.round, msg.sender, self._replies, "unmask reply")
        if msg.sender not in self._masked:
            raise RemoteProtocolError("secagg unmask reply from a non-survivor", peer=msg.sender)
        for entries, allowed in (
            (msg.seed_shares, self._survivors),
            (msg.key_shares, self._dropped),
        ):
            owners = [o for o, _ in entries]
            if len(set(owners)) != len(owners):
                raise RemoteProtocolError("secagg unmask reply repeats an owner", peer=msg.sender)
            for owner, data in entries:
                if owner not in allowed or msg.sender not in self.holders(owner):
                    raise RemoteProtocolError(
                        f"secagg unmask reply has a share of {owner} it may not send",
                        peer=msg.sender,
                    )
                try:
                    shamir.share_from_bytes(data, SECRET_BYTES)
                except PayloadError as exc:
                    raise PayloadError(str(exc), peer=msg.sender) from None
        check_signature(msg.sender, msg.payload(), msg.signature)
        self._replies[msg.sender] = msg

    def finish(self) -> SecAggResult:
        """Reconstruct the needed secrets, remove the masks, decode the sum."""
        self._close(Stage.UNMASK, len(self._replies), "answered the unmask request")
        p = self.params
        mask = p.encoding.mask
        seeds = self._collect("seed")
        keys = self._collect("key")
        total = self._acc.copy()
        for u in self._survivors:
            b = self._reconstruct(u, seeds.get(u))
            total -= mask_stream(self_mask_key(b, p.round_seed, p.round, u), p.dim, mask)
        for u in self._dropped:
            used_by = sorted(set(self.graph[u]) & self._masked)
            if not used_by:
                continue  # no survivor masked with u
            sk = self._reconstruct(u, keys.get(u))
            if nacl.bindings.crypto_scalarmult_base(sk) != self._keys[u].mask_pk:
                self._abort(f"secagg: {u}'s reconstructed mask key does not match its keys")
            for v in used_by:
                shared = agree(sk, self._keys[v].mask_pk)
                m = mask_stream(pair_mask_key(shared, p.round_seed, p.round, v, u), p.dim, mask)
                if v < u:  # v added +m
                    total -= m
                else:
                    total += m
        total &= mask
        self._stage = Stage.DONE
        exact = p.encoding.decode_int(total)
        return SecAggResult(
            p.round,
            exact.astype(np.float64) * p.encoding.quantum,
            exact,
            self._survivors,
            self._dropped,
        )

    def _collect(self, kind: str) -> dict[str, list[tuple[int, np.ndarray]]]:
        out: dict[str, list[tuple[int, np.ndarray]]] = {}
        for sender in sorted(self._replies):
            reply = self._replies[sender]
            entries = reply.seed_shares if kind == "seed" else reply.key_shares
            x = self.params.x_of(sender)
            for owner, data in entries:
                out.setdefault(owner, []).append((x, shamir.share_from_bytes(data, SECRET_BYTES)))
        return out

    def _reconstruct(self, owner: str, shares: list[tuple[int, np.ndarray]] | None) -> bytes:
        t = self.params.threshold
        have = len(shares or [])
        if shares is None or have < t:
            self._abort(f"secagg: {have} shares of {owner}'s secret arrived, need {t}")
        try:
            return shamir.combine(shares[:t], SECRET_BYTES)
        except PayloadError:
            self._abort(f"secagg: {owner}'s shares do not reconstruct a secret")
