"""Sign outgoing messages; verify incoming ones in a fixed order (pure: no I/O).

Signature input: ``b"fednode/v1\\0" || header`` where the CBOR header carries the
payload's length and BLAKE3-256 digest — so the 64-byte Ed25519 signature covers the
payload without hashing it twice (hash-then-sign). ``docs/PROTOCOL.md`` specifies the
format, ``docs/SECURITY.md`` what this does and does not defend against.

:meth:`Receiver.open` checks, in this order, and stops at the first failure:

1. frame and header size limits               -> :class:`FrameTooLarge`
2. frame prefix, CBOR profile, schema, types   -> :class:`SchemaError`
3. sender is a member (and is who the transport says sent it) -> :class:`AuthError`
4. Ed25519 signature                           -> :class:`AuthError`
5. replay window: timestamp skew, nonce cache  -> :class:`ReplayError`
6. recipient is this node                      -> :class:`AuthError`
7. payload length and digest                   -> :class:`PayloadError`
8. payload decodes with its codec to the model's size -> :class:`PayloadError`
9. all values finite                           -> :class:`PayloadError`

Cheap checks that need no key come first, so a stranger costs us a few microseconds and
no allocation beyond the header; the payload is hashed only for a member's correctly
signed, fresh message addressed to us.

Every rejection is counted by error type in :attr:`Receiver.rejected` and changes no
state: the nonce of a message is remembered only after every check passed. ``open``
raises nothing but :class:`FednodeError` subclasses, whatever the input: it is the
boundary between wire bytes and the node.
"""

from __future__ import annotations

import heapq
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import blake3

from ..errors import (
    AuthError,
    FednodeError,
    FrameTooLarge,
    PayloadError,
    ReplayError,
    WireError,
)
from ..wire import messages as m
from ..wire.codecs import Codec, codec_for, parse_codec
from ..wire.frames import Buffer, Frame, Inbound, byte_view
from ..wire.tensors import check_finite, check_vector, readonly
from .identity import Identity, public_key_from_peer_id, verify

DOMAIN = b"fednode/v1\0"
Clock = Callable[[], float]
Payload = Buffer | tuple[Buffer, ...]
#: payloads above this many bytes are hashed on all cores (measured crossover on 2 cores,
#: ``scripts/bench/wire.py``: below it, starting threads costs more than it saves)
THREADED_DIGEST_BYTES = 1 << 22
MAX_CACHED_KEYS = 4096


def digest(payload: Buffer | tuple[Buffer, ...]) -> bytes:
    """BLAKE3-256 of the payload (multi-threaded for big payloads).

    A tuple is hashed as its parts one after the other (the bytes a transport sends),
    incrementally: no part is copied to put them together.
    """
    if not isinstance(payload, tuple):
        return _digest_views((byte_view(payload),))
    return _digest_views([byte_view(part) for part in payload])


def _digest_views(views: Sequence[memoryview]) -> bytes:
    """:func:`digest` of payload parts that are already flat byte views (``byte_view``)."""
    if len(views) == 1:
        view = views[0]
        threads = blake3.blake3.AUTO if view.nbytes > THREADED_DIGEST_BYTES else 1
        return blake3.blake3(view, max_threads=threads).digest()
    total = sum(view.nbytes for view in views)
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if total > THREADED_DIGEST_BYTES else 1)
    for view in views:
        hasher.update(view)
    return hasher.digest()


@dataclass(frozen=True)
class Membership:
    """Who may talk to this node: an allow-list of peer ids, or anyone (open mode).

    Open mode must be asked for explicitly; the default admits nobody.
    """

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
        self._codecs: dict[str, Codec] = {}  # one instance per spec: stochastic rounding state
        self._sender = identity.peer_id
        # the last message sealed with an immutable payload, and its (spec, payload, length,
        # digest): a broadcast seals one message per recipient and hashes it once
        self._last: tuple[m.Message, str, Payload, int, bytes] | None = None

    def seal(self, msg: m.Message, recipient: str | None = None) -> Frame:
        """Encode ``msg`` (and its vector with its codec, unless already encoded) and sign.

        ``recipient`` (default: ``msg.recipient``) is written into the header: one message
        object can be sealed for every peer it goes to, without copying it per peer; if
        its payload is ``bytes`` (immutable), the payload is hashed only the first time.

        The frame's payload is ``msg.payload`` itself (as a byte view, no copy), or, when
        the sealer encodes ``msg.vector``, the codec's parts (``Codec.encode_parts``: for
        codec ``none`` the codec header and a view of the vector). So the caller must not
        modify that buffer or vector until the frame has been sent.

        Errors: :class:`~fednode.errors.LocalProtocolError` if the message breaks the
        schema or its vector holds NaN/Inf; ConfigError for an unknown codec.
        """
        last = self._last
        if last is not None and last[0] is msg:
            _, spec, payload, length, payload_digest = last
        else:
            spec, views = self._payload(msg)
            parts = views if isinstance(views, tuple) else (views,)
            length = sum(len(part) for part in parts)
            payload_digest = _digest_views(parts)
            payload = views
            if type(msg.payload) is bytes and msg.payload:  # immutable: safe to reuse
                self._last = (msg, spec, payload, length, payload_digest)
        header = m.encode_header(
            msg,
            length,
            payload_digest,
            sender=self._sender,
            recipient=recipient,
            timestamp=self._clock(),
            nonce=self._nonce(m.NONCE_LEN),
            codec=spec,
        )
        signature = self.identity.sign(DOMAIN + header)
        return Frame(head=m.frame_head(header, signature), payload=payload)

    def _payload(self, msg: m.Message) -> tuple[str, memoryview | tuple[memoryview, ...]]:
        """(canonical codec spec, payload as byte views) of ``msg``."""
        spec = msg.codec
        given: Payload = msg.payload
        payload: memoryview | tuple[memoryview, ...]
        if isinstance(given, tuple):
            payload = tuple(byte_view(part) for part in given)
            empty = not any(payload)
        else:
            payload = byte_view(given)
            empty = not payload
        if msg.has_tensor:
            codec = self._codecs.get(spec)
            if codec is None:
                codec = self._codecs[spec] = parse_codec(spec)
            spec = codec.spec  # the canonical spelling receivers insist on
            if empty and msg.vector is not None:
                payload = tuple(byte_view(part) for part in codec.encode_parts(msg.vector))
        return spec, payload


class ReplayWindow:
    """Refuses a message whose (sender, nonce) was accepted before, in bounded memory.

    A message is fresh iff ``|now - t| <= skew``, ``t`` is above this sender's floor and
    the global floor, and (sender, nonce) is not remembered. At most ``capacity`` nonces
    and ``capacity`` per-sender floors are kept.

    The invariant that makes forgetting safe: every (sender, nonce, t) ever remembered
    is still remembered, or ``t <= floor[sender]``, or ``t <= floor_all``. So a nonce
    that was evicted is refused by its (signed) timestamp, never replayed. Evictions:

    * expiry — entries with ``t < now - skew`` are dropped; the skew check refuses them
      anyway, and ``floor_all`` rises to their ``t`` so a clock stepping back cannot
      revive them (it stays below the window, so it refuses nothing fresh);
    * capacity — the entry with the smallest ``t`` goes and only its sender's floor
      rises to ``t``: a member flooding the window pushes out its own old entries and
      at worst makes one honest sender's out-of-order older message refused;
    * too many floors (only in a huge open federation) — floors below the window are
      dropped; if still too many, all are folded into ``floor_all``: older messages from
      everyone are refused until the window moves on. Degraded, never a replay.

    ``check`` never changes state; ``remember`` is called only for accepted messages.
    """

    def __init__(self, max_clock_skew_s: float, capacity: int) -> None:
        if not max_clock_skew_s > 0 or capacity < 1:
            raise ValueError("max_clock_skew_s must be > 0 and capacity >= 1")
        self.skew = float(max_clock_skew_s)
        self.capacity = int(capacity)
        self.floor_all = -math.inf
        self._seen: set[tuple[str, bytes]] = set()
        self._heap: list[tuple[float, tuple[str, bytes]]] = []
        self._floors: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def floor(self, sender: str) -> float:
        return max(self.floor_all, self._floors.get(sender, -math.inf))

    def check(self, sender: str, nonce: bytes, t: float, now: float) -> None:
        """Raise :class:`ReplayError` unless the message is fresh. Changes nothing."""
        if not abs(now - t) <= self.skew:
            raise ReplayError(
                f"timestamp {t:.3f} is {t - now:+.1f}s from now; allowed skew is ±{self.skew}s"
            )
        floor = self.floor(sender)
        if t <= floor:
            raise ReplayError(
                f"timestamp {t:.6f} is not after {floor:.6f}, the oldest time still "
                "remembered for this sender (refused: it may be a replay)"
            )
        if (sender, nonce) in self._seen:
            raise ReplayError("nonce already seen (replayed message)")

    def remember(self, sender: str, nonce: bytes, t: float, now: float) -> None:
        """Record an accepted message, evicting as described in the class docstring."""
        key = (sender, nonce)
        self._seen.add(key)
        heapq.heappush(self._heap, (t, key))
        horizon = now - self.skew
        heap = self._heap
        while heap and (heap[0][0] < horizon or len(heap) > self.capacity):
            old_t, old_key = heapq.heappop(heap)
            self._seen.discard(old_key)
            if old_t < horizon:
                self.floor_all = max(self.floor_all, old_t)
            else:
                peer = old_key[0]
                self._floors[peer] = max(self._floors.get(peer, -math.inf), old_t)
        if len(self._floors) > self.capacity:
            self._prune_floors(horizon)

    def _prune_floors(self, horizon: float) -> None:
        old = [peer for peer, t in self._floors.items() if t < horizon]
        for peer in old:  # below the window: the skew check already refuses these times
            self.floor_all = max(self.floor_all, self._floors.pop(peer))
        if len(self._floors) > self.capacity // 2:
            self.floor_all = max(self.floor_all, *self._floors.values())
            self._floors.clear()


class Receiver:
    """Verifies and decodes frames addressed to ``local_peer``.

    ``model_size`` is the number of float32 values of the model this node runs; tensor
    payloads are decoded and checked against it. Bounded memory: the replay window holds
    at most ``nonce_capacity`` nonces (see :class:`ReplayWindow`), the key cache at most
    MAX_CACHED_KEYS public keys.
    """

    def __init__(
        self,
        local_peer: str,
        membership: Membership,
        *,
        model_size: int | None = None,
        clock: Clock = time.time,
        max_frame_bytes: int = 512 * 1024 * 1024,
        max_header_bytes: int = m.MAX_HEADER_BYTES,
        max_clock_skew_s: float = 300.0,
        nonce_capacity: int = 65536,
    ) -> None:
        self.local_peer = local_peer
        self.membership = membership
        self.model_size = model_size
        self._clock = clock
        self.max_frame_bytes = max_frame_bytes
        self.max_header_bytes = max_header_bytes
        self.replay = ReplayWindow(max_clock_skew_s, nonce_capacity)
        self._keys: dict[str, bytes] = {}
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    @property
    def max_clock_skew_s(self) -> float:
        return self.replay.skew

    def open(self, inbound: Inbound) -> m.Message:
        """Verify ``inbound`` and return its typed message, or raise (and count) a typed error.

        Errors: FrameTooLarge, SchemaError, AuthError, ReplayError, PayloadError, in the
        order of the module docstring. Anything unexpected (a bug this input exposed)
        becomes a plain :class:`WireError` counted as ``"WireError"``: the frame is
        dropped and the node goes on.
        """
        try:
            msg = self._open(inbound)
        except FednodeError as exc:
            exc.peer = exc.peer or inbound.peer
            self.rejected[type(exc).__name__] += 1
            raise
        except Exception as exc:  # the wire boundary: no input may take the node down
            self.rejected["WireError"] += 1
            raise WireError(
                f"unexpected {type(exc).__name__} while verifying a frame: {str(exc)[:200]}",
                peer=inbound.peer,
            ) from exc
        self.accepted += 1
        return msg

    def _public_key(self, peer: str) -> bytes:
        key = self._keys.get(peer)
        return key if key is not None else public_key_from_peer_id(peer)

    def _open(self, inbound: Inbound) -> m.Message:
        frame = inbound.frame
        # 1. size limits, before anything is parsed
        head = frame.head
        frame_bytes = len(head) + frame.payload_len
        if frame_bytes > self.max_frame_bytes:
            raise FrameTooLarge(
                f"frame of {frame_bytes} bytes exceeds the limit of {self.max_frame_bytes}"
            )
        raw_header, signature = m.split_head(head, max_header=self.max_header_bytes)
        # 2. prefix (above), CBOR profile, schema and types
        header_bytes = bytes(raw_header)
        header = m.decode_header(header_bytes)
        sender = header.sender
        # 3. membership; the transport-authenticated peer must be the claimed sender
        if not self.membership.admits(sender):
            raise AuthError(f"sender {sender!r} is not a member of this federation")
        if sender != inbound.peer:
            raise AuthError(
                f"header names sender {sender!r} but the connection is from {inbound.peer!r}"
            )
        # 4. signature
        key = self._public_key(sender)
        if not verify(key, DOMAIN + header_bytes, bytes(signature)):
            raise AuthError("signature does not verify")
        if sender not in self._keys and len(self._keys) < MAX_CACHED_KEYS:
            self._keys[sender] = key  # only keys that have signed something valid
        # 5. replay window
        now = self._clock()
        self.replay.check(sender, header.nonce, header.timestamp, now)
        # 6. recipient
        if header.recipient != self.local_peer:
            raise AuthError(f"message is addressed to {header.recipient!r}, not to this node")
        # 7. payload length and digest
        try:
            parts = frame.parts
        except TypeError as exc:
            raise PayloadError(f"payload is not a contiguous buffer: {exc}") from None
        length = sum(len(part) for part in parts) if len(parts) > 1 else len(parts[0])
        if length != header.payload_len:
            raise PayloadError(f"payload is {length} bytes, header announced {header.payload_len}")
        if _digest_views(parts) != header.payload_digest:  # Frame.parts are byte views
            raise PayloadError("payload digest does not match the signed header")
        # a payload handed over in parts (memory transport) becomes one buffer here (one
        # copy), as a network receiver's is: the message carries one payload buffer
        payload = parts[0] if len(parts) == 1 else byte_view(frame.payload)
        vector = None
        # 8-9. tensor payloads: decode, shape, finiteness
        if header.kind in m.TENSOR_KINDS:
            if self.model_size is None:
                raise PayloadError("tensor message received before the model layout is known")
            decoded = codec_for(header.codec).decode(payload, self.model_size)
            check_vector(decoded, self.model_size)
            check_finite(decoded)
            vector = readonly(decoded)
        msg = m.build_message(header, payload, vector)
        self.replay.remember(sender, header.nonce, header.timestamp, now)
        return msg
