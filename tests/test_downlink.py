"""Delta broadcasts of the public model (``[wire] codec_down``, hierarchy/broadcast.py):
every receiver rebuilds exactly the sender's public model, a receiver without the base is
sent the full model, and a delta that does not apply is refused with a typed error."""

import dataclasses

import numpy as np
import pytest

from fednode.actions import Emit, Send
from fednode.config import load_config, replace
from fednode.errors import ConfigError, DeltaError
from fednode.factory import make_role
from fednode.hierarchy.broadcast import BASE_KEY, DIGEST_KEY, Broadcaster, PublicCopy
from fednode.hierarchy.client import Client
from fednode.sim.scenarios import build_star, build_two_tier, crash_at_round
from fednode.wire import messages as m
from fednode.wire.codecs import codec_for

N = 500
CODEC = "topk:0.1+int8"


def received(fit: m.Fit, sender: str = "coord") -> m.Fit:
    """``fit`` as a receiver's envelope hands it over: decoded vector, sender stamped."""
    vector = codec_for(fit.codec).decode(fit.payload, N)
    return dataclasses.replace(fit, vector=vector, sender=sender)


def models(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=N).astype(np.float32)
    out = [x]
    for _ in range(count - 1):
        x = (x + 0.1 * rng.normal(size=N)).astype(np.float32)
        out.append(x)
    return out


def broadcast(bc: Broadcaster, peer: str, v: int) -> m.Fit:
    return received(bc.fit_for(peer, round=v + 1, model_version=v, config={"lr": 0.1}))


def test_missed_broadcasts_end_with_the_senders_public_model_bit_for_bit():
    bc = Broadcaster(CODEC)
    always, sometimes = PublicCopy(), PublicCopy()
    for v, x in enumerate(models(8)):
        bc.advance(x, v)
        always.receive(broadcast(bc, "a", v))
        bc.acked("a", v)
        if v in (0, 1, 5, 6, 7):  # missed 2..4: gets the full model at 5, then deltas
            fit = broadcast(bc, "b", v)
            assert (BASE_KEY in fit.config) == (v in (1, 6, 7))
            sometimes.receive(fit)
            bc.acked("b", v)
    for copy in (always, sometimes):
        assert copy.version == bc.version == 7
        np.testing.assert_array_equal(copy.x, bc.x)
        assert copy.rejected == 0
    # error feedback: the public model tracks the true one (the residual stays bounded)
    assert np.linalg.norm(models(8)[-1] - bc.x) < 0.5 * np.linalg.norm(models(8)[-1])


def test_wrong_base_is_refused_and_the_copy_kept():
    bc = Broadcaster(CODEC)
    copy = PublicCopy()
    xs = models(3)
    bc.advance(xs[0], 0)
    copy.receive(broadcast(bc, "a", 0))
    bc.acked("a", 0)
    bc.advance(xs[1], 1)
    bc.acked("a", 1)  # the sender believes it holds 1; the delta 1 -> 2 reaches it
    bc.advance(xs[2], 2)
    before = copy.x.copy()
    with pytest.raises(DeltaError, match="holds 0"):
        copy.receive(broadcast(bc, "a", 2))
    assert copy.rejected == 1 and copy.version == 0
    np.testing.assert_array_equal(copy.x, before)


@pytest.mark.parametrize("tamper", ["vector", "digest"])
def test_corrupted_delta_is_refused(tamper):
    bc = Broadcaster(CODEC)
    copy = PublicCopy()
    xs = models(2)
    bc.advance(xs[0], 0)
    copy.receive(broadcast(bc, "a", 0))
    bc.acked("a", 0)
    bc.advance(xs[1], 1)
    fit = broadcast(bc, "a", 1)
    if tamper == "vector":
        vec = np.array(fit.vector)
        vec[np.flatnonzero(vec)[0]] += 1e-3
        fit = dataclasses.replace(fit, vector=vec)
    else:
        wrong = fit.config[DIGEST_KEY] ^ 1
        fit = dataclasses.replace(fit, config={**fit.config, DIGEST_KEY: wrong})
    with pytest.raises(DeltaError, match="digest"):
        copy.receive(fit)
    assert copy.rejected == 1 and copy.version == 0


def test_client_refuses_a_delta_it_cannot_apply_and_trains_on_the_full_model():
    bc = Broadcaster(CODEC)
    xs = models(2)
    bc.advance(xs[0], 0)
    bc.acked("c", 0)  # wrongly believed: the client never got version 0
    bc.advance(xs[1], 1)
    client = Client(model_size=N)
    actions = client.handle(broadcast(bc, "c", 1), 0.0)
    emit, send = actions
    assert isinstance(emit, Emit) and emit.event == "delta_rejected"
    assert emit.data["error"] == "DeltaError"
    assert isinstance(send, Send) and send.to == "coord"
    assert isinstance(send.msg, m.Reject) and send.msg.reason.startswith("no base")
    assert client.public.rejected == 1 and client.rounds_trained == 0
    bc.forget("c")  # what the coordinator does with that Reject: the full model
    full = broadcast(bc, "c", 1)
    assert BASE_KEY not in full.config and full.codec == "none"
    (job,) = client.handle(full, 1.0)
    np.testing.assert_array_equal(job.job.params, bc.x)  # trains from the public model
    assert client.public.version == 1


def test_codec_down_config_error_names_the_field():
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"wire.codec_down": "topk:2"})
    assert info.value.field == "wire.codec_down"


def config(**extra):
    base = {
        "rounds.rounds": 5,
        "rounds.min_available_clients": 6,
        "rounds.min_fit_clients": 3,
        "train.local_epochs": 1,
        "data.task": "digits:numpy",
        "wire.codec": CODEC,
        "wire.codec_down": CODEC,
    }
    return load_config(None, {**base, **extra})


def public_models(result, root):
    coordinator = root.role
    clients = [n.role for n in result.nodes if n.role.role == "client"]
    return coordinator.broadcast, clients


def test_star_client_that_crashed_and_rejoined_holds_the_coordinators_model():
    cfg = config(**{"rounds.min_available_clients": 5})
    sim, root = build_star(cfg, 6)
    size = root.role.params.size
    victim = sim.nodes[3]
    sim.fault_hooks.append(crash_at_round(2, [victim.index]))

    def rejoin(s, peer, event, data):
        if event == "round_start" and data.get("round") == 3 and peer == root.peer:
            s.restart(victim.peer, lambda: make_role(replace(cfg, role="client"), size), after_s=0)

    sim.fault_hooks.append(rejoin)
    result = sim.run(root)
    assert result.stop.error is None, result.stop
    assert [e["event"] for e in result.events if e["node"] == victim.index][-1] != "crashed"
    bc, clients = public_models(result, root)
    assert bc.enabled and bc.version == root.role.model_version - 1  # last round's model
    assert len(clients) == 6
    for client in clients:
        assert client.public.version == bc.version
        np.testing.assert_array_equal(client.public.x, bc.x)
    # the rejoined client (a fresh process) trained rounds 4 and 5: in round 4 it was sent
    # the full model (4 bytes a value), in round 5 everyone got deltas only
    assert victim.role.rounds_trained == 2
    full = 4 * size
    downs = {r["round"]: r["bytes_down"] for r in result.rounds}
    assert downs[4] > full > downs[5]
    assert downs[1] > 5 * full  # round 1: everyone the full model


def test_two_tier_clients_hold_the_coordinators_public_model():
    cfg = config(**{"rounds.min_fit_clients": 2})
    sim, root = build_two_tier(cfg, 2, 6)
    result = sim.run(root)
    assert result.stop.error is None, result.stop
    bc, clients = public_models(result, root)
    aggregators = [n.role for n in result.nodes if n.role.role == "aggregator"]
    assert len(clients) == 6 and len(aggregators) == 2
    for role in [*clients, *aggregators]:
        assert role.public.version == bc.version
        np.testing.assert_array_equal(role.public.x, bc.x)
    # the region's update up is compressed with the uplink codec too
    ups = [r["bytes_up"] for r in result.rounds]
    assert max(ups) < 2 * 0.5 * 4 * root.role.params.size


def test_coordinator_sends_deltas_to_who_answered_and_the_full_model_on_no_base():
    from fednode.actions import EvalResult
    from fednode.config import RoundParams, TrainParams
    from fednode.hierarchy.coordinator import Coordinator

    c = Coordinator(
        params=np.zeros(N, np.float32),
        rounds=RoundParams(rounds=3, min_fit_clients=2, min_available_clients=2),
        train=TrainParams(),
        codec_down=CODEC,
    )
    c.start(0.0)
    c.handle(m.Advert(sender="a", role="client"), 0.0)
    first = c.handle(m.Advert(sender="b", role="client"), 0.0)
    fits = {a.to: a.msg for a in first if isinstance(a, Send)}
    assert all(BASE_KEY not in f.config and f.codec == "none" for f in fits.values())
    rng = np.random.default_rng(1)
    for peer in ("a", "b"):
        vec = rng.normal(size=N).astype(np.float32)
        c.handle(m.Update(sender=peer, round=1, num_examples=5, vector=vec, payload=b"x"), 1.0)
    second = c.on_result(EvalResult(1, 0.5, 10, {"accuracy": 0.5}), 2.0)
    fits = {a.to: a.msg for a in second if isinstance(a, Send) and isinstance(a.msg, m.Fit)}
    assert all(f.config[BASE_KEY] == 0 and f.codec == CODEC for f in fits.values())
    assert len(fits["a"].payload) < 4 * N
    no_base = m.Reject(sender="a", round=2, model_version=1, reason="no base: lost it")
    emit, resend = c.handle(no_base, 3.0)
    assert isinstance(emit, Emit) and emit.event == "full_resent"
    assert resend.to == "a" and resend.msg.codec == "none" and BASE_KEY not in resend.msg.config
    assert resend.msg.config["public_version"] == 1
    # a second refusal of the same round is a failure, not another full model
    assert [a for a in c.handle(no_base, 4.0) if isinstance(a, Send)] == []
