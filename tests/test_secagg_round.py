"""Secure aggregation in the star round (hierarchy/secure_root.py, secure_client.py) on the
one node loop, under both simulator drivers: the same models as plain FedAvg within the
fixed-point error, dropouts between stages, forged and garbled stage messages, and what
the coordinator holds."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from fednode.actions import Send
from fednode.config import load_config
from fednode.crypto.secagg_messages import MaskedInput
from fednode.sim.des import DesSimulation
from fednode.sim.scenarios import build_star
from fednode.wire import messages as m

BASE = {"data.task": "digits:numpy", "train.local_epochs": 1, "seed": 1}
FRAC_BITS = 20  # the [secagg] default the tolerance below is derived from


def _config(secagg: bool, clients: int, rounds: int = 3, **extra: Any):
    """Rounds start once every client is there (all are selected)."""
    over = {"rounds.rounds": rounds, "rounds.min_available_clients": clients}
    return load_config(None, {**BASE, **over, "secagg.enabled": secagg, **extra})


def _run(cfg, clients: int, driver: str, hook=None, prepare=None):
    """Run a star; returns (per-round coordinator params, round records, events, root node)."""
    sim, _ = build_star(cfg, clients)
    if prepare is not None:
        prepare(sim)
    snaps: list[np.ndarray] = []
    events: list[tuple[str, str, dict]] = []
    engine: Any = DesSimulation.from_simulation(sim) if driver == "des" else sim
    root_node = engine.nodes[0]

    def listen(peer: str, event: str, data: dict) -> None:
        events.append((peer, event, data))
        if event == "round" and peer == root_node.peer:
            snaps.append(np.array(root_node.role.params))

    engine.listeners.append(listen)
    if hook is not None:
        engine.fault_hooks.append(hook)
    res = engine.run(root_node)
    assert res.stop is not None and res.stop.error is None, res.stop
    return snaps, root_node.role.history, events, root_node


@pytest.mark.parametrize("driver", ["des", "trio"])
def test_secure_rounds_give_plain_fedavg_models_within_the_fixed_point_error(driver):
    clients = 5
    secure, sec_hist, events, root = _run(_config(True, clients), clients, driver)
    plain, plain_hist, _, _ = _run(_config(False, clients), clients, driver)
    assert len(secure) == len(plain) == 3
    assert [r["completed"] for r in sec_hist] == [clients] * 3
    assert [r["examples"] for r in sec_hist] == [r["examples"] for r in plain_hist]
    for r, (a, b, rec) in enumerate(zip(secure, plain, sec_hist, strict=True), start=1):
        # each member rounds n_k * delta to 2**-f (error <= quantum / 2); the sum of s of
        # them, divided by W examples, is off by at most s * quantum / (2 W); the float32
        # mean and the float32 server step round once each (one ulp of the model each);
        # what a round's training does with the previous round's error is not bounded
        # here: the bound grows with the round number
        fixed = clients * 2.0**-FRAC_BITS / (2 * rec["examples"])
        ulp = float(np.spacing(np.float32(max(np.abs(a).max(), np.abs(b).max()))))
        tol = r * (fixed + 2 * ulp)
        assert float(np.abs(a - b).max()) <= tol
        assert rec["accuracy"] == plain_hist[r - 1]["accuracy"]
    kinds = Counter(e for p, e, _ in events if p == root.peer)
    assert kinds["secagg_round"] == 3 and kinds["secagg_stage"] == 12
    assert sec_hist[0]["bytes_up"] > plain_hist[0]["bytes_up"]  # keys, shares, masks


def _crash_at_stage(stage: str, victims: list[int], crashed: list[str], round_no: int = 1):
    """A fault hook: crash clients (node indices) when the coordinator closes ``stage``
    (their peer ids go to ``crashed``)."""

    def hook(sim: Any, peer: str, event: str, data: dict) -> None:
        closing = event == "secagg_stage" and data["stage"] == stage
        if closing and data["round"] == round_no and not crashed:
            for v in victims:
                crashed.append(sim.nodes[v].peer)
                sim.crash(sim.nodes[v].peer)

    return hook


def _record_inputs(sim: Any, inputs: dict[str, dict[int, np.ndarray]]) -> None:
    """Wrap every member's SecureMember.trained to keep its input vector per round."""
    for node in sim.nodes[1:]:
        member = node.role.secure
        real = member.trained

        def trained(to, fit, delta, n, loss, _real=real, _m=member, _peer=node.peer):
            out = _real(to, fit, delta, n, loss)
            inputs.setdefault(_peer, {})[fit.round] = _m.ready[2].copy()
            return out

        member.trained = trained


@pytest.mark.parametrize("driver", ["des", "trio"])
@pytest.mark.parametrize("stage", ["share", "masked"])
def test_members_dropping_between_stages_leave_the_survivors_exact_mean(driver, stage):
    """Crashed when the coordinator closes ``share`` (they shared keys, send no masked
    input: their pairwise masks are rebuilt from their shares) or ``masked`` (they sent
    their masked input, never answer the unmask request: the others' shares suffice)."""
    cfg = _config(True, 6, rounds=1, **{"secagg.threshold": 3, "secagg.stage_timeout_s": 5.0})
    inputs: dict[str, dict[int, np.ndarray]] = {}
    start: dict[str, np.ndarray] = {}

    def prepare(sim):
        _record_inputs(sim, inputs)
        start["params"] = np.array(sim.nodes[0].role.params)

    crashed: list[str] = []
    _, hist, events, root = _run(
        cfg, 6, driver, hook=_crash_at_stage(stage, [1, 2], crashed), prepare=prepare
    )
    (rec,) = hist
    done = [d for p, e, d in events if e == "secagg_round"]
    assert len(done) == 1
    if stage == "share":
        assert (rec["completed"], rec["failed"]) == (4, 2)
        assert done[0]["dropped"] == 2
        survivors = sorted(set(inputs) - set(crashed))
    else:  # their masked inputs are in the sum
        assert rec["completed"] == 6
        survivors = sorted(inputs)
    dim = start["params"].shape[0]
    total = sum(inputs[p][1] for p in survivors)
    expected = start["params"] + (total[:dim] / total[dim]).astype(np.float32)
    err = len(survivors) * 2.0**-FRAC_BITS / (2 * total[dim])
    ulp = float(np.spacing(np.float32(np.abs(expected).max())))
    assert float(np.abs(root.role.params - expected).max()) <= err + 2 * ulp


@pytest.mark.parametrize("driver", ["des", "trio"])
def test_fewer_than_t_members_left_skips_the_round_with_an_event_not_a_crash(driver):
    cfg = _config(True, 5, rounds=1, **{"secagg.threshold": 3, "secagg.stage_timeout_s": 5.0})
    start: dict[str, np.ndarray] = {}
    crashed: list[str] = []

    def prepare(sim):
        start["params"] = np.array(sim.nodes[0].role.params)

    _, hist, events, root = _run(
        cfg, 5, driver, hook=_crash_at_stage("advertise", [1, 2, 3], crashed), prepare=prepare
    )
    assert hist == []  # no round released a model
    (aborted,) = [d for p, e, d in events if e == "secagg_aborted"]
    assert aborted["round"] == 1 and "2 members shared keys, need 3" in aborted["reason"]
    (failed,) = [d for p, e, d in events if e == "round_failed"]
    assert failed["secagg"] is True
    np.testing.assert_array_equal(root.role.params, start["params"])  # model unchanged
    assert not any(e == "secagg_round" for _, e, _ in events)


@pytest.mark.parametrize("driver", ["des", "trio"])
def test_a_topology_crash_spec_drops_a_member_and_the_secure_rounds_go_on(driver):
    from fednode.sim import SimOptions, build_topology, run_experiment

    faults = [{"type": "crash", "node": 2, "round": 2, "restart_round": 4}]
    topo = build_topology("star", "star", 6, faults=faults, links={"latency_s": 0.005})
    over = {**BASE, "rounds.rounds": 5}
    opts = SimOptions(driver=driver)
    sec = run_experiment(topo, overrides={**over, "secagg.enabled": True}, options=opts)
    plain = run_experiment(topo, overrides=over, options=opts)
    assert sec.error is None and plain.error is None
    assert [r["completed"] for r in sec.records] == [r["completed"] for r in plain.records]
    assert min(r["completed"] for r in sec.records) == 4  # the crashed member's rounds
    np.testing.assert_allclose(sec.accuracy, plain.accuracy, atol=1 / 360)  # <= 1 test image


def _tamper(node, stage: str, how: str) -> list[int]:
    """Make one member send a broken ``stage`` message once; returns the list that gets
    one entry per tampered send."""
    member = node.role.secure
    real = member.handle
    done: list[int] = []

    def handle(msg, parent):
        out = real(msg, parent)
        fixed = []
        for action in out:
            sent = action.msg if isinstance(action, Send) else None
            if isinstance(sent, m.SecAgg) and sent.stage == stage and not done:
                done.append(1)
                payload = _broken(sent.payload, how)
                action = Send(action.to, m.SecAgg(round=sent.round, stage=stage, payload=payload))
            fixed.append(action)
        return fixed

    member.handle = handle
    return done


def _broken(payload: bytes, how: str) -> bytes:
    from fednode.crypto import secagg_wire

    if how == "garbled":
        return b"\xff\x00" + payload[2:]
    body = secagg_wire.decode("masked", payload)
    assert isinstance(body, MaskedInput)
    if how == "forged":  # one byte of the masked vector changed: the signature fails
        data = bytes([body.data[0] ^ 1]) + body.data[1:]
        return secagg_wire.encode(MaskedInput(body.round, body.sender, data, body.signature))[1]
    # "impostor": names another member as its sender
    return secagg_wire.encode(
        MaskedInput(body.round, body.sender[:-1] + "x", body.data, body.signature)
    )[1]


@pytest.mark.parametrize("driver", ["des", "trio"])
@pytest.mark.parametrize(
    ("how", "error"),
    [("garbled", "SchemaError"), ("forged", "AuthError"), ("impostor", "AuthError")],
)
def test_a_broken_masked_input_is_rejected_counted_and_the_round_completes(driver, how, error):
    cfg = _config(True, 5, rounds=1, **{"secagg.stage_timeout_s": 5.0})
    tampered: list[list[int]] = []

    def prepare(sim):
        tampered.append(_tamper(sim.nodes[3], "masked", how))

    _, hist, events, root = _run(cfg, 5, driver, prepare=prepare)
    (rec,) = hist
    assert tampered[0] == [1]  # one broken message was sent
    assert root.stats.rejected[error] == 1
    rejected = [d for p, e, d in events if e == "rejected" and p == root.peer]
    assert [d["error"] for d in rejected] == [error]
    # the tampering member's masked input never counted: it is dropped, the others' sum
    # is released (its pairwise masks were rebuilt from its shares)
    assert (rec["completed"], rec["failed"]) == (4, 1)
    (done,) = [d for p, e, d in events if e == "secagg_round"]
    assert done["dropped"] == 1


def test_the_coordinator_holds_only_masked_inputs_and_one_mean_per_round():
    """What the coordinator stores: the server's running sum of masked inputs (never equal
    to a member's encoded input, nor the plain sum of them until the masks are removed)
    and, per round, one aggregator input: the survivors' mean with their example total."""
    clients = 4
    cfg = _config(True, clients, rounds=2)
    inputs: dict[str, dict[int, np.ndarray]] = {}
    added: list[tuple[np.ndarray, float, str]] = []
    seen: list[np.ndarray] = []

    def prepare(sim):
        _record_inputs(sim, inputs)
        role = sim.nodes[0].role
        real_add = role.aggregator.add

        def add(vec, weight, peer):
            added.append((np.array(vec), weight, peer))
            return real_add(vec, weight, peer)

        role.aggregator.add = add

    def hook(sim, peer, event, data):
        if event == "secagg_stage" and data["stage"] == "masked":
            server = sim.nodes[0].role.server
            held = [v for v in vars(server).values() if isinstance(v, np.ndarray)]
            seen.extend(np.array(v) for v in held)

    _, hist, _, root = _run(cfg, clients, "des", hook=hook, prepare=prepare)
    assert len(hist) == 2
    assert [(w, p) for _, w, p in added] == [(float(r["examples"]), "secagg") for r in hist]
    enc = _encoding(root, clients)
    for rnd in (1, 2):
        encoded = [enc.encode(inputs[p][rnd])[0] for p in inputs]
        plain_sum = sum(encoded) & enc.mask
        held = [v for v in seen if v.shape == encoded[0].shape]
        assert held, "the server keeps its sum as a vector of the input's shape"
        for v in held:
            assert not any(np.array_equal(v, e) for e in encoded)
            assert not np.array_equal(v, plain_sum)
    for vec, _, _ in added:
        for per_round in inputs.values():
            for x in per_round.values():  # no aggregator input is one member's update
                assert not np.allclose(vec, x[: vec.shape[0]] / x[vec.shape[0]])


def _encoding(root, n):
    from fednode.crypto.fixedpoint import FixedPoint

    sa = root.role.secagg
    return FixedPoint(n, sa.clip, sa.frac_bits)


def test_norm_bound_runs_at_the_members_and_gives_the_plain_norm_bound_models():
    """``norm_bound:<c>+fedavg`` under secure aggregation: each member clips its delta
    before weighting it, as the plain coordinator clips each update it receives."""
    clients, rule = 4, {"aggregation.rule": "norm_bound:0.05+fedavg"}
    secure, sec_hist, _, _ = _run(_config(True, clients, **rule), clients, "des")
    plain, plain_hist, _, _ = _run(_config(False, clients, **rule), clients, "des")
    unclipped, _, _, _ = _run(_config(False, clients), clients, "des")
    assert plain_hist[0]["agg_clipped"] == clients  # the bound binds: every update clipped
    for r, (a, b, rec) in enumerate(zip(secure, plain, sec_hist, strict=True), start=1):
        fixed = clients * 2.0**-FRAC_BITS / (2 * rec["examples"])
        ulp = float(np.spacing(np.float32(max(np.abs(a).max(), np.abs(b).max()))))
        assert float(np.abs(a - b).max()) <= r * (fixed + 2 * ulp)
    assert float(np.abs(secure[0] - unclipped[0]).max()) > 1e-3
