"""Personalisation ([personal], fednode.training.personal): what each mode sends, what it
keeps, what it scores; the config errors; feature-shift partitions."""

import numpy as np
import pytest

from fednode.actions import Compute, Send, TrainResult
from fednode.config import PersonalParams, load_config
from fednode.errors import ConfigError
from fednode.hierarchy.client import Client
from fednode.training.digits import DigitsTask
from fednode.training.partition import parse_partition, partition_indices, shift_features
from fednode.training.personal import Personalised, PersonalTally, personalise
from fednode.training.task import load_task
from fednode.wire import messages as m
from fednode.wire.codecs import parse_codec

CONFIG = {"local_epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9}


def digits(model="mlp", index=3, partition="dirichlet:0.1"):
    return DigitsTask(model=model, client_index=index, num_clients=20, partition=partition)


def wrapped(mode="none", model="mlp", **kw):
    return Personalised(digits(model), PersonalParams(mode=mode, holdout=0.2, **kw))


def sent_delta(task, base, codec="none", rnd=1):
    """Drive a real client role through one Fit with ``task`` doing the training; return
    the delta decoded from the bytes of the Update it sends."""
    client = Client(model_size=base.size, codec=codec, parent="coord")
    fit = m.Fit(
        sender="coord",
        recipient="me",
        round=rnd,
        model_version=rnd,
        vector=base,
        payload=b"model",
        config=dict(CONFIG),
    )
    (compute,) = [a for a in client.handle(fit, 0.0) if isinstance(a, Compute)]
    params, n, metrics = task.train(compute.job.params, compute.job.config)
    (send,) = client.on_result(TrainResult(rnd, params, n, metrics), 1.0)
    assert isinstance(send, Send) and isinstance(send.msg, m.Update)
    upd = send.msg
    return parse_codec(upd.codec).decode(upd.payload, base.size), upd


# --- fedper / fedbn: the local layers never leave the member ---------------------------------
@pytest.mark.parametrize(
    ("mode", "model", "codec"),
    [("fedper", "mlp", "none"), ("fedper", "mlp", "topk:0.2"), ("fedbn", "mlpbn:32", "none")],
)
def test_local_layers_are_never_in_the_update_bytes(mode, model, codec):
    task = wrapped(mode, model)
    base = task.init_params(0)
    mask = task.mask
    expected = {"fedper": ("2.weight", "2.bias"), "fedbn": ("1.weight", "1.bias")}[mode]
    assert task.local_names == expected
    for rnd in (1, 2, 3):  # error feedback must not leak them either
        delta, upd = sent_delta(task, base, codec, rnd)
        assert np.all(delta[mask] == 0.0)
        assert np.any(delta[~mask] != 0.0)
        assert task.local is not None and np.any(task.local != base[mask])  # it did train them
        assert "personal_accuracy" in upd.metrics
        base = np.add(base, delta, dtype=np.float32)
    # the member's own head is what it trains from and scores with, not the received one
    np.testing.assert_array_equal(task.personal_model(base)[mask], task.local)


def test_fedbn_running_statistics_are_not_part_of_the_vector():
    task = digits("mlpbn:16")
    assert all("running" not in n and "batches" not in n for n in task.layout().names)
    assert task.norm_layers() == ("1.weight", "1.bias")


def test_gossip_peers_keep_their_heads_and_average_only_the_body():
    from fednode.sim.experiment import run_experiment
    from fednode.sim.topology import topology_from_dict

    spec = {"kind": "gossip", "graph": {"generator": "cycle_graph", "n": 4}}
    topo = topology_from_dict(spec, name="ring4", base_dir=".")
    grab = {}

    def watch(topo, built, sim):
        grab["nodes"] = sim.nodes
        return lambda *a: None

    over = {"rounds.rounds": 3, "train.local_epochs": 1, "personal.mode": "fedper"}
    over["personal.holdout"] = 0.2
    res = run_experiment(topo, overrides=over, watch=watch)
    assert res.error is None
    init = load_task("digits").init_params(0)
    tasks = [node.executor.task for node in grab["nodes"][:4]]
    mask = tasks[0].mask
    for node, task in zip(grab["nodes"][:4], tasks):
        x = node.role.params
        np.testing.assert_array_equal(x[mask], init[mask])  # what it sends holds no head
        assert np.any(x[~mask] != init[~mask])  # the body was trained and averaged
        assert np.any(task.local != init[mask])  # its own head is trained, and kept
    assert res.personal and max(res.personal) == 3
    rows = res.table()
    assert rows[-1]["personal_members"] == 4 and 0 <= rows[-1]["personal_accuracy"] <= 1
    assert res.summary()["personal"]["mode"] == "fedper"


# --- ditto -------------------------------------------------------------------------------------
def test_ditto_sends_the_plain_update_and_keeps_a_personal_model_pulled_to_the_global():
    base = digits().init_params(0)
    same = digits()
    same.hold_out(0.2)  # the same training data as the wrapped member's
    plain = same.train(base, {**CONFIG, "round": 1})[0]
    gaps = []
    for lam in (0.0, 10.0):
        task = wrapped("ditto", ditto_lambda=lam)
        sent, _n, metrics = task.train(base, {**CONFIG, "round": 1})
        np.testing.assert_array_equal(sent, plain)  # the global update is FedAvg's
        assert task.personal is not None and "personal_accuracy" in metrics
        task.train(sent, {**CONFIG, "round": 2})  # a second round: the pull is to ``sent``
        gaps.append(float(np.linalg.norm(task.personal - sent)))
    assert gaps[1] < gaps[0]  # a stronger lambda keeps the personal model nearer


# --- finetune ----------------------------------------------------------------------------------
def test_finetune_changes_what_is_scored_not_what_is_sent():
    base = digits().init_params(0)
    task = wrapped("finetune", finetune_steps=5)
    sent, _n, metrics = task.train(base, {**CONFIG, "round": 1})
    none = wrapped("none")
    sent_none, _n, metrics_none = none.train(base, {**CONFIG, "round": 1})
    np.testing.assert_array_equal(sent, sent_none)
    # none scores the received model; finetune scores it after 5 local steps
    assert metrics_none["personal_loss"] == pytest.approx(none.evaluate_local(base)[0])
    assert metrics["personal_loss"] < metrics_none["personal_loss"]


# --- cold start warm-up ------------------------------------------------------------------------
class Spy(DigitsTask):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def train(self, params, config):
        self.calls.append(dict(config))
        return super().train(params, config)


@pytest.mark.parametrize("first_round", [1, 7])
def test_warmup_trains_only_the_local_layers_and_only_for_a_late_joiner(first_round):
    spy = Spy(client_index=2, num_clients=20)
    task = Personalised(spy, PersonalParams(mode="fedper", warmup_steps=4))
    base = spy.init_params(0)
    task.train(base, {**CONFIG, "round": first_round})
    task.train(base, {**CONFIG, "round": first_round + 1})
    warm = [c for c in spy.calls if c.get("steps") == 4]
    if first_round == 1:
        assert warm == [] and len(spy.calls) == 2
    else:
        (w,) = warm
        assert set(w["freeze"]) == {"0.weight", "0.bias"} and spy.calls[0] is not spy.calls[1]
        assert len(spy.calls) == 3


# --- personalised accuracy is summed up the tree ----------------------------------------------
def test_tally_takes_members_and_regional_sums():
    tally = PersonalTally()
    assert tally.record() == {}
    tally.add({"personal_accuracy": 0.5})
    tally.add({"personal_accuracy": 0.9, "personal_accuracy_min": 0.7, "personal_members": 3.0})
    tally.add({"train_loss": 1.0})  # a member that does not score: ignored
    rec = tally.record()
    assert rec["personal_members"] == 4 and rec["personal_accuracy_min"] == 0.5
    assert rec["personal_accuracy"] == pytest.approx((0.5 + 3 * 0.9) / 4)


def test_star_run_reports_personalised_next_to_global_accuracy(tmp_path):
    from fednode.sim.experiment import run_experiment

    over = {
        "rounds.rounds": 2,
        "train.local_epochs": 1,
        "personal.mode": "finetune",
        "personal.holdout": 0.25,
    }
    res = run_experiment("star10", overrides=over, out=tmp_path)
    assert res.error is None
    rows = res.table()
    assert [r["personal_members"] for r in rows] == [9, 9]
    assert all(r["personal_accuracy_min"] <= r["personal_accuracy"] for r in rows)
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["personal"]["final_accuracy"] == pytest.approx(rows[-1]["personal_accuracy"])
    assert summary["personal"]["global_final_accuracy"] == pytest.approx(res.final_accuracy)
    first = json.loads((tmp_path / "rounds.jsonl").read_text().splitlines()[0])
    assert "personal_accuracy" in first


def test_off_by_default_the_task_is_not_wrapped():
    task = digits()
    assert personalise(task, PersonalParams()) is task


# --- config errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"personal.mode": "fedrep2"}, "personal.mode"),
        ({"personal.ditto_lambda": -0.1}, "personal.ditto_lambda"),
        ({"personal.finetune_steps": 0}, "personal.finetune_steps"),
        ({"personal.holdout": 1.0}, "personal.holdout"),
        ({"personal.local_layers": "2"}, "personal.local_layers"),  # mode none
        ({"personal.mode": "finetune", "personal.warmup_steps": 3}, "personal.warmup_steps"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("task", "params", "field"),
    [
        ("digits", PersonalParams(mode="fedper", local_layers=("head",)), "personal.local_layers"),
        ("digits", PersonalParams(mode="fedbn"), "personal.mode"),  # no norm layer in mlp
        ("digits:numpy", PersonalParams(mode="ditto"), "personal.mode"),  # no prox_anchor
        ("digits:numpy", PersonalParams(mode="fedper"), "personal.local_layers"),  # all local
        ("digits:numpy", PersonalParams(holdout=0.2), "personal.holdout"),  # no hold_out
        ("digits", PersonalParams(mode="fedper", local_layers=("0", "2")), "personal.local_layers"),
    ],
)
def test_a_mode_the_task_cannot_support_fails_at_start(task, params, field):
    with pytest.raises(ConfigError) as err:
        personalise(load_task(task, client_index=1, num_clients=4), params)
    assert err.value.field == field


def test_local_layers_by_prefix_or_name():
    task = Personalised(digits(), PersonalParams(mode="fedper", local_layers=("0", "2.bias")))
    assert task.local_names == ("0.weight", "0.bias", "2.bias")


# --- feature-shift partitions -----------------------------------------------------------------
def test_feature_shift_groups_are_deterministic_and_labels_split_iid():
    labels = np.repeat(np.arange(10), 30)
    for spec in ("rotated:4", "permuted:3"):
        a = partition_indices(labels, 6, spec, seed=1)
        b = partition_indices(labels, 6, spec, seed=1)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        iid = partition_indices(labels, 6, "iid", seed=1)
        assert all(np.array_equal(x, y) for x, y in zip(a, iid))
    x = np.random.default_rng(0).random((5, 64))
    img = x.reshape(5, 8, 8)
    np.testing.assert_array_equal(shift_features(x, "rotated:4", 0), x)  # group 0: as is
    np.testing.assert_array_equal(
        shift_features(x, "rotated:4", 5), np.rot90(img, 1, (1, 2)).reshape(5, 64)
    )
    np.testing.assert_array_equal(
        shift_features(x, "rotated:4", 6), shift_features(x, "rotated:4", 2)
    )
    p1, p2 = shift_features(x, "permuted:3", 1, seed=4), shift_features(x, "permuted:3", 1, seed=4)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, x) and np.allclose(np.sort(p1, 1), np.sort(x, 1))
    assert not np.array_equal(p1, shift_features(x, "permuted:3", 2, seed=4))


@pytest.mark.parametrize("bad", ["rotated:0", "rotated:9", "permuted:0", "rotated:x"])
def test_bad_feature_shift_specs_fail(bad):
    with pytest.raises(ConfigError):
        parse_partition(bad)


def test_a_rotated_member_trains_on_rotated_images():
    plain, turned = digits(index=0, partition="rotated:2"), digits(index=1, partition="rotated:2")
    assert not np.array_equal(plain._x.numpy()[:3], turned._x.numpy()[:3])
    back = np.rot90(turned._x.numpy().reshape(-1, 8, 8), -1, (1, 2)).reshape(-1, 64)
    iid = digits(index=1, partition="iid")
    np.testing.assert_array_equal(back, iid._x.numpy())
