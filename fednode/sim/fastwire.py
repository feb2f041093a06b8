"""How a message travels in the discrete-event driver's fast mode (no signature, no CBOR).

The sender's :class:`~fednode.wire.messages.Message` is *stamped* — copied with sender,
recipient and virtual timestamp set, as the Sealer would set them — and handed to the
receiver as an object. Tensor messages are made to look exactly as a Receiver would
return them: a message that carries only a ``vector`` is encoded with the sender's codec
(like :meth:`~fednode.crypto.envelope.Sealer.seal`), and every payload is decoded to a
read-only vector. A payload sent to several peers in one batch is decoded once and the
vector shared: no model copy per recipient.

The frame size (for byte counts and bandwidth delays) is the payload plus the frame head
(prefix, CBOR header, signature) measured once per message shape with the real
:func:`~fednode.wire.messages.encode_header`: exact up to the few bytes by which the
header's values (floats in metrics, string lengths) vary.

Between worker processes (:mod:`fednode.sim.parallel`) a message travels as a tuple of
its fields (payload as bytes; no vector) encoded with :mod:`marshal`, which handles only
plain data types — nothing is pickled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from ..wire import messages as m
from ..wire.codecs import Codec, codec_for, parse_codec
from ..wire.frames import Frame

RAW_HEADER = 8  # the "none" codec's payload header (wire/codecs.py)
_GIVEN = ("sender", "recipient", "timestamp", "payload", "vector")


def _generate(cls: type[m.Message]) -> tuple[Callable[..., m.Message], Callable[..., m.Message]]:
    """(stamp, from_fields) for ``cls``: build a frozen slots message without __init__.

    ``stamp(msg, sender, recipient, timestamp, payload, vector)`` copies ``msg`` with those
    five fields replaced (~1 µs against ~6 µs for ``dataclasses.replace``; the other fields
    come from a message that was already validated). ``from_fields(values, vector)``
    rebuilds a message from :func:`fields_of` output.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    ns: dict[str, Any] = {"new": object.__new__, "cls": cls}
    stamp = ["def stamp(msg, sender, recipient, timestamp, payload, vector):", " n = new(cls)"]
    build = ["def from_fields(v, vector):", " n = new(cls)"]
    pos = 0
    for i, name in enumerate(names):
        descr = m.slot_descriptor(cls, name)
        ns[f"S{i}"], ns[f"G{i}"] = descr.__set__, descr.__get__
        stamp.append(f" S{i}(n, {name if name in _GIVEN else f'G{i}(msg)'})")
        if name == "vector":
            build.append(f" S{i}(n, vector)")
        else:
            build.append(f" S{i}(n, v[{pos}])")
            pos += 1
    for lines in (stamp, build):
        lines.append(" return n")
        exec("\n".join(lines), ns)
    return ns["stamp"], ns["from_fields"]


_GEN = {cls: _generate(cls) for cls in m.MESSAGE_TYPES.values()}
_BY_KIND = {int(kind): cls for kind, cls in m.MESSAGE_TYPES.items()}
_TENSOR = frozenset(cls for cls in m.MESSAGE_TYPES.values() if cls.KIND in m.TENSOR_KINDS)
_FIELDS = {
    cls: tuple(f.name for f in dataclasses.fields(cls) if f.name != "vector")
    for cls in m.MESSAGE_TYPES.values()
}

# every message class starts with Message's common fields, so these positions are shared
_PAYLOAD = _FIELDS[m.Advert].index("payload")
_CODEC = _FIELDS[m.Advert].index("codec")
assert all(f.index("payload") == _PAYLOAD and f.index("codec") == _CODEC for f in _FIELDS.values())


def fields_of(msg: m.Message) -> tuple[Any, ...]:
    """``(kind, field values...)`` of a stamped message, marshal-able (payload as bytes)."""
    values = []
    for name in _FIELDS[type(msg)]:
        v = getattr(msg, name)
        values.append(bytes(v) if name == "payload" else v)
    return (int(msg.KIND), *values)


class FastWire:
    """Per-simulation caches of the fast mode: frame-head sizes and decoded payloads."""

    def __init__(self) -> None:
        self._heads: dict[tuple[Any, ...], int] = {}
        self._decoded: dict[int, tuple[Any, np.ndarray]] = {}

    def new_batch(self) -> None:
        """Forget decoded payloads (called per batch of actions: ids may be reused)."""
        self._decoded.clear()

    def stamp(
        self,
        msg: m.Message,
        sender: str,
        to: str,
        timestamp: float,
        codecs: dict[str, Codec],
        size: int,
    ) -> tuple[m.Message, int]:
        """The message as the receiver would see it, and its frame size in bytes."""
        cls = type(msg)
        payload = msg.payload
        vector = None
        if cls in _TENSOR:
            if not payload and msg.vector is not None:
                codec = codecs.get(msg.codec)
                if codec is None:  # one instance per sender and spec, as the Sealer keeps
                    codec = codecs[msg.codec] = parse_codec(msg.codec)
                payload = codec.encode(msg.vector)
            if payload:
                vector = self.decode(payload, msg.codec, size)
        out = _GEN[cls][0](msg, sender, to, timestamp, payload, vector)
        plen = len(payload) if type(payload) is bytes else memoryview(payload).nbytes
        if cls is m.Advert:
            key: tuple[Any, ...] = (cls, msg.codec, plen, len(msg.children))  # type: ignore[attr-defined]
        else:
            key = (cls, msg.codec, plen)
        head = self._heads.get(key)
        if head is None:
            probe = dataclasses.replace(out, nonce=bytes(m.NONCE_LEN))
            header = m.encode_header(probe, plen, bytes(m.DIGEST_LEN))
            head = self._heads[key] = len(m.frame_head(header, bytes(m.SIG_LEN)))
        return out, head + plen

    def decode(self, payload: Any, spec: str, size: int) -> np.ndarray:
        """Read-only vector of ``payload``, shared by every recipient in the batch."""
        hit = self._decoded.get(id(payload))
        if hit is not None and hit[0] is payload:
            return hit[1]
        if spec == "none" and memoryview(payload).nbytes == RAW_HEADER + 4 * size:
            vec = np.frombuffer(payload, dtype="<f4", offset=RAW_HEADER)  # zero-copy view
        else:
            vec = codec_for(spec).decode(payload, size)
        if vec.flags.writeable:
            vec = vec.view()
            vec.flags.writeable = False
        self._decoded[id(payload)] = (payload, vec)
        return vec

    # --- between worker processes -----------------------------------------------------------
    @staticmethod
    def pack(item: Any) -> tuple[Any, ...]:
        """A stamped message or a sealed :class:`Frame` as plain data."""
        if isinstance(item, Frame):
            return (0, bytes(item.head), bytes(item.payload))
        return fields_of(item)

    def unpack(self, data: tuple[Any, ...], size: int) -> Any:
        if data[0] == 0:
            return Frame(head=data[1], payload=data[2])
        cls = _BY_KIND[data[0]]
        values = data[1:]
        vector = None
        if cls.KIND in m.TENSOR_KINDS and len(values[_PAYLOAD]):
            vector = self.decode(values[_PAYLOAD], values[_CODEC], size)
        return _GEN[cls][1](values, vector)
