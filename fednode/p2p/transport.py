"""The Transport interface every role is written against.

A transport moves opaque *frames* between peers identified by their peer id (the
base58 libp2p PeerID of their Ed25519 key). It does not sign, verify or parse: that is
the envelope's job, done the same way over every transport. Two implementations pass
one conformance suite (``tests/test_transport_conformance.py``):

* :mod:`fednode.p2p.memory` — many nodes inside one trio run (simulation, tests), with
  seeded fault injection: delay, bandwidth, loss, partitions, crashes.
* :mod:`fednode.p2p.libp2p_host` — the real network (TCP + Noise + Yamux via py-libp2p).

Inbound frames and peer up/down events arrive on bounded trio memory channels; when a
consumer falls behind, senders feel back-pressure instead of the node growing a queue.

Errors: ``send`` raises :class:`~fednode.errors.PeerGone` when the peer cannot be
reached and :class:`~fednode.errors.TransportError` for other failures. It never raises
a foreign (libp2p/OS) exception.

Cancellation: ``send`` may be cancelled at any point; the frame is then either delivered
whole or not at all.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import trio

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


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A peer became reachable (``up``) or was lost."""

    peer: str
    up: bool
    addrs: tuple[str, ...] = field(default=())


class Transport(abc.ABC):
    """Send frames to peers by id; receive frames and peer events on channels."""

    #: this node's peer id
    local_peer: str
    #: inbound frames (bounded)
    incoming: trio.MemoryReceiveChannel[Inbound]
    #: peer up/down events (bounded)
    events: trio.MemoryReceiveChannel[PeerEvent]

    @abc.abstractmethod
    async def send(self, peer: str, frame: Frame) -> None:
        """Deliver ``frame`` to ``peer`` or raise :class:`PeerGone`/:class:`TransportError`."""

    def send_nowait(self, peer: str, frame: Frame) -> bool:
        """Hand ``frame`` over at once if that needs no waiting; else do nothing.

        True: the frame is on its way, as after ``await send(...)`` returned. False: nothing
        was done; the caller must ``await send(...)``. Lets a runner skip a task per message
        on a transport that can accept without blocking (memory: a free slot in the
        receiver's inbox). The default always returns False.

        Errors: as :meth:`send`.
        """
        return False

    @abc.abstractmethod
    def peers(self) -> frozenset[str]:
        """Peers currently known to be reachable."""

    @abc.abstractmethod
    def addresses(self) -> tuple[str, ...]:
        """Addresses others can use to reach this node (multiaddrs, or a memory name)."""

    async def connect(self, peer: str, addrs: tuple[str, ...] = ()) -> None:  # noqa: B027
        """Make ``peer`` reachable (dial). Memory transports are always connected."""

    async def aclose(self) -> None:  # noqa: B027
        """Release resources; pending sends fail with :class:`PeerGone`."""
