"""In-memory transport: many nodes in one trio run, with seeded fault injection.

A :class:`MemoryNetwork` is the switch; each node gets a :class:`MemoryTransport` from
:meth:`MemoryNetwork.attach`. Frames are handed over by reference (the payload buffer is
never copied), after a delay of ``latency + nbytes / bandwidth`` in trio time — with
``trio.testing.MockClock(autojump_threshold=0)`` that costs no wall time.

Fault hooks (all deterministic for a seed): per-link or global latency, bandwidth and
loss rate; :meth:`partition` into groups; :meth:`crash` / :meth:`restart` of a node.
A send to a crashed, partitioned or unknown peer raises :class:`PeerGone` (the sender
learns like a TCP connect would fail); a lost frame vanishes silently (like a dropped
datagram on a link that the stream layer could not save).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import trio

from ..errors import PeerGone, TransportError
from ..wire.frames import Frame, Inbound
from .transport import PeerEvent, Transport


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """Properties of a directed link (or the network default)."""

    latency_s: float = 0.0
    bandwidth_Bps: float = math.inf
    loss: float = 0.0

    def transfer_time(self, nbytes: int) -> float:
        return self.latency_s + (nbytes / self.bandwidth_Bps if self.bandwidth_Bps else 0.0)


class MemoryNetwork:
    """The shared medium. Must be used from inside one trio run.

    ``nursery`` (given to :meth:`run` via ``nursery.start``) carries delayed deliveries,
    so a delayed frame does not hold its sender.
    """

    def __init__(self, *, seed: int = 0, default: LinkFaults | None = None, buffer: int = 256):
        self.default = default or LinkFaults()
        self._links: dict[tuple[str, str], LinkFaults] = {}
        self._rng = random.Random(seed)
        self._nodes: dict[str, MemoryTransport] = {}
        self._crashed: set[str] = set()
        self._group: dict[str, int] = {}
        self._buffer = buffer
        self._nursery: trio.Nursery | None = None
        self.sent_frames = 0
        self.sent_bytes = 0
        self.dropped_frames = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery of in-flight deliveries until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # --- membership -------------------------------------------------------------------
    def attach(self, peer: str) -> MemoryTransport:
        if peer in self._nodes and peer not in self._crashed:
            raise TransportError(f"peer {peer!r} is already attached")
        transport = MemoryTransport(self, peer, self._buffer)
        self._nodes[peer] = transport
        self._crashed.discard(peer)
        for other in self._nodes.values():
            if other is not transport and self._reachable(peer, other.local_peer):
                other._event(PeerEvent(peer, True, (f"mem/{peer}",)))
                transport._event(PeerEvent(other.local_peer, True, (f"mem/{other.local_peer}",)))
        return transport

    def detach(self, peer: str) -> None:
        """The node left cleanly: same effect on others as a crash."""
        self.crash(peer)
        self._nodes.pop(peer, None)

    # --- fault hooks -------------------------------------------------------------------
    def set_link(self, a: str, b: str, faults: LinkFaults, *, both_ways: bool = True) -> None:
        self._links[(a, b)] = faults
        if both_ways:
            self._links[(b, a)] = faults

    def crash(self, peer: str) -> None:
        """Kill ``peer``: its inbox closes, sends to it fail, others see it go down."""
        node = self._nodes.get(peer)
        if node is None or peer in self._crashed:
            return
        self._crashed.add(peer)
        node._close()
        for other in self._nodes.values():
            if other.local_peer not in self._crashed and self._same_side(peer, other.local_peer):
                other._event(PeerEvent(peer, False))

    def restart(self, peer: str) -> MemoryTransport:
        """Bring a crashed node back with a fresh transport (its state is gone)."""
        return self.attach(peer)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the network; peers not named stay together in group 0."""
        before = {p: self._group.get(p, 0) for p in self._nodes}
        self._group = {}
        for i, group in enumerate(groups, start=1):
            for peer in group:
                self._group[peer] = i
        self._announce(before)

    def heal(self) -> None:
        before = {p: self._group.get(p, 0) for p in self._nodes}
        self._group = {}
        self._announce(before)

    def _announce(self, before: dict[str, int]) -> None:
        alive = [p for p in self._nodes if p not in self._crashed]
        for a in alive:
            for b in alive:
                if a == b:
                    continue
                was = before.get(a, 0) == before.get(b, 0)
                now = self._same_side(a, b)
                if was != now:
                    self._nodes[a]._event(PeerEvent(b, now))

    def is_alive(self, peer: str) -> bool:
        return peer in self._nodes and peer not in self._crashed

    # --- delivery ----------------------------------------------------------------------
    def _same_side(self, a: str, b: str) -> bool:
        return self._group.get(a, 0) == self._group.get(b, 0)

    def _reachable(self, a: str, b: str) -> bool:
        return (
            b in self._nodes
            and a not in self._crashed
            and b not in self._crashed
            and self._same_side(a, b)
        )

    def link(self, a: str, b: str) -> LinkFaults:
        return self._links.get((a, b), self.default)

    def reachable_peers(self, peer: str) -> frozenset[str]:
        return frozenset(p for p in self._nodes if p != peer and self._reachable(peer, p))

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
        if not self._reachable(src, dst):
            raise PeerGone(f"cannot reach {dst!r} from {src!r}", peer=dst)
        faults = self.link(src, dst)
        nbytes = frame.nbytes
        delay = faults.transfer_time(nbytes)
        target = self._nodes[dst]
        later = delay > 0 and self._nursery is not None
        if not wait and not later and not target._has_room():
            return Inbound(src, frame, trio.current_time())
        self.sent_frames += 1
        self.sent_bytes += nbytes
        if faults.loss and self._rng.random() < faults.loss:
            self.dropped_frames += 1
            return None
        if later:
            assert self._nursery is not None
            self._nursery.start_soon(self._deliver_later, delay, src, target, frame)
            return None
        inbound = Inbound(src, frame, trio.current_time())
        if wait:
            return inbound
        target._deliver_nowait(inbound)
        return None

    async def _deliver_later(self, delay: float, src: str, target: MemoryTransport, f: Frame):
        await trio.sleep(delay)
        if self._reachable(src, target.local_peer) and self._nodes.get(target.local_peer) is target:
            await target._deliver(Inbound(src, f, trio.current_time()))


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
