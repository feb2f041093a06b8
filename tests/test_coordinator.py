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


# --- round lifecycle: cut-off, declines, leaf accounting ------------------------------


def make_with(**round_kw):
    base = dict(
        rounds=2,
        min_fit_clients=1,
        min_available_clients=3,
        round_deadline_s=10.0,
        wait_for_clients_s=100.0,
        max_retries=0,
    )
    base.update(round_kw)
    return Coordinator(
        params=np.zeros(SIZE, np.float32), rounds=RoundParams(**base), train=TrainParams()
    )


def record_of(actions):
    (record,) = [a for a in actions if isinstance(a, Emit) and a.event == "round"]
    return record.data


def test_straggler_cutoff_closes_round_early_and_ignores_latecomers():
    c = make_with(min_available_clients=4, cutoff_fraction=0.5)
    for p in "abcd":
        c.handle(advert(p), 0.0)
    assert c.handle(update("a", 1, 1.0, 10), 1.0) == []
    actions = c.handle(update("b", 1, 3.0, 10), 2.0)
    assert any(isinstance(a, Compute) for a in actions)  # 2 of 4 = cut-off reached
    assert c.current.stragglers == {"c", "d"} and c.current.failed == set()
    record = record_of(c.on_result(EvalResult(1, 0.5, 100, {"accuracy": 0.9}), 3.0))
    assert record["stragglers"] == 2 and record["failure_rate"] == 0.0
    np.testing.assert_allclose(c.params, 2.0)
    c.handle(update("c", 1, 100.0, 10), 4.0)  # round 1's straggler, now stale
    assert c.current.stale == 1 and "c" not in c.current.arrived


def test_declined_fit_is_neither_failure_nor_result():
    c = make_with()
    for p in "abc":
        c.handle(advert(p), 0.0)
    c.handle(m.Reject(sender="b", recipient="coord", round=1, reason="declined"), 1.0)
    c.handle(update("a", 1, 1.0, 10), 1.0)
    actions = c.handle(update("c", 1, 1.0, 10), 1.0)
    assert any(isinstance(a, Compute) for a in actions)
    record = record_of(c.on_result(EvalResult(1, 0.5, 100, {"accuracy": 0.9}), 2.0))
    assert (record["declined"], record["failed"], record["completed"]) == (1, 0, 2)
    assert record["participation_rate"] == pytest.approx(2 / 3)


def test_not_accepting_children_are_not_selected():
    c = make_with(min_available_clients=2)
    c.handle(advert("a"), 0.0)
    busy = m.Advert(sender="b", recipient="coord", role="client", accepting=False)
    c.handle(busy, 0.0)
    assert c.state is State.WAITING  # b does not count as available
    actions = c.handle(advert("c"), 0.0)
    assert {a.to for a in sends(actions, m.Fit)} == {"a", "c"}


def test_update_for_an_old_model_version_is_stale():
    c = make_with()
    for p in "abc":
        c.handle(advert(p), 0.0)
    old = m.Update(
        sender="a",
        recipient="coord",
        round=1,
        model_version=7,
        num_examples=5,
        vector=np.ones(SIZE, np.float32),
        payload=b"x",
    )
    c.handle(old, 1.0)
    assert c.current.arrived == set() and c.current.stale == 1


def test_aggregator_updates_carry_client_level_failure_rate():
    c = make_with(min_available_clients=20)
    agg = m.Advert(
        sender="A",
        recipient="coord",
        role="aggregator",
        load=10,
        children=tuple(f"c{i}" for i in range(10)),
    )
    agg_b = m.Advert(
        sender="B",
        recipient="coord",
        role="aggregator",
        load=10,
        children=tuple(f"d{i}" for i in range(10)),
    )
    c.handle(agg, 0.0)
    actions = c.handle(agg_b, 0.0)
    assert {a.to for a in sends(actions, m.Fit)} == {"A", "B"}
    assert sends(actions, m.Fit)[0].msg.config["deadline_s"] == 10.0
    up = m.Update(
        sender="A",
        recipient="coord",
        round=1,
        num_examples=70,
        metrics={"clients": 7, "clients_selected": 10, "train_loss": 1.0},
        vector=np.ones(SIZE, np.float32),
        payload=b"x",
    )
    c.handle(up, 1.0)
    c.on_peer("B", False, 1.0)  # a whole region lost
    record = record_of(c.on_result(EvalResult(1, 0.5, 100, {"accuracy": 0.9}), 2.0))
    assert record["clients_selected"] == 20 and record["clients_completed"] == 7
    assert record["clients_failed"] == 13
    assert record["client_failure_rate"] == pytest.approx(0.65)
    assert record["aggregators"] == 2 and record["examples"] == 70


def test_server_update_hook_gets_the_weighted_mean():
    seen = []

    def hook(params, delta):
        seen.append(delta.copy())
        return params + 2 * delta

    c = Coordinator(
        params=np.zeros(SIZE, np.float32),
        rounds=RoundParams(rounds=1, min_fit_clients=2, min_available_clients=2),
        train=TrainParams(),
        server_update=hook,
    )
    c.handle(advert("a"), 0.0)
    c.handle(advert("b"), 0.0)
    c.handle(update("a", 1, 1.0, 10), 1.0)
    c.handle(update("b", 1, 4.0, 30), 1.0)
    np.testing.assert_allclose(seen[0], 3.25)
    np.testing.assert_allclose(c.params, 6.5)


def test_aggregator_that_got_no_results_counts_as_failed_not_declined():
    c = make_with(min_available_clients=2)
    c.handle(advert("a"), 0.0)
    c.handle(advert("b"), 0.0)
    c.handle(update("a", 1, 1.0, 10), 1.0)
    reject = m.Reject(sender="b", recipient="coord", round=1, reason="no results in edge round 1")
    actions = c.handle(reject, 2.0)
    assert any(isinstance(a, Compute) for a in actions)
    assert c.current.failed == {"b"} and c.current.declined == set()


def test_round_start_waits_for_a_promotion_to_settle():
    c = make_with(min_available_clients=4)
    c.start(0.0)
    for p in "abcd":
        c.handle(advert(p), 0.0)
    c.request_promotion("a", share=0.5)  # during round 1: applied before round 2
    for p in "abcd":
        c.handle(update(p, 1, 1.0, 10), 0.5)
    actions = c.on_result(EvalResult(1, 0.5, 100, {"accuracy": 0.5}), 1.0)
    assert c.state is State.WAITING
    promote = [x for x in sends(actions, m.Assign) if x.to == "a"]
    assert promote and promote[0].msg.role == "aggregator" and not sends(actions, m.Fit)
    assert c.next_deadline() == 1.0 + c.tree.tier.settle_s
    hello = m.Advert(
        sender="a",
        recipient="coord",
        role="aggregator",
        parent="coord",
        load=3,
        children=promote[0].msg.children,
    )
    actions = c.handle(hello, 2.0)
    assert {x.to for x in sends(actions, m.Fit)} == {"a"} | (set("bcd") - set(hello.children))
