"""The network model both simulator drivers share (fednode.p2p.netmodel): pure, no trio."""

import random

import pytest

from fednode.p2p.netmodel import Link, NetworkModel


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


def test_loss_draws_one_seeded_number_per_frame_on_a_lossy_link_only():
    model = joined("a", "b", "c", seed=7)
    model.set_link("a", "b", Link(loss=0.5))
    rng = random.Random(7)
    outcomes = [model.transfer("a", "b", 10) for _ in range(20)]
    assert [d is None for d in outcomes] == [rng.random() < 0.5 for _ in range(20)]
    assert model.transfer("a", "c", 10) == 0.0  # loss-free: no draw
    last = model.transfer("a", "b", 10)
    assert (last is None) == (rng.random() < 0.5)
    stats = model.stats
    assert (stats.sent_frames, stats.sent_bytes) == (22, 220)
    assert stats.dropped_frames == sum(d is None for d in [*outcomes, last])


def test_extra_loss_combines_independently_with_the_link_loss():
    model = joined("a", "b", seed=3)
    model.set_link("a", "b", Link(loss=0.5))
    model.extra_loss = 0.5
    rng = random.Random(3)
    lost = [model.transfer("a", "b", 1) is None for _ in range(50)]
    assert lost == [rng.random() < 0.75 for _ in range(50)]


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
