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

from ..wire.frames import Frame, Inbound


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
