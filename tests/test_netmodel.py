"""The network model both simulator drivers share (fednode.p2p.netmodel): pure, no trio."""

import os
import subprocess
import sys

import pytest

from fednode.p2p.netmodel import Link, NetworkModel, link_key, loss_draw


def joined(*keys, **kwargs):
    model = NetworkModel(**kwargs)
    for k in keys:
        model.join(k)
    return model


def test_delay_is_latency_plus_bytes_over_bandwidth_and_unlimited_without_bandwidth():
    assert Link(latency_s=0.25, bandwidth_Bps=1000.0).transfer_time(500) == 0.75
    assert Link(latency_s=0.25).transfer_time(10**9) == 0.25


def test_a_pair_link_overrides_the_default_one_way_or_both():
    model = joined("a", "b", "c", default=Link(latency_s=1.0))
    model.set_link("a", "b", Link(latency_s=0.1))
    model.set_link("a", "c", Link(latency_s=0.2), both_ways=False)
    assert model.delay("b", "a", 0) == 0.1
    assert model.delay("a", "c", 0) == 0.2 and model.delay("c", "a", 0) == 1.0


def test_join_announces_each_reachable_pair_both_ways_in_join_order():
    model = joined("a", "b")
    assert model.join("c") == [
        ("a", "c", True),
        ("c", "a", True),
        ("b", "c", True),
        ("c", "b", True),
    ]
    assert model.join("c") == []  # already up


def test_crash_announces_to_the_reachable_and_cuts_reachability():
    model = joined("a", "b", "c")
    assert model.crash("b") == [("a", "b", False), ("c", "b", False)]
    assert not model.reachable("a", "b") and not model.reachable("b", "a")
    assert model.crash("b") == []
    assert model.join("b") == [
        ("a", "b", True),
        ("b", "a", True),
        ("c", "b", True),
        ("b", "c", True),
    ]


def test_partition_and_heal_announce_only_pairs_that_change():
    model = joined("a", "b", "c", "d")
    events = model.partition([["a", "b"]])  # c, d: group 0
    assert sorted(events) == sorted(
        (x, y, False) for x in "abcd" for y in "abcd" if (x in "ab") != (y in "ab")
    )
    assert model.reachable("a", "b") and model.reachable("c", "d") and not model.reachable("a", "c")
    assert sorted(model.heal()) == sorted((x, y, True) for x, y, _ in events)


def test_a_crashed_node_hears_nothing_of_a_partition_and_is_not_announced():
    model = joined("a", "b", "c")
    model.crash("c")
    assert model.partition([["a"], ["b", "c"]]) == [("a", "b", False), ("b", "a", False)]


def test_visible_limits_who_hears_of_whom():
    model = NetworkModel(visible={0: [1], 1: [0, 2], 2: [1]}.__getitem__)
    for k in (0, 1, 2):
        model.add(k)
    assert model.join(1) == []  # nobody up yet
    assert model.join(0) == [(1, 0, True), (0, 1, True)]
    assert model.join(2) == [(1, 2, True), (2, 1, True)]  # 0 does not see 2
    assert model.crash(1) == [(0, 1, False), (2, 1, False)]
    assert model.reachable(0, 2)  # visibility is about events, not reachability


def lost(model, a, b, n):
    return [model.transfer(a, b, 10) is None for _ in range(n)]


def test_loss_is_a_counter_based_draw_per_link_whatever_other_links_send():
    """The n-th lossy frame of a link is lost or not whatever the other links sent in
    between: the drivers order same-instant sends of different nodes differently."""
    alone = joined("a", "b", "c", seed=7)
    alone.set_link("a", "b", Link(loss=0.5))
    expected = lost(alone, "a", "b", 40)
    assert 5 < sum(expected) < 35  # a real draw: some frames lost, some not
    assert expected == [loss_draw(link_key(7, "a", "b"), n) < 0.5 for n in range(40)]

    mixed = joined("a", "b", "c", seed=7)
    mixed.set_link("a", "b", Link(loss=0.5))
    mixed.set_link("c", "b", Link(loss=0.5))
    outcomes = []
    for _ in range(40):
        lost(mixed, "c", "b", 3)  # another lossy link sends in between
        outcomes.append(mixed.transfer("a", "b", 10) is None)
        assert mixed.transfer("a", "c", 10) == 0.0  # loss-free: no draw, no count
    assert outcomes == expected
    stats = mixed.stats
    assert (stats.sent_frames, stats.sent_bytes) == (40 * 5, 40 * 5 * 10)
    assert stats.dropped_frames == sum(expected) + sum(
        loss_draw(link_key(7, "c", "b"), n) < 0.5 for n in range(120)
    )


def test_the_draw_depends_on_the_seed_the_direction_and_the_names():
    def run(seed, a, b):
        model = joined(a, b, seed=seed)
        model.set_link(a, b, Link(loss=0.5))
        return lost(model, a, b, 64)

    base = run(7, "a", "b")
    assert run(7, "a", "b") == base
    assert run(8, "a", "b") != base
    assert run(7, "b", "a") != base
    assert run(7, "a", "x") != base


def test_named_keys_draw_as_their_names():
    """The discrete-event driver keys nodes by index and names them by peer id: it then
    draws what the memory transport, keyed by peer id, draws."""
    by_id = joined("pa", "pb", seed=3)
    by_id.set_link("pa", "pb", Link(loss=0.3))
    by_index = joined(0, 1, seed=3, name=["pa", "pb"].__getitem__)
    by_index.set_link(0, 1, Link(loss=0.3))
    assert lost(by_index, 0, 1, 64) == lost(by_id, "pa", "pb", 64)


def test_the_draw_is_the_same_in_another_process():
    code = (
        "from fednode.p2p.netmodel import loss_draw, link_key;"
        "print([round(loss_draw(link_key(5, 'a', 'b'), n), 12) for n in range(8)])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.strip() == str([round(loss_draw(link_key(5, "a", "b"), n), 12) for n in range(8)])


def test_the_loss_rate_is_the_link_rate():
    model = joined("a", "b", seed=1)
    model.set_link("a", "b", Link(loss=0.3))
    rate = sum(lost(model, "a", "b", 4000)) / 4000
    assert 0.27 < rate < 0.33


def test_extra_loss_combines_independently_with_the_link_loss():
    model = joined("a", "b", seed=3)
    model.set_link("a", "b", Link(loss=0.5))
    model.extra_loss = 0.5
    key = link_key(3, "a", "b")
    assert lost(model, "a", "b", 50) == [loss_draw(key, n) < 0.75 for n in range(50)]


def test_frames_due_at_the_instant_of_a_change_see_the_network_of_its_start():
    now = [1.0]
    model = joined("a", "b", clock=lambda: now[0])
    now[0] = 2.0
    model.partition([["a"], ["b"]])
    assert not model.reachable("a", "b")
    assert model.arrives("a", "b", 2.0)  # due at the instant of the split: delivered
    assert not model.arrives("a", "b", 2.5)
    model.heal()  # a second change at the same instant: still the instant's start
    assert model.arrives("a", "b", 2.0) and model.reachable("a", "b")
    now[0] = 3.0
    model.crash("b")
    assert model.arrives("a", "b", 3.0) and not model.arrives("a", "b", 3.5)
    assert not joined("a", "b").arrives("a", "c", 0.0)  # without a clock: as reachable


def test_a_delivered_frame_reports_its_delay():
    model = joined("a", "b", default=Link(latency_s=0.5, bandwidth_Bps=100.0))
    assert model.transfer("a", "b", 50) == pytest.approx(1.0)


def test_removed_node_is_unknown_and_rejoins_at_the_end():
    model = joined("a", "b", "c")
    model.crash("a")
    model.remove("a")
    assert model.reachable_from("b") == ["c"]
    assert model.join("a") == [
        ("b", "a", True),
        ("a", "b", True),
        ("c", "a", True),
        ("a", "c", True),
    ]
    assert model.reachable_from("b") == ["c", "a"]


def test_the_model_imports_no_trio():
    import ast
    import pathlib

    import fednode.p2p.netmodel as mod

    tree = ast.parse(pathlib.Path(mod.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in names if m.split(".")[0] in ("trio", "libp2p")}
