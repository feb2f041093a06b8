"""Regional aggregator and client state machines, driven directly: no trio, no sockets."""

import numpy as np
import pytest

from fednode.actions import Compute, Emit, Send, TrainJob, TrainResult
from fednode.config import TierParams
from fednode.errors import RemoteProtocolError
from fednode.hierarchy.aggregator import RegionalAggregator, State
from fednode.hierarchy.client import Client
from fednode.wire import messages as m

SIZE = 4


def sends(actions, kind=m.Message):
    return [a for a in actions if isinstance(a, Send) and isinstance(a.msg, kind)]


def fit(sender="coord", rnd=1, value=0.0, version=3, deadline=10.0, recipient="agg"):
    return m.Fit(
        sender=sender,
        recipient=recipient,
        round=rnd,
        model_version=version,
        vector=np.full(SIZE, value, np.float32),
        payload=b"model",
        config={"local_epochs": 2, "deadline_s": deadline},
    )


def child(peer, parent="agg", accepting=True):
    return m.Advert(sender=peer, recipient="agg", role="client", parent=parent, accepting=accepting)


def coord_advert(recipient="agg"):
    return m.Advert(sender="coord", recipient=recipient, role="coordinator")


def update(peer, seq, delta, n, rnd=1, **metrics):
    return m.Update(
        sender=peer,
        recipient="agg",
        round=rnd,
        model_version=seq,
        num_examples=n,
        metrics={"train_loss": 1.0, **metrics},
        vector=np.full(SIZE, delta, np.float32),
        payload=b"x",
    )


def aggregator(edge_rounds=1, children="ab"):
    agg = RegionalAggregator(
        region="eu", tier=TierParams(edge_rounds=edge_rounds, aggregator_deadline_fraction=0.5)
    )
    agg.handle(coord_advert(), 0.0)
    for p in children:
        agg.handle(child(p), 0.0)
    return agg


# --- aggregator --------------------------------------------------------------------


def test_aggregator_adopts_coordinator_and_reports_its_children():
    agg = RegionalAggregator(region="eu")
    (hello,) = agg.handle(coord_advert(), 0.0)
    assert hello.to == "coord" and hello.msg.role == "aggregator" and not hello.msg.accepting
    (report,) = agg.handle(child("a"), 0.0)
    assert report.to == "coord" and report.msg.children == ("a",) and report.msg.accepting
    assert report.msg.load == 1 and report.msg.parent == "coord"


def test_aggregator_forwards_fit_and_sends_one_weighted_update_up():
    agg = aggregator()
    actions = agg.handle(fit(), 1.0)
    fits = sends(actions, m.Fit)
    assert sorted(a.to for a in fits) == ["a", "b"]
    assert fits[0].msg.payload == b"model"  # forwarded as it came, not re-encoded
    assert fits[0].msg.config["deadline_s"] == 5.0  # half of the coordinator's 10 s
    assert agg.next_deadline() == 6.0
    seq = fits[0].msg.model_version
    assert agg.handle(update("a", seq, 1.0, 10), 2.0) == []
    actions = agg.handle(update("b", seq, 4.0, 30, train_loss=2.0), 2.0)
    (up,) = sends(actions, m.Update)
    assert up.to == "coord" and up.msg.round == 1 and up.msg.model_version == 3
    assert up.msg.num_examples == 40  # the region's total
    np.testing.assert_allclose(up.msg.vector, (1.0 * 10 + 4.0 * 30) / 40)
    assert up.msg.metrics["clients"] == 2 and up.msg.metrics["clients_failed"] == 0
    assert up.msg.metrics["train_loss"] == pytest.approx((10 + 60) / 40)
    assert agg.state is State.IDLE


def test_aggregator_deadline_sends_what_arrived_and_counts_failures():
    agg = aggregator(children="abc")
    seq = sends(agg.handle(fit(), 0.0), m.Fit)[0].msg.model_version
    agg.handle(update("a", seq, 2.0, 10), 1.0)
    assert agg.poll(4.9) == []
    (up,) = sends(agg.poll(5.0), m.Update)
    assert up.msg.num_examples == 10 and up.msg.metrics["clients_failed"] == 2
    assert up.msg.metrics["clients_selected"] == 3


def test_aggregator_with_no_results_rejects_up_instead_of_waiting_for_the_coordinator():
    agg = aggregator(children="a")
    agg.handle(fit(), 0.0)
    actions = agg.on_peer("a", False, 1.0)
    (reject,) = sends(actions, m.Reject)
    assert reject.to == "coord" and reject.msg.round == 1


def test_edge_rounds_run_hierfavg_from_the_previous_edge_model():
    agg = aggregator(edge_rounds=2)
    seq1 = sends(agg.handle(fit(value=10.0), 0.0), m.Fit)[0].msg.model_version
    agg.handle(update("a", seq1, 1.0, 10), 1.0)
    actions = agg.handle(update("b", seq1, 3.0, 10), 1.0)
    second = sends(actions, m.Fit)
    assert len(second) == 2 and not sends(actions, m.Update)
    np.testing.assert_allclose(second[0].msg.vector, 12.0)  # base 10 + mean 2
    seq2 = second[0].msg.model_version
    assert agg.handle(update("a", seq1, 50.0, 10), 1.5) != []  # edge 1 echo: stale
    agg.handle(update("a", seq2, 1.0, 10), 2.0)
    (up,) = sends(agg.handle(update("b", seq2, 1.0, 10), 2.0), m.Update)
    np.testing.assert_allclose(up.msg.vector, 3.0)  # 12 + 1 - 10
    assert up.msg.metrics["edge_rounds"] == 2


def test_aggregator_drops_a_child_that_moved_and_finishes_without_it():
    agg = aggregator()
    seq = sends(agg.handle(fit(), 0.0), m.Fit)[0].msg.model_version
    agg.handle(update("a", seq, 1.0, 10), 1.0)
    actions = agg.handle(child("b", parent="other"), 1.0)
    assert "b" not in agg.children
    (up,) = sends(actions, m.Update)
    assert up.msg.num_examples == 10


def test_aggregator_answers_fit_from_a_stranger_with_its_advert():
    agg = aggregator()
    (reply,) = agg.handle(fit(sender="intruder"), 0.0)
    assert reply.to == "intruder" and isinstance(reply.msg, m.Advert)
    assert agg.state is State.IDLE


def test_aggregator_unexpected_message_names_role_state_and_kind():
    agg = aggregator()
    with pytest.raises(RemoteProtocolError, match=r"aggregator in state idle .*GOSSIP"):
        agg.handle(m.Gossip(sender="x", recipient="agg"), 0.0)


def test_training_aggregator_counts_itself_as_a_child():
    agg = RegionalAggregator(trains=True, children=("a",))
    agg.handle(coord_advert(), 0.0)
    assert agg.advert().load == 2  # one child + itself
    actions = agg.handle(fit(), 0.0)
    (job,) = [a.job for a in actions if isinstance(a, Compute)]
    assert isinstance(job, TrainJob) and job.config["local_epochs"] == 2
    seq = sends(actions, m.Fit)[0].msg.model_version
    agg.handle(update("a", seq, 1.0, 10), 1.0)
    result = TrainResult(1, np.full(SIZE, 3.0, np.float32), 30, {"train_loss": 0.5})
    (up,) = sends(agg.on_result(result, 2.0), m.Update)
    np.testing.assert_allclose(up.msg.vector, (10 * 1.0 + 30 * 3.0) / 40)
    assert up.msg.metrics["clients"] == 2


# --- client ------------------------------------------------------------------------


def make_client(**kw):
    return Client(model_size=SIZE, tier=TierParams(), **kw)


def test_client_adopts_coordinator_then_its_region_aggregator_telling_both():
    c = make_client(region="eu")
    (hello,) = c.handle(m.Advert(sender="coord", recipient="me", role="coordinator"), 0.0)
    assert hello.to == "coord" and c.parent == "coord"
    actions = c.handle(m.Advert(sender="A", recipient="me", role="aggregator", region="eu"), 0.0)
    assert {a.to for a in actions} == {"A", "coord"} and c.parent == "A"
    assert all(a.msg.parent == "A" for a in actions)
    assert c.handle(m.Advert(sender="B", recipient="me", role="aggregator", region="us"), 0) == []


def test_client_trains_only_for_its_parent():
    c = make_client(parent="A")
    (reply,) = c.handle(fit(sender="coord", recipient="me"), 0.0)
    assert reply.to == "coord" and isinstance(reply.msg, m.Advert) and reply.msg.parent == "A"
    actions = c.handle(fit(sender="A", recipient="me"), 0.0)
    assert any(isinstance(a, Compute) for a in actions)


def test_client_that_does_not_accept_declines_the_fit():
    c = make_client(parent="coord")
    (note,) = c.set_accepting(False)
    assert note.to == "coord" and note.msg.accepting is False
    (reject,) = c.handle(fit(sender="coord", recipient="me"), 0.0)
    assert isinstance(reject.msg, m.Reject) and reject.msg.round == 1 and c.declined == 1


def test_client_rehomes_to_the_coordinator_when_its_aggregator_dies():
    c = make_client(region="eu")
    c.handle(m.Advert(sender="coord", recipient="me", role="coordinator"), 0.0)
    c.handle(m.Advert(sender="A", recipient="me", role="aggregator", region="eu"), 0.0)
    actions = c.on_peer("A", False, 5.0)
    assert c.parent == "coord"
    assert [a.to for a in sends(actions, m.Advert)] == ["coord"]
    assert any(isinstance(a, Emit) and a.event == "rehomed" for a in actions)


def test_client_follows_assign_from_coordinator_only():
    c = make_client()
    c.handle(m.Advert(sender="coord", recipient="me", role="coordinator"), 0.0)
    actions = c.handle(m.Assign(sender="coord", recipient="me", role="client", parent="B"), 0.0)
    assert c.parent == "B" and {a.to for a in actions} == {"B", "coord"}
    where = ("/ip4/10.0.0.7/tcp/4001/p2p/D",)
    c.addrs = ("/ip4/10.0.0.2/tcp/4001/p2p/me",)
    actions = c.handle(
        m.Assign(sender="coord", recipient="me", role="client", parent="D", addrs=where), 1.0
    )
    (to_d,) = [a for a in sends(actions, m.Advert) if a.to == "D"]
    assert to_d.addrs == where  # the runner dials them if it is not connected to D
    assert to_d.msg.addrs == c.addrs  # and its advert says where it listens itself
    with pytest.raises(RemoteProtocolError, match="Assign"):
        c.handle(m.Assign(sender="stranger", recipient="me", role="client", parent="X"), 0.0)


def test_promoted_client_becomes_an_aggregator_in_place():
    c = make_client()
    c.handle(m.Advert(sender="coord", recipient="me", role="coordinator"), 0.0)
    promote = m.Assign(
        sender="coord", recipient="me", role="aggregator", parent="coord", children=("x", "y")
    )
    actions = c.handle(promote, 0.0)
    assert c.role == "aggregator"
    (hello,) = sends(actions, m.Advert)
    assert hello.to == "coord" and hello.msg.role == "aggregator"
    assert hello.msg.children == ("x", "y") and hello.msg.load == 3  # + itself
    actions = c.handle(fit(sender="coord", recipient="me"), 1.0)  # now it aggregates
    assert sorted(a.to for a in sends(actions, m.Fit)) == ["x", "y"]
    assert any(isinstance(a, Compute) for a in actions)  # and trains on its own data


def test_client_unexpected_message_names_role_state_and_kind():
    c = make_client()
    with pytest.raises(RemoteProtocolError, match=r"client in state idle .*UPDATE"):
        c.handle(update("x", 0, 1.0, 1), 0.0)


def test_client_moved_mid_round_does_not_train_that_round_twice():
    """Trained round 3 for A, then the coordinator moved it to B (A still alive): B's
    request for round 3 is declined — A's aggregate already holds this client — and
    round 4 under B trains as usual. After losing a parent it trains the round again."""
    c = make_client()
    c.handle(m.Advert(sender="coord", recipient="me", role="coordinator"), 0.0)
    c.handle(m.Assign(sender="coord", recipient="me", role="client", parent="A"), 0.0)
    assert any(isinstance(a, Compute) for a in c.handle(fit(sender="A", rnd=3, recipient="me"), 0))
    c.handle(m.Assign(sender="coord", recipient="me", role="client", parent="B"), 1.0)
    (reject,) = c.handle(fit(sender="B", rnd=3, recipient="me"), 1.0)
    assert reject.to == "B" and isinstance(reject.msg, m.Reject) and reject.msg.reason == "trained"
    c.on_result(TrainResult(3, np.zeros(SIZE, np.float32), 10, {}), 2.0)  # the job for A ends
    assert any(isinstance(a, Compute) for a in c.handle(fit(sender="B", rnd=4, recipient="me"), 3))
    c2 = make_client()
    c2.handle(m.Advert(sender="coord", recipient="me", role="coordinator"), 0.0)
    c2.handle(m.Assign(sender="coord", recipient="me", role="client", parent="A"), 0.0)
    c2.handle(fit(sender="A", rnd=3, recipient="me"), 0.0)
    c2.on_peer("A", False, 1.0)  # A died with the update: the retry must count
    c2.on_result(TrainResult(3, np.zeros(SIZE, np.float32), 10, {}), 1.5)
    retry = c2.handle(fit(sender="coord", rnd=3, recipient="me"), 2.0)
    assert any(isinstance(a, Compute) for a in retry)
