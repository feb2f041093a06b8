"""Sign outgoing messages; verify incoming ones in a fixed order (pure: no I/O).

Signature input: ``b"fednode/v1\\0" || header`` where the CBOR header carries the
payload's length and BLAKE3-256 digest — so the 64-byte Ed25519 signature covers the
payload without hashing it twice.

:meth:`Receiver.open` checks, in this order, and stops at the first failure:

1. frame and header size limits               -> :class:`FrameTooLarge`
2. frame prefix, CBOR schema and types         -> :class:`SchemaError`
3. sender is a member (and is who the transport says sent it) -> :class:`AuthError`
4. Ed25519 signature                           -> :class:`AuthError`
5. replay window: timestamp skew, nonce cache  -> :class:`ReplayError`
6. recipient is this node                      -> :class:`AuthError`
7. payload length and digest                   -> :class:`PayloadError`
8. payload decodes with its codec to the model's size -> :class:`PayloadError`
9. all values finite                           -> :class:`PayloadError`

Every rejection is counted by error type in :attr:`Receiver.rejected` and changes no
state: the nonce of a message is remembered only after every check passed.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import blake3
import numpy as np

from ..errors import AuthError, FednodeError, FrameTooLarge, PayloadError, ReplayError
from ..p2p.transport import Frame, Inbound
from ..wire import messages as m
from ..wire.codecs import Codec, parse_codec
from ..wire.tensors import check_finite, check_vector
from .identity import Identity, public_key_from_peer_id, verify

DOMAIN = b"fednode/v1\0"
Clock = Callable[[], float]


def digest(payload: bytes | memoryview) -> bytes:
    """BLAKE3-256 of the payload (multi-threaded for big payloads)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if len(payload) > (1 << 22) else 1)
    hasher.update(payload)
    return hasher.digest()


@functools.lru_cache(maxsize=64)
def _codec(spec: str) -> Codec:
    return parse_codec(spec)


def codec_for(spec: str) -> Codec:
    """The (cached, stateless) codec named by ``spec``; PayloadError if unknown."""
    try:
        return _codec(spec)
    except FednodeError as exc:
        raise PayloadError(f"unknown codec {spec!r}: {exc}") from exc


@dataclass(frozen=True)
class Membership:
    """Who may talk to this node: an allow-list of peer ids, or anyone (open mode)."""

    allow: frozenset[str] = frozenset()
    open: bool = False

    def admits(self, peer: str) -> bool:
        return self.open or peer in self.allow


class Sealer:
    """Turns messages into signed frames for one identity."""

    def __init__(
        self,
        identity: Identity,
        *,
        clock: Clock = time.time,
        nonce: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.identity = identity
        self._clock = clock
        self._nonce = nonce

    def seal(self, msg: m.Message) -> Frame:
        """Encode ``msg`` (and its vector with its codec, unless already encoded) and sign."""
        payload: bytes | memoryview = msg.payload
        if msg.has_tensor and not len(payload) and msg.vector is not None:
            payload = codec_for(msg.codec).encode(msg.vector)
        msg = replace(
            msg,
            sender=self.identity.peer_id,
            timestamp=self._clock(),
            nonce=self._nonce(m.NONCE_LEN),
        )
        header = m.encode_header(msg, len(payload), digest(payload))
        signature = self.identity.sign(DOMAIN + header)
        return Frame(head=m.frame_head(header, signature), payload=payload)


class Receiver:
    """Verifies and decodes frames addressed to ``local_peer``.

    ``model_size`` is the number of float32 values of the model this node runs; tensor
    payloads are decoded and checked against it. Bounded memory: the nonce cache holds at
    most ``nonce_capacity`` entries; once full, messages older than the newest evicted
    entry are refused (so an evicted nonce can never be replayed).
    """

    def __init__(
        self,
        local_peer: str,
        membership: Membership,
        *,
        model_size: int | None = None,
        clock: Clock = time.time,
        max_frame_bytes: int = 512 * 1024 * 1024,
        max_header_bytes: int = 64 * 1024,
        max_clock_skew_s: float = 300.0,
        nonce_capacity: int = 65536,
    ) -> None:
        self.local_peer = local_peer
        self.membership = membership
        self.model_size = model_size
        self._clock = clock
        self.max_frame_bytes = max_frame_bytes
        self.max_header_bytes = max_header_bytes
        self.max_clock_skew_s = max_clock_skew_s
        self._nonces: OrderedDict[bytes, float] = OrderedDict()
        self._capacity = nonce_capacity
        self._floor = float("-inf")
        self._keys: dict[str, bytes] = {}
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    def open(self, inbound: Inbound) -> m.Message:
        """Verify ``inbound`` and return its typed message, or raise (and count) a typed error."""
        try:
            msg = self._open(inbound)
        except FednodeError as exc:
            exc.peer = exc.peer or inbound.peer
            self.rejected[type(exc).__name__] += 1
            raise
        self.accepted += 1
        return msg

    def _public_key(self, peer: str) -> bytes:
        key = self._keys.get(peer)
        if key is None:
            key = public_key_from_peer_id(peer)
            if len(self._keys) < 4096:
                self._keys[peer] = key
        return key

    def _open(self, inbound: Inbound) -> m.Message:
        frame = inbound.frame
        # 1. size limits, before anything is parsed
        if frame.nbytes > self.max_frame_bytes:
            raise FrameTooLarge(
                f"frame of {frame.nbytes} bytes exceeds the limit of {self.max_frame_bytes}"
            )
        raw_header, signature = m.split_head(frame.head, max_header=self.max_header_bytes)
        # 2. schema
        header = m.decode_header(raw_header)
        # 3. membership; the transport-authenticated peer must be the claimed sender
        if header.sender != inbound.peer:
            raise AuthError(
                f"header names sender {header.sender!r} but the connection is from {inbound.peer!r}"
            )
        if not self.membership.admits(header.sender):
            raise AuthError("sender is not a member of this federation")
        # 4. signature
        if not verify(
            self._public_key(header.sender), DOMAIN + bytes(raw_header), bytes(signature)
        ):
            raise AuthError("signature does not verify")
        # 5. replay window
        now = self._clock()
        if abs(now - header.timestamp) > self.max_clock_skew_s:
            raise ReplayError(
                f"timestamp {header.timestamp:.3f} is {header.timestamp - now:+.1f}s from now; "
                f"allowed skew is ±{self.max_clock_skew_s}s"
            )
        if header.nonce in self._nonces or header.timestamp <= self._floor:
            raise ReplayError("nonce already seen (replayed message)")
        # 6. recipient
        if header.recipient != self.local_peer:
            raise AuthError(f"message is addressed to {header.recipient!r}, not to this node")
        # 7. payload length and digest
        payload = frame.payload
        if len(payload) != header.payload_len:
            raise PayloadError(
                f"payload is {len(payload)} bytes, header announced {header.payload_len}"
            )
        if digest(payload) != header.payload_digest:
            raise PayloadError("payload digest does not match the signed header")
        msg = m.build_message(header, payload)
        # 8-9. tensor payloads: decode, shape, finiteness
        if msg.has_tensor and self.model_size is not None:
            vector = codec_for(header.codec).decode(payload, self.model_size)
            check_vector(vector, self.model_size)
            check_finite(vector)
            msg = replace(msg, vector=_readonly(vector))
        elif msg.has_tensor:
            raise PayloadError("tensor message received before the model layout is known")
        self._remember(header.nonce, header.timestamp, now)
        return msg

    def _remember(self, nonce: bytes, timestamp: float, now: float) -> None:
        nonces = self._nonces
        # expire entries that fell out of the skew window: they are refused by time anyway
        horizon = now - self.max_clock_skew_s
        while nonces:
            oldest_nonce, oldest_ts = next(iter(nonces.items()))
            if oldest_ts >= horizon and len(nonces) < self._capacity:
                break
            del nonces[oldest_nonce]
            if oldest_ts >= horizon:
                self._floor = max(self._floor, oldest_ts)
        nonces[nonce] = timestamp


def _readonly(vec: np.ndarray) -> np.ndarray:
    if vec.flags.writeable:
        vec = vec.view()
        vec.flags.writeable = False
    return vec
