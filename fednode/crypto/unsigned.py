"""The unsigned pair: a sealer and a receiver that skip the signature, for very large
simulations only (``fednode sim --unsigned``). Never the default; never on a real node.

They plug into the same two places of :class:`~fednode.loop.NodeLoop` as the real
:class:`~fednode.crypto.envelope.Sealer` and :class:`~fednode.crypto.envelope.Receiver`,
so the loop, the roles and the drivers are the same code either way. What they skip:
Ed25519 signing and verification, CBOR, the replay window and the digest. What they keep:

* the sender's side of :meth:`Sealer.seal`: a message that carries only a ``vector`` is
  encoded with the configured codec (one codec instance per spec, as the Sealer keeps,
  so error-feedback-free codecs behave identically), and every codec refuses NaN/Inf;
* the receiver's checks that do not need a signature: the transport-reported peer is the
  claimed sender, the sender is a member, the recipient is this node, the payload decodes
  to a float32 vector of this model's size, every value is finite.

A frame is a :class:`StampedFrame`: the message as the receiver will see it (sender,
recipient and timestamp set, the payload decoded once to a read-only vector) and its
size on the wire — the payload plus the frame head (prefix, CBOR header, signature)
measured once per message shape with the real :func:`~fednode.wire.messages.encode_header`,
exact up to the few bytes by which header values (floats in metrics, string lengths)
vary. A payload sent to several peers in a row is decoded and checked once.

Between the simulator's worker processes a stamped frame travels as a tuple of plain
values (:meth:`StampedFrame.pack`, encoded by the caller with :mod:`marshal`): nothing
is pickled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import AuthError, PayloadError, SchemaError
from ..wire import messages as m
from ..wire._fast import copier
from ..wire.codecs import Codec, codec_for, parse_codec
from ..wire.frames import Inbound
from ..wire.tensors import all_finite, check_vector
from .envelope import Membership

RAW_HEADER = 8  # the "none" codec's payload header (wire/codecs.py)
_STAMPED = ("sender", "recipient", "timestamp", "payload", "vector")


_BY_KIND = {int(kind): cls for kind, cls in m.MESSAGE_TYPES.items()}
_TENSOR = frozenset(cls for cls in m.MESSAGE_TYPES.values() if cls.KIND in m.TENSOR_KINDS)
#: per class: the fields :meth:`StampedFrame.pack` writes, in order (all but ``vector``)
_PACKED = {
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.name != "vector")
    for cls in m.MESSAGE_TYPES.values()
}


#: per class: copy(msg, sender, recipient, timestamp[, payload, vector])
_STAMP = {
    cls: copier(cls, _STAMPED if cls in _TENSOR else _STAMPED[:3])
    for cls in m.MESSAGE_TYPES.values()
}


class StampedFrame:
    """A message in flight between unsigned nodes, and its size on the wire."""

    __slots__ = ("finite", "msg", "nbytes")

    def __init__(self, msg: m.Message, nbytes: int, finite: bool = True) -> None:
        self.msg = msg
        self.nbytes = nbytes
        #: False when the decoded payload holds NaN/Inf (the receiver rejects it)
        self.finite = finite

    def __repr__(self) -> str:
        return f"StampedFrame({self.msg.KIND.name}, <{self.nbytes} bytes>)"

    def pack(self) -> tuple[Any, ...]:
        """``(kind, nbytes, field values...)`` as plain data (payload as bytes, no vector)."""
        msg = self.msg
        values: list[Any] = [int(msg.KIND), self.nbytes]
        for name in _PACKED[type(msg)]:
            v = getattr(msg, name)
            values.append(bytes(v) if name == "payload" else v)
        return tuple(values)


class UnsignedSealer:
    """Stamps messages instead of sealing them (see the module docstring).

    ``clock`` gives the wall-clock timestamp (the simulator's virtual clock); ``size`` is
    the model's number of float32 values.
    """

    def __init__(self, peer: str, clock: Callable[[], float], size: int) -> None:
        self.peer = peer
        self.clock = clock
        self.size = size
        self._codecs: dict[str, Codec] = {}
        self._heads: dict[tuple[Any, ...], int] = {}
        self._last: tuple[Any, np.ndarray, bool] | None = None

    def seal(self, msg: m.Message, recipient: str) -> StampedFrame:
        cls = type(msg)
        finite = True
        if cls in _TENSOR:
            payload = msg.payload
            if not payload and msg.vector is not None:
                codec = self._codecs.get(msg.codec)
                if codec is None:
                    codec = self._codecs[msg.codec] = parse_codec(msg.codec)
                payload = codec.encode(msg.vector)  # raises LocalProtocolError on NaN/Inf
            vector = None
            if payload:
                vector, finite = self.decode(payload, msg.codec)
            out = _STAMP[cls](msg, self.peer, recipient, self.clock(), payload, vector)
        else:
            out = _STAMP[cls](msg, self.peer, recipient, self.clock())
        return StampedFrame(out, self._head(out) + _nbytes(out.payload), finite)

    def decode(self, payload: Any, spec: str) -> tuple[np.ndarray, bool]:
        """The read-only vector of ``payload`` and whether it is finite (the last payload
        is remembered: a model sent to k neighbours is decoded once)."""
        last = self._last
        if last is not None and last[0] is payload:
            return last[1], last[2]
        vec, finite = decode_payload(payload, spec, self.size)
        self._last = (payload, vec, finite)
        return vec, finite

    def _head(self, msg: m.Message) -> int:
        plen = _nbytes(msg.payload)
        cls = type(msg)
        if cls is m.Advert:
            key: tuple[Any, ...] = (cls, msg.codec, plen, len(msg.children))  # type: ignore[attr-defined]
        else:
            key = (cls, msg.codec, plen)
        head = self._heads.get(key)
        if head is None:
            probe = dataclasses.replace(msg, nonce=bytes(m.NONCE_LEN))
            header = m.encode_header(probe, plen, bytes(m.DIGEST_LEN))
            head = self._heads[key] = len(m.frame_head(header, bytes(m.SIG_LEN)))
        return head


def decode_payload(payload: Any, spec: str, size: int) -> tuple[np.ndarray, bool]:
    """Decode a tensor payload to a read-only float32 vector of ``size`` values; also say
    whether it is finite. Errors: PayloadError for a payload that does not decode."""
    if spec == "none" and memoryview(payload).nbytes == RAW_HEADER + 4 * size:
        vec = np.frombuffer(payload, dtype="<f4", offset=RAW_HEADER)  # zero-copy view
    else:
        vec = codec_for(spec).decode(payload, size)
    if vec.flags.writeable:
        vec = vec.view()
        vec.flags.writeable = False
    return vec, all_finite(vec)


class UnsignedReceiver:
    """Opens :class:`StampedFrame` s with every check that needs no signature."""

    def __init__(self, peer: str, membership: Membership, *, model_size: int) -> None:
        self.peer = peer
        self.membership = membership
        self.model_size = model_size

    def open(self, inbound: Inbound) -> m.Message:
        frame: Any = inbound.frame
        if type(frame) is not StampedFrame:
            raise SchemaError(f"expected an unsigned simulator frame, got {type(frame).__name__}")
        msg = frame.msg
        if msg.sender != inbound.peer:
            raise AuthError(f"frame from {inbound.peer} claims sender {msg.sender}")
        if not self.membership.admits(msg.sender):
            raise AuthError(f"sender {msg.sender} is not a member of this federation")
        if msg.recipient != self.peer:
            raise AuthError(f"frame for {msg.recipient} delivered to {self.peer}")
        vector = getattr(msg, "vector", None)
        if vector is not None:
            check_vector(vector, self.model_size)
            if not frame.finite:
                raise PayloadError("expected finite values, got NaN/Inf")
        return msg


def unpack(data: tuple[Any, ...], size: int) -> StampedFrame:
    """A :class:`StampedFrame` from :meth:`StampedFrame.pack` output (another process)."""
    cls = _BY_KIND[data[0]]
    fields = dict(zip(_PACKED[cls], data[2:], strict=True))
    finite = True
    if cls in _TENSOR and fields["payload"]:
        fields["vector"], finite = decode_payload(fields["payload"], fields["codec"], size)
    return StampedFrame(cls(**fields), data[1], finite)


def _nbytes(payload: Any) -> int:
    return len(payload) if type(payload) is bytes else memoryview(payload).nbytes


__all__ = ["StampedFrame", "UnsignedReceiver", "UnsignedSealer", "decode_payload", "unpack"]
