"""FedBuff (buffered async aggregation) and server optimisers: pure, then in the simulator."""

import math

import numpy as np
import pytest

from fednode.actions import Compute, Emit, EvalResult, Send, Stop
from fednode.config import RoundParams, ServerParams, TrainParams, load_config
from fednode.errors import RemoteProtocolError
from fednode.hierarchy.fedbuff import AsyncCoordinator, staleness_weight
from fednode.sim.scenarios import build_star, run_star
from fednode.training.server_opt import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    make_server_optimizer,
)
from fednode.wire import messages as m

SIZE = 3


def make(buffer_size=2, concurrency=0, max_staleness=5, rounds=3):
    return AsyncCoordinator(
        params=np.zeros(SIZE, np.float32),
        rounds=RoundParams(
            rounds=rounds, min_fit_clients=1, min_available_clients=3, round_deadline_s=10.0
        ),
        train=TrainParams(),
        server=ServerParams(
            mode="async",
            buffer_size=buffer_size,
            concurrency=concurrency,
            max_staleness=max_staleness,
        ),
    )


def advert(peer):
    return m.Advert(sender=peer, recipient="C", role="client")


def fits(actions):
    return {a.to: a.msg for a in actions if isinstance(a, Send) and isinstance(a.msg, m.Fit)}


def update(peer, version, delta, n=10):
    return m.Update(
        sender=peer,
        recipient="C",
        model_version=version,
        num_examples=n,
        vector=np.full(SIZE, delta, np.float32),
        payload=b"x",
    )


def test_staleness_weight_is_fedbuffs_inverse_square_root():
    assert staleness_weight(0) == 1.0 and staleness_weight(3) == pytest.approx(0.5)


def test_every_k_arrivals_make_one_staleness_weighted_step():
    c = make(buffer_size=2)
    c.handle(advert("a"), 0.0)
    c.handle(advert("b"), 0.0)
    sent = fits(c.handle(advert("c"), 0.0))
    assert set(sent) == {"a", "b", "c"} and all(f.model_version == 0 for f in sent.values())
    again = fits(c.handle(update("a", 0, 1.0), 1.0))
    assert set(again) == {"a"}  # a answered: it gets the current model at once
    actions = c.handle(update("b", 0, 3.0), 2.0)
    assert any(isinstance(a, Compute) for a in actions) and c.model_version == 1
    np.testing.assert_allclose(c.params, 2.0)  # no staleness yet: plain FedAvg of a, b
    assert fits(actions)["b"].model_version == 1
    # c trained on version 0, a on version 0 (re-sent before the step): both 1 step stale
    c.handle(update("c", 0, 4.0, n=10), 3.0)
    c.handle(update("a", 0, 2.0, n=30), 3.0)
    s = staleness_weight(1)
    expected = 2.0 + (10 * s * 4.0 + 30 * s * 2.0) / 40
    np.testing.assert_allclose(c.params, expected, rtol=1e-6)
    assert math.isclose(s, 1 / math.sqrt(2))


def test_updates_beyond_max_staleness_are_dropped():
    c = make(buffer_size=1, max_staleness=0)
    for p in "abc":
        c.handle(advert(p), 0.0)
    c.handle(update("a", 0, 1.0), 1.0)  # step: version 1
    before = c.params.copy()
    c.handle(update("b", 0, 100.0), 1.0)  # trained on version 0: tau 1 > 0
    np.testing.assert_array_equal(c.params, before)
    assert c.buffer.dropped == 1 and "b" in c.in_flight  # b got the new model


def test_silent_child_times_out_and_is_replaced():
    c = make(concurrency=2)
    for p in "abc":
        c.handle(advert(p), 0.0)
    assert len(c.in_flight) == 2 and c.next_deadline() == 10.0
    assert c.poll(9.9) == []
    actions = c.poll(10.0)
    assert c.buffer.failed == 2 and len(fits(actions)) == 2
    assert all(f.deadline == 20.0 for f in c.in_flight.values())


def test_stops_after_the_last_evaluated_step():
    c = make(buffer_size=1, rounds=1)
    for p in "abc":
        c.handle(advert(p), 0.0)
    c.handle(update("a", 0, 1.0), 1.0)
    assert c.handle(update("b", 0, 1.0), 1.0) == []  # no more steps after the last one
    actions = c.on_result(EvalResult(1, 0.3, 10, {"accuracy": 0.7}), 1.0)
    (record,) = [a.data for a in actions if isinstance(a, Emit) and a.event == "round"]
    assert record["completed"] == 1 and record["time_s"] == 1.0
    assert any(isinstance(a, Stop) for a in actions) and c.done


def test_async_unexpected_message_names_role_state_and_kind():
    with pytest.raises(RemoteProtocolError, match=r"async coordinator in state waiting .*FIT"):
        make().handle(m.Fit(sender="x", recipient="C"), 0.0)


@pytest.mark.slow
def test_async_beats_sync_in_virtual_time_with_slow_clients():
    """20% of the clients are 10x slower: sync waits for them every round, FedBuff doesn't."""
    times = {}
    for mode in ("sync", "async"):
        cfg = load_config(
            None,
            {
                "rounds.rounds": 40,
                "rounds.target_accuracy": 0.9,
                "server.mode": mode,
                "server.buffer_size": 5,
                "rounds.min_available_clients": 10,
                "rounds.min_fit_clients": 5,
            },
        )
        sim, root = build_star(cfg, 10, slow={0: 10.0, 1: 10.0})
        result = sim.run(root)
        hit = next(r for r in result.rounds if r["accuracy"] >= 0.9)
        times[mode] = hit["time_s"]
    # measured: sync 21.6 s, async 2.9 s of virtual time to 90% (docs/HIERARCHY.md)
    assert times["async"] < 0.5 * times["sync"], times


# --- server optimisers (Reddi et al. 2021) ----------------------------------------------


def test_fedavg_and_fedavgm_follow_their_formulas():
    x, d = np.zeros(2, np.float32), np.array([1.0, -2.0], np.float32)
    np.testing.assert_allclose(FedAvg(lr=0.5)(x, d), [0.5, -1.0])
    opt = FedAvgM(lr=1.0, momentum=0.5)
    x1 = opt(x, d)
    x2 = opt(x1, d)  # m = 0.5 d + d
    np.testing.assert_allclose(x2 - x1, 1.5 * d)


def test_fedadam_and_fedyogi_follow_their_formulas():
    x, d = np.zeros(2, np.float32), np.array([1.0, -2.0], np.float32)
    adam = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    m1 = 0.1 * d
    v1 = 0.99 * 1e-6 + 0.01 * d**2
    np.testing.assert_allclose(adam(x, d), 0.1 * m1 / (np.sqrt(v1) + 1e-3), rtol=1e-5)
    yogi = FedYogi(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    vy = 1e-6 - 0.01 * d**2 * np.sign(1e-6 - d**2)
    np.testing.assert_allclose(yogi(x, d), 0.1 * m1 / (np.sqrt(vy) + 1e-3), rtol=1e-5)


def test_optimiser_state_round_trips():
    a = FedAdam()
    x = a(np.zeros(3, np.float32), np.ones(3, np.float32))
    b = make_server_optimizer("fedadam")
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x, np.ones(3, np.float32)), b(x, np.ones(3, np.float32)))
    assert b.steps == 2


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_server_optimisers_learn_in_the_simulator(name):
    cfg = load_config(
        None,
        {
            "rounds.rounds": 5,
            "rounds.min_available_clients": 10,
            "rounds.min_fit_clients": 5,
            "server.optimizer": name,
        },
    )
    result = run_star(cfg, 10)
    assert result.stop.error is None and result.final_accuracy > 0.85
