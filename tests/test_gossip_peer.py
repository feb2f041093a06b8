"""The gossip peer's state machine, driven directly: no trio, no sockets, no signatures.

A tiny router stands in for runner + envelope: it stamps sender/recipient, decodes the
payload with its codec (as the Receiver does) and delivers in the order a test chooses.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import numpy as np
import pytest

from fednode.actions import Action, Compute, Emit, Send, Stop, TrainResult
from fednode.errors import AuthError, RemoteProtocolError
from fednode.gossip import GossipParams, GossipPeer, Phase, mh_weight
from fednode.wire import messages as m
from fednode.wire.codecs import codec_for

SIZE = 8


def vec(value: float | list[float]) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float32), (SIZE,)).copy()


class Router:
    """Delivers Send actions between pure peers; keeps the rest of the actions per peer."""

    def __init__(self, peers: dict[str, GossipPeer]) -> None:
        self.peers = peers
        self.queue: deque[tuple[str, Send]] = deque()
        self.other: dict[str, list[Action]] = {p: [] for p in peers}
        self.sent: list[tuple[str, str, m.Message]] = []

    def take(self, src: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.queue.append((src, action))
            else:
                self.other[src].append(action)

    def wire(self, src: str, send: Send) -> m.Message:
        msg = dataclasses.replace(send.msg, sender=src, recipient=send.to)
        if isinstance(msg, m.Gossip):
            decoded = codec_for(msg.codec).decode(msg.payload, SIZE)
            decoded.flags.writeable = False
            msg = dataclasses.replace(msg, vector=decoded)
        self.sent.append((src, send.to, msg))
        return msg

    def deliver_one(self, now: float = 0.0, index: int = 0) -> None:
        src, send = self.queue[index]
        del self.queue[index]
        if send.to in self.peers and not self.peers[send.to].done:
            self.take(send.to, self.peers[send.to].handle(self.wire(src, send), now))

    def run(self, now: float = 0.0) -> None:
        while self.queue:
            self.deliver_one(now)

    def start(self, edges: list[tuple[str, str]], now: float = 0.0) -> None:
        for name, peer in self.peers.items():
            self.take(name, peer.start(now))
        for a, b in edges:
            self.take(a, self.peers[a].on_peer(b, True, now))
            self.take(b, self.peers[b].on_peer(a, True, now))

    def stops(self, name: str) -> list[Stop]:
        return [a for a in self.other[name] if isinstance(a, Stop)]

    def emits(self, name: str, event: str) -> list[Emit]:
        return [a for a in self.other[name] if isinstance(a, Emit) and a.event == event]


def peer(name: str, x, *, neighbours=None, mode="sync", rounds=1, codec="none", **params):
    gossip = GossipParams(mode=mode, train=params.pop("train", False), **params)
    return GossipPeer(
        me=name,
        params=vec(x),
        gossip=gossip,
        rounds=rounds,
        codec=codec,
        neighbours=neighbours,
    )


def path3(**kw) -> tuple[Router, dict[str, GossipPeer]]:
    """a - b - c, explicit neighbours, pure averaging."""
    peers = {
        "a": peer("a", 0.0, neighbours=["b"], **kw),
        "b": peer("b", 3.0, neighbours=["a", "c"], **kw),
        "c": peer("c", 9.0, neighbours=["b"], **kw),
    }
    return Router(peers), peers


def total(peers: dict[str, GossipPeer]) -> np.ndarray:
    return np.sum([p.params.astype(np.float64) for p in peers.values()], axis=0)


# --- links -------------------------------------------------------------------------------


def test_handshake_opens_link_with_full_models_both_ways():
    net, peers = path3()
    net.start([("a", "b")])
    (src, hello) = net.queue[0]
    assert src == "a" and hello.to == "b" and hello.msg.mode == "hello"  # the lower id opens
    net.deliver_one()
    welcome = net.queue[0][1].msg
    assert welcome.mode == "welcome" and welcome.reply and welcome.link == hello.msg.link
    net.deliver_one()
    assert peers["a"].links["b"].up and peers["b"].links["a"].up
    np.testing.assert_array_equal(peers["a"].links["b"].theirs, vec(3.0))
    np.testing.assert_array_equal(peers["b"].links["a"].theirs, vec(0.0))


def test_hello_beyond_max_degree_is_refused_with_reject():
    kw = {"degree": 1, "rounds": 100, "train": True}  # parked at training: links stay
    full = peer("z", 1.0, max_degree=1, **kw)
    net = Router({"z": full, "a": peer("a", 0.0, **kw), "b": peer("b", 0.0, **kw)})
    net.start([("a", "z")])
    net.run()
    net.take("b", net.peers["b"].on_peer("z", True, 0.0))
    net.run()
    assert set(full.links) == {"a"}
    assert "z" not in net.peers["b"].links and net.peers["b"].cooldown["z"] > 0
    assert any(isinstance(msg, m.Reject) for _, _, msg in net.sent)


def test_non_member_and_foreign_consortium_are_refused():
    b = GossipPeer(me="b", params=vec(0.0), members=["a", "b"], consortium="lab")
    intruder = m.Gossip(sender="x", recipient="b", mode="hello", consortium="lab", vector=vec(1))
    with pytest.raises(AuthError):
        b.handle(intruder, 0.0)
    foreign = dataclasses.replace(intruder, sender="a", consortium="other")
    with pytest.raises(RemoteProtocolError, match="consortium 'other'"):
        b.handle(foreign, 0.0)
    assert b.links == {}


def test_unexpected_message_names_role_phase_and_kind():
    b = peer("b", 0.0, mode="sync")
    push = m.Gossip(sender="a", recipient="b", mode="push", vector=vec(1), consortium="fednode")
    with pytest.raises(RemoteProtocolError, match=r"peer \(sync\) in phase joining .*'push'"):
        b.handle(push, 0.0)


def test_bootstrap_adopts_the_welcoming_neighbours_model_and_round():
    old = peer("a", 5.0, neighbours=None, degree=1, rounds=10)
    new = GossipPeer(
        me="n", params=vec(0.0), gossip=GossipParams(train=False, degree=1), bootstrap=True
    )
    old.completed = 6  # a peer well into training
    old.model_version = 42
    net = Router({"a": old, "n": new})
    net.take("n", new.start(0.0))
    net.take("n", new.on_peer("a", True, 0.0))
    net.deliver_one()  # hello -> a
    net.deliver_one()  # welcome -> n
    np.testing.assert_array_equal(new.params, vec(5.0))
    assert new.completed == 6 and new.model_version == 42
    assert net.emits("n", "gossip_bootstrap")


# --- synchronous rounds --------------------------------------------------------------------


def test_sync_step_is_the_metropolis_hastings_average():
    net, peers = path3()
    net.start([("a", "b"), ("b", "c")])
    net.run()
    w_ab = w_bc = mh_weight(1, 2)  # 1/3: the degrees travel with the models
    expected = {
        "a": (1 - w_ab) * 0 + w_ab * 3,
        "b": w_ab * 0 + (1 - w_ab - w_bc) * 3 + w_bc * 9,
        "c": w_bc * 3 + (1 - w_bc) * 9,
    }
    for name, value in expected.items():
        np.testing.assert_allclose(peers[name].params, vec(value), rtol=1e-6)
        assert net.stops(name)
    np.testing.assert_allclose(total(peers), vec(12.0))


def test_sync_step_encodes_the_model_once_for_all_its_links():
    net, peers = path3()
    net.start([("a", "b"), ("b", "c")])
    while net.queue:
        net.deliver_one()
        steps = [s.msg for src, s in net.queue if src == "b" and s.msg.mode == "round"]
        if len(steps) == 2:
            break
    assert steps[0].payload is steps[1].payload  # one encoding, shared by both links
    assert peers["b"].codec.bytes_sent == 4 * len(steps[0].payload)  # 2 hellos/welcomes + 2


@pytest.mark.parametrize("codec", ["none", "int8"])
def test_step_distance_metric_is_the_distance_to_each_neighbour(codec):
    net, peers = path3(codec=codec)
    net.start([("a", "b"), ("b", "c")])
    net.run()
    b = peers["b"]
    (record,) = [e.data for e in net.emits("b", "gossip_round")]
    x0 = vec(3.0)  # b's model during its step; its neighbours sent 0 and 9
    want = [np.linalg.norm(x0 - vec(v)) / np.linalg.norm(x0) for v in (0.0, 9.0)]
    assert record["distance"] == pytest.approx(np.mean(want), rel=1e-6)
    assert record["distance_max"] == pytest.approx(max(want), rel=1e-6)
    assert b.params.flags.writeable is False


def test_sync_pairs_steps_per_link_whatever_the_delivery_order():
    net, peers = path3(rounds=5)
    net.start([("a", "b"), ("b", "c")])
    rng = np.random.default_rng(0)
    while net.queue:  # deliver in a random order: messages run ahead and wait in the link
        net.deliver_one(index=int(rng.integers(len(net.queue))))
    assert all(net.stops(n) for n in peers)
    np.testing.assert_allclose(total(peers), vec(12.0), rtol=1e-6)
    w = np.array([[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])
    x = np.linalg.matrix_power(w, 5) @ np.array([0.0, 3.0, 9.0])
    got = [float(peers[n].params[0]) for n in "abc"]
    np.testing.assert_allclose(got, x, rtol=1e-5)


def test_peer_down_mid_step_completes_the_step_without_it():
    net, peers = path3(rounds=2)
    net.start([("a", "b"), ("b", "c")])
    # run the handshakes only, then let b's round-1 step start but lose c
    while net.queue and net.queue[0][1].msg.mode in ("hello", "welcome"):
        net.deliver_one()
    b = peers["b"]
    assert b.phase is Phase.AVERAGING
    net.queue = deque(item for item in net.queue if "c" not in (item[0], item[1].to))
    net.take("b", b.on_peer("c", False, 1.0))
    net.run()
    assert "c" not in b.links and b.lost == {"c"}
    assert b.completed >= 1  # the step went on with a alone


def test_silent_neighbour_is_dropped_after_miss_limit_steps():
    net, peers = path3(rounds=5, round_timeout_s=1.0, miss_limit=2)
    net.start([("a", "b"), ("b", "c")])
    while net.queue and net.queue[0][1].msg.mode in ("hello", "welcome"):
        net.deliver_one()
    peers["c"].done = True  # c goes silent without a peer-down event
    t = 0.0
    for _ in range(6):
        net.run(t)
        t += 1.0
        for name in "ab":
            net.take(name, peers[name].poll(t))
    assert "c" not in peers["b"].links
    assert peers["b"].counters["dropped_misses"] == 1


# --- asynchronous pairwise -----------------------------------------------------------------


def pair(mode="async", codec="none", **kw):
    peers = {
        "a": peer("a", 0.0, neighbours=["b"], mode=mode, codec=codec, rounds=100, **kw),
        "b": peer("b", 4.0, neighbours=["a"], mode=mode, codec=codec, rounds=100, **kw),
    }
    net = Router(peers)
    net.start([("a", "b")])
    net.run()
    return net, peers


def test_pairwise_exchange_takes_the_mean_on_both_sides():
    net, peers = pair()
    a, b = peers["a"], peers["b"]
    net.take("a", a.proto._initiate(0.0))  # type: ignore[attr-defined]
    assert net.queue[0][1].msg.mode == "push"
    net.run()
    np.testing.assert_array_equal(a.params, vec(2.0))
    np.testing.assert_array_equal(b.params, vec(2.0))
    assert a.links["b"].awaiting is None


def test_crossing_pushes_complete_one_exchange_without_a_pull():
    net, peers = pair()
    net.take("a", peers["a"].proto._initiate(0.0))  # type: ignore[attr-defined]
    net.take("b", peers["b"].proto._initiate(0.0))  # type: ignore[attr-defined]
    net.run()
    assert all(msg.mode != "pull" for _, _, msg in net.sent if isinstance(msg, m.Gossip))
    np.testing.assert_array_equal(peers["a"].params, vec(2.0))
    np.testing.assert_array_equal(peers["b"].params, vec(2.0))


def test_push_during_own_exchange_is_deferred_and_sum_conserved():
    peers = {
        "a": peer("a", 0.0, neighbours=["b", "c"], mode="async", rounds=100),
        "b": peer("b", 6.0, neighbours=["a"], mode="async", rounds=100),
        "c": peer("c", 12.0, neighbours=["a"], mode="async", rounds=100),
    }
    net = Router(peers)
    net.start([("a", "b"), ("a", "c")])
    net.run()
    a = peers["a"]
    a.rng.seed(1)
    net.take("a", a.proto._initiate(0.0))  # type: ignore[attr-defined]
    partner = net.queue[0][1].to
    other = "c" if partner == "b" else "b"
    net.take(other, peers[other].proto._initiate(0.0))  # type: ignore[attr-defined]
    net.deliver_one(index=1)  # the other's push reaches a first: a is busy, defers it
    assert len(a.proto.deferred) == 1  # type: ignore[attr-defined]
    net.run()
    assert a.proto.deferred == deque()  # type: ignore[attr-defined]
    np.testing.assert_allclose(total(peers), vec(18.0), rtol=1e-7)


def test_late_pull_after_timeout_is_still_applied():
    net, peers = pair(exchange_timeout_s=1.0)
    a = peers["a"]
    net.take("a", a.proto._initiate(0.0))  # type: ignore[attr-defined]
    net.deliver_one()  # push -> b; b answers and moves its half
    net.take("a", a.poll(5.0))  # a gives up waiting
    assert a.proto.exchange is None and a.links["b"].awaiting is not None  # type: ignore[attr-defined]
    net.run(6.0)  # the pull arrives late
    np.testing.assert_array_equal(a.params, vec(2.0))
    np.testing.assert_allclose(total(peers), vec(4.0))


def test_training_result_is_applied_as_a_delta_over_exchanges_made_meanwhile():
    net, peers = pair(train=True)
    a = peers["a"]
    jobs = [x for x in net.other["a"] if isinstance(x, Compute)]
    assert jobs, "async rounds start with a training job"
    base = jobs[-1].job.params
    net.take("a", a.proto._initiate(0.0))  # type: ignore[attr-defined]
    net.run()  # mean while training: a = 2
    result = TrainResult(1, base + np.float32(1.0), 10, {"train_loss": 0.5})
    a.on_result(result, 0.5)
    np.testing.assert_allclose(a.params, vec(3.0))  # 2 (averaged) + 1 (trained)


@pytest.mark.parametrize("codec", ["int8", "topk:0.25"])
def test_lossy_links_keep_model_copies_identical_on_both_sides(codec):
    net, peers = pair(codec=codec)
    rng = np.random.default_rng(0)
    for i in range(20):
        side = "a" if rng.random() < 0.5 else "b"
        p = peers[side]
        p.set_x(p.params + rng.standard_normal(SIZE).astype(np.float32))  # local "training"
        net.take(side, p.proto._initiate(float(i)))  # type: ignore[attr-defined]
        net.run(float(i))
    ab, ba = peers["a"].links["b"], peers["b"].links["a"]
    assert any(msg.diff for _, _, msg in net.sent if isinstance(msg, m.Gossip))
    np.testing.assert_array_equal(ab.mine, ba.theirs)
    np.testing.assert_array_equal(ab.theirs, ba.mine)


def test_factory_takes_consortium_members_codec_and_rounds_from_the_node_config():
    from fednode.config import load_config
    from fednode.factory import make_role

    config = load_config(
        None,
        {
            "role": "peer",
            "net.federation": "lab",
            "net.open_membership": False,
            "net.allow": "p1,p2",
            "wire.codec": "int8",
            "rounds.rounds": 7,
        },
    )
    p = make_role(config, 1, vec(0.0), me="me")
    assert isinstance(p, GossipPeer)
    assert p.consortium == "lab" and p.members == {"p1", "p2", "me"}
    assert p.rounds == 7 and p.codec.codec.spec == "int8" and not p.codec.lossless


def test_maintenance_ticks_only_while_a_wanted_link_is_missing():
    net, peers = path3(rounds=100, train=True)  # parked at training once linked
    net.start([("a", "b"), ("b", "c")])
    net.run()
    b = peers["b"]
    assert all(lk.up for lk in b.links.values()) and set(b.links) == {"a", "c"}
    step = b._maintenance_interval()
    assert b.next_deadline() == step  # b (the higher id) waited for a's hello: one tick
    polled = []
    while (due := b.next_deadline()) is not None and len(polled) < 10:
        assert b.poll(due) == []
        polled.append(due)
    # one maintenance tick, then the check of b's own (answered) hello: nothing after
    assert polled == [step, b.gossip.hello_timeout_s]
    assert b.poll(50.0) == []

    # c is dropped for missing steps: still a neighbour, cooling down; ticks resume on
    # the same grid, and the first tick after the cooldown opens the link again
    b.drop(b.links["c"], 51.0, notify=False, reason="misses")
    tick = b.next_deadline()
    assert tick == pytest.approx(math.ceil(51.0 / step) * step)
    reopened_at = None
    for _ in range(20):
        actions = b.poll(tick)
        if any(isinstance(a, Send) and a.to == "c" and a.msg.mode == "hello" for a in actions):
            reopened_at = tick
            break
        tick = b.next_deadline()
    cooldown_end = 51.0 + b.gossip.hello_timeout_s
    assert reopened_at == pytest.approx(math.ceil(cooldown_end / step) * step)
    # only the hello's own timeout is left to wait for
    assert b.next_deadline() == pytest.approx(reopened_at + b.gossip.hello_timeout_s)
