"""The coordinator's tree (placement, promotion, orphans) and checkpoints, without trio."""

import dataclasses
import json

import numpy as np
import pytest

from fednode.actions import Emit, EvalResult, Send
from fednode.config import RoundParams, TierParams, TrainParams
from fednode.errors import ConfigError
from fednode.hierarchy.checkpoint import DirectoryCheckpoints, Snapshot, load_checkpoint
from fednode.hierarchy.coordinator import Coordinator, State
from fednode.hierarchy.tree import Tree
from fednode.training.server_opt import FedAdam
from fednode.wire import messages as m

SIZE = 4


def client(peer, region="", parent=""):
    return m.Advert(sender=peer, recipient="C", role="client", region=region, parent=parent)


def agg(peer, children=(), region="", trains=False):
    return m.Advert(
        sender=peer,
        recipient="C",
        role="aggregator",
        region=region,
        parent="C",
        load=len(children) + trains,
        children=tuple(children),
    )


def assigns(actions):
    return {a.to: a.msg for a in actions if isinstance(a, Send) and isinstance(a.msg, m.Assign)}


def test_clients_go_to_their_region_then_to_the_least_loaded_aggregator():
    t = Tree(TierParams(placement="least_loaded"))
    t.on_advert(agg("A", ["x"], region="eu"))
    t.on_advert(agg("B", region="us"))
    assert assigns(t.on_advert(client("c1", region="eu")))["c1"].parent == "A"
    assert assigns(t.on_advert(client("c2")))["c2"].parent == "B"  # B has 0 vs A 2
    assert t.pending == {"c1": "A", "c2": "B"} and "c1" not in t.direct
    t.on_advert(agg("A", ["x", "c1"], region="eu"))  # A confirms
    assert t.pending == {"c2": "B"} and t.under["c1"] == "A"
    assert t.as_dict() == {"C": ["A", "B"], "A": ["c1", "x"], "B": []}


def test_region_placement_keeps_unlabelled_clients_direct():
    t = Tree(TierParams(placement="region"))
    t.on_advert(agg("A", region="eu"))
    assert t.on_advert(client("c1")) == [] and "c1" in t.direct


def test_clients_that_joined_before_the_aggregator_are_moved_when_it_arrives():
    t = Tree(TierParams())
    t.on_advert(client("c1"))
    t.on_advert(client("c2"))
    moved = assigns(t.on_advert(agg("A")))
    assert set(moved) == {"c1", "c2"} and t.direct.keys() == {"A"}


def test_dead_aggregator_leaves_orphans_that_are_placed_again():
    t = Tree(TierParams())
    t.on_advert(agg("A", ["c1", "c2"]))
    t.on_advert(agg("B", ["c3"]))
    assert t.on_down("A") == ["c1", "c2"]
    assert assigns(t.on_advert(client("c1", parent="C")))["c1"].parent == "B"
    assert t.leaves("B") == 1 and t.load("B") == 2


def test_promotion_moves_a_share_of_the_region_and_holds_the_round():
    t = Tree(TierParams(settle_s=5.0), me="C")
    for p in ("p", "a", "b", "c", "d"):
        t.on_advert(client(p, region="eu"))
    actions = t.promote("p", now=1.0, share=0.5)
    sent = assigns(actions)
    assert sent["p"].role == "aggregator" and sent["p"].children == ("a", "b")
    assert sent["a"].parent == "p" and sent["b"].parent == "p"
    assert set(t.direct) == {"c", "d"} and t.settling(2.0)
    t.on_advert(agg("p", ["a", "b"], region="eu", trains=True))
    assert not t.settling(2.0) and t.leaves("p") == 3
    assert set(t.direct) == {"p", "c", "d"}  # the rest of eu stays: promotion took its share


def test_assign_tells_the_client_where_its_new_parent_listens():
    """The parent's advertised addresses travel in the Assign: no discovery needed."""
    t = Tree(TierParams(placement="least_loaded"), me="C")
    where = ("/ip4/10.0.0.7/tcp/4001/p2p/A",)
    t.on_advert(dataclasses.replace(agg("A", region="eu"), addrs=where))
    assert assigns(t.on_advert(client("c1", region="eu")))["c1"].addrs == where
    t.on_advert(agg("B", region="ap"))  # advertised none: the client relies on discovery
    assert assigns(t.on_advert(client("c2", region="ap")))["c2"].addrs == ()
    flat = Tree(TierParams(), me="C")
    for p in ("q", "r"):  # promotion: the promoted client's own advert has its addresses
        flat.on_advert(dataclasses.replace(client(p, region="us"), addrs=(f"/ip4/10.0.0.9/{p}",)))
    sent = assigns(flat.promote("q", now=1.0, share=1.0))
    assert sent["r"].parent == "q" and sent["r"].addrs == ("/ip4/10.0.0.9/q",)


def test_promotion_that_never_settles_stops_holding_after_settle_s():
    t = Tree(TierParams(settle_s=5.0), me="C")
    t.on_advert(client("p"))
    t.promote("p", now=0.0)
    assert t.settling(4.9) and not t.settling(5.0)


def test_auto_promotion_when_a_region_reaches_promote_at():
    t = Tree(TierParams(promote_at=3), me="C")
    t.on_advert(client("b", region="eu"))
    t.on_advert(client("c", region="eu"))
    assert t.auto_promote(0.0) == []
    t.on_advert(client("a", region="eu"))
    sent = assigns(t.auto_promote(0.0))
    assert sent["a"].role == "aggregator" and sent["a"].children == ("b", "c")


def test_promoting_a_stranger_is_refused():
    t = Tree(TierParams())
    (refused,) = t.promote("nobody", 0.0)
    assert isinstance(refused, Emit) and refused.event == "promotion_refused"


# --- checkpoints ---------------------------------------------------------------------


def snap(round_=3, value=1.5):
    return Snapshot(
        round=round_,
        model_version=round_,
        params=np.full(SIZE, value, np.float32),
        optimizer="fedadam",
        optimizer_state={"steps": 3, "m": np.ones(SIZE, np.float32)},
        membership={"C": ["a"]},
        extra={"rng": [3, [1, 2], None]},
    )


def test_checkpoint_round_trip_is_exact_and_versioned(tmp_path):
    store = DirectoryCheckpoints(tmp_path, keep=2)
    for r in (1, 2, 3):
        store.save(snap(r, value=float(r)))
    assert [p.name for p in store.versions()] == ["ckpt-00000002", "ckpt-00000003"]
    assert (tmp_path / "LATEST").read_text() == "ckpt-00000003"
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 3 and loaded.params.dtype == np.float32
    np.testing.assert_array_equal(loaded.params, np.full(SIZE, 3.0, np.float32))
    np.testing.assert_array_equal(loaded.optimizer_state["m"], np.ones(SIZE))
    assert loaded.optimizer_state["steps"] == 3 and loaded.membership == {"C": ["a"]}
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-written left


def test_checkpoint_files_are_plain_npy_and_json(tmp_path):
    path = DirectoryCheckpoints(tmp_path).save(snap())
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.npy", "opt.m.npy"]
    np.load(path / "model.npy", allow_pickle=False)  # no pickle inside
    meta = json.loads((path / "meta.json").read_text())
    assert meta["round"] == 3 and meta["optimizer_arrays"] == ["m"]


def test_corrupt_or_missing_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="resume_from"):
        load_checkpoint(tmp_path)
    path = DirectoryCheckpoints(tmp_path).save(snap())
    np.save(path / "model.npy", np.zeros(SIZE, np.float32), allow_pickle=False)
    with pytest.raises(ConfigError, match="digest"):
        load_checkpoint(tmp_path)


def test_coordinator_checkpoints_every_round_and_resumes_where_it_stopped(tmp_path):
    def coordinator(**kw):
        return Coordinator(
            params=np.zeros(SIZE, np.float32),
            rounds=RoundParams(rounds=5, min_fit_clients=1, min_available_clients=1),
            train=TrainParams(),
            server_update=FedAdam(lr=0.1),
            checkpoints=DirectoryCheckpoints(tmp_path),
            **kw,
        )

    c = coordinator()
    c.handle(client("a"), 0.0)
    c.handle(
        m.Update(
            sender="a",
            recipient="C",
            round=1,
            num_examples=5,
            vector=np.ones(SIZE, np.float32),
            payload=b"x",
            metrics={"train_loss": 2.0},
        ),
        1.0,
    )
    actions = c.on_result(EvalResult(1, 0.5, 10, {"accuracy": 0.5}), 1.0)
    assert any(isinstance(a, Emit) and a.event == "checkpoint" for a in actions)
    resumed = coordinator(resume_from=tmp_path)
    assert resumed.round_number == 2 and resumed.model_version == 1
    np.testing.assert_array_equal(resumed.params, c.params)
    np.testing.assert_array_equal(resumed.server_update.m, c.server_update.m)
    assert resumed.rng.getstate() == tuple(
        tuple(x) if isinstance(x, list) else x for x in resumed.resumed_from.extra["rng"]
    )
    assert resumed.observed["a"].loss == c.observed["a"].loss
    assert resumed.state is State.WAITING and resumed.resumed_from.membership["C"] == ["a"]


def test_a_late_aggregator_gets_its_fair_share_from_the_busier_one():
    """Start order is arbitrary on a LAN: the first aggregator to advertise must not keep
    every client that arrived before the second one."""
    t = Tree(TierParams())
    for c in ("c1", "c2", "c3", "c4"):
        t.on_advert(client(c))
    assert {m.parent for m in assigns(t.on_advert(agg("A"))).values()} == {"A"}
    t.on_advert(agg("A", ["c1", "c2", "c3", "c4"]))  # A confirms all four
    moved = assigns(t.on_advert(agg("B")))
    assert len(moved) == 2 and all(m.parent == "B" for m in moved.values())
    assert t.load("A") == 2 and t.load("B") == 2
    left = sorted({"c1", "c2", "c3", "c4"} - set(moved))
    t.on_advert(agg("A", left))
    t.on_advert(agg("B", sorted(moved)))
    tree = t.as_dict()
    assert t.pending == {} and sorted(tree["A"] + tree["B"]) == ["c1", "c2", "c3", "c4"]
    # a third aggregator takes from both, and nobody is counted in two places
    third = assigns(t.on_advert(agg("D")))
    assert len(third) == 1 and t.load("D") == 1
    assert t.load("A") + t.load("B") + t.load("D") == 4


def test_levelling_keeps_regions_and_respects_placement():
    t = Tree(TierParams(placement="least_loaded"))
    t.on_advert(agg("A", ["x1", "x2", "x3", "x4"], region="eu"))
    for c in ("x1", "x2", "x3", "x4"):
        t.under[c] = "A"
    assert assigns(t.on_advert(agg("B", region="us"))) == {}  # another region: untouched
    t2 = Tree(TierParams(placement="region"))
    t2.on_advert(agg("A", ["x1", "x2", "x3", "x4"]))
    for c in ("x1", "x2", "x3", "x4"):
        t2.under[c] = "A"
    assert assigns(t2.on_advert(agg("B"))) == {}
