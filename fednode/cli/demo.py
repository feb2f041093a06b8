"""``fednode demo``: star, two-tier and gossip in the simulator, then one results table."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from rich.table import Table

from ..config import NodeConfig
from ..errors import ConfigError
from .common import add_common, config_of, console, human

DEMO_TOPOLOGIES = ("star", "two-tier", "gossip")


def add_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="simulated federation on the built-in digits task",
        description="Run the same federation three ways in the simulator on the built-in "
        "digits task: star FedAvg with --clients clients, two-tier with --aggregators "
        "regional aggregators over the same clients, and a coordinator-free gossip "
        "consortium of --peers peers on an exponential graph; then one results table.",
    )
    demo.add_argument("--clients", type=int, default=10, help="number of clients (10)")
    demo.add_argument(
        "--topology",
        choices=(*DEMO_TOPOLOGIES, "all"),
        default="all",
        help="which federation(s) to run (all)",
    )
    demo.add_argument(
        "--aggregators", type=int, default=2, help="two-tier: regional aggregators (2)"
    )
    demo.add_argument(
        "--peers", type=int, default=16, help="gossip: peers on the exponential graph (16)"
    )
    add_common(demo)


def round_table(rounds: list[dict[str, Any]], title: str = "rounds") -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("round", "accuracy", "loss", "clients", "failed", "bytes up", "bytes down"):
        table.add_column(col, justify="right")
    for r in rounds:
        table.add_row(
            str(r["round"]),
            f"{r['accuracy']:.4f}",
            f"{r['loss']:.4f}",
            f"{r['completed']}/{r['selected']}",
            str(r["failed"]),
            human(r["bytes_up"]),
            human(r["bytes_down"]),
        )
    return table


@dataclass
class DemoRun:
    """One row of the demo's results table."""

    topology: str
    nodes: str
    accuracy: float
    rounds: int
    hit: int | None
    #: frame bytes on all links until the measured accuracy was first reached
    bytes_hit: float | None
    bytes_total: float
    wall_s: float
    virtual_s: float
    ok: bool
    note: str = ""


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    for name in ("clients", "aggregators", "peers"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}", getattr(args, name), "an integer >= 1")
    config = config_of(
        args,
        {
            "rounds.min_available_clients": args.clients,
            "rounds.min_fit_clients": args.min_fit_clients or max(1, args.clients // 2),
        },
    )
    chosen = DEMO_TOPOLOGIES if args.topology == "all" else (args.topology,)
    console.print(
        f"[bold]fednode demo[/]: {', '.join(chosen)}; task {config.data.task}, partition "
        f"{config.data.partition}, {config.rounds.rounds} rounds, E={config.train.local_epochs}, "
        f"codec {config.wire.codec} (simulated, virtual time)"
    )
    progress = Progress(
        TextColumn("{task.fields[name]:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=console,
        auto_refresh=False,
        transient=True,
    )
    runners = {"star": _demo_star, "two-tier": _demo_two_tier, "gossip": _demo_gossip}
    rows: list[DemoRun] = []
    with progress:
        for name in chosen:
            bar = progress.add_task("", total=config.rounds.rounds, name=name)

            def advance(done: int, accuracy: float, bar: Any = bar) -> None:
                progress.update(bar, completed=done, description=f"acc {accuracy:.3f}")
                progress.refresh()

            rows.append(runners[name](config, args, advance))
    table = Table(title="results", title_justify="left")
    target = config.rounds.measured_at(config.data.task)
    at = f"{target:.0%}" if target else "target"
    cols = ("topology", "nodes", "acc", "rounds", f"{at} at", f"B to {at}", "bytes")
    for col in (*cols, "wall/virt s"):
        left = col in ("topology", "nodes")
        width = 8 if col == "topology" else None
        table.add_column(col, justify="left" if left else "right", min_width=width)
    for r in rows:
        table.add_row(
            r.topology if r.ok else f"[red]{r.topology}[/]",
            r.nodes,
            f"{r.accuracy:.4f}",
            str(r.rounds),
            str(r.hit) if r.hit else "-",
            human(r.bytes_hit) if r.bytes_hit is not None else "-",
            human(r.bytes_total),
            f"{r.wall_s:.1f}/{r.virtual_s:.1f}",
        )
    console.print(table)
    for r in rows:
        if r.note:
            console.print(f"[red]{r.topology} failed[/]: {r.note}")
    console.print(
        "acc: accuracy of the coordinator's model on the held-out split (gossip: the mean over "
        "peers of each peer's own model); bytes: everything any node sent (all links); "
        f"B to {at}: those bytes until the accuracy first reached {at} (rounds.measure_accuracy); "
        "wall/virt: wall-clock / simulated seconds"
    )
    return 0 if all(r.ok for r in rows) else 1


DemoProgress = Callable[[int, float], None]


def _hierarchy_row(
    name: str, nodes: str, sim: Any, root: Any, advance: DemoProgress, target: float | None
) -> DemoRun:
    sent: dict[int, int] = {}  # round -> frame bytes all nodes sent until its record

    def on_round(s: Any, peer: str, event: str, data: dict[str, Any]) -> None:
        if event == "round" and peer == root.peer:
            sent[data["round"]] = s.network.sent_bytes
            advance(data["round"], data["accuracy"])

    sim.fault_hooks.append(on_round)
    result = sim.run(root)
    ok = result.stop is not None and result.stop.error is None
    if name == "star":
        console.print(round_table(result.rounds, "star FedAvg"))
    hit = result.rounds_to(target) if target else None
    return DemoRun(
        name,
        nodes,
        result.final_accuracy,
        len(result.rounds),
        hit,
        float(sent[hit]) if hit in sent else None,
        float(result.network.sent_bytes),
        result.wall_s,
        result.virtual_s,
        ok,
        "" if ok else str(result.stop.reason if result.stop else "no result"),
    )


def _demo_star(config: NodeConfig, args: argparse.Namespace, advance: DemoProgress) -> DemoRun:
    from ..sim.scenarios import build_star

    sim, root = build_star(config, args.clients)
    target = config.rounds.measured_at(config.data.task)
    return _hierarchy_row("star", f"1+{args.clients}", sim, root, advance, target)


def _demo_two_tier(config: NodeConfig, args: argparse.Namespace, advance: DemoProgress) -> DemoRun:
    from ..sim.scenarios import build_two_tier

    # a round's results come from the aggregators (each one the weighted sum of its clients)
    rounds = replace(config.rounds, min_fit_clients=args.aggregators)
    sim, root = build_two_tier(replace(config, rounds=rounds), args.aggregators, args.clients)
    nodes = f"1+{args.aggregators}+{args.clients}"
    target = config.rounds.measured_at(config.data.task)
    return _hierarchy_row("two-tier", nodes, sim, root, advance, target)


def _demo_gossip(config: NodeConfig, args: argparse.Namespace, advance: DemoProgress) -> DemoRun:
    from ..sim.gossip import build_gossip
    from ..sim.topology import exponential_graph

    sim, _nodes = build_gossip(config, exponential_graph(args.peers))
    result = sim.run_all()
    records = [r for r in result.rounds if r["round"] > 0]
    for r in records:
        advance(r["round"], r["accuracy"])
    target = config.rounds.measured_at(config.data.task)
    hit = result.rounds_to(target) if target else None
    at_hit = [r["bytes"] for r in records if r["round"] == hit]
    done = len(records) == config.rounds.rounds
    return DemoRun(
        "gossip",
        f"{args.peers} peers",
        result.final_accuracy,
        len(records),
        hit,
        float(at_hit[0]) if at_hit else None,
        float(records[-1]["bytes"]) if records else 0.0,
        result.wall_s,
        result.virtual_s,
        done,
        "" if done else f"only {len(records)} of {config.rounds.rounds} rounds completed",
    )
