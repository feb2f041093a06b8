"""run_role: refusing what this node may not send, inline sends, the send fallback, and
the memory transport delivering every peer event.

Two nodes over the memory transport under a MockClock; the roles are scripted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from fednode.actions import Action, Compute, Send, Stop, TrainJob, TrainResult
from fednode.crypto.envelope import Membership, Receiver, Sealer
from fednode.crypto.identity import Identity
from fednode.errors import LocalProtocolError
from fednode.loop import NodeLoop, RunStats
from fednode.p2p.memory import MemoryNetwork
from fednode.runner import run_role
from fednode.wire import messages as m

N = 8
A, B = Identity.from_seed(bytes([1]) * 32), Identity.from_seed(bytes([2]) * 32)


class Script:
    """A role that sends what it is told at start and records what it receives."""

    role = "test"

    def __init__(self, first: list[Action], *, stop_after: int = 0) -> None:
        self.first = first
        self.stop_after = stop_after
        self.got: list[m.Message] = []
        self.done = False

    def start(self, now: float) -> list[Action]:
        return self.first

    def handle(self, msg: m.Message, now: float) -> list[Action]:
        self.got.append(msg)
        if self.stop_after and len(self.got) >= self.stop_after:
            return [Stop("enough")]
        return []

    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
        return []

    def on_result(self, result: Any, now: float) -> list[Action]:
        return []

    def poll(self, now: float) -> list[Action]:
        return []

    def next_deadline(self) -> float | None:
        return None


class NoExecutor:
    async def run(self, job: Any) -> Any:
        raise AssertionError("no jobs in these tests")


def update(vector: np.ndarray, **kw: Any) -> m.Update:
    return m.Update(round=1, num_examples=3, vector=vector, **kw)


async def run_pair(
    sender: Any,
    receiver_role: Any,
    *,
    buffer: int = 256,
    executor: Any = None,
    wrap: Any = None,
) -> tuple[RunStats, RunStats, list[tuple[str, dict[str, Any]]]]:
    """Run A (``sender``) and B (``receiver_role``) until B stops; A's events.
    ``wrap(transport)``: what A's runner gets instead of its memory transport."""
    net = MemoryNetwork(buffer=buffer)
    events: list[tuple[str, dict[str, Any]]] = []
    stats_a, stats_b = RunStats(), RunStats()
    members = Membership(frozenset({A.peer_id, B.peer_id}))

    def clock() -> float:
        return 1_800_000_000.0 + trio.current_time()

    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        ta, tb = net.attach(A.peer_id), net.attach(B.peer_id)
        if wrap is not None:
            ta = wrap(ta)
        rx_a = Receiver(A.peer_id, members, model_size=N, clock=clock)
        rx_b = Receiver(B.peer_id, members, model_size=N, clock=clock)

        async def node_a() -> None:
            loop = NodeLoop(
                sender,
                Sealer(A, clock=clock),
                rx_a,
                peer=A.peer_id,
                emit=lambda peer, event, data: events.append((event, data)),
                stats=stats_a,
            )
            await run_role(loop, ta, executor or NoExecutor())

        nursery.start_soon(node_a)
        with trio.fail_after(60):
            loop_b = NodeLoop(
                receiver_role, Sealer(B, clock=clock), rx_b, peer=B.peer_id, stats=stats_b
            )
            await run_role(loop_b, tb, NoExecutor())
        nursery.cancel_scope.cancel()
    return stats_a, stats_b, events


async def test_a_nan_update_is_refused_counted_and_logged_and_the_node_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bad = np.full(N, np.nan, dtype=np.float32)
    good = np.arange(N, dtype=np.float32)
    sender = Script([Send(B.peer_id, update(bad)), Send(B.peer_id, update(good))])
    receiver = Script([], stop_after=1)

    stats_a, _, events = await run_pair(sender, receiver)

    assert stats_a.refused == {"LocalProtocolError": 1}
    assert stats_a.sent_frames == 1 and stats_a.send_failures == 0
    refused = [data for event, data in events if event == "send_refused"]
    assert len(refused) == 1
    assert refused[0]["peer"] == B.peer_id and refused[0]["kind"] == "UPDATE"
    assert "NaN" in refused[0]["detail"]
    (got,) = receiver.got  # the good update still went out, after the refused one
    np.testing.assert_array_equal(got.vector, good)


async def test_a_nan_metric_is_refused_too(autojump_clock: trio.testing.MockClock) -> None:
    good = np.ones(N, dtype=np.float32)
    nan_metric = update(good, metrics={"loss": math.nan})
    sender = Script([Send(B.peer_id, nan_metric), Send(B.peer_id, update(good))])
    receiver = Script([], stop_after=1)

    stats_a, _, _ = await run_pair(sender, receiver)

    assert stats_a.refused == {"LocalProtocolError": 1} and stats_a.sent_frames == 1


class BuildsUpdates(Script):
    """Like a client: two training jobs, an update built from each result; building one
    from a NaN result raises LocalProtocolError inside the role (the codec refuses)."""

    def start(self, now: float) -> list[Action]:
        return [Compute(TrainJob(1, np.zeros(N, np.float32), {})) for _ in range(2)]

    def on_result(self, result: Any, now: float) -> list[Action]:
        if not np.isfinite(result.params).all():
            raise LocalProtocolError("update vector contains NaN or Inf; refusing to encode it")
        return [Send(B.peer_id, update(result.params))]


class NanThenFine:
    """The first job's result is all NaN (a diverged local training), the next is fine."""

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, job: TrainJob) -> TrainResult:
        self.calls += 1
        params = np.full(N, np.nan if self.calls == 1 else 1.0, dtype=np.float32)
        return TrainResult(job.round, params, 1, {})


async def test_a_role_refusing_to_build_a_message_is_logged_and_the_loop_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    executor = NanThenFine()
    receiver = Script([], stop_after=1)

    stats_a, _, events = await run_pair(BuildsUpdates([]), receiver, executor=executor)

    assert executor.calls == 2
    assert stats_a.refused == {"LocalProtocolError": 1}
    (error,) = [data for event, data in events if event == "local_error"]
    assert error["error"] == "LocalProtocolError" and "NaN" in error["detail"]
    (got,) = receiver.got
    np.testing.assert_array_equal(got.vector, np.ones(N, np.float32))


class PollRefusesOnce(Script):
    """Its first poll raises LocalProtocolError (as a gossip peer's would when it must
    encode a non-finite model); its next poll sends an update."""

    def __init__(self) -> None:
        super().__init__([])
        self.polls = 0

    def poll(self, now: float) -> list[Action]:
        self.polls += 1
        if self.polls == 1:
            raise LocalProtocolError("update vector contains NaN or Inf; refusing to encode it")
        if self.polls == 2:
            return [Send(B.peer_id, update(np.ones(N, np.float32)))]
        return []

    def next_deadline(self) -> float | None:
        return 0.0 if self.polls < 2 else None  # due now: the driver polls again


async def test_a_role_refusing_in_poll_is_logged_and_the_loop_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    receiver = Script([], stop_after=1)

    stats_a, _, events = await run_pair(PollRefusesOnce(), receiver)

    assert stats_a.refused == {"LocalProtocolError": 1}
    (error,) = [data for event, data in events if event == "local_error"]
    assert "NaN" in error["detail"]
    (got,) = receiver.got
    np.testing.assert_array_equal(got.vector, np.ones(N, np.float32))


async def test_sends_fall_back_to_a_task_when_the_inbox_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    vec = np.ones(N, dtype=np.float32)
    count = 5
    sender = Script([Send(B.peer_id, update(vec, model_version=i)) for i in range(count)])
    receiver = Script([], stop_after=count)

    stats_a, stats_b, _ = await run_pair(sender, receiver, buffer=1)

    assert stats_a.sent_frames == count and stats_b.received_frames == count
    # all arrive; the ones that waited ran as tasks, in trio's (seeded, shuffled) order
    assert sorted(msg.model_version for msg in receiver.got) == list(range(count))


@pytest.mark.parametrize("buffer", [1, 256])
async def test_a_send_to_a_peer_that_is_gone_is_reported_to_the_role(
    autojump_clock: trio.testing.MockClock, buffer: int
) -> None:
    gone = Identity.from_seed(bytes([9]) * 32).peer_id
    vec = np.ones(N, dtype=np.float32)

    class Watches(Script):
        def __init__(self) -> None:
            super().__init__([Send(gone, update(vec)), Send(B.peer_id, update(vec))])
            self.down: list[str] = []

        def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
            if not up:
                self.down.append(peer)
            return []

    sender = Watches()
    stats_a, _, events = await run_pair(sender, Script([], stop_after=1), buffer=buffer)

    assert stats_a.send_failures == 1 and sender.down == [gone]
    assert ("send_failed", {"peer": gone, "kind": "UPDATE", "error": "PeerGone"}) in events


async def test_a_send_with_addresses_dials_them_first_when_not_connected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Send.addrs (an Assign named a parent this node has not met): dial, then send."""
    where = ("/ip4/10.0.0.7/tcp/4001",)
    dialed: list[tuple[str, tuple[str, ...]]] = []

    class Unmet:
        """A's transport, as if B were not connected yet until A dials it."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.incoming, self.events = inner.incoming, inner.events
            self.local_peer = inner.local_peer

        def peers(self) -> frozenset[str]:
            return frozenset(p for p, _a in dialed)

        def send_nowait(self, peer: str, frame: Any) -> bool:
            return False  # not connected: the send runs as a task

        async def connect(self, peer: str, addrs: tuple[str, ...] = ()) -> None:
            dialed.append((peer, addrs))

        async def send(self, peer: str, frame: Any) -> None:
            assert peer in self.peers(), "sent before dialing"
            await self.inner.send(peer, frame)

    vec = np.ones(N, dtype=np.float32)
    sender = Script([Send(B.peer_id, update(vec), where), Send(B.peer_id, update(vec), where)])
    receiver = Script([], stop_after=2)
    stats_a, _, _ = await run_pair(sender, receiver, wrap=Unmet)
    assert stats_a.sent_frames == 2 and len(receiver.got) == 2
    assert dialed[0] == (B.peer_id, where)


async def test_every_peer_event_reaches_a_node_when_hundreds_attach_at_once() -> None:
    """The memory transport raises peer events synchronously; none may be dropped, however
    many nodes attach before a consumer reads (a bounded buffer used to drop those past
    256, and a coordinator attached first never heard of the clients after them)."""
    net = MemoryNetwork(seed=0)
    first = net.attach("p0")
    for i in range(1, 400):
        net.attach(f"p{i}")
    net.crash("p7")
    seen: list[tuple[str, bool]] = []
    while True:
        try:
            event = first.events.receive_nowait()
        except trio.WouldBlock:
            break
        seen.append((event.peer, event.up))
    assert [p for p, up in seen if up] == [f"p{i}" for i in range(1, 400)]
    assert [p for p, up in seen if not up] == ["p7"]
    assert first.peers() == frozenset(f"p{i}" for i in range(1, 400)) - {"p7"}


def test_a_star_of_300_clients_on_the_trio_engine_starts_its_round_at_once() -> None:
    """End to end through run_role: with every client's peer-up delivered, the coordinator
    sees all 300 at t = 0 and the round takes one link hop, not a 1 s re-check."""
    from fednode.config import load_config
    from fednode.sim.scenarios import build_star

    n = 300
    config = load_config(None, {
        "data.task": "digits:numpy", "rounds.rounds": 1, "train.local_epochs": 1,
        "rounds.min_available_clients": n, "rounds.min_fit_clients": n,
    })  # fmt: skip
    sim, root = build_star(config, n)
    res = sim.run(root, max_virtual_s=60)
    assert res.stop is not None and res.stop.error is None
    assert [(r["round"], r["completed"]) for r in res.rounds] == [(1, n)]
    assert res.virtual_s < 0.5


async def test_a_frame_the_transport_refuses_is_counted_and_the_node_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """libp2p refuses a frame it may not send (over the size limit) with
    LocalProtocolError from send(): refused and counted like a sealer refusal."""
    calls: list[int] = []

    class Refusing:
        """A's transport: the first frame is refused, the rest go through."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.incoming, self.events = inner.incoming, inner.events
            self.local_peer = inner.local_peer

        def peers(self) -> frozenset[str]:
            return self.inner.peers()

        def send_nowait(self, peer: str, frame: Any) -> bool:
            return False

        async def send(self, peer: str, frame: Any) -> None:
            calls.append(frame.nbytes)
            if len(calls) == 1:
                raise LocalProtocolError("frame is 99 MB, over the limit")
            await self.inner.send(peer, frame)

    vec = np.ones(N, dtype=np.float32)
    sender = Script([Send(B.peer_id, update(vec)), Send(B.peer_id, update(vec))])
    receiver = Script([], stop_after=1)
    stats_a, _, events = await run_pair(sender, receiver, wrap=Refusing)
    assert stats_a.refused == {"LocalProtocolError": 1} and stats_a.sent_frames == 1
    assert len(receiver.got) == 1 and len(calls) == 2
    refused = [data for event, data in events if event == "send_refused"]
    assert refused == [
        {
            "peer": B.peer_id,
            "kind": "UPDATE",
            "error": "LocalProtocolError",
            "detail": "frame is 99 MB, over the limit",
        }
    ]
