"""Topology specs: every shipped spec loads; every bad spec is a ConfigError naming its field."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import networkx as nx
import pytest

from fednode.errors import ConfigError
from fednode.p2p.netmodel import Link
from fednode.sim import topology as topo_mod
from fednode.sim.topology import (
    GENERATORS,
    TOPOLOGY_DIR,
    CrashFault,
    LossFault,
    PartitionFault,
    StragglerFault,
    build_topology,
    exponential_graph,
    list_topologies,
    load_topology,
)

SHIPPED = sorted(TOPOLOGY_DIR.glob("*.toml"))
REQUIRED = [
    "star10", "two_tier_3x10", "ring16", "torus4x4", "hypercube16", "exponential16",
    "random_regular_4", "small_world", "erdos_renyi", "barabasi_albert", "complete16",
    "edgelist_example", "ring16_partition",
]  # fmt: skip


def edges(t: topo_mod.Topology) -> list[tuple[int, int]]:
    return sorted(t.graph.edges())


# --------------------------------------------------------------------------- shipped specs


def test_every_required_spec_is_shipped() -> None:
    assert set(REQUIRED) <= set(list_topologies())


def test_every_generator_has_a_shipped_spec() -> None:
    texts = "\n".join(p.read_text() for p in SHIPPED)
    # gnp_random_graph is an alias of erdos_renyi_graph; torus is the periodic grid_2d_graph
    for gen in set(GENERATORS) - {"gnp_random_graph", "grid_2d_graph"}:
        assert f'generator = "{gen}"' in texts, gen
    assert "edges = " in texts


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spec_loads_and_is_consistent(path: Path) -> None:
    t = load_topology(path)

    assert t.name == path.stem
    assert sorted(t.graph.nodes()) == list(range(t.n))
    assert set(t.roles) == set(range(t.n))
    assert nx.is_connected(t.graph)
    if t.kind == "gossip":
        assert set(t.roles.values()) == {"peer"} and t.parent == {}
    else:
        assert list(t.roles.values()).count("coordinator") == 1
        for v, role in t.roles.items():
            if role == "coordinator":
                assert v not in t.parent
            else:
                assert t.graph.has_edge(v, t.parent[v])
                expected_up = (
                    "aggregator" if (t.kind, role) == ("two-tier", "client") else "coordinator"
                )
                assert t.roles[t.parent[v]] == expected_up


def test_shipped_spec_loads_by_bare_name_and_by_path_alike() -> None:
    by_path = edges(load_topology(TOPOLOGY_DIR / "small_world.toml"))
    assert edges(load_topology("small_world")) == by_path
    assert edges(load_topology("small_world.toml")) == by_path


def test_star10_has_coordinator_zero_and_nine_clients() -> None:
    t = load_topology("star10")
    assert t.kind == "star" and t.n == 10
    assert t.roles[0] == "coordinator"
    assert t.parent == {c: 0 for c in range(1, 10)}
    assert t.link(0, 5) == Link(latency_s=0.002, bandwidth_Bps=12.5e6, loss=0.0)


def test_two_tier_3x10_puts_ten_contiguous_clients_under_each_aggregator() -> None:
    t = load_topology("two_tier_3x10")
    assert t.n == 34
    assert [v for v in range(34) if t.roles[v] == "aggregator"] == [1, 2, 3]
    for a in (1, 2, 3):
        clients = sorted(c for c, p in t.parent.items() if p == a and t.roles[c] == "client")
        assert clients == list(range(4 + 10 * (a - 1), 14 + 10 * (a - 1)))
    assert t.link(3, 0).latency_s == 0.120 and t.link(0, 3).bandwidth_Bps == 1.25e6
    assert t.link(1, 4) == t.links  # intra-region edge keeps the defaults


def test_torus_relabels_grid_cells_row_major() -> None:
    t = load_topology("torus4x4")
    assert set(t.graph[0]) == {1, 3, 4, 12}  # (0,0) -> (0,1), (0,3), (1,0), (3,0)
    assert set(t.graph[5]) == {1, 4, 6, 9}
    assert {d for _, d in t.graph.degree()} == {4}


def test_grid_rows_chooses_the_shape() -> None:
    t = build_topology("gossip", "grid_2d_graph", 12, rows=2)
    assert set(t.graph[0]) == {1, 6}  # 2 x 6, not periodic
    assert t.graph.number_of_edges() == 2 * 5 + 6


def test_hypercube_neighbours_differ_in_one_bit() -> None:
    t = load_topology("hypercube16")
    for v in range(16):
        assert set(t.graph[v]) == {v ^ (1 << k) for k in range(4)}


def test_edgelist_example_keeps_file_ids_and_explicit_roles() -> None:
    t = load_topology("edgelist_example")
    assert t.kind == "two-tier" and t.n == 9
    assert t.graph.has_edge(5, 6)
    assert t.parent == {1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2, 8: 2}
    assert t.link(2, 0) == Link(latency_s=0.150, bandwidth_Bps=12.5e6, loss=0.05)


def test_ring16_partition_schedule_is_parsed_into_typed_faults() -> None:
    crash, part, loss, slow = load_topology("ring16_partition").faults

    assert crash == CrashFault(node=3, round=5, restart_round=8)
    assert [r for r in range(12) if crash.active(r)] == [5, 6, 7]
    assert isinstance(part, PartitionFault) and part.groups == (
        tuple(range(8)),
        tuple(range(8, 16)),
    )
    assert part.active(10) and part.active(19) and not part.active(20) and not part.active(9)
    assert part.separates(7, 8) and not part.separates(0, 7)
    assert loss == LossFault(from_round=25, to_round=30, rate=0.1)
    assert slow == StragglerFault(from_round=0, to_round=None, nodes=(7, 12), slowdown=10.0)
    assert slow.active(10_000)


def test_crash_without_restart_lasts_forever() -> None:
    t = build_topology(
        "gossip", "cycle_graph", 5, faults=[{"type": "crash", "node": 1, "round": 2}]
    )
    assert t.faults == (CrashFault(1, 2, None),)
    assert not t.faults[0].active(1) and t.faults[0].active(10**6)


# --------------------------------------------------------------------------- overrides, determinism


def test_n_and_seed_override_the_spec() -> None:
    base = load_topology("random_regular_4")
    bigger = load_topology("random_regular_4", n=40)
    reseeded = load_topology("random_regular_4", seed=1)

    assert base.n == 100 and bigger.n == 40
    assert {d for _, d in bigger.graph.degree()} == {4}
    assert reseeded.n == 100 and edges(reseeded) != edges(base)


def test_n_override_that_contradicts_an_edge_list_is_rejected() -> None:
    assert load_topology("edgelist_example", n=9).n == 9
    with pytest.raises(ConfigError) as exc:
        load_topology("edgelist_example", n=20)
    assert exc.value.field == "n"


@pytest.mark.parametrize(
    ("generator", "params"),
    [
        ("random_regular_graph", {"d": 3}),
        ("watts_strogatz_graph", {"k": 4, "p": 0.3}),
        ("erdos_renyi_graph", {"p": 0.2}),
        ("gnp_random_graph", {"p": 0.2}),
        ("barabasi_albert_graph", {"m": 2}),
    ],
)
def test_random_generators_are_deterministic_for_a_seed(generator: str, params: dict) -> None:
    first = build_topology("gossip", generator, 40, seed=7, **params)
    again = build_topology("gossip", generator, 40, seed=7, **params)
    other = build_topology("gossip", generator, 40, seed=8, **params)

    assert edges(first) == edges(again)
    assert list(first.graph.edges()) == list(again.graph.edges())  # same iteration order too
    assert edges(first) != edges(other)


def test_build_topology_matches_the_equivalent_spec() -> None:
    built = build_topology("star", "star", 10, links={"latency_s": 0.002, "bandwidth_Bps": 12.5e6})
    loaded = load_topology("star10")
    assert edges(built) == edges(loaded) and built.roles == loaded.roles
    assert built.parent == loaded.parent and built.links == loaded.links
    assert built.name == "star10"


def test_build_topology_two_tier_from_any_graph_with_explicit_roles() -> None:
    t = build_topology(
        "two-tier", "complete_graph", 6, roles={"coordinator": 5, "aggregators": [3, 4]}
    )
    assert t.roles == {
        0: "client",
        1: "client",
        2: "client",
        3: "aggregator",
        4: "aggregator",
        5: "coordinator",
    }
    assert t.parent == {3: 5, 4: 5, 0: 3, 1: 3, 2: 3}  # lowest-numbered adjacent aggregator


def test_topology_graph_is_frozen() -> None:
    t = load_topology("ring16")
    with pytest.raises(nx.NetworkXError):
        t.graph.add_edge(0, 8)


def test_link_is_symmetric_defaults_for_non_edges_and_rejects_unknown_nodes() -> None:
    t = load_topology("two_tier_3x10")
    assert t.link(0, 2) == t.link(2, 0) != t.links
    assert t.link(4, 30) == t.links  # not an edge: defaults
    with pytest.raises(KeyError):
        t.link(0, 34)


# --------------------------------------------------------------------------- exponential graph


def test_exponential_graph_links_i_to_i_plus_powers_of_two() -> None:
    g = exponential_graph(16)
    assert set(g[0]) == {1, 2, 4, 8, 15, 14, 12}
    assert set(g[5]) == {(5 + s * 2**k) % 16 for k in range(4) for s in (1, -1)}


@pytest.mark.parametrize("n", range(2, 70))
def test_exponential_graph_is_regular_with_the_expected_degree(n: int) -> None:
    hops = [2**k for k in range(math.floor(math.log2(n - 1)) + 1)] if n > 1 else []
    expected = len({h % n for h in hops} | {-h % n for h in hops})

    degrees = {d for _, d in exponential_graph(n).degree()}

    assert degrees == {expected}
    if n & (n - 1) == 0:  # n = 2^m: +2^(m-1) and -2^(m-1) are the same neighbour
        assert expected == 2 * int(math.log2(n)) - 1
    assert expected <= 2 * (math.floor(math.log2(n - 1)) + 1)


@pytest.mark.parametrize(("n", "degree"), [(8, 5), (10, 6), (12, 6), (16, 7), (17, 8), (100, 14)])
def test_exponential_graph_degree_examples(n: int, degree: int) -> None:
    assert {d for _, d in exponential_graph(n).degree()} == {degree}


# --------------------------------------------------------------------------- bad specs


def table(header: str, **kv: object) -> str:
    """A TOML table; JSON literals (strings, numbers, bools, lists) are valid TOML values."""
    return header + "\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kv.items())


def graph(generator: str, **kv: object) -> str:
    return table("[graph]", generator=generator, **kv)


GOSSIP, STAR, TWO_TIER = 'kind = "gossip"\n', 'kind = "star"\n', 'kind = "two-tier"\n'
RING = graph("cycle_graph", n=8)
CRASH = {"type": "crash", "node": 1, "round": 2}
PART = {"type": "partition", "groups": "halves"}

BAD_SPECS = [
    # [graph]
    ("unknown_generator", GOSSIP + graph("moebius", n=8), "graph.generator"),
    ("missing_param", GOSSIP + graph("random_regular_graph", n=8), "graph.d"),
    ("param_wrong_type", GOSSIP + graph("random_regular_graph", n=8, d="4"), "graph.d"),
    ("param_out_of_range", GOSSIP + graph("random_regular_graph", n=8, d=8), "graph.d"),
    ("odd_n_times_d", GOSSIP + graph("random_regular_graph", n=9, d=3), "graph.d"),
    ("odd_ws_k", GOSSIP + graph("watts_strogatz_graph", n=9, k=3, p=0.1), "graph.k"),
    ("probability_above_one", GOSSIP + graph("erdos_renyi_graph", n=9, p=1.5), "graph.p"),
    ("missing_n", GOSSIP + table("[graph]", generator="cycle_graph"), "graph.n"),
    ("bool_n", GOSSIP + graph("cycle_graph", n=True), "graph.n"),
    ("tiny_ring", GOSSIP + graph("cycle_graph", n=2), "graph.n"),
    ("hypercube_not_power_of_two", GOSSIP + graph("hypercube_graph", n=12), "graph.n"),
    ("torus_too_thin", GOSSIP + graph("torus", n=10), "graph.n"),
    ("grid_rows_not_divisor", GOSSIP + graph("grid_2d_graph", n=10, rows=3), "graph.rows"),
    ("two_tier_too_few_clients", TWO_TIER + graph("two_tier", n=5, regions=3), "graph.n"),
    ("generator_and_edges", GOSSIP + graph("cycle_graph", n=8, edges="ok.edgelist"), "graph"),
    ("no_graph", GOSSIP, "graph"),
    ("missing_edgelist_file", GOSSIP + table("[graph]", edges="nope.edgelist"), "graph.edges"),
    ("n_with_edges", GOSSIP + table("[graph]", edges="ok.edgelist", n=3), "graph.n"),
    ("bad_edgelist_line", GOSSIP + table("[graph]", edges="bad.edgelist"), "graph.edges"),
    ("self_loop_in_edgelist", GOSSIP + table("[graph]", edges="loop.edgelist"), "graph.edges"),
    ("gossip_disconnected", GOSSIP + graph("erdos_renyi_graph", n=8, p=0.0), "graph"),
    ("gossip_edgelist_with_gap", GOSSIP + table("[graph]", edges="gap.edgelist"), "graph"),
    ("param_of_other_generator", GOSSIP + graph("cycle_graph", n=8, d=4), "graph.d"),
    ("unknown_graph_key", GOSSIP + graph("cycle_graph", n=8, colour=1), "graph.colour"),
    # top level
    ("bad_kind", 'kind = "mesh"\n' + RING, "kind"),
    ("missing_kind", RING, "kind"),
    ("unknown_top_level_key", GOSSIP + 'colour = "red"\n' + RING, "colour"),
    ("invalid_toml", 'kind = "gossip\n', "topology"),
    # [roles]
    ("star_without_coordinator", STAR + RING, "roles.coordinator"),
    (
        "star_two_coordinators",
        STAR + RING + table("[roles]", coordinator=[0, 1]),
        "roles.coordinator",
    ),
    ("coordinator_not_a_node", STAR + RING + table("[roles]", coordinator=8), "roles.coordinator"),
    ("star_client_without_parent", STAR + RING + table("[roles]", coordinator=0), "roles"),
    (
        "star_with_aggregators",
        STAR + graph("star", n=4) + table("[roles]", aggregators=[1]),
        "roles.aggregators",
    ),
    ("two_tier_without_aggregators", TWO_TIER + graph("star", n=4), "roles.aggregators"),
    (
        "aggregator_not_adjacent",
        TWO_TIER + RING + table("[roles]", coordinator=0, aggregators=[1, 3]),
        "roles.aggregators",
    ),
    (
        "two_tier_client_without_parent",
        TWO_TIER + RING + table("[roles]", coordinator=0, aggregators=[1, 7]),
        "roles",
    ),
    ("gossip_with_roles", GOSSIP + RING + table("[roles]", coordinator=0), "roles.coordinator"),
    # [links]
    ("loss_one", GOSSIP + RING + table("[links]", loss=1.0), "links.loss"),
    ("loss_negative", GOSSIP + RING + table("[links]", loss=-0.1), "links.loss"),
    ("negative_latency", GOSSIP + RING + table("[links]", latency_s=-1), "links.latency_s"),
    ("zero_bandwidth", GOSSIP + RING + table("[links]", bandwidth_Bps=0), "links.bandwidth_Bps"),
    ("unknown_links_key", GOSSIP + RING + table("[links]", jitter=1), "links.jitter"),
    (
        "edge_override_bad_loss",
        GOSSIP + RING + table("[[links.edges]]", between=[0, 1], loss=2),
        "links.edges[0].loss",
    ),
    (
        "edge_override_not_an_edge",
        GOSSIP + RING + table("[[links.edges]]", between=[0, 4]),
        "links.edges[0].between",
    ),
    (
        "edge_override_twice",
        GOSSIP
        + RING
        + table("[[links.edges]]", between=[0, 1])
        + table("[[links.edges]]", between=[1, 0]),
        "links.edges[1].between",
    ),
    (
        "unknown_edge_override_key",
        GOSSIP + RING + table("[[links.edges]]", between=[0, 1], jitter=1),
        "links.edges[0].jitter",
    ),
    # [[faults]]
    ("unknown_fault_type", GOSSIP + RING + table("[[faults]]", type="meteor"), "faults[0].type"),
    ("unknown_fault_key", GOSSIP + RING + table("[[faults]]", **CRASH, why="x"), "faults[0].why"),
    (
        "crash_node_missing",
        GOSSIP + RING + table("[[faults]]", **{**CRASH, "node": 8}),
        "faults[0].node",
    ),
    (
        "crash_without_round",
        GOSSIP + RING + table("[[faults]]", type="crash", node=1),
        "faults[0].round",
    ),
    (
        "crash_negative_round",
        GOSSIP + RING + table("[[faults]]", **{**CRASH, "round": -1}),
        "faults[0].round",
    ),
    (
        "crash_restart_not_after_round",
        GOSSIP + RING + table("[[faults]]", **CRASH, restart_round=2),
        "faults[0].restart_round",
    ),
    (
        "partition_node_missing",
        GOSSIP + RING + table("[[faults]]", type="partition", groups=[[0, 1, 2, 3], [4, 5, 6, 9]]),
        "faults[0].groups[1][3]",
    ),
    (
        "partition_not_covering",
        GOSSIP + RING + table("[[faults]]", type="partition", groups=[[0, 1], [4, 5]]),
        "faults[0].groups",
    ),
    (
        "partition_one_group",
        GOSSIP + RING + table("[[faults]]", type="partition", groups=[list(range(8))]),
        "faults[0].groups",
    ),
    (
        "partition_window_backwards",
        GOSSIP + RING + table("[[faults]]", **PART, from_round=5, to_round=3),
        "faults[0].to_round",
    ),
    (
        "loss_fault_rate_one",
        GOSSIP + RING + table("[[faults]]", type="loss", rate=1.0),
        "faults[0].rate",
    ),
    (
        "straggler_node_missing",
        GOSSIP + RING + table("[[faults]]", type="straggler", nodes=[2, 11], slowdown=3),
        "faults[0].nodes[1]",
    ),
    (
        "straggler_speedup",
        GOSSIP + RING + table("[[faults]]", type="straggler", nodes=[2], slowdown=0.5),
        "faults[0].slowdown",
    ),
    (
        "second_fault_is_named",
        GOSSIP
        + RING
        + table("[[faults]]", type="loss", rate=0.1)
        + table("[[faults]]", **{**CRASH, "node": 99}),
        "faults[1].node",
    ),
]


@pytest.mark.parametrize(
    ("text", "field"), [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS]
)
def test_bad_spec_raises_config_error_naming_the_field(
    tmp_path: Path, text: str, field: str
) -> None:
    (tmp_path / "ok.edgelist").write_text("0 1\n1 2\n2 0\n")
    (tmp_path / "bad.edgelist").write_text("0 1\n1 two\n")
    (tmp_path / "gap.edgelist").write_text("0 1\n1 3\n3 0\n")  # node 2 is isolated
    (tmp_path / "loop.edgelist").write_text("0 1\n1 1\n")
    spec = tmp_path / "bad.toml"
    spec.write_text(text)

    with pytest.raises(ConfigError) as exc:
        load_topology(spec)

    assert exc.value.field == field
    assert field in str(exc.value)


def test_unknown_topology_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        load_topology("no_such_topology")
    assert exc.value.field == "topology"
    assert "ring16" in exc.value.expected


def test_build_topology_validates_like_a_spec() -> None:
    with pytest.raises(ConfigError) as exc:
        build_topology("gossip", "cycle_graph", 8, p=0.5)
    assert exc.value.field == "graph.p"


def test_edgelist_comments_and_blank_lines_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "g.edgelist").write_text("# header\n\n0 1  # first\n1 2\n2 0\n")
    (tmp_path / "g.toml").write_text('kind = "gossip"\n[graph]\nedges = "g.edgelist"\n')
    assert edges(load_topology(tmp_path / "g.toml")) == [(0, 1), (0, 2), (1, 2)]


# --------------------------------------------------------------------------- purity


@pytest.mark.parametrize("module", ["topology.py", "spectral.py"])
def test_module_is_pure_no_trio_or_libp2p_imports(module: str) -> None:
    tree = ast.parse((Path(topo_mod.__file__).parent / module).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"trio", "libp2p"}
