"""One conformance suite for the :class:`~fednode.p2p.transport.Transport` interface.

Every test runs against both implementations: :mod:`fednode.p2p.memory` (nodes attached
to one :class:`MemoryNetwork`, no faults) and :mod:`fednode.p2p.libp2p_host` (real
py-libp2p hosts on 127.0.0.1). A test is written once, against the interface; where the
two legitimately differ, the test reads a capability of :class:`Flavour` — that class is
the one place the differences are listed. Every wait has a deadline; nothing is
asserted absent after a sleep: absence is shown by a later frame arriving first.

Libp2p-only behaviour (frame size limits, inbound limits, busy answers, pnet, the patch
layer, cancellation mid-payload) stays in ``tests/test_libp2p_transport.py``; memory-only
faults (latency, loss, partitions) are in the simulator tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from fednode.errors import PeerGone, TransportError
from fednode.p2p.libp2p_host import Libp2pTransport
from fednode.p2p.memory import MemoryNetwork
from fednode.p2p.transport import PeerEvent, Transport
from fednode.wire.frames import Frame
from fednode.wire.messages import frame_head

MiB = 1 << 20
DEADLINE = 15.0
#: the receivers' inbox size (memory: ``buffer``; libp2p: ``channel_size``)
INBOX = 4


@dataclass(frozen=True)
class Flavour:
    """One transport implementation and how it legitimately differs from the other.

    Everything not listed here is the same for both, and tested the same way.
    """

    name: str
    #: ``send_nowait`` hands a frame over at once when the receiver's inbox has room
    #: (memory). False: it always returns False, the interface's default (libp2p: every
    #: frame needs a stream and an acknowledgement, so it cannot be done without waiting)
    nowait_delivers: bool


MEMORY = Flavour("memory", nowait_delivers=True)
LIBP2P = Flavour("libp2p", nowait_delivers=False)


def _key(n: int) -> Any:
    return create_new_key_pair(n.to_bytes(32, "big"))


def _pid(n: int) -> str:
    return ID.from_pubkey(_key(n).public_key).to_base58()


#: a well-formed peer id that no transport in any test has
STRANGER = _pid(99)


def _frame(payload: Any = b"", header: bytes = b"\xa1\x61k\x03") -> Frame:
    return Frame(frame_head(header, bytes(range(64))), payload)


@pytest.fixture(params=[MEMORY, LIBP2P], ids=lambda f: f.name)
def flavour(request: pytest.FixtureRequest) -> Flavour:
    if request.param is LIBP2P:
        request.applymarker(pytest.mark.net)
    return request.param  # type: ignore[no-any-return]


@asynccontextmanager
async def started(flavour: Flavour, n: int) -> AsyncIterator[list[Transport]]:
    """``n`` running transports of ``flavour`` (not yet connected to each other)."""
    async with trio.open_nursery() as nursery:
        transports: list[Transport]
        if flavour is MEMORY:
            network = MemoryNetwork(seed=0, buffer=INBOX)
            await nursery.start(network.run)
            transports = [network.attach(_pid(i + 1)) for i in range(n)]
        else:
            hosts = [Libp2pTransport(_key(i + 1), channel_size=INBOX) for i in range(n)]
            with trio.fail_after(DEADLINE):
                for host in hosts:
                    await nursery.start(host.run)
            transports = list(hosts)
        yield transports
        nursery.cancel_scope.cancel()


async def connect_all(transports: list[Transport]) -> dict[tuple[str, str], PeerEvent]:
    """Each connects to the ones after it; returns, per (observer, peer), the up event the
    observer saw, once every transport has seen every other come up."""
    seen: dict[tuple[str, str], PeerEvent] = {}
    with trio.fail_after(DEADLINE):
        for i, t in enumerate(transports):
            for other in transports[i + 1 :]:
                await t.connect(other.local_peer, other.addresses())
        for t in transports:
            want = {o.local_peer for o in transports if o is not t}
            while want - {peer for observer, peer in seen if observer == t.local_peer}:
                event = await t.events.receive()
                assert event.up, event
                seen[(t.local_peer, event.peer)] = event
    return seen


@asynccontextmanager
async def connected(flavour: Flavour, n: int) -> AsyncIterator[list[Transport]]:
    async with started(flavour, n) as transports:
        await connect_all(transports)
        yield transports


async def next_event(t: Transport, peer: str) -> PeerEvent:
    with trio.fail_after(DEADLINE):
        async for event in t.events:
            if event.peer == peer:
                return event
    raise AssertionError("events channel closed")


async def receive(t: Transport) -> Any:
    with trio.fail_after(DEADLINE):
        return await t.incoming.receive()


async def until(condition: Any) -> None:
    """Wait (bounded) for a positive signal."""
    with trio.fail_after(DEADLINE):
        while not condition():
            await trio.sleep(0.005)


async def fill_inbox(sender: Transport, receiver: Transport) -> list[Frame]:
    """Send until ``receiver``'s inbox is full (it does not read); the frames sent."""
    frames = [_frame(b"filler %d" % i) for i in range(INBOX)]
    with trio.fail_after(DEADLINE):
        for frame in frames:
            await sender.send(receiver.local_peer, frame)
    assert receiver.incoming.statistics().current_buffer_used == INBOX
    return frames


# ------------------------------------------------------------------ frames


async def test_a_frame_arrives_intact_with_its_sender_both_ways(flavour: Flavour) -> None:
    async with connected(flavour, 2) as (a, b):
        floats = memoryview(bytearray(range(256)) * 16).cast("f")  # len() counts floats
        frames = [
            _frame(b""),
            _frame(b"payload bytes", header=b"\xa1\x61k\x04"),
            _frame(floats),
            _frame((b"codec header", memoryview(b"then the vector"), bytearray(b"!"))),
        ]
        for frame in frames:
            with trio.fail_after(DEADLINE):
                await a.send(b.local_peer, frame)
            got = await receive(b)
            assert got.peer == a.local_peer
            assert got.frame == frame
            assert bytes(got.frame.payload) == b"".join(bytes(p) for p in frame.parts)
        with trio.fail_after(DEADLINE):
            await b.send(a.local_peer, _frame(b"pong"))
        back = await receive(a)
        assert (back.peer, back.frame) == (b.local_peer, _frame(b"pong"))


async def test_frames_on_one_pair_arrive_in_the_order_they_were_sent(flavour: Flavour) -> None:
    sent = [_frame(b"%d" % i) for i in range(40)]  # ten times the inbox: back-pressure too
    async with connected(flavour, 2) as (a, b):
        got: list[Frame] = []

        async def read() -> None:
            while len(got) < len(sent):
                got.append((await b.incoming.receive()).frame)

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for frame in sent:
                    await a.send(b.local_peer, frame)
        assert got == sent


async def test_a_large_multi_part_frame_arrives_intact(flavour: Flavour) -> None:
    first, second = bytes(range(256)) * (12 * 1024), b"\x5a" * (5 * MiB + 3)  # 8 MiB
    frame = _frame((first, memoryview(second)))
    async with connected(flavour, 2) as (a, b):
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.send, b.local_peer, frame)
                got = await b.incoming.receive()
    assert got.peer == a.local_peer and got.frame.head == frame.head
    assert got.frame.payload_len == len(first) + len(second)
    digest = hashlib.sha256(first + second).digest()
    assert hashlib.sha256(got.frame.payload).digest() == digest


# ------------------------------------------------------------------ peers and events


async def test_connect_reports_the_peer_up_on_both_sides(flavour: Flavour) -> None:
    async with started(flavour, 2) as (a, b):
        seen = await connect_all([a, b])
        assert seen[(a.local_peer, b.local_peer)].up and seen[(b.local_peer, a.local_peer)].up
        # the dialer's event names the addresses it dialed (the listener sees the dialer's
        # outgoing address, which over TCP is not one it listens on)
        assert seen[(a.local_peer, b.local_peer)].addrs == b.addresses()
        assert a.peers() == {b.local_peer} and b.peers() == {a.local_peer}


async def test_addresses_name_the_node_and_peers_lists_the_connected_others(
    flavour: Flavour,
) -> None:
    async with started(flavour, 3) as transports:
        for t in transports:
            assert t.addresses() and all(addr.endswith(t.local_peer) for addr in t.addresses())
        await connect_all(transports)
        for t in transports:
            others = {o.local_peer for o in transports if o is not t}
            assert t.peers() == others and t.local_peer not in t.peers()
        a, b, _ = transports
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())  # already connected: nothing new
            await a.send(b.local_peer, _frame(b"marker"))
        assert (await receive(b)).frame == _frame(b"marker")
        assert a.events.statistics().current_buffer_used == 0  # no second up event


async def test_a_closed_peer_is_reported_down_and_leaves_peers(flavour: Flavour) -> None:
    async with connected(flavour, 3) as (a, b, c):
        await b.aclose()
        for t in (a, c):
            down = await next_event(t, b.local_peer)
            assert not down.up
            assert t.peers() == {a.local_peer, c.local_peer} - {t.local_peer}
        with trio.fail_after(DEADLINE):  # the others still talk
            await a.send(c.local_peer, _frame(b"still here"))
        assert (await receive(c)).frame == _frame(b"still here")


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("peer", [STRANGER, "not-a-peer-id!"], ids=["stranger", "malformed"])
async def test_send_to_an_unknown_peer_raises_peer_gone(flavour: Flavour, peer: str) -> None:
    async with started(flavour, 1) as (a,):
        with trio.fail_after(DEADLINE), pytest.raises(PeerGone):
            await a.send(peer, _frame(b"anyone?"))


async def test_send_to_a_peer_that_closed_raises_peer_gone(flavour: Flavour) -> None:
    async with connected(flavour, 2) as (a, b):
        await b.aclose()
        assert not (await next_event(a, b.local_peer)).up
        with trio.fail_after(DEADLINE), pytest.raises(PeerGone):
            await a.send(b.local_peer, _frame(b"anyone there?"))


@pytest.mark.parametrize("closer", ["receiver", "sender"])
async def test_a_send_pending_when_either_side_closes_fails_with_peer_gone(
    flavour: Flavour, closer: str
) -> None:
    async with connected(flavour, 2) as (a, b):
        fillers = await fill_inbox(a, b)
        outcome: list[BaseException | None] = []

        async def pending() -> None:
            try:
                await a.send(b.local_peer, _frame(b"pending"))
                outcome.append(None)
            except Exception as exc:
                outcome.append(exc)

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending)
                await until(lambda: b.incoming.statistics().tasks_waiting_send == 1)
                await (b if closer == "receiver" else a).aclose()
        assert len(outcome) == 1 and isinstance(outcome[0], PeerGone), outcome
        if closer == "sender":  # the receiver is still up: what arrived before is intact
            assert [(await receive(b)).frame for _ in fillers] == fillers


# ------------------------------------------------------------------ send_nowait


async def test_send_nowait_delivers_or_returns_false_having_done_nothing(
    flavour: Flavour,
) -> None:
    async with connected(flavour, 2) as (a, b):
        handed_over = a.send_nowait(b.local_peer, _frame(b"nowait"))
        assert handed_over is flavour.nowait_delivers
        with trio.fail_after(DEADLINE):
            await a.send(b.local_peer, _frame(b"marker"))
        first = await receive(b)
        if handed_over:  # on its way, as after await send(): ahead of the later frame
            assert first.frame == _frame(b"nowait") and first.peer == a.local_peer
            first = await receive(b)
        assert first.frame == _frame(b"marker")  # and a frame not handed over never comes
        assert b.incoming.statistics().current_buffer_used == 0


async def test_send_nowait_to_a_full_inbox_returns_false_having_done_nothing(
    flavour: Flavour,
) -> None:
    async with connected(flavour, 2) as (a, b):
        fillers = await fill_inbox(a, b)
        assert a.send_nowait(b.local_peer, _frame(b"no room")) is False
        assert [(await receive(b)).frame for _ in fillers] == fillers
        with trio.fail_after(DEADLINE):
            await a.send(b.local_peer, _frame(b"marker"))
        assert (await receive(b)).frame == _frame(b"marker")


async def test_send_nowait_to_an_unknown_peer_never_claims_delivery(flavour: Flavour) -> None:
    async with started(flavour, 1) as (a,):
        try:
            handed_over = a.send_nowait(STRANGER, _frame(b"anyone?"))
        except PeerGone:
            handed_over = False
        assert handed_over is False


# ------------------------------------------------------------------ aclose


async def test_aclose_ends_both_channels_and_later_sends_raise(flavour: Flavour) -> None:
    async with connected(flavour, 2) as (a, b):
        with trio.fail_after(DEADLINE):
            await b.send(a.local_peer, _frame(b"before close"))
        await a.aclose()
        with trio.fail_after(DEADLINE):
            async for _ in a.events:  # ends: the transport closed it
                pass
            leftovers = [inbound.frame async for inbound in a.incoming]  # ends as well
        assert leftovers in ([], [_frame(b"before close")])
        assert a.peers() == frozenset()
        with trio.fail_after(DEADLINE), pytest.raises(TransportError):
            await a.send(b.local_peer, _frame(b"after close"))
        assert not (await next_event(b, a.local_peer)).up
