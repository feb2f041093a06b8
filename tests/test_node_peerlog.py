"""How the node presents its transport to the role (``fednode.node._PeerLog``)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from fednode.node import PEER_POLL_S, UNDISCOVERED_WAIT_S, _PeerLog
from fednode.p2p.transport import PeerEvent, Transport
from fednode.wire.frames import Frame


class FakeTransport(Transport):
    def __init__(self) -> None:
        self.local_peer = "me"
        self.connected: set[str] = set()
        self.addressed: set[str] = set()
        self.sent: list[tuple[float, str]] = []
        _, self.incoming = trio.open_memory_channel[Any](1)
        self.push, self.events = trio.open_memory_channel[PeerEvent](8)

    async def send(self, peer: str, frame: Frame) -> None:
        self.sent.append((trio.current_time(), peer))

    def peers(self) -> frozenset[str]:
        return frozenset(self.connected)

    def addresses(self) -> tuple[str, ...]:
        return ()

    def known_addresses(self, peer: str) -> tuple[str, ...]:
        return ("/ip4/10.0.0.1/tcp/1",) if peer in self.addressed else ()


async def test_a_send_to_an_undiscovered_peer_waits_for_discovery_then_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner = FakeTransport()
    inner.addressed.add("known")
    log = _PeerLog(inner, lambda event, data: None)

    async def discovered_later() -> None:
        await trio.sleep(2.0)
        inner.connected.add("found")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(discovered_later)
        await log.send("known", Frame(b""))  # has an address: no wait
        await log.send("found", Frame(b""))  # waits until discovery connects it
        await log.send("never", Frame(b""))  # bounded wait, then the transport decides
    (t_known, known), (t_found, found), (t_never, never) = inner.sent
    assert (known, found, never) == ("known", "found", "never")
    assert t_known == 0.0
    assert 2.0 <= t_found <= 2.0 + PEER_POLL_S  # as soon as discovery connected it
    assert t_never - t_found == UNDISCOVERED_WAIT_S


async def test_peer_events_of_non_members_are_logged_but_not_reported_to_the_role() -> None:
    inner = FakeTransport()
    logged: list[tuple[str, dict[str, Any]]] = []
    log = _PeerLog(inner, lambda e, d: logged.append((e, d)), admits=lambda p: p == "member")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.pump)
        await inner.push.send(PeerEvent("stranger", True))
        await inner.push.send(PeerEvent("member", True))
        with trio.fail_after(5):
            event = await log.events.receive()
        nursery.cancel_scope.cancel()
    assert event.peer == "member"
    assert logged == [
        ("peer_up", {"peer": "stranger", "member": False}),
        ("peer_up", {"peer": "member"}),
    ]
