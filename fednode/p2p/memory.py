"""In-memory transport: many nodes in one trio run, with seeded fault injection.

A :class:`MemoryNetwork` is the switch; each node gets a :class:`MemoryTransport` from
:meth:`MemoryNetwork.attach`. Frames are handed over by reference (the payload buffer is
never copied), after a delay of ``latency + nbytes / bandwidth`` in trio time — with
``trio.testing.MockClock(autojump_threshold=0)`` that costs no wall time. Delayed frames
and peer events wait in one queue for the whole network and are handed over in the order
of their due times; what is due at one instant goes in the model's rank of the sender (of
the peer an event is about), each sender's in the order it was sent — the order the
discrete-event driver keeps — so two adverts a node sends one after the other over one
link arrive in that order. Inside :meth:`MemoryNetwork.run`, peer events are due
:data:`~fednode.p2p.netmodel.ANNOUNCE_S` after the change that caused them (outside it, at
once); a frame due at the instant of a change sees the network as it was when that
instant began (:meth:`~fednode.p2p.netmodel.NetworkModel.arrives`).

The network itself — links, seeded loss, crashes, partitions, who hears of whom — is a
:class:`~fednode.p2p.netmodel.NetworkModel` (:attr:`MemoryNetwork.model`), the same model
the discrete-event driver uses. Fault hooks: :meth:`set_link` (per-link latency,
bandwidth, loss; ``model.default``, ``model.extra_loss``), :meth:`partition` / :meth:`heal`,
:meth:`crash` / :meth:`restart` of a node. A send to a crashed, partitioned or unknown
peer raises :class:`PeerGone` (the sender learns like a TCP connect would fail); a lost
frame vanishes silently (like a dropped datagram on a link that the stream layer could
not save).
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections.abc import Iterable
from typing import Any

import trio

from ..errors import PeerGone, TransportError
from ..wire.frames import Frame, Inbound
from .netmodel import ANNOUNCE_S, Link, NetworkModel
from .transport import PeerEvent, Transport

#: what waits in the queue: a frame with its sender, or a peer event
_Due = tuple[str, Frame] | PeerEvent


def _now() -> float:
    """trio's clock (-inf outside a run: a node attached before the run starts)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return -math.inf


class MemoryNetwork:
    """The shared medium. Must be used from inside one trio run.

    Every question about the network (reachable? lost? how long?) and every fault goes to
    :attr:`model`; this class carries out its answers in trio. ``nursery`` (given to
    :meth:`run` via ``nursery.start``) carries delayed deliveries, so a delayed frame does
    not hold its sender.
    """

    def __init__(self, *, seed: int = 0, default: Link | None = None, buffer: int = 256):
        self.model: NetworkModel[str] = NetworkModel(seed=seed, default=default, clock=_now)
        self._nodes: dict[str, MemoryTransport] = {}
        self._buffer = buffer
        self._nursery: trio.Nursery | None = None
        #: frames in flight and peer events to announce: (due time, rank of the sender or
        #: of the peer the event is about, order of scheduling, receiver, frame or event):
        #: what is due at one instant goes in that rank (as on the discrete-event driver)
        self._due: list[tuple[float, int, int, MemoryTransport, _Due]] = []
        self._sent = 0
        self._sleeper: trio.CancelScope | None = None

    @property
    def sent_frames(self) -> int:
        return self.model.stats.sent_frames

    @property
    def sent_bytes(self) -> int:
        return self.model.stats.sent_bytes

    @property
    def dropped_frames(self) -> int:
        return self.model.stats.dropped_frames

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery of in-flight deliveries until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._deliver_due()

    async def _deliver_due(self) -> None:
        """Hand each frame in flight to its receiver when it is due, in (time, rank, send order).

        A receiver with a full inbox gets its frame from a task of its own (back-pressure
        on that link only, as before); every other frame is handed over here."""
        due = self._due
        while True:
            if not due or due[0][0] > trio.current_time():
                with trio.CancelScope(deadline=due[0][0] if due else math.inf) as sleeper:
                    self._sleeper = sleeper
                    await trio.sleep_forever()
                self._sleeper = None
                continue
            t, _rank, _n, target, item = heapq.heappop(due)
            if isinstance(item, PeerEvent):
                target._event(item)  # nothing if the observer went down meanwhile
                continue
            src, frame = item
            peer = target.local_peer
            if not (self.model.arrives(src, peer, t) and self._nodes.get(peer) is target):
                continue  # the receiver went down or away while the frame was in flight
            inbound = Inbound(src, frame, trio.current_time())
            if target._has_room():
                target._deliver_nowait(inbound)
            else:
                assert self._nursery is not None
                self._nursery.start_soon(target._deliver, inbound)

    # --- membership -------------------------------------------------------------------
    def attach(self, peer: str) -> MemoryTransport:
        if self.model.alive(peer):
            raise TransportError(f"peer {peer!r} is already attached")
        transport = MemoryTransport(self, peer, self._buffer)
        self._nodes[peer] = transport
        self._announce(self.model.join(peer))
        return transport

    def detach(self, peer: str) -> None:
        """The node left cleanly: same effect on others as a crash."""
        self.crash(peer)
        self._nodes.pop(peer, None)
        self.model.remove(peer)

    # --- fault hooks -------------------------------------------------------------------
    def set_link(self, a: str, b: str, link: Link, *, both_ways: bool = True) -> None:
        self.model.set_link(a, b, link, both_ways=both_ways)

    def crash(self, peer: str) -> None:
        """Kill ``peer``: its inbox closes, sends to it fail, others see it go down."""
        node = self._nodes.get(peer)
        if node is None or not self.model.alive(peer):
            return
        events = self.model.crash(peer)
        node._close()
        self._announce(events)

    def restart(self, peer: str) -> MemoryTransport:
        """Bring a crashed node back with a fresh transport (its state is gone)."""
        return self.attach(peer)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the network; peers not named stay together in group 0."""
        self._announce(self.model.partition(groups))

    def heal(self) -> None:
        self._announce(self.model.heal())

    def _announce(self, events: list[tuple[str, str, bool]]) -> None:
        """Hand the model's peer events to the observers: :data:`ANNOUNCE_S` from now, in
        the order of the due frames (outside :meth:`run`: at once)."""
        nodes, rank = self._nodes, self.model.rank
        at = trio.current_time() + ANNOUNCE_S if self._nursery is not None else None
        for observer, peer, up in events:
            event = PeerEvent(peer, up, (f"mem/{peer}",) if up else ())
            if at is None:
                nodes[observer]._event(event)
            else:
                self._enqueue(at, rank(peer), nodes[observer], event)

    def _enqueue(
        self,
        at: float,
        rank: int,
        target: MemoryTransport,
        item: _Due,
    ) -> None:
        """Hand ``item`` (a frame, an event) over at ``at``; ``rank``: the model's rank
        of its sender (of the peer the event is about)."""
        self._sent += 1
        heapq.heappush(self._due, (at, rank, self._sent, target, item))
        sleeper = self._sleeper
        if sleeper is not None and at < sleeper.deadline:
            sleeper.deadline = at

    def is_alive(self, peer: str) -> bool:
        return self.model.alive(peer)

    # --- delivery ----------------------------------------------------------------------
    def link(self, a: str, b: str) -> Link:
        return self.model.link(a, b)

    def reachable_peers(self, peer: str) -> frozenset[str]:
        return frozenset(self.model.reachable_from(peer))

    async def _send(self, src: str, dst: str, frame: Frame) -> None:
        inbound = self._dispatch(src, dst, frame, wait=True)
        if inbound is not None:
            await self._nodes[dst]._deliver_or_raise(inbound)

    def _send_nowait(self, src: str, dst: str, frame: Frame) -> bool:
        """Deliver (or schedule, or lose) ``frame`` now; False, with nothing done, when an
        immediate delivery would have to wait for room in the receiver's inbox."""
        return self._dispatch(src, dst, frame, wait=False) is None

    def _dispatch(self, src: str, dst: str, frame: Frame, *, wait: bool) -> Inbound | None:
        """Account for, lose or schedule a frame; the Inbound still to deliver now, if any.

        With ``wait=False`` an immediate delivery is done here if the receiver's inbox has
        room; if not, nothing is done (no accounting, no loss draw) and the Inbound is
        returned for the caller to fall back to the waiting path."""
        model = self.model
        if not model.reachable(src, dst):
            raise PeerGone(f"cannot reach {dst!r} from {src!r}", peer=dst)
        nbytes = frame.nbytes
        target = self._nodes[dst]
        link = model.link(src, dst)
        delay = link.transfer_time(nbytes)  # once per frame
        later = self._nursery is not None and delay > 0
        if not wait and not later and not target._has_room():
            return Inbound(src, frame, trio.current_time())
        if not model.carry(src, dst, nbytes, link):  # counted, then lost
            return None
        if later:
            self._enqueue(trio.current_time() + delay, model.rank(src), target, (src, frame))
            return None
        inbound = Inbound(src, frame, trio.current_time())
        if wait:
            return inbound
        target._deliver_nowait(inbound)
        return None


class MemoryTransport(Transport):
    """One node's endpoint on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, peer: str, buffer: int) -> None:
        self.network = network
        self.local_peer = peer
        self._in_send, self.incoming = trio.open_memory_channel[Inbound](buffer)
        # Peer events are raised synchronously (attach, crash, partition), so they cannot
        # wait for room; a bounded buffer would drop some when many nodes attach at once
        # (a coordinator attached first hears of every client before its pump runs) and a
        # dropped peer-up is a peer the role never hears of. Unbounded: at most one event
        # per peer and change, which the network itself caused.
        self._ev_send, self.events = trio.open_memory_channel[PeerEvent](math.inf)
        self._closed = False
        #: cancel scopes of this node's sends still waiting; cancelled when it goes down
        self._pending: set[trio.CancelScope] = set()

    async def send(self, peer: str, frame: Frame) -> None:
        if self._closed:
            raise PeerGone("this node is down", peer=self.local_peer)
        with trio.CancelScope() as pending:
            self._pending.add(pending)
            try:
                await self.network._send(self.local_peer, peer, frame)
            finally:
                self._pending.discard(pending)
        if pending.cancelled_caught:  # this node went down while the frame waited
            raise PeerGone("this node went down before the frame was delivered", peer=peer)

    def send_nowait(self, peer: str, frame: Frame) -> bool:
        if self._closed:
            raise PeerGone("this node is down", peer=self.local_peer)
        return self.network._send_nowait(self.local_peer, peer, frame)

    def peers(self) -> frozenset[str]:
        return self.network.reachable_peers(self.local_peer)

    def addresses(self) -> tuple[str, ...]:
        return (f"mem/{self.local_peer}",)

    async def aclose(self) -> None:
        self.network.detach(self.local_peer)

    async def _deliver(self, inbound: Inbound) -> None:
        """A delayed frame: lost if the receiver crashed while it was in flight."""
        with contextlib.suppress(PeerGone):
            await self._deliver_or_raise(inbound)

    async def _deliver_or_raise(self, inbound: Inbound) -> None:
        """Put ``inbound`` in the inbox, waiting for room; :class:`PeerGone` if this node
        is down or goes down meanwhile (the sender is told, as over a stream)."""
        if self._closed:
            raise PeerGone(f"{self.local_peer!r} is down", peer=self.local_peer)
        try:
            await self._in_send.send(inbound)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            text = f"{self.local_peer!r} went down before it took the frame"
            raise PeerGone(text, peer=self.local_peer) from exc

    def _has_room(self) -> bool:
        """True if a frame can be put in the inbox now (or the inbox is gone: dropped)."""
        if self._closed:
            return True
        stats = self._in_send.statistics()
        return stats.current_buffer_used < stats.max_buffer_size or stats.tasks_waiting_receive > 0

    def _deliver_nowait(self, inbound: Inbound) -> None:
        if self._closed:
            return
        try:
            self._in_send.send_nowait(inbound)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # the receiver stopped reading: the frame is lost, as in _deliver

    def _event(self, event: PeerEvent) -> None:
        if self._closed:
            return
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._ev_send.send_nowait(event)

    def _close(self) -> None:
        self._closed = True
        for pending in self._pending:
            pending.cancel()
        self._in_send.close()
        self._ev_send.close()
