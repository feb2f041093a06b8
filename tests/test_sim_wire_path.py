"""A simulated node guards its inbox exactly as a real node: every frame is signed and
verified by default, and a forged or tampered frame is rejected, counted and changes
nothing — in both drivers, through the one NodeLoop."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from fednode.config import load_config
from fednode.crypto.envelope import Receiver, Sealer
from fednode.crypto.identity import Identity
from fednode.crypto.unsigned import UnsignedReceiver, UnsignedSealer
from fednode.sim.des import DesSimulation
from fednode.sim.engine import SIM_EPOCH
from fednode.sim.scenarios import build_star
from fednode.wire import messages as m
from fednode.wire.frames import Frame, Inbound

INTRUDER = Identity.from_seed(bytes(range(32)))
ROUND_KEYS = ("round", "accuracy", "selected", "completed", "failed", "bytes_up", "bytes_down")


def config():
    return load_config(
        None,
        {
            "rounds.rounds": 3,
            "rounds.min_available_clients": 4,
            "rounds.min_fit_clients": 2,
            "train.local_epochs": 1,
            "data.task": "digits:numpy",
        },
    )


def forged_update(size: int, victim: Identity, coordinator: str) -> tuple[Inbound, Inbound]:
    """Two attacks on the coordinator during a round: an update signed by an intruder but
    delivered as if from ``victim`` (impersonation), and the victim's own header with a
    payload swapped after signing (tampering). Both carry a poisoned x1e6 model."""
    poison = np.full(size, 1e6, dtype=np.float32)
    update = m.Update(round=2, model_version=1, num_examples=700, vector=poison)
    clock = lambda: SIM_EPOCH  # noqa: E731
    impostor = Sealer(INTRUDER, clock=clock).seal(update, coordinator)
    genuine = Sealer(victim, clock=clock).seal(update, coordinator)
    swapped = Frame(genuine.head, bytes(len(bytes(genuine.payload))))
    return Inbound(victim.peer_id, impostor), Inbound(victim.peer_id, swapped)


def attack_hook(records: list[str]) -> Any:
    """Fault hook: when round 2 starts, put both forged frames into the coordinator's
    receive path (what a transport would hand a real node)."""

    def hook(sim: Any, peer: str, event: str, data: dict[str, Any]) -> None:
        if event != "round_start" or data.get("round") != 2 or records:
            return
        coordinator, victim = sim.nodes[0], sim.nodes[1]
        records.append("fired")
        for inbound in forged_update(coordinator.model_size, victim.identity, coordinator.peer):
            coordinator.loop.on_frame(inbound, 0.0)

    return hook


def rounds_of(result: Any) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ROUND_KEYS} for r in result.rounds]


@pytest.mark.parametrize("driver", ["des", "trio"])
def test_forged_and_tampered_frames_are_rejected_counted_and_change_nothing(driver):
    clean_sim, clean_root = build_star(config(), 4)
    attacked_sim, attacked_root = build_star(config(), 4)
    fired: list[str] = []
    attacked_sim.fault_hooks.append(attack_hook(fired))
    if driver == "des":
        clean_des = DesSimulation.from_simulation(clean_sim)
        clean = clean_des.run(clean_des.nodes[0])
        des = DesSimulation.from_simulation(attacked_sim)
        attacked = des.run(des.nodes[0])
        coordinator = des.nodes[0]
    else:
        clean = clean_sim.run(clean_root)
        attacked = attacked_sim.run(attacked_root)
        coordinator = attacked_sim.nodes[0]

    assert fired == ["fired"]
    assert isinstance(coordinator.loop.receiver, Receiver)  # the default: the real one
    assert dict(coordinator.stats.rejected) == {"AuthError": 1, "PayloadError": 1}
    rejected = [e for e in attacked.events if e["event"] == "rejected"]
    assert [(e["node"], e["error"]) for e in rejected] == [(0, "AuthError"), (0, "PayloadError")]
    assert rounds_of(attacked) == rounds_of(clean)  # the poisoned model never got in


def test_unsigned_mode_still_checks_shape_finiteness_and_the_claimed_sender():
    size = 8
    me, peer = "me", INTRUDER.peer_id
    sealer = UnsignedSealer(peer, lambda: SIM_EPOCH, size)
    from fednode.crypto.envelope import Membership

    receiver = UnsignedReceiver(me, Membership(open=True), model_size=size)
    good = sealer.seal(m.Update(round=1, vector=np.ones(size, np.float32)), me)
    assert receiver.open(Inbound(peer, good)).vector.tolist() == [1.0] * size

    from fednode.errors import AuthError, PayloadError

    with pytest.raises(AuthError, match="claims sender"):
        receiver.open(Inbound("someone-else", good))
    wrong_shape = UnsignedSealer(peer, lambda: SIM_EPOCH, size + 1).seal(
        m.Update(round=1, vector=np.ones(size + 1, np.float32)), me
    )
    with pytest.raises(PayloadError, match="expected 8 values"):
        receiver.open(Inbound(peer, wrong_shape))
    nan = dataclasses.replace(good.msg, payload=_raw(np.full(size, np.nan, np.float32)))
    with pytest.raises(PayloadError, match="finite"):
        receiver.open(Inbound(peer, sealer.seal(nan, me)))
    with pytest.raises(AuthError, match="delivered to"):
        UnsignedReceiver("other", Membership(open=True), model_size=size).open(Inbound(peer, good))


def _raw(vec: np.ndarray) -> bytes:
    """A ``none``-codec payload written by hand (the codec itself refuses NaN)."""
    from fednode.wire.codecs import RawCodec

    head = bytes(RawCodec().encode(np.zeros(vec.size, np.float32)))[:8]
    return head + vec.astype("<f4").tobytes()
