"""The discrete-event driver runs the same roles as the trio engine, with the same results."""

import numpy as np
import pytest

from fednode.actions import Send, Stop
from fednode.config import load_config
from fednode.errors import ConfigError
from fednode.p2p.netmodel import ANNOUNCE_S, Link
from fednode.role import RoleDefaults
from fednode.sim.des import DesSimulation
from fednode.sim.gossip import build_gossip
from fednode.sim.scenarios import build_star, crash_at_round
from fednode.sim.topology import build_topology
from fednode.wire import messages as m

SAME_KEYS = (
    "round", "accuracy", "selected", "completed", "failed", "declined", "stragglers",
    "examples", "bytes_up", "bytes_down", "clients_completed", "model_version",
)  # fmt: skip


def star_config(rounds=2, clients=4, **extra):
    return load_config(
        None,
        {
            "rounds.rounds": rounds,
            "rounds.min_available_clients": clients,
            "rounds.min_fit_clients": 2,
            "train.local_epochs": 1,
            "data.task": "digits:numpy",
            **extra,
        },
    )


def run_des(sim, root, **kwargs):
    des = DesSimulation.from_simulation(sim, **kwargs)
    return des.run(des.nodes[root.index])


@pytest.mark.parametrize("unsigned", [False, True], ids=["signed", "unsigned"])
def test_star_rounds_match_trio_engine(unsigned):
    trio_sim, trio_root = build_star(star_config(rounds=3), 4)
    expected = trio_sim.run(trio_root)
    sim, root = build_star(star_config(rounds=3), 4)
    got = run_des(sim, root, unsigned=unsigned)
    assert len(got.rounds) == len(expected.rounds) == 3
    for a, b in zip(expected.rounds, got.rounds):
        assert {k: a[k] for k in SAME_KEYS} == {k: b[k] for k in SAME_KEYS}
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["time_s"] == pytest.approx(a["time_s"])
    assert got.virtual_s == pytest.approx(expected.virtual_s)
    assert got.stop is not None and got.stop.error is None


def test_unsigned_frames_estimate_the_signed_frames_sizes():
    sim, root = build_star(star_config(), 4)
    signed = run_des(sim, root)
    sim, root = build_star(star_config(), 4)
    fast = run_des(sim, root, unsigned=True)
    for a, b in zip(signed.nodes, fast.nodes):
        assert a.stats.sent_frames == b.stats.sent_frames
        assert b.stats.sent_bytes == pytest.approx(a.stats.sent_bytes, rel=0.01)


def test_trio_fault_hooks_work_unchanged():
    sim, root = build_star(star_config(rounds=2, clients=10), 10)
    sim.fault_hooks.append(crash_at_round(2, [1, 2, 3]))
    result = run_des(sim, root)
    second = result.rounds[1]
    assert second["completed"] == 7 and second["failed"] == 3
    assert result.virtual_s < 60  # crashes noticed at once, not at the deadline


class Pinger(RoleDefaults):
    """A minimal role: advertises to every peer it hears of, stops at its deadline."""

    role = "client"
    done = False

    def __init__(self, stop_at=None):
        self.log = []
        self.stop_at = stop_at

    def start(self, now):
        return []

    def on_peer(self, peer, up, now):
        self.log.append(("peer", up, now))
        return [Send(peer, m.Advert(role="client"))] if up else []

    def handle(self, msg, now):
        self.log.append(("msg", msg.KIND.name, now))
        return []

    def on_result(self, result, now):
        return []

    def poll(self, now):
        if self.stop_at is not None and now >= self.stop_at:
            self.log.append(("poll", now))
            return [Stop("done")]
        return []

    def next_deadline(self):
        return self.stop_at


def pair(link=None, stop_at=1.5):
    des = DesSimulation(link=link)
    a = des.add(Pinger(stop_at), _executor(), 0)
    b = des.add(Pinger(), _executor(), 0)
    return des, a, b


def _executor():
    from fednode.runner import InlineExecutor
    from fednode.training.linear import SyntheticTask

    return InlineExecutor(SyntheticTask())


def test_delivery_takes_latency_plus_bytes_over_bandwidth():
    des, a, b = pair(Link(latency_s=0.25, bandwidth_Bps=1000.0))
    des.run(a)
    size = a.stats.sent_bytes
    assert size > 100
    assert ("msg", "ADVERT", pytest.approx(0.25 + size / 1000.0)) in b.role.log


def test_deadline_polls_at_exactly_its_virtual_time_and_root_stop_ends_run():
    des, a, _b = pair()
    result = des.run(a)
    assert ("poll", 1.5) in a.role.log
    assert result.virtual_s == 1.5 and result.stop is not None


def test_partition_sends_down_events_and_sends_fail():
    des, a, b = pair()
    des.call_at(0.5, lambda now: des.partition([[a.index], [b.index]]))
    # a believes b came back and advertises to it: the send fails at once
    des.call_at(0.7, lambda now: a.loop.on_peer(b.peer, True, now))
    result = des.run(a)
    down = ("peer", False, 0.5 + ANNOUNCE_S)  # peer events come ANNOUNCE_S after the change
    assert down in a.role.log and down in b.role.log
    failed = [e for e in result.events if e["event"] == "send_failed"]
    assert failed and failed[0]["t"] == 0.7 and failed[0]["error"] == "PeerGone"


def test_crash_then_restart_runs_a_fresh_copy_of_the_role():
    des, a, b = pair()
    des.prepare_restart(b.index)
    des.call_at(0.2, lambda now: des.crash(b.peer))
    des.call_at(0.4, lambda now: des.restart(b.peer))
    des.run(a)
    up, down = 0.4 + ANNOUNCE_S, 0.2 + ANNOUNCE_S  # peer events: ANNOUNCE_S after the change
    assert ("peer", False, down) in a.role.log and ("peer", True, up) in a.role.log
    assert b.role.log == [("peer", True, up), ("msg", "ADVERT", up)]  # the old log is gone
    assert b.epoch == 2


def test_restart_without_a_kept_copy_is_a_config_error():
    des, a, b = pair()
    des.call_at(0.2, lambda now: des.crash(b.peer))
    des.call_at(0.4, lambda now: des.restart(b.peer))
    with pytest.raises(ConfigError, match="restart"):
        des.run(a)


def test_lazy_batched_training_gives_the_same_models_as_eager():
    config = load_config(None, {"data.task": "synthetic", "rounds.rounds": 3})
    graph = build_topology("gossip", "cycle_graph", 12).graph
    models = []
    for lazy in (True, False):
        sim, _nodes = build_gossip(config, graph)
        des = DesSimulation.from_simulation(sim, hooks=False, lazy_compute=lazy)
        des.run()
        models.append(np.stack([n.role.params for n in des.nodes]))
    np.testing.assert_allclose(models[0], models[1], rtol=1e-6, atol=1e-7)


def test_run_without_root_ends_when_every_peer_stopped():
    config = load_config(None, {"data.task": "synthetic", "rounds.rounds": 2})
    sim, _nodes = build_gossip(config, build_topology("gossip", "cycle_graph", 8).graph)
    des = DesSimulation.from_simulation(sim, hooks=False)
    result = des.run()
    assert all(n.stop is not None and n.role.completed == 2 for n in des.nodes)
    assert result.network.sent_frames > 0


def test_non_inline_executor_is_refused():
    class Threads:
        async def run(self, job):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ConfigError, match="InlineExecutor"):
        DesSimulation().add(Pinger(), Threads(), 0)  # type: ignore[arg-type]


def test_events_at_one_instant_run_in_the_order_they_were_scheduled():
    """FIFO ties, also for events scheduled while their instant runs; windows stop short."""
    des = DesSimulation()
    seen = []

    def event(label, then=None):
        def fn(now):
            seen.append((label, now))
            if then is not None:
                des.call_at(now, then)

        return fn

    des.call_at(1.0, event("a", then=event("c")))
    des.call_at(0.5, event("first"))
    des.call_at(1.0, event("b"))
    des.call_at(2.0, event("late"))
    assert des.next_time == 0.5
    assert des.run_window(1.0) == 1.0  # [.., 1.0): the events at 1.0 wait
    assert seen == [("first", 0.5)]
    assert des.run_window(2.0) == 2.0
    assert seen == [("first", 0.5), ("a", 1.0), ("b", 1.0), ("c", 1.0)]
    des.run_window(3.0)
    assert seen[-1] == ("late", 2.0)
    assert des.next_time == float("inf")
