"""Topology specs: a networkx graph, the role of each node, link parameters, fault schedule.

Pure (no trio). A spec is a TOML file in ``topologies/``; ``topologies/README.md`` is the
full reference. A spec has ``kind`` ("star" | "two-tier" | "gossip"), a ``[graph]`` (a
``generator`` of :data:`GENERATORS` with ``n``, ``seed`` and its parameters, or ``edges``),
``[roles]``, ``[links]`` (:class:`~fednode.p2p.netmodel.Link` fields; per-edge overrides in
``[[links.edges]]``), ``[[faults]]`` (crash, partition, loss, straggler; by round) and
which nodes attack (``attackers = [...]`` or ``attacker_fraction``, :mod:`.attackers`).

Nodes are relabelled to ints in sorted order of the generator's labels (grid ``(r, c)`` ->
``r * cols + c``, hypercube bit tuple -> its binary number) and edges are inserted sorted,
so a seed gives the same graph and the same iteration order every time.

Errors: a bad spec raises :class:`~fednode.errors.ConfigError` naming the field
(``graph.n``, ``links.edges[0].loss``, ``faults[2].node``). Unknown keys are rejected.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import networkx as nx

from fednode.config.sections import check
from fednode.errors import ConfigError
from fednode.p2p.netmodel import Link

from .attackers import AttackerMarks, attacker_marks
from .churn import JoinFault  # the "join" fault (cold start of late joiners)
from .graphs import exponential_graph

TOPOLOGY_DIR = Path(__file__).resolve().parents[2] / "topologies"
KINDS = ("star", "two-tier", "gossip")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class _Window:
    from_round: int = 0
    to_round: int | None = None  # exclusive; None = until the end

    def active(self, rnd: int) -> bool:
        return self.from_round <= rnd and (self.to_round is None or rnd < self.to_round)


@dataclass(frozen=True, slots=True)
class CrashFault:
    """``node`` is down for rounds ``round <= r < restart_round`` (forever if no restart)."""

    type: ClassVar[str] = "crash"
    node: int
    round: int
    restart_round: int | None = None

    def active(self, rnd: int) -> bool:
        return _Window(self.round, self.restart_round).active(rnd)


@dataclass(frozen=True, slots=True)
class PartitionFault(_Window):
    """Only nodes in the same group can talk while active. Groups cover every node once."""

    type: ClassVar[str] = "partition"
    groups: tuple[tuple[int, ...], ...] = ()

    def separates(self, a: int, b: int) -> bool:
        return not any(a in g and b in g for g in self.groups)


@dataclass(frozen=True, slots=True)
class LossFault(_Window):
    """Extra independent drop probability ``rate`` on every link while active."""

    type: ClassVar[str] = "loss"
    rate: float = 0.0


@dataclass(frozen=True, slots=True)
class StragglerFault(_Window):
    """``nodes`` take ``slowdown`` times as long to compute while active."""

    type: ClassVar[str] = "straggler"
    nodes: tuple[int, ...] = ()
    slowdown: float = 1.0


Fault = CrashFault | PartitionFault | LossFault | StragglerFault | JoinFault


@dataclass(frozen=True, eq=False)
class Topology:
    """A validated topology. ``graph`` is frozen; nodes are ints ``0..n-1``.

    ``roles`` maps every node to "coordinator" | "aggregator" | "client" | "peer";
    ``parent`` maps each client to its aggregator (two-tier) or coordinator (star) and each
    aggregator to the coordinator; it is empty for gossip.
    """

    name: str
    kind: str
    graph: nx.Graph
    roles: dict[int, str]
    parent: dict[int, int]
    links: Link = field(default_factory=Link)
    edge_links: dict[tuple[int, int], Link] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()
    description: str = ""
    #: the spec file it was loaded from (None: built in code)
    source: str | None = None
    #: ``attackers`` / ``attacker_fraction`` of the spec (:mod:`fednode.sim.attackers`)
    attackers: AttackerMarks = field(default_factory=AttackerMarks)

    @property
    def n(self) -> int:
        return int(self.graph.number_of_nodes())

    def link(self, a: int, b: int) -> Link:
        """The a--b override if any, else the defaults (also for non-edges: a healing tree
        talks over links the graph does not draw). Errors: KeyError for an unknown node."""
        for v in (a, b):
            if v not in self.graph:
                raise KeyError(f"node {v} not in topology {self.name!r} (n={self.n})")
        return self.edge_links.get((min(a, b), max(a, b)), self.links)


# --------------------------------------------------------------------------- generators


# generator -> its parameters besides `n` and `seed`; those in _OPTIONAL may be omitted
_PARAMS: dict[str, dict[str, type]] = {
    "star": {},
    "two_tier": {"regions": int},
    "cycle_graph": {},
    "grid_2d_graph": {"rows": int, "periodic": bool},
    "torus": {"rows": int},
    "hypercube_graph": {},
    "exponential": {},
    "random_regular_graph": {"d": int},
    "watts_strogatz_graph": {"k": int, "p": float},
    "erdos_renyi_graph": {"p": float},
    "gnp_random_graph": {"p": float},
    "barabasi_albert_graph": {"m": int},
    "complete_graph": {},
}
GENERATORS = tuple(_PARAMS)
_OPTIONAL: dict[str, Any] = {"rows": None, "periodic": False}


def _generate(gen: str, n: int, seed: int, p: dict[str, Any]) -> nx.Graph:
    """The generator's raw graph. Errors: ConfigError naming the parameter out of range."""

    def need(ok: bool, key: str, expected: str) -> None:
        check(ok, f"graph.{key}", n if key == "n" else p[key], f"{expected} for {gen}")

    match gen:
        case "star":
            need(n >= 2, "n", "n >= 2")
            return nx.star_graph(n - 1)
        case "two_tier":  # 0 -> aggregators 1..k -> clients k+1.. in contiguous equal blocks
            k = p["regions"]
            need(k >= 1, "regions", "regions >= 1")
            need(n >= 1 + 2 * k, "n", f"n >= 1 + 2 * regions = {1 + 2 * k}")
            g = nx.star_graph(k)
            g.add_edges_from((1 + j * k // (n - 1 - k), k + 1 + j) for j in range(n - 1 - k))
            return g
        case "cycle_graph":
            need(n >= 3, "n", "n >= 3")
            return nx.cycle_graph(n)
        case "grid_2d_graph" | "torus":
            rows = p["rows"]
            if rows is None:  # the most square factorisation
                rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
            need(rows >= 1 and n % rows == 0, "rows", f"a divisor of n = {n}")
            periodic = gen == "torus" or p["periodic"]
            need(not periodic or min(rows, n // rows) >= 3, "n", f"{rows}x{n // rows} >= 3x3")
            return nx.grid_2d_graph(rows, n // rows, periodic=periodic)
        case "hypercube_graph":
            need(n >= 2 and n & (n - 1) == 0, "n", "a power of two")
            return nx.hypercube_graph(n.bit_length() - 1)
        case "exponential":
            return exponential_graph(n)
        case "random_regular_graph":
            need(0 <= p["d"] < n and n * p["d"] % 2 == 0, "d", f"0 <= d < n = {n}, n * d even")
            return nx.random_regular_graph(p["d"], n, seed=seed)
        case "watts_strogatz_graph":
            need(2 <= p["k"] < n and p["k"] % 2 == 0, "k", f"an even k, 2 <= k < n = {n}")
            need(0.0 <= p["p"] <= 1.0, "p", "a probability in [0, 1]")
            return nx.watts_strogatz_graph(n, p["k"], p["p"], seed=seed)
        case "erdos_renyi_graph" | "gnp_random_graph":
            need(0.0 <= p["p"] <= 1.0, "p", "a probability in [0, 1]")
            return nx.gnp_random_graph(n, p["p"], seed=seed)
        case "barabasi_albert_graph":
            need(1 <= p["m"] < n, "m", f"1 <= m < n = {n}")
            return nx.barabasi_albert_graph(n, p["m"], seed=seed)
    return nx.complete_graph(n)


def _keys(table: Any, allowed: set[str], where: str) -> dict[str, Any]:
    check(isinstance(table, dict), where or "spec", table, "a table")
    for key in table:
        field_ = f"{where}.{key}" if where else key
        check(key in allowed, field_, table[key], f"one of {sorted(allowed)}")
    return dict(table)


def _typed(value: Any, typ: type, where: str) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, typ) and (typ is bool or not isinstance(value, bool))
    check(ok, where, value, {int: "an int", float: "a number", bool: "a bool"}.get(typ, "a string"))
    if typ is float:
        check(math.isfinite(value), where, value, "a finite number")
    return value


def _node(value: Any, n: int, where: str) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n
    check(ok, where, value, f"a node id in 0..{n - 1}")
    return int(value)


def _nodes(value: Any, n: int, where: str) -> tuple[int, ...]:
    check(isinstance(value, list) and bool(value), where, value, "a non-empty list of node ids")
    ids = tuple(_node(v, n, f"{where}[{i}]") for i, v in enumerate(value))
    check(len(set(ids)) == len(ids), where, value, "distinct node ids")
    return ids


def _round(t: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key not in t:
        check(default is not ..., f"{where}.{key}", None, "a round number")
        return default
    value = _typed(t[key], int, f"{where}.{key}")
    check(value >= 0, f"{where}.{key}", value, "a round >= 0")
    return value


def _read_edgelist(path: Path) -> nx.Graph:
    check(path.is_file(), "graph.edges", str(path), "an existing edge-list file")
    g = nx.Graph()
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{path.name}:{lineno}: {raw.strip()}"
        ok = len(parts) == 2 and all(t.isascii() and t.isdigit() for t in parts)
        ok = ok and int(parts[0]) != int(parts[1])
        check(ok, "graph.edges", where, "'u v' with two different non-negative int node ids")
        g.add_edge(int(parts[0]), int(parts[1]))
    check(g.number_of_edges() > 0, "graph.edges", str(path), "at least one edge")
    g.add_nodes_from(range(max(g) + 1))  # ids are the file's labels; gaps are isolated nodes
    return g


def _graph(t: Any, base_dir: Path) -> tuple[nx.Graph, dict[str, Any]]:
    """The canonical graph (ints 0..n-1, sorted edges) and the roles its generator implies."""
    check(isinstance(t, dict), "graph", t, "a [graph] table")
    check(("generator" in t) != ("edges" in t), "graph", t, "exactly one of generator / edges")
    defaults: dict[str, Any] = {}
    if "edges" in t:
        for key in ("n", "seed"):
            check(key not in t, f"graph.{key}", t.get(key), "no n/seed: the edges fix the graph")
        t = _keys(t, {"edges"}, "graph")
        raw = _read_edgelist(base_dir / _typed(t["edges"], str, "graph.edges"))
    else:
        gen = _typed(t["generator"], str, "graph.generator")
        check(gen in GENERATORS, "graph.generator", gen, f"one of {sorted(GENERATORS)}")
        spec = _PARAMS[gen]
        t = _keys(t, {"generator", "n", "seed", *spec}, "graph")
        check("n" in t, "graph.n", None, "a node count")
        n = _typed(t["n"], int, "graph.n")
        check(n >= 1, "graph.n", n, "n >= 1")
        seed = _typed(t.get("seed", 0), int, "graph.seed")
        params = {}
        for key, typ in spec.items():
            check(
                key in t or key in _OPTIONAL, f"graph.{key}", None, f"a value ({gen} needs {key})"
            )
            params[key] = _typed(t[key], typ, f"graph.{key}") if key in t else _OPTIONAL[key]
        raw = _generate(gen, n, seed, params)
        if gen in ("star", "two_tier"):
            defaults["coordinator"] = 0
        if gen == "two_tier":
            defaults["aggregators"] = list(range(1, params["regions"] + 1))
    order = sorted(raw)
    index = {v: i for i, v in enumerate(order)}
    g = nx.Graph()
    g.add_nodes_from(range(len(order)))
    g.add_edges_from(sorted(tuple(sorted((index[a], index[b]))) for a, b in raw.edges()))
    return nx.freeze(g), defaults


def _roles(
    kind: str, g: nx.Graph, t: Any, defaults: dict[str, Any]
) -> tuple[dict[int, str], dict[int, int]]:
    n = g.number_of_nodes()
    if kind == "gossip":
        check(isinstance(t, dict), "roles", t, "a table")
        for key in t:
            check(False, f"roles.{key}", t[key], "no roles for gossip: every node is a peer")
        comps = nx.number_connected_components(g)
        check(comps == 1, "graph", f"{comps} components", "a connected graph for gossip")
        return {v: "peer" for v in range(n)}, {}
    t = _keys(t, {"coordinator", "aggregators"} if kind == "two-tier" else {"coordinator"}, "roles")
    coord = t.get("coordinator", defaults.get("coordinator"))
    if isinstance(coord, list):
        check(len(coord) == 1, "roles.coordinator", coord, "exactly one coordinator")
        coord = coord[0]
    check(coord is not None, "roles.coordinator", None, f"exactly one coordinator for {kind}")
    coord = _node(coord, n, "roles.coordinator")
    roles: dict[int, str] = dict.fromkeys(range(n), "client")
    parent: dict[int, int] = {}
    roles[coord] = "coordinator"
    aggs: tuple[int, ...] = ()
    if kind == "two-tier":
        agg_raw = t.get("aggregators", defaults.get("aggregators"))
        check(agg_raw is not None, "roles.aggregators", None, "aggregator node ids for two-tier")
        aggs = _nodes(agg_raw, n, "roles.aggregators")
        check(coord not in aggs, "roles.aggregators", agg_raw, "nodes other than the coordinator")
        for a in aggs:
            check(g.has_edge(a, coord), "roles.aggregators", a, f"adjacent to coordinator {coord}")
            roles[a], parent[a] = "aggregator", coord
    ups = set(aggs) if kind == "two-tier" else {coord}
    for c in (v for v in range(n) if roles[v] == "client"):
        cand = sorted(ups.intersection(g.neighbors(c)))
        up_role = "an aggregator" if kind == "two-tier" else "the coordinator"
        check(bool(cand), "roles", f"client {c}", f"every client adjacent to {up_role} (parent)")
        parent[c] = cand[0]
    return roles, parent


def _link(t: Any, where: str, base: Link, extra: tuple[str, ...] = ()) -> Link:
    t = _keys(t, {"latency_s", "bandwidth_Bps", "loss", *extra}, where)
    lat = _typed(t.get("latency_s", base.latency_s), float, f"{where}.latency_s")
    check(lat >= 0.0, f"{where}.latency_s", lat, "latency_s >= 0")
    bw = t.get("bandwidth_Bps", base.bandwidth_Bps)
    if bw is not None:
        bw = _typed(bw, float, f"{where}.bandwidth_Bps")
        check(bw > 0.0, f"{where}.bandwidth_Bps", bw, "bandwidth_Bps > 0 (omit for unlimited)")
    loss = _typed(t.get("loss", base.loss), float, f"{where}.loss")
    check(0.0 <= loss < 1.0, f"{where}.loss", loss, "loss in [0, 1)")
    return Link(lat, bw, loss)


def _links(t: Any, g: nx.Graph) -> tuple[Link, dict[tuple[int, int], Link]]:
    t = _keys(t, {"latency_s", "bandwidth_Bps", "loss", "edges"}, "links")
    edges = t.pop("edges", [])
    base = _link(t, "links", Link())
    check(isinstance(edges, list), "links.edges", edges, "an array of tables [[links.edges]]")
    out: dict[tuple[int, int], Link] = {}
    for i, e in enumerate(edges):
        where = f"links.edges[{i}]"
        check(isinstance(e, dict) and "between" in e, f"{where}.between", None, "[a, b]")
        pair = _nodes(e["between"], g.number_of_nodes(), f"{where}.between")
        check(len(pair) == 2 and g.has_edge(*pair), f"{where}.between", list(pair), "a graph edge")
        key = (min(pair), max(pair))
        check(key not in out, f"{where}.between", list(pair), "one override per edge")
        out[key] = _link(e, where, base, ("between",))
    return base, out


def _fault(t: Any, i: int, n: int) -> Fault:
    where = f"faults[{i}]"
    check(isinstance(t, dict), where, t, "a table [[faults]]")
    kinds = ("crash", "partition", "loss", "straggler", "join")
    ftype = t.get("type")
    check(ftype in kinds, f"{where}.type", ftype, f"one of {list(kinds)}")
    win = {"from_round", "to_round"}
    allowed = {
        "crash": {"node", "round", "restart_round"},
        "partition": {"groups", *win},
        "loss": {"rate", *win},
        "straggler": {"nodes", "slowdown", *win},
        "join": {"node", "round"},
    }[ftype]
    t = _keys(t, {"type", *allowed}, where)
    if ftype == "crash":
        node = _node(t.get("node"), n, f"{where}.node")
        rnd = _round(t, "round", where)
        restart = _round(t, "restart_round", where, None)
        check(restart is None or restart > rnd, f"{where}.restart_round", restart, "> round")
        return CrashFault(node, rnd, restart)
    if ftype == "join":
        node = _node(t.get("node"), n, f"{where}.node")
        rnd = _round(t, "round", where)
        check(rnd >= 1, f"{where}.round", rnd, "a round >= 1 (the round the node joins at)")
        return JoinFault(node, rnd)
    lo, hi = _round(t, "from_round", where, 0), _round(t, "to_round", where, None)
    check(hi is None or hi > lo, f"{where}.to_round", hi, f"> from_round = {lo}")
    if ftype == "partition":
        raw = t.get("groups")
        if raw == "halves":
            raw = [list(range(n // 2)), list(range(n // 2, n))]
        ok = isinstance(raw, list) and len(raw) >= 2
        check(ok, f"{where}.groups", raw, '>= 2 groups of node ids, or "halves"')
        groups = tuple(_nodes(grp, n, f"{where}.groups[{j}]") for j, grp in enumerate(raw))
        flat = sorted(v for grp in groups for v in grp)
        check(flat == list(range(n)), f"{where}.groups", raw, f"groups covering 0..{n - 1} once")
        return PartitionFault(lo, hi, groups)
    if ftype == "loss":
        rate = _typed(t.get("rate"), float, f"{where}.rate")
        check(0.0 <= rate < 1.0, f"{where}.rate", rate, "rate in [0, 1)")
        return LossFault(lo, hi, rate)
    nodes = _nodes(t.get("nodes"), n, f"{where}.nodes")
    slow = _typed(t.get("slowdown"), float, f"{where}.slowdown")
    check(slow >= 1.0, f"{where}.slowdown", slow, "slowdown >= 1")
    return StragglerFault(lo, hi, nodes, slow)


# --------------------------------------------------------------------------- entry points


def topology_from_dict(spec: dict[str, Any], *, name: str, base_dir: Path) -> Topology:
    """Validate a parsed spec (the TOML document as a dict). ``base_dir`` anchors ``edges``."""
    top = {"name", "description", "kind", "graph", "roles", "links", "faults", "attackers"}
    spec = _keys(spec, {*top, "attacker_fraction"}, "")
    kind = spec.get("kind", "")
    check(kind in KINDS, "kind", spec.get("kind"), f"one of {list(KINDS)}")
    check("graph" in spec, "graph", None, "a [graph] table")
    g, defaults = _graph(spec["graph"], base_dir)
    roles, parent = _roles(kind, g, spec.get("roles", {}), defaults)
    links, edge_links = _links(spec.get("links", {}), g)
    faults_raw = spec.get("faults", [])
    check(isinstance(faults_raw, list), "faults", faults_raw, "an array of tables [[faults]]")
    faults = tuple(_fault(f, i, g.number_of_nodes()) for i, f in enumerate(faults_raw))
    name = _typed(spec.get("name", name), str, "name")
    description = _typed(spec.get("description", ""), str, "description")
    marks = attacker_marks(spec, roles)
    return Topology(
        name, kind, g, roles, parent, links, edge_links, faults, description, attackers=marks
    )


def list_topologies(directory: Path = TOPOLOGY_DIR) -> list[str]:
    """Names of the shipped specs (file stems in ``topologies/``)."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_topology(
    path_or_name: str | Path, *, n: int | None = None, seed: int | None = None
) -> Topology:
    """Load a spec from a ``.toml`` path or a bare name in ``topologies/``.

    ``n`` and ``seed`` override ``graph.n`` / ``graph.seed``. An edge-list spec fixes its
    node count (an ``n`` that differs is a ConfigError) and ignores ``seed``.
    Errors: ConfigError for a missing file, invalid TOML, or any invalid field.
    """
    path = Path(path_or_name)
    if not path.is_file() and len(path.parts) == 1:  # a bare name: look in topologies/
        path = TOPOLOGY_DIR / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    expected = f"a .toml file or one of {list_topologies()}"
    check(path.is_file(), "topology", str(path_or_name), expected)
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("topology", str(path), f"valid TOML ({exc})") from exc
    graph = spec.get("graph")
    if isinstance(graph, dict) and "generator" in graph:
        overrides = {k: v for k, v in (("n", n), ("seed", seed)) if v is not None}
        spec["graph"] = {**graph, **overrides}
    topo = topology_from_dict(spec, name=path.stem, base_dir=path.parent)
    check(n is None or n == topo.n, "n", n, f"{topo.n}: the edge list fixes the node count")
    return replace(topo, source=str(path))


def build_topology(
    kind: str,
    generator: str,
    n: int,
    *,
    seed: int = 0,
    roles: dict[str, Any] | None = None,
    links: dict[str, Any] | None = None,
    faults: list[dict[str, Any]] | None = None,
    name: str | None = None,
    **params: Any,
) -> Topology:
    """Build a topology in code, e.g. ``build_topology("star", "star", 10)`` for the CLI.

    ``params`` are the generator's parameters (``d=4``, ``regions=3``, ...); ``roles``,
    ``links`` and ``faults`` take the same dicts as the TOML tables. Same validation.
    """
    spec: dict[str, Any] = {
        "kind": kind,
        "graph": {"generator": generator, "n": n, "seed": seed, **params},
        "roles": roles or {},
        "links": links or {},
        "faults": faults or [],
    }
    return topology_from_dict(spec, name=name or f"{generator}{n}", base_dir=Path.cwd())
