"""The coordinator's round state machine, driven directly: no trio, no sockets."""

import numpy as np
import pytest

from fednode.actions import Compute, Emit, EvalJob, EvalResult, Send, Stop
from fednode.config import RoundParams, TrainParams
from fednode.errors import RemoteProtocolError, RoundFailed
from fednode.hierarchy.coordinator import Coordinator, State
from fednode.wire import messages as m

SIZE = 4


def make(rounds=2, min_fit=2, min_avail=3, deadline=10.0, retries=0, fraction=1.0):
    return Coordinator(
        params=np.zeros(SIZE, np.float32),
        rounds=RoundParams(
            rounds=rounds,
            min_fit_clients=min_fit,
            min_available_clients=min_avail,
            round_deadline_s=deadline,
            fraction_fit=fraction,
            wait_for_clients_s=100.0,
        ),
        train=TrainParams(),
        max_retries=retries,
    )


def advert(peer):
    return m.Advert(sender=peer, recipient="coord", role="client", federation="fednode")


def update(peer, rnd, delta, n):
    return m.Update(
        sender=peer,
        recipient="coord",
        round=rnd,
        num_examples=n,
        vector=np.full(SIZE, delta, np.float32),
        payload=b"x" * 16,
    )


def sends(actions, kind):
    return [a for a in actions if isinstance(a, Send) and isinstance(a.msg, kind)]


def test_round_starts_when_enough_clients_then_aggregates_weighted():
    c = make()
    assert c.start(0.0) == []
    assert c.handle(advert("a"), 0.0) == []
    c.handle(advert("b"), 0.0)
    actions = c.handle(advert("c"), 1.0)
    fits = sends(actions, m.Fit)
    assert sorted(a.to for a in fits) == ["a", "b", "c"] and c.state is State.FITTING
    assert fits[0].msg.config["local_epochs"] == 5 and fits[0].msg.round == 1
    c.handle(update("a", 1, 1.0, 10), 2.0)
    c.handle(update("b", 1, 4.0, 30), 2.0)
    actions = c.handle(update("c", 1, 0.0, 60), 3.0)
    assert c.state is State.EVALUATING
    (compute,) = [a for a in actions if isinstance(a, Compute)]
    assert isinstance(compute.job, EvalJob)
    np.testing.assert_allclose(c.params, (1.0 * 10 + 4.0 * 30) / 100)  # weighted by examples
    actions = c.on_result(EvalResult(1, 0.5, 100, {"accuracy": 0.9}), 4.0)
    (record,) = [a for a in actions if isinstance(a, Emit) and a.event == "round"]
    assert record.data["completed"] == 3 and record.data["failure_rate"] == 0.0
    assert record.data["bytes_up"] == 48
    assert len(sends(actions, m.Fit)) == 3 and c.round_number == 2  # next round started


def test_deadline_completes_round_with_survivors():
    c = make(min_fit=2)
    for p in "abc":
        c.handle(advert(p), 0.0)
    assert c.next_deadline() == 10.0
    c.handle(update("a", 1, 1.0, 10), 1.0)
    c.handle(update("b", 1, 1.0, 10), 1.0)
    assert c.poll(9.9) == []
    actions = c.poll(10.0)
    assert any(isinstance(a, Compute) for a in actions)
    assert c.current.failed == {"c"}


def test_too_few_results_fails_with_clear_error():
    c = make(min_fit=3, retries=0)
    for p in "abc":
        c.handle(advert(p), 0.0)
    c.handle(update("a", 1, 1.0, 10), 1.0)
    c.on_peer("b", False, 2.0)
    actions = c.on_peer("c", False, 2.0)
    (stop,) = [a for a in actions if isinstance(a, Stop)]
    assert isinstance(stop.error, RoundFailed)
    assert "1 of 3 results" in stop.reason and "min_fit_clients 3" in stop.reason
    assert c.done


def test_failed_round_is_retried_when_allowed():
    c = make(min_fit=2, min_avail=2, retries=1)
    for p in "abc":
        c.handle(advert(p), 0.0)
    c.on_peer("a", False, 1.0)
    actions = c.on_peer("b", False, 1.0)
    # c alone cannot satisfy min_available 2: the round is retried once it can
    assert any(isinstance(a, Emit) and a.event == "round_failed" for a in actions)
    assert c.state is State.WAITING and c.round_number == 1
    actions = c.handle(advert("d"), 2.0)
    assert {a.to for a in sends(actions, m.Fit)} == {"c", "d"}
    assert c.current.attempt == 1


def test_stale_duplicate_and_foreign_updates_are_not_counted():
    c = make()
    for p in "abc":
        c.handle(advert(p), 0.0)
    c.handle(update("a", 1, 1.0, 10), 1.0)
    c.handle(update("a", 1, 100.0, 10), 1.0)  # duplicate
    c.handle(update("z", 1, 100.0, 10), 1.0)  # not selected
    c.handle(update("b", 0, 100.0, 10), 1.0)  # wrong round
    assert c.current.arrived == {"a"} and c.current.stale == 3
    assert c.aggregator.count == 1


def test_unexpected_message_names_role_state_and_kind():
    c = make()
    gossip = m.Gossip(sender="p", recipient="coord")
    with pytest.raises(RemoteProtocolError, match=r"coordinator in state waiting .*GOSSIP"):
        c.handle(gossip, 0.0)


def test_fraction_fit_samples_subset_with_min():
    c = make(min_fit=2, min_avail=10, fraction=0.3)
    actions = []
    for p in "abcdefghij":
        actions += c.handle(advert(p), 0.0)
    assert len(sends(actions, m.Fit)) == 3
