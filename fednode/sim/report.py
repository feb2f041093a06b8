"""The experiment folder and its plots (matplotlib, Agg backend: no display needed).

``write_folder(result, out)`` writes::

    out/
      config.json     topology (name, kind, n, links, faults), the NodeConfig, the options
      spec.toml       a copy of the spec file, when the topology came from one
      rounds.jsonl    one line per round: accuracy, loss, bytes, time_s (+ gossip columns)
      nodes.jsonl     one line per node per round (a fixed sample of nodes)
      summary.json    final numbers, spectral summary, fault log, wall time, notes
      accuracy.png    accuracy vs round (gossip: mean over scored peers, min-max band,
                      and the accuracy of the peers' average model)
      consensus.png   gossip: consensus error vs round with the spectral prediction
      bytes.png       bytes on the wire per round
      topology.png    the graph, nodes coloured by role (skipped above draw_max_nodes)

``rounds.jsonl`` and ``nodes.jsonl`` hold no wall-clock values: the same seed gives
byte-identical files. ``compare(results, out)`` puts several runs on shared axes.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .metrics import json_safe

if TYPE_CHECKING:
    from .result import ExperimentResult

ROLE_COLOURS = {
    "coordinator": "#d62728",
    "aggregator": "#ff7f0e",
    "client": "#1f77b4",
    "peer": "#2ca02c",
}


@contextlib.contextmanager
def _figure(path: Path, ylabel: str = "", title: str = "", *, log: bool = False) -> Iterator[Any]:
    """Axes to draw on (matplotlib, Agg backend), saved to ``path`` and closed after; with
    a ``ylabel``, a plot per round: labelled, gridded, with a legend and ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2) if ylabel else (6, 6))
    try:
        yield ax
        if ylabel:
            ax.set_xlabel("round")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, which="both" if log else "major")
            ax.legend(fontsize=8)
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, allow_nan=False) + "\n")


def write_folder(result: ExperimentResult, out: Path) -> None:
    """Write the experiment folder (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    result.out_dir = out
    (out / "config.json").write_text(json.dumps(result.config, indent=2, sort_keys=True) + "\n")
    source = result.config.get("topology", {}).get("source")
    if source and Path(source).is_file():
        shutil.copyfile(source, out / "spec.toml")
        _copy_edgelist(Path(source), out)
    _jsonl(out / "rounds.jsonl", result.table())
    _jsonl(out / "nodes.jsonl", result.node_rows)
    (out / "summary.json").write_text(
        json.dumps(json_safe(result.summary()), indent=2, sort_keys=True) + "\n"
    )
    plot_accuracy([result], out / "accuracy.png")
    if result.consensus is not None:
        plot_consensus([result], out / "consensus.png")
    plot_bytes([result], out / "bytes.png")
    if result.topology is not None and result.n <= int(result.config["options"]["draw_max_nodes"]):
        draw_topology(result, out / "topology.png")


def _copy_edgelist(spec: Path, out: Path) -> None:
    """An edge-list spec names its file relative to itself: copy it beside spec.toml."""
    import tomllib

    edges = tomllib.loads(spec.read_text()).get("graph", {}).get("edges")
    if isinstance(edges, str) and (spec.parent / edges).is_file():
        target = out / edges
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spec.parent / edges, target)


def _label(result: ExperimentResult, many: bool) -> str:
    return f"{result.name} (n={result.n})" if many else result.name


def plot_accuracy(results: Sequence[ExperimentResult], path: Path) -> None:
    many = len(results) > 1
    title = "accuracy vs round" + ("" if many else f": {results[0].name}")
    with _figure(path, "test accuracy", title) as ax:
        ax.set_ylim(0, 1)
        for res in results:
            (line,) = ax.plot(res.rounds, res.accuracy, marker=".", label=_label(res, many))
            if res.consensus is not None and not many:
                ax.fill_between(
                    res.rounds,
                    res.accuracy_min,
                    res.accuracy_max,
                    alpha=0.2,
                    color=line.get_color(),
                    label="min-max over scored peers",
                )
                ax.plot(
                    res.rounds,
                    res.accuracy_of_mean,
                    "--",
                    color=line.get_color(),
                    label="average model",
                )


def plot_consensus(results: Sequence[ExperimentResult], path: Path) -> None:
    many = len(results) > 1
    ylabel = "consensus error  ||X - 1 xbar'|| / (sqrt(n) ||xbar||)"
    with _figure(path, ylabel, "consensus error vs round", log=True) as ax:
        for res in results:
            if res.consensus is None:
                continue
            r = res.consensus_rounds
            bound = res.bound
            first = 0 if res.consensus[0] > 1e-12 else 1  # same start everywhere: from round 1
            (line,) = ax.semilogy(
                r[first:], np.maximum(res.consensus[first:], 1e-16), marker=".",
                label=_label(res, many),
            )  # fmt: skip
            if bound is not None:
                rho = res.spectral.get("rho", math.nan)
                ax.semilogy(
                    r[first:],
                    np.maximum(bound[first:], 1e-16),
                    ":",
                    color=line.get_color(),
                    label=f"spectral rate rho^r (pure averaging), rho={rho:.3f}",
                )


def plot_bytes(results: Sequence[ExperimentResult], path: Path) -> None:
    many = len(results) > 1
    with _figure(path, "MB on the wire per round (frames, all nodes)", "bytes vs round") as ax:
        for res in results:
            ax.plot(res.rounds, res.bytes / 1e6, marker=".", label=_label(res, many))


def draw_topology(result: ExperimentResult, path: Path) -> None:
    import networkx as nx

    topo = result.topology
    assert topo is not None
    g = topo.graph
    if topo.kind == "gossip":
        pos = nx.spring_layout(g, seed=0) if g.number_of_nodes() > 40 else nx.circular_layout(g)
    else:
        pos = (
            nx.kamada_kawai_layout(g) if g.number_of_nodes() <= 200 else nx.spring_layout(g, seed=0)
        )
    with _figure(path) as ax:
        colours = [ROLE_COLOURS.get(topo.roles[v], "#7f7f7f") for v in g.nodes()]
        size = max(20, min(300, 6000 // max(g.number_of_nodes(), 1)))
        nx.draw_networkx_edges(g, pos, ax=ax, alpha=0.3)
        nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=size)
        if g.number_of_nodes() <= 40:
            nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
        for role in sorted(set(topo.roles.values())):
            ax.scatter([], [], color=ROLE_COLOURS.get(role, "#7f7f7f"), label=role)
        rho = result.spectral.get("rho", math.nan)
        ax.set_title(f"{topo.name}: {topo.kind}, n={topo.n}, rho={rho:.3f}")
        ax.legend(fontsize=8, loc="lower right")
        ax.axis("off")


def compare(results: Sequence[ExperimentResult], out: Path) -> None:
    """Shared-axes plots of several runs plus ``compare.json`` (one summary per run)."""
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(results, out / "accuracy.png")
    if any(r.consensus is not None for r in results):
        plot_consensus(results, out / "consensus.png")
    plot_bytes(results, out / "bytes.png")
    summaries = [json_safe(r.summary()) for r in results]
    (out / "compare.json").write_text(json.dumps(summaries, indent=2, sort_keys=True) + "\n")
