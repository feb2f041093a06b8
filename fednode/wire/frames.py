"""Frames: the bytes of one message on the wire, and the inbound record a transport hands up.

The bottom of the package: a frame is what the envelope seals and opens and what every
transport moves; it imports nothing from fednode, so crypto, the transports and the
simulator all import it downward.
"""

from __future__ import annotations

from dataclasses import dataclass

#: a contiguous buffer of payload bytes
Buffer = bytes | bytearray | memoryview


class Frame:
    """One message on the wire: the head (prefix, CBOR header, signature) and the payload.

    The payload is kept apart so a transport can send it without concatenating and the
    memory transport can hand the very same buffer to the receiver (no copy).

    Scatter-gather: the payload may be given as a tuple of buffers, whose bytes one
    after the other are the payload on the wire (the sealer frames a codec header and a
    view of the model vector this way, without copying the vector behind the header).
    :attr:`parts` gives them without copying, and transports write them in order;
    :attr:`payload` is always one buffer, joined (one copy, kept) on first use if the
    frame was built from several parts. What a network receiver gets is one buffer.

    Immutable, like the frozen dataclass it replaces; equal frames have equal heads and
    payload bytes.
    """

    __slots__ = ("_parts", "_payload", "head")
    head: bytes
    _parts: tuple[Buffer, ...] | None
    _payload: Buffer | None

    def __init__(self, head: bytes, payload: Buffer | tuple[Buffer, ...] = b"") -> None:
        setattr_ = object.__setattr__
        setattr_(self, "head", head)
        if isinstance(payload, tuple) and len(payload) > 1:
            setattr_(self, "_parts", payload)
            setattr_(self, "_payload", None)
        elif isinstance(payload, tuple):  # zero or one part: a plain payload
            setattr_(self, "_parts", None)
            setattr_(self, "_payload", payload[0] if payload else b"")
        else:
            setattr_(self, "_parts", None)
            setattr_(self, "_payload", payload)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Frame is immutable (cannot set {name!r})")

    def __repr__(self) -> str:
        return f"Frame(head=<{len(self.head)} bytes>, payload=<{self.payload_len} bytes>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return self.head == other.head and byte_view(self.payload) == byte_view(other.payload)

    __hash__ = None  # type: ignore[assignment]  # the payload is often a mutable buffer

    @property
    def payload(self) -> Buffer:
        """The payload as one buffer (the parts joined once, if it was given in parts)."""
        payload = self._payload
        if payload is None:
            payload = b"".join(self.parts)
            object.__setattr__(self, "_payload", payload)
        return payload

    @property
    def parts(self) -> tuple[memoryview, ...]:
        """The payload as flat byte views, in wire order (no copy).

        Errors: TypeError if a part is not a C-contiguous buffer.
        """
        if self._parts is not None:
            return tuple(byte_view(part) for part in self._parts)
        assert self._payload is not None
        return (byte_view(self._payload),)

    @property
    def payload_len(self) -> int:
        """Payload size in bytes (whatever the item size of its buffers)."""
        if self._parts is not None:
            return sum(memoryview(part).nbytes for part in self._parts)
        payload = self._payload
        assert payload is not None
        return len(payload) if type(payload) is bytes else memoryview(payload).nbytes

    @property
    def nbytes(self) -> int:
        return len(self.head) + self.payload_len


def byte_view(buf: Buffer) -> memoryview:
    """A flat unsigned-byte view of ``buf``, without copying: ``len()`` counts bytes.

    Errors: TypeError if ``buf`` is not a C-contiguous buffer.
    """
    view = memoryview(buf)
    if not view.c_contiguous:
        raise TypeError("expected a C-contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


@dataclass(frozen=True, slots=True)
class Inbound:
    """A frame received from ``peer``, as authenticated by the transport layer."""

    peer: str
    frame: Frame
    received_at: float = 0.0
