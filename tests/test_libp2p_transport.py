"""Libp2pTransport over real sockets on 127.0.0.1, the patch layer, and discovery.

Every network wait runs under ``trio.fail_after``. Everything listens on 127.0.0.1 only.
The mDNS test runs in a private network namespace (``unshare -n``) and never touches
the machine's interfaces.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from fednode.addresses import split_peer_addr
from fednode.errors import ConfigError, LocalProtocolError, PeerGone, TransportError
from fednode.p2p import _libp2p_patches as patches
from fednode.p2p.discovery import (
    Found,
    Withdrawn,
    parse_bootstrap,
    parse_txt,
    run_discovery,
    service_type,
    txt_record,
)
from fednode.p2p.libp2p_framing import PREAMBLE, PROTOCOL_ID, STATUS_TOO_LARGE
from fednode.p2p.libp2p_host import (
    Libp2pTransport,
)
from fednode.p2p.network_key import read_network_key
from fednode.p2p.transport import PeerEvent, Transport
from fednode.wire.frames import Frame
from fednode.wire.messages import MAGIC, PREFIX, SCHEMA_VERSION, frame_head

pytestmark = pytest.mark.net

MiB = 1 << 20
DEADLINE = 15.0


def _key(n: int) -> Any:
    return create_new_key_pair(n.to_bytes(32, "big"))


def _frame(payload: bytes | memoryview = b"", header: bytes = b"\xa1\x61k\x03") -> Frame:
    return Frame(frame_head(header, bytes(range(64))), payload)


@asynccontextmanager
async def running(*transports: Libp2pTransport) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(DEADLINE):
            for t in transports:
                await nursery.start(t.run)
        yield nursery
        nursery.cancel_scope.cancel()


async def _next_event(t: Libp2pTransport, peer: str) -> PeerEvent:
    with trio.fail_after(DEADLINE):
        async for ev in t.events:
            if ev.peer == peer:
                return ev
    raise AssertionError("events channel closed")


# ------------------------------------------------------------------ patch layer
def test_libp2p_is_the_pinned_version() -> None:
    assert metadata.version("libp2p") == patches.PINNED_VERSION


@pytest.mark.parametrize(("module", "dotted"), patches.PATCHED_ATTRIBUTES)
def test_patched_attribute_still_exists(module: str, dotted: str) -> None:
    obj: Any = importlib.import_module(module)
    for part in dotted.split("."):
        assert hasattr(obj, part), f"{module}.{dotted} is gone: re-check _libp2p_patches"
        obj = getattr(obj, part)


def test_apply_is_idempotent_and_marks_every_patch() -> None:
    import libp2p.security.noise.io as nio
    import libp2p.security.secure_session as ss
    import libp2p.stream_muxer.yamux.yamux as yx

    patches.apply()
    first = (nio.BaseNoiseMsgReadWriter.write_msg, ss.SecureSession.read, yx.read_exactly)
    assert patches.apply() == tuple(patches.PATCHES)
    again = (nio.BaseNoiseMsgReadWriter.write_msg, ss.SecureSession.read, yx.read_exactly)
    assert first == again
    assert all(getattr(f, "__fednode_patch__", False) for f in again)
    assert yx.MAX_MESSAGE_SIZE == patches.FRAME_BYTES
    assert yx._yamux_release_on_read() is False
    assert patches.connection_config().max_connections_per_peer == 1


async def test_sha256_integrity_with_odd_write_sizes_over_patched_stack() -> None:
    proto = TProtocol("/fednode-test/sha/1.0.0")
    sizes = (5, 65_521, 1_000_003, 3_000_017)
    data = os.urandom(sum(sizes))
    got: dict[str, str] = {}

    async def handler(stream: Any) -> None:
        h = hashlib.sha256()
        need = len(data)
        odd = (7, 65_537, 999_983, 4 * MiB + 1)
        i = 0
        while need:
            chunk = await stream.read(min(need, odd[i % len(odd)]))
            h.update(chunk)
            need -= len(chunk)
            i += 1
        got["rx"] = h.hexdigest()
        await stream.write(b"k")
        await stream.close()

    a, b = Libp2pTransport(_key(1)), Libp2pTransport(_key(2))
    async with running(a, b):
        assert b._host is not None and a._host is not None
        b._host.set_stream_handler(proto, handler)
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())
            stream = await a._host.new_stream(ID.from_base58(b.local_peer), [proto])
            off = 0
            for size in sizes:
                await stream.write(data[off : off + size])
                off += size
            assert await stream.read(1) == b"k"
            await stream.close()
    assert got["rx"] == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ transport, libp2p-only
# (the interface contract is tests/test_transport_conformance.py)
async def test_a_peer_whose_run_is_cancelled_is_reported_down() -> None:
    """Shutdown by cancellation (not aclose(), which the conformance suite covers): the
    peer that dialed us sees us go."""
    a, b = Libp2pTransport(_key(1)), Libp2pTransport(_key(2))
    async with trio.open_nursery() as outer:
        async with running(a):
            async with running(b):
                with trio.fail_after(DEADLINE):
                    await a.connect(b.local_peer, b.addresses())
                assert (await _next_event(a, b.local_peer)).up
            # b is gone (its run() was cancelled)
            down = await _next_event(a, b.local_peer)
            assert not down.up
            assert a.peers() == frozenset()
        outer.cancel_scope.cancel()


async def test_shutdown_by_cancellation_leaves_no_threads_and_closes_channels() -> None:
    before = {t.ident for t in threading.enumerate()}
    a, b = Libp2pTransport(_key(1)), Libp2pTransport(_key(2))
    async with running(a, b):
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())
            await a.send(b.local_peer, _frame(b"x"))
            await b.incoming.receive()
    with trio.fail_after(DEADLINE):
        async for _ in a.events:  # ends: the transport closed its channels
            pass
        with pytest.raises(trio.EndOfChannel):
            await b.incoming.receive()
    extra = [t.name for t in threading.enumerate() if t.ident not in before]
    assert all(name.startswith("Trio thread") for name in extra), extra
    assert a.peers() == frozenset() and a.addresses() == ()


async def test_listening_on_a_busy_port_is_a_transport_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t = Libp2pTransport(_key(1), listen=(f"/ip4/127.0.0.1/tcp/{port}",))
        async with trio.open_nursery() as nursery:
            with trio.fail_after(DEADLINE), pytest.raises(TransportError, match="could not listen"):
                await nursery.start(t.run)


async def test_oversized_announced_frame_is_refused_before_allocation() -> None:
    a, b = Libp2pTransport(_key(1)), Libp2pTransport(_key(2), max_frame_bytes=MiB)
    async with running(a, b):
        assert a._host is not None
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())
            stream = await a._host.new_stream(ID.from_base58(b.local_peer), [PROTOCOL_ID])
            prefix = PREFIX.pack(MAGIC, SCHEMA_VERSION, 0, 4)
            tracemalloc.start()
            try:
                await stream.write(PREAMBLE.pack(1 << 40) + prefix)  # announces 1 TiB
                status = await stream.read(1)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert status == bytes((STATUS_TOO_LARGE,))
            assert peak < 4 * MiB
            # the same over send(): refused fast, and the transport keeps working
            with pytest.raises(TransportError, match="refused"):
                await a.send(b.local_peer, _frame(bytes(2 * MiB)))
            await a.send(b.local_peer, _frame(b"still here"))
            inbound = await b.incoming.receive()
            assert bytes(inbound.frame.payload) == b"still here"
            assert b.peers() == {a.local_peer}


async def test_frames_from_peers_not_accepted_are_refused_unread() -> None:
    a, c = Libp2pTransport(_key(1)), Libp2pTransport(_key(3))
    b = Libp2pTransport(_key(2), accept_from=lambda peer: peer == a.local_peer)
    async with running(a, b, c):
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())
            await c.connect(b.local_peer, b.addresses())
            with pytest.raises(TransportError, match="does not accept"):
                await c.send(b.local_peer, _frame(bytes(8 * MiB)))
            await a.send(b.local_peer, _frame(b"member"))
            inbound = await b.incoming.receive()
            assert inbound.peer == a.local_peer
        assert b.incoming.statistics().current_buffer_used == 0


async def _until(condition: Any) -> None:
    """Wait (bounded) until ``condition()`` holds: polls a positive signal, never asserts
    that something did not happen."""
    with trio.fail_after(DEADLINE):
        while not condition():
            await trio.sleep(0.01)


async def _no_limiters_left(t: Libp2pTransport) -> None:
    """Wait until ``t`` keeps no per-peer limiter: a handler finishes its bookkeeping
    just after its frame reached ``incoming``."""
    await _until(lambda: not t._per_peer)


def _waiting_per_peer(t: Libp2pTransport) -> dict[str, int]:
    """Inbound streams per peer waiting for their peer's turn to be read."""
    return {peer: lim.statistics().tasks_waiting for peer, lim in t._per_peer.items()}


async def test_inbound_frames_are_read_within_the_limits_and_the_rest_wait_their_turn() -> None:
    """At most max_inbound frames are read at once, at most max_inbound_per_peer of them
    from one peer; the others wait unread and are all delivered when their turn comes."""
    a, c = Libp2pTransport(_key(1)), Libp2pTransport(_key(3))
    b = Libp2pTransport(_key(2), max_inbound=2, max_inbound_per_peer=1, channel_size=64)
    reading: dict[str, int] = {}
    most = {"total": 0, "per_peer": 0}
    release = trio.Event()
    receive = b._receive

    async def slow_receive(stream: Any, peer: str) -> int:
        reading[peer] = reading.get(peer, 0) + 1
        most["total"] = max(most["total"], sum(reading.values()))
        most["per_peer"] = max(most["per_peer"], reading[peer])
        try:
            await release.wait()
            return await receive(stream, peer)
        finally:
            reading[peer] -= 1

    b._receive = slow_receive  # type: ignore[method-assign]
    async with running(a, b, c) as nursery:
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())
            await c.connect(b.local_peer, b.addresses())
            for sender in (a, c):
                for i in range(4):
                    nursery.start_soon(sender.send, b.local_peer, _frame(bytes([i]) * 1000))
            # every stream has reached b: two are read (both slots, one per peer), and the
            # other six wait, unread, in their own peer's queue
            await _until(lambda: _waiting_per_peer(b) == {a.local_peer: 3, c.local_peer: 3})
            assert most == {"total": 2, "per_peer": 1}
            assert b._inbound.statistics().tasks_waiting == 0  # they queue per peer first
            release.set()
            got = [await b.incoming.receive() for _ in range(8)]
            await _no_limiters_left(b)  # nothing kept for peers with no frame in flight
        assert sorted(inbound.peer for inbound in got) == sorted([a.local_peer, c.local_peer] * 4)
        assert most == {"total": 2, "per_peer": 1} and b.refused_frames == 0


async def test_a_frame_that_waits_past_send_timeout_is_answered_busy_and_counted() -> None:
    refusals: list[tuple[str, str]] = []
    a = Libp2pTransport(_key(1))
    b = Libp2pTransport(
        _key(2),
        max_inbound=1,
        max_inbound_per_peer=1,
        send_timeout=0.5,
        on_reject=lambda who, reason: refusals.append((who, reason)),
    )
    release = trio.Event()
    receive = b._receive
    calls = 0

    async def first_one_holds_on(stream: Any, peer: str) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # a reader that keeps the one slot past every deadline
            with trio.CancelScope(shield=True):
                await release.wait()
        return await receive(stream, peer)

    b._receive = first_one_holds_on  # type: ignore[method-assign]
    held_outcome: list[str] = []

    async def send_held() -> None:
        try:
            await a.send(b.local_peer, _frame(b"held"))
            held_outcome.append("taken")
        except TransportError as exc:
            held_outcome.append(str(exc))

    async with running(a, b) as nursery:
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())
            nursery.start_soon(send_held)
            while calls < 1:
                await trio.sleep(0.01)
            with pytest.raises(TransportError, match="did not take the frame in time"):
                await a.send(b.local_peer, _frame(b"queued behind the held one"))
            assert calls == 1  # the second frame never got to be read
            assert refusals == [(a.local_peer, "busy")] and b.refused_frames == 1
            release.set()  # the held reader is past its own deadline too: busy as well
            while not held_outcome:
                await trio.sleep(0.01)
            assert "did not take the frame in time" in held_outcome[0]
            await a.send(b.local_peer, _frame(b"after"))  # the slot came back
            inbound = await b.incoming.receive()
            assert bytes(inbound.frame.payload) == b"after"
            await _no_limiters_left(b)
        assert b.refused_frames == 2


async def test_malformed_frame_head_is_a_local_error() -> None:
    a, b = Libp2pTransport(_key(1)), Libp2pTransport(_key(2))
    async with running(a, b):
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())
            with pytest.raises(LocalProtocolError):
                await a.send(b.local_peer, Frame(b"nonsense", b""))
            good = _frame(b"")
            with pytest.raises(LocalProtocolError):
                await a.send(b.local_peer, Frame(good.head + b"extra", b""))


async def test_cancelled_send_drops_the_frame_and_keeps_the_connection() -> None:
    a, b = Libp2pTransport(_key(1)), Libp2pTransport(_key(2))
    async with running(a, b):
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())
            await _next_event(a, b.local_peer)
            conn_before = a._host.get_network().connections[ID.from_base58(b.local_peer)]  # type: ignore[union-attr]
            with trio.move_on_after(0.05):
                await a.send(b.local_peer, _frame(bytes(64 * MiB)))
            await a.send(b.local_peer, _frame(b"after"))
            inbound = await b.incoming.receive()
            assert bytes(inbound.frame.payload) == b"after"  # the cut frame never surfaced
            conn_after = a._host.get_network().connections[ID.from_base58(b.local_peer)]  # type: ignore[union-attr]
            assert conn_after == conn_before
            assert a.events.statistics().current_buffer_used == 0  # no down/up flap


async def test_network_key_admits_members_only() -> None:
    key = os.urandom(32)
    a = Libp2pTransport(_key(1), network_key=key)
    b = Libp2pTransport(_key(2), network_key=key)
    outsider = Libp2pTransport(_key(3), dial_timeout=1.0)
    wrong = Libp2pTransport(_key(4), network_key=os.urandom(32), dial_timeout=1.0)
    async with running(a, b, outsider, wrong):
        with trio.fail_after(DEADLINE):
            await a.connect(b.local_peer, b.addresses())
            await a.send(b.local_peer, _frame(b"member"))
            assert bytes((await b.incoming.receive()).frame.payload) == b"member"
            for intruder in (outsider, wrong):
                with pytest.raises(PeerGone):
                    await intruder.connect(b.local_peer, b.addresses())
                with pytest.raises(PeerGone):
                    await intruder.send(b.local_peer, _frame(b"let me in"))
            # b has turned both intruders away at the handshake, and a member's frame
            # sent after them is the next and only one b has
            await _until(lambda: b.failed_handshakes >= 2)
            await a.send(b.local_peer, _frame(b"after"))
            after = await b.incoming.receive()
        assert (after.peer, bytes(after.frame.payload)) == (a.local_peer, b"after")
        assert b.incoming.statistics().current_buffer_used == 0
        assert b.peers() == {a.local_peer}


def test_read_network_key_formats() -> None:
    raw = bytes(range(32))
    swarm_key = b"/key/swarm/psk/1.0.0/\n/base16/\n" + raw.hex().encode() + b"\n"
    assert read_network_key(swarm_key) == raw
    assert read_network_key(raw.hex().encode()) == raw
    assert read_network_key(raw) == raw
    with pytest.raises(ValueError):
        read_network_key(b"too short")


def test_split_peer_addr() -> None:
    pid = ID.from_pubkey(_key(1).public_key).to_base58()
    assert split_peer_addr(f"/ip4/127.0.0.1/tcp/4001/p2p/{pid}") == (pid, "/ip4/127.0.0.1/tcp/4001")
    with pytest.raises(ValueError):
        split_peer_addr("/ip4/127.0.0.1/tcp/4001")


# ------------------------------------------------------------------ discovery (no sockets)
class FakeTransport(Transport):
    """Records dials; ``refuse`` peers fail their first ``refuse[peer]`` dials."""

    def __init__(self, local_peer: str, refuse: dict[str, int] | None = None) -> None:
        self.local_peer = local_peer
        self.refuse = dict(refuse or {})
        self.dials: list[tuple[float, str, tuple[str, ...]]] = []
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
        self.dials.append((trio.current_time(), peer, addrs))
        await trio.sleep(0.01)
        if self.refuse.get(peer, 0) > 0:
            self.refuse[peer] -= 1
            raise PeerGone("refused", peer=peer)
        self.connected.add(peer)


def _pid(n: int) -> str:
    return ID.from_pubkey(_key(n).public_key).to_base58()


def test_bootstrap_address_without_peer_id_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"net\.bootstrap"):
        parse_bootstrap(("/ip4/127.0.0.1/tcp/4001",))
    with pytest.raises(ConfigError):
        parse_bootstrap(("not a multiaddr",))
    (found,) = parse_bootstrap(
        (f"/ip4/127.0.0.1/tcp/1/p2p/{_pid(1)}", f"/ip4/127.0.0.2/tcp/2/p2p/{_pid(1)}")
    )
    assert found.addrs == ("/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.2/tcp/2")


def test_federation_names_map_to_valid_mdns_service_types() -> None:
    assert service_type("fednode") == "_fednode._udp.local."
    assert service_type("p2p") == "_p2p._udp.local."
    long = service_type("Hospitals EU-West 2024")
    assert long.startswith("_fn-") and len(long.split(".")[0]) == 16
    assert long != service_type("Hospitals EU-West 2025")
    with pytest.raises(ConfigError):
        service_type("")


def test_txt_record_roundtrip_follows_the_libp2p_dnsaddr_format() -> None:
    addrs = (f"/ip4/10.0.0.2/tcp/4001/p2p/{_pid(2)}", f"/ip4/10.0.0.3/tcp/4001/p2p/{_pid(2)}")
    raw = txt_record(addrs)
    assert raw[0] == len(f"dnsaddr={addrs[0]}") and raw[1:9] == b"dnsaddr="
    found = parse_txt(raw, own_peer=_pid(1))
    assert found is not None and found.peer == _pid(2)
    assert found.addrs == ("/ip4/10.0.0.2/tcp/4001", "/ip4/10.0.0.3/tcp/4001")
    assert parse_txt(raw, own_peer=_pid(2)) is None  # our own announcement
    assert parse_txt(b"\x05hello\x0bdnsaddr=bad", own_peer=_pid(1)) is None


async def test_bootstrap_peers_are_dialed_at_once_and_redialed_until_connected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    me, good, flaky = _pid(1), _pid(2), _pid(3)
    t = FakeTransport(me, refuse={flaky: 2})
    boot = (
        f"/ip4/127.0.0.1/tcp/2/p2p/{good}",
        f"/ip4/127.0.0.1/tcp/3/p2p/{flaky}",
        f"/ip4/127.0.0.1/tcp/1/p2p/{me}",  # ourselves: never dialed
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_discovery(
                t, mdns=False, bootstrap=boot, redial_interval=30.0, task_status=task_status
            )
        )
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert [(when, peer) for when, peer, _ in t.dials if peer == good] == [(0.0, good)]
    assert [round(when) for when, peer, _ in t.dials if peer == flaky] == [0, 30, 60]
    assert t.peers() == {good, flaky}


async def _late_peer_dial_times(refusals: int, **kwargs: Any) -> list[float]:
    """Dial times of a bootstrap peer whose first ``refusals`` dials fail."""
    me, late = _pid(1), _pid(2)
    t = FakeTransport(me, refuse={late: refusals})
    boot = (f"/ip4/127.0.0.1/tcp/2/p2p/{late}",)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_discovery(
                t, mdns=False, bootstrap=boot, task_status=task_status, **kwargs
            )
        )
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    return [round(when, 1) for when, peer, _ in t.dials if peer == late]


async def test_a_bootstrap_peer_that_starts_late_is_found_within_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times = await _late_peer_dial_times(3, redial_interval=30.0, first_redial=1.0)
    assert times == [0.0, 1.0, 3.0, 7.0]  # 1 s, then doubling; connected at the 4th


async def test_a_peer_that_stays_down_is_dialed_at_most_once_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times = await _late_peer_dial_times(10**6, redial_interval=30.0, first_redial=1.0)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0] and set(gaps[5:]) == {30.0}


async def test_without_first_redial_the_interval_is_fixed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times = await _late_peer_dial_times(10**6, redial_interval=30.0)
    assert times[:4] == [0.0, 30.0, 60.0, 90.0]


async def test_mdns_found_peers_are_dialed_and_withdrawn_ones_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    me, other = _pid(1), _pid(2)  # the fake service plays the network
    t = FakeTransport(me, refuse={other: 10})
    script: list[Found | Withdrawn] = [
        Found(other, ("/ip4/127.0.0.1/tcp/9",), "mdns", "x._fednode")
    ]

    class FakeMdns:
        def __init__(self, **kwargs: Any) -> None:
            assert kwargs["own_peer"] == me and kwargs["service_name"] == "fednode"

        async def run(self, found: Any, *, task_status: Any) -> None:
            task_status.started()
            for item in script:
                await found.send(item)
            await trio.sleep(45)
            await found.send(Withdrawn("x._fednode"))
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_discovery(
                t,
                mdns=True,
                redial_interval=20.0,
                task_status=task_status,
                mdns_factory=FakeMdns,  # type: ignore[arg-type]
            )
        )
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    times = [when for when, peer, _ in t.dials if peer == other]
    # found at t=0 (+ polite delay when our id is larger), redialed every 20 s, forgotten at 45 s
    assert 1 <= len(times) <= 4 and max(times) < 45


@pytest.mark.netns
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="needs root, unshare and ip to build a private network namespace",
)
def test_mdns_discovery_connects_two_nodes_in_a_private_network_namespace() -> None:
    script = textwrap.dedent(
        """
        import threading, trio
        from libp2p.crypto.ed25519 import create_new_key_pair
        from fednode.p2p.libp2p_host import Libp2pTransport
        from fednode.p2p.discovery import run_discovery

        async def main():
            a = Libp2pTransport(create_new_key_pair(b"a" * 32))
            b = Libp2pTransport(create_new_key_pair(b"b" * 32))
            async with trio.open_nursery() as n:
                with trio.fail_after(20):
                    await n.start(a.run)
                    await n.start(b.run)
                    for t in (a, b):
                        await n.start(lambda task_status, t=t: run_discovery(
                            t, interfaces=("127.0.0.1",), task_status=task_status))
                    while not (b.local_peer in a.peers() and a.local_peer in b.peers()):
                        await trio.sleep(0.05)
                n.cancel_scope.cancel()
            print("CONNECTED")
        trio.run(main)
        zc = [t.name for t in threading.enumerate() if "zeroconf" in t.name.lower()]
        print("ZEROCONF_THREADS", len(zc))
        """
    )
    setup = "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo"
    cmd = ["unshare", "-n", "sh", "-c", f'{setup} && exec "$0" -c "$1"', sys.executable, script]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert "CONNECTED" in res.stdout, res.stderr[-3000:]
    assert "ZEROCONF_THREADS 0" in res.stdout


_STOCK_PEER = textwrap.dedent(
    """
    # a stock py-libp2p host (no fednode patches in this process): hashes what it is
    # sent, then sends a payload of its own to the patched side and prints the digest
    import hashlib, json, os, struct, sys
    import multiaddr, trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from libp2p.security.noise.transport import PROTOCOL_ID, Transport

    PROTO = TProtocol("/fednode-test/sha/1.0.0")

    async def hash_handler(stream):
        (n,) = struct.unpack("!Q", await stream.read(8))
        h = hashlib.sha256()
        while n:
            chunk = await stream.read(min(n, 1 << 20))
            h.update(chunk)
            n -= len(chunk)
        await stream.write(h.digest())
        await stream.close()

    async def main():
        kp = create_new_key_pair(b"s" * 32)
        host = new_host(key_pair=kp, muxer_preference="YAMUX",
                        sec_opt={PROTOCOL_ID: Transport(kp, noise_privkey=x25519().private_key)})
        host.set_stream_handler(PROTO, hash_handler)
        la = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
        with trio.fail_after(30):
            async with host.run(listen_addrs=[la]):
                addrs = [str(a) for a in host.get_transport_addrs()]
                print(json.dumps({"peer": host.get_id().to_base58(), "addrs": addrs}), flush=True)
                other = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
                pid = ID.from_base58(other["peer"])
                await host.connect(PeerInfo(pid, [multiaddr.Multiaddr(other["addr"])]))
                data = os.urandom(3_000_017)
                s = await host.new_stream(pid, [PROTO])
                await s.write(struct.pack("!Q", len(data)))
                for off, size in ((0, 5), (5, 65_521), (65_526, 2_934_491)):
                    await s.write(data[off:off + size])
                digest = b""
                while len(digest) < 32:
                    digest += await s.read(32 - len(digest))
                ok = digest == hashlib.sha256(data).digest()
                print(json.dumps({"stock_to_patched_ok": ok}), flush=True)
                await trio.to_thread.run_sync(sys.stdin.readline)
    trio.run(main)
    """
)


async def test_patched_and_stock_libp2p_interoperate_both_ways() -> None:
    """The patches are wire-compatible: 1 MiB Yamux frames, batched Noise, big reads."""
    import json

    proto = TProtocol("/fednode-test/sha/1.0.0")

    async def hash_handler(stream: Any) -> None:
        (n,) = struct.unpack("!Q", await stream.read(8))
        h = hashlib.sha256()
        while n:
            chunk = await stream.read(min(n, 7 * MiB + 3))
            h.update(chunk)
            n -= len(chunk)
        await stream.write(h.digest())
        await stream.close()

    a = Libp2pTransport(_key(1))
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _STOCK_PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        lines = _Lines(proc.stdout)
        async with running(a):
            assert a._host is not None
            a._host.set_stream_handler(proto, hash_handler)
            with trio.fail_after(30):
                stock = json.loads(await lines.next())
                await a.connect(stock["peer"], tuple(stock["addrs"]))
                stream = await a._host.new_stream(ID.from_base58(stock["peer"]), [proto])
                data = os.urandom(5 * MiB + 13)
                await stream.write(struct.pack("!Q", len(data)))
                for off in range(0, len(data), 3 * MiB):
                    await stream.write(data[off : off + 3 * MiB])
                digest = b""
                while len(digest) < 32:
                    digest += await stream.read(32 - len(digest))
                assert digest == hashlib.sha256(data).digest()  # patched -> stock
                hello = {"peer": a.local_peer, "addr": a.addresses()[0].split("/p2p/")[0]}
                await proc.stdin.send_all((json.dumps(hello) + "\n").encode())
                assert json.loads(await lines.next()) == {"stock_to_patched_ok": True}
                await proc.stdin.send_all(b"done\n")
    finally:
        with trio.move_on_after(10) as cleanup:
            await proc.wait()
        if cleanup.cancelled_caught:
            proc.kill()


class _Lines:
    """Line reader over a trio receive stream (a child's stdout)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.buf = stream, b""

    async def next(self) -> str:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(4096)
            if not chunk:
                raise AssertionError(f"child exited; output so far {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()
