"""Discovery's redial schedule: quick retries at start, backing off to ``redial_interval``."""

from __future__ import annotations

import itertools
from typing import Any

import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from fednode.errors import PeerGone
from fednode.p2p.discovery import run_discovery
from fednode.p2p.transport import Frame, Transport


def _pid(n: int) -> str:
    return ID.from_pubkey(create_new_key_pair(n.to_bytes(32, "big")).public_key).to_base58()


class RefusingTransport(Transport):
    """Every dial to ``late`` fails until virtual time ``up_at``."""

    def __init__(self, local_peer: str, late: str, up_at: float) -> None:
        self.local_peer, self.late, self.up_at = local_peer, late, up_at
        self.dials: list[float] = []
        self.connected: set[str] = set()
        _, self.incoming = trio.open_memory_channel[Any](1)
        _, self.events = trio.open_memory_channel[Any](1)

    async def send(self, peer: str, frame: Frame) -> None:
        raise PeerGone("fake", peer=peer)

    def peers(self) -> frozenset[str]:
        return frozenset(self.connected)

    def addresses(self) -> tuple[str, ...]:
        return (f"/ip4/127.0.0.1/tcp/4001/p2p/{self.local_peer}",)

    async def connect(self, peer: str, addrs: tuple[str, ...] = ()) -> None:
        self.dials.append(trio.current_time())
        if trio.current_time() < self.up_at:
            raise PeerGone("refused", peer=peer)
        self.connected.add(peer)


async def _dial_times(up_at: float, **kwargs: Any) -> list[float]:
    t = RefusingTransport(_pid(1), _pid(2), up_at)
    boot = (f"/ip4/127.0.0.1/tcp/2/p2p/{_pid(2)}",)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_discovery(
                t, mdns=False, bootstrap=boot, task_status=task_status, **kwargs
            )
        )
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    return [round(when, 3) for when in t.dials]


async def test_a_bootstrap_peer_that_starts_late_is_found_within_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times = await _dial_times(up_at=5.0, redial_interval=30.0, first_redial=1.0)
    assert times == [0.0, 1.0, 3.0, 7.0]  # 1 s, then doubling; connected at the 4th


async def test_a_peer_that_stays_down_is_dialed_at_most_once_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times = await _dial_times(up_at=1e9, redial_interval=30.0, first_redial=1.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0] and set(gaps[5:]) == {30.0}


async def test_without_first_redial_the_interval_is_fixed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times = await _dial_times(up_at=1e9, redial_interval=30.0)
    assert times[:4] == [0.0, 30.0, 60.0, 90.0]
