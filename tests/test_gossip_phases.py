"""A gossip peer's WAITING and CLOSING phases and its per-round evaluation, driven as a
pure state machine with explicit times (what `fednode run` used to do around the role)."""

from __future__ import annotations

import numpy as np
import pytest

from fednode.actions import (
    Action,
    Compute,
    Emit,
    EvalJob,
    EvalResult,
    Send,
    Stop,
    TrainJob,
    TrainResult,
)
from fednode.gossip import GossipParams, GossipPeer, Phase
from fednode.gossip.core import FINAL_EVAL_S, MAX_EVALS, WaitFor
from fednode.wire import messages as m

SIZE = 4
X0 = np.zeros(SIZE, np.float32)


def waiting(peers: int = 2, limit_s: float = 30.0, **gossip) -> GossipPeer:
    return GossipPeer(
        me="a", params=X0, gossip=GossipParams(**gossip), wait_for=WaitFor(peers, limit_s)
    )


def alone(rounds: int = 2, **gossip) -> GossipPeer:
    """A training peer with no neighbours: each round is one training job."""
    return GossipPeer(
        me="a", params=X0, gossip=GossipParams(train=True, **gossip), rounds=rounds, neighbours=[]
    )


def events(actions: list[Action], name: str) -> list[dict]:
    return [a.data for a in actions if isinstance(a, Emit) and a.event == name]


def jobs(actions: list[Action]) -> list:
    return [a.job for a in actions if isinstance(a, Compute)]


def trained(job: TrainJob) -> TrainResult:
    return TrainResult(job.round, job.params + 1, 10, {"train_loss": 0.5})


def begin(peer: GossipPeer) -> TrainJob:
    """Start ``peer``; its join wait passes with nobody around: the first training job."""
    assert peer.start(0.0) == []
    (job,) = jobs(peer.poll(GossipParams().join_wait_s))
    assert isinstance(job, TrainJob)
    return job


# --- WAITING -----------------------------------------------------------------------------


def test_waiting_peer_holds_until_enough_members_are_up():
    peer = waiting(peers=2)
    assert peer.start(0.0) == []
    assert peer.phase is Phase.WAITING and peer.next_deadline() == 30.0
    assert peer.on_peer("b", True, 1.0) == []  # one of two: still waiting, no hello
    actions = peer.on_peer("c", True, 2.5)
    assert events(actions, "peers_ready") == [{"peers": 2, "wanted": 2, "waited_s": 2.5}]
    assert peer.phase is Phase.JOINING and peer.started == 2.5
    hellos = [a for a in actions if isinstance(a, Send)]
    assert {h.to for h in hellos} == {"b", "c"} and all(h.msg.mode == "hello" for h in hellos)


def test_waiting_peer_starts_anyway_at_the_limit():
    peer = waiting(peers=3, limit_s=30.0)
    peer.start(0.0)
    peer.on_peer("b", True, 1.0)
    assert peer.poll(29.9) == []
    actions = peer.poll(30.0)
    assert events(actions, "peers_ready") == [{"peers": 1, "wanted": 3, "waited_s": 30.0}]
    assert peer.phase is Phase.JOINING
    assert peer.started == 30.0  # the join wait starts when the waiting ends
    assert [a.to for a in actions if isinstance(a, Send)] == ["b"]


def test_peer_wanting_nobody_is_ready_at_start():
    peer = waiting(peers=0)
    assert events(peer.start(4.0), "peers_ready") == [{"peers": 0, "wanted": 0, "waited_s": 0.0}]
    assert peer.phase is Phase.JOINING


def test_waiting_peer_answers_a_hello_but_begins_no_round():
    peer = waiting(peers=5, train=False)
    peer.start(0.0)
    peer.on_peer("b", True, 1.0)
    hello = m.Gossip(
        round=0,
        model_version=0,
        codec="none",
        payload=b"",
        vector=np.ones(SIZE, np.float32),
        consortium="fednode",
        mode="hello",
        link=7,
        degree=0,
        sender="b",
        recipient="a",
    )
    (welcome,) = peer.handle(hello, 1.5)
    assert isinstance(welcome, Send) and welcome.msg.mode == "welcome"
    assert peer.links["b"].up and peer.phase is Phase.WAITING


def test_without_wait_for_a_peer_joins_at_once_and_says_nothing():
    peer = GossipPeer(me="a", params=X0)
    assert peer.start(0.0) == [] and peer.phase is Phase.JOINING


# --- evaluation and CLOSING ----------------------------------------------------------------


def test_each_round_is_evaluated_and_the_last_one_before_stopping():
    peer = alone(rounds=2, eval_every=1)
    job = begin(peer)
    after1 = peer.on_result(trained(job), 6.0)
    assert events(after1, "gossip_round")[0]["round"] == 1
    ev1, train2 = jobs(after1)
    assert isinstance(ev1, EvalJob) and ev1.round == 1 and isinstance(train2, TrainJob)
    np.testing.assert_array_equal(ev1.params, peer.params)
    report = peer.on_result(EvalResult(1, 0.7, 50, {"accuracy": 0.5}), 6.5)
    assert events(report, "gossip_eval") == [{"round": 1, "accuracy": 0.5, "loss": 0.7}]
    after2 = peer.on_result(trained(train2), 7.0)
    assert [j.round for j in jobs(after2)] == [2]
    assert not any(isinstance(a, Stop) for a in after2)  # waits for round 2's figure
    assert peer.phase is Phase.CLOSING and peer.next_deadline() == 7.0 + FINAL_EVAL_S
    last = peer.on_result(EvalResult(2, 0.6, 50, {"accuracy": 0.6}), 8.0)
    assert events(last, "gossip_eval")[0]["round"] == 2
    assert isinstance(last[-1], Stop) and peer.done


def test_closing_ignores_messages_and_stops_at_its_deadline():
    peer = alone(rounds=1, eval_every=1)
    peer.on_result(trained(begin(peer)), 6.0)
    assert peer.phase is Phase.CLOSING
    bye = m.Bye(round=3, reason="x", sender="b", recipient="a")
    assert peer.handle(bye, 7.0) == [] and peer.on_peer("b", True, 7.0) == []
    assert peer.poll(6.0 + FINAL_EVAL_S - 0.1) == []
    (stop,) = peer.poll(6.0 + FINAL_EVAL_S)
    assert isinstance(stop, Stop) and stop.reason == "finished 1 rounds" and peer.done


@pytest.mark.parametrize("every", [0, -1])
def test_evaluation_is_off_unless_asked(every):
    peer = alone(rounds=1, eval_every=every)
    actions = peer.on_result(trained(begin(peer)), 6.0)
    assert jobs(actions) == [] and isinstance(actions[-1], Stop)


def test_eval_every_n_rounds_and_never_more_than_max_in_flight():
    peer = alone(rounds=2 * MAX_EVALS + 4, eval_every=2)
    job, evaluated = begin(peer), []
    for t in range(1, 2 * MAX_EVALS + 4):
        out = jobs(peer.on_result(trained(job), 6.0 + t))
        evaluated += [j.round for j in out if isinstance(j, EvalJob)]
        (job,) = [j for j in out if isinstance(j, TrainJob)]
    assert evaluated == [2 * k for k in range(1, MAX_EVALS + 1)]  # none answered: capped
