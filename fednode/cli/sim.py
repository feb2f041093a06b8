"""``fednode sim``: run topology specs in the simulator, write experiment folders, compare.

::

    fednode sim                                   # star, 10 clients (as before)
    fednode sim --topology topologies/ring16.toml --rounds 30 --task synthetic --out runs/ring
    fednode sim --topology random_regular_4 --nodes 10000 --task synthetic --rounds 100
    fednode sim --compare ring16 torus4x4 exponential16 --task synthetic --out runs/cmp

``--topology`` takes a spec path or a shipped name (``topologies/``); ``star`` alone (the
default) is a star of ``--nodes`` clients. ``--nodes`` overrides the spec's node count
(for ``star``: the number of clients). Parsing and presentation only: the work is
:func:`fednode.sim.experiment.run_experiment`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from ..config import DashboardParams, load_config
from ..errors import ConfigError
from ..sim.attackers import parse_attackers_flag
from ..sim.experiment import ExperimentResult, SimOptions, Watch, run_experiment
from ..sim.report import compare, write_folder
from ..sim.topology import Topology, build_topology, load_topology
from ..training.aggregate import report_note
from .common import (
    add_common,
    add_dashboard,
    add_personal,
    add_privacy,
    console,
    dashboard_overrides,
    overrides,
    personal_overrides,
    privacy_overrides,
)
from .flower import add_flower, flower_overrides

#: ``fednode sim`` suggests ``--workers`` for runs of at least this many nodes on one worker
HINT_WORKERS_FROM = 5000


def add_parser(sub: Any) -> None:
    sim = sub.add_parser(
        "sim",
        help="run a federation in the simulator (virtual time)",
        description="Run N nodes in one process over the memory transport "
        "with virtual time; the same role code as real nodes.",
    )
    add_sim_arguments(sim)


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``fednode sim`` flag, the common config flags included."""
    parser.add_argument(
        "--topology",
        default="star",
        help="spec file or name in topologies/ (default: a star of --nodes clients)",
    )
    parser.add_argument(
        "--compare", nargs="+", metavar="SPEC", help="run several specs; plot them on shared axes"
    )
    parser.add_argument(
        "--nodes", type=int, help="node count (overrides the spec; for 'star': clients, 10)"
    )
    parser.add_argument("--graph-seed", type=int, help="seed of a random graph (overrides spec)")
    parser.add_argument("--out", type=Path, help="experiment folder (jsonl, summary, plots)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--driver",
        choices=("des", "trio"),
        default="des",
        help="des: discrete-event driver (fast, default); trio: the real runner (fidelity)",
    )
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="skip Ed25519 signatures and CBOR for very large runs (membership, shapes and "
        "finiteness are still checked); default: every frame signed and verified",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="des: worker processes sharing the nodes (1)"
    )
    parser.add_argument(
        "--train-cost",
        type=float,
        default=0.1,
        help="virtual seconds of compute per 100 examples per epoch (0.1)",
    )
    parser.add_argument(
        "--eval-nodes",
        type=int,
        default=200,
        help="gossip: peers scored on the test set each round (200; 0 = all)",
    )
    parser.add_argument(
        "--node-metrics",
        type=int,
        default=1000,
        help="per-node metrics for at most this many nodes (1000; 0 = all)",
    )
    parser.add_argument(
        "--gossip-mode", choices=("sync", "async"), default="sync", help="gossip averaging"
    )
    parser.add_argument(
        "--consensus-only",
        action="store_true",
        help="gossip: average random models without training (the spectral bound applies)",
    )
    parser.add_argument(
        "--attack",
        metavar="KIND",
        help="attack the attackers run: signflip, scale:<k>, gaussian:<sigma>, labelflip, "
        "alie, ipm:<eps> (sets attack.kind)",
    )
    parser.add_argument(
        "--attackers",
        metavar="F|IDS",
        help="who attacks: a fraction of the clients/peers (0.2, drawn from --seed) or node "
        "ids (3,7); overrides the spec's attackers / attacker_fraction",
    )
    parser.add_argument(
        "--omniscient",
        dest="omniscient",
        action="store_const",
        const=True,
        help="alie/ipm attackers know every honest update of the round (attack.omniscient)",
    )
    parser.add_argument(
        "--robust-gossip",
        metavar="SPEC",
        help="gossip: ClippedGossip, clip:<tau> or clip:auto[:<delta>] (gossip.robust)",
    )
    add_common(parser)
    add_dashboard(parser, sim=True)
    add_privacy(parser)
    add_personal(parser)
    add_flower(parser)


def _attack_overrides(args: argparse.Namespace, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        **overrides(args, extra),
        **{
            k: v
            for k, v in (
                ("attack.kind", args.attack),
                ("attack.omniscient", args.omniscient),
                ("gossip.robust", args.robust_gossip),
            )
            if v is not None
        },
    }


def _options(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        driver=args.driver,
        unsigned=args.unsigned,
        workers=args.workers,
        train_cost_s=args.train_cost,
        eval_nodes=args.eval_nodes,
        node_metrics=args.node_metrics,
        gossip_mode=args.gossip_mode,
        consensus_only=args.consensus_only,
    )


def _topology(spec: str, args: argparse.Namespace) -> Topology | str:
    if spec == "star" and not Path(spec).is_file():
        clients = args.nodes if args.nodes is not None else 10
        if clients < 1:
            raise ConfigError("nodes", clients, "an integer >= 1")
        return build_topology("star", "star", clients + 1, name="star")
    return spec


def _run_one(
    spec: str,
    args: argparse.Namespace,
    out: Path | None,
    console: Any = None,
    watch: Watch | None = None,
) -> ExperimentResult:
    topo = _topology(spec, args)
    base = load_config(args.config, None) if args.config else None
    flower = args.flower_overrides if hasattr(args, "flower_overrides") else {}
    with _progress(console, Path(spec).stem) as progress:
        res = run_experiment(
            topo,
            base,
            overrides={
                **flower,  # a Flower app's strategy: below the flags
                **_attack_overrides(
                    args,
                    {
                        **dashboard_overrides(args),
                        **privacy_overrides(args),
                        **personal_overrides(args),
                    },
                ),
            },
            options=_options(args),
            n=None if isinstance(topo, Topology) else args.nodes,
            graph_seed=args.graph_seed,
            progress=progress,
            attackers=parse_attackers_flag(args.attackers) if args.attackers else None,
            watch=watch,
        )
    if isinstance(topo, Topology):  # the star shortcut: --nodes counts clients
        res.extra_summary.update({"nodes": topo.n - 1, "topology": "star"})
    if out is not None:
        write_folder(res, out)
    return res


@contextlib.contextmanager
def _progress(console: Any, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress line on ``console`` while a run goes (rounds done of all, elapsed, left),
    removed when it ends; nothing when ``console`` is None or not a terminal. Redrawn only
    when a round ends: no refresh thread beside the run (its workers are forked)."""
    if console is None or not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rounds"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True, auto_refresh=False) as bar:
        task = bar.add_task(f"{label}: building the nodes", total=None)
        bar.refresh()

        def update(done: int, total: int) -> None:
            bar.update(task, description=label, completed=done, total=total)
            bar.refresh()

        yield update


def run_sim(args: argparse.Namespace) -> int:
    """``fednode sim``: 0 when every run finished, 1 when one failed (ConfigError -> caller)."""
    specs = args.compare or [args.topology]
    say = console if not args.json else Console(stderr=True, highlight=False)
    args.flower_overrides = flower_overrides(args, say)  # read once, before any run
    dashboard = load_config(args.config, overrides(args, dashboard_overrides(args))).dashboard
    if dashboard.listen:
        return _run_live(args, dashboard)
    if args.compare:
        for spec in specs:  # fail fast on a bad spec, before any run
            if spec != "star":
                load_topology(spec, n=args.nodes, seed=args.graph_seed)
    results: list[ExperimentResult] = []
    for i, spec in enumerate(specs):
        sub = None
        if args.out is not None:
            sub = args.out / f"{i:02d}-{Path(spec).stem}" if args.compare else args.out
        t0 = time.perf_counter()
        res = _run_one(spec, args, sub, None if args.json else console)
        results.append(res)
        if not args.json:
            _print(console, res, time.perf_counter() - t0)
            hint = _workers_hint(res.n, args.workers, os.cpu_count() or 1)
            if hint:
                console.print(hint)
    if args.compare and args.out is not None:
        compare(results, args.out)
        if not args.json:
            console.print(f"comparison plots in {args.out}")
    if args.json:
        rows = [_summary(r, args) for r in results]
        print(json.dumps(rows if args.compare else rows[0], sort_keys=True))
    return 0 if all(r.error is None for r in results) else 1


def _run_live(args: argparse.Namespace, params: DashboardParams) -> int:
    """``--dashboard``: one run, followed live on the page (:mod:`fednode.sim.live`)."""
    from ..sim.live import run_live

    if args.compare:
        raise ConfigError("dashboard.listen", params.listen, "one --topology, not --compare")
    if args.workers != 1:
        raise ConfigError("dashboard.listen", params.listen, "--workers 1 (one process)")
    spec = args.topology
    show = None if args.json else console
    t0 = time.perf_counter()

    def ready(url: str) -> None:
        if show is not None:
            show.print(f"dashboard at [bold]{url}[/] (read-only)", highlight=False)

    res = run_live(
        lambda watch: _run_one(spec, args, args.out, show, watch),
        params,
        title=Path(spec).stem,
        kind="simulation",
        on_ready=ready,
    )
    if res is None:
        console.print("stopped: the simulation was interrupted")
        return 130
    if args.json:
        print(json.dumps(_summary(res, args), sort_keys=True))
    else:
        _print(console, res, time.perf_counter() - t0)
    return 0 if res.error is None else 1


def _workers_hint(n: int, workers: int, cores: int) -> str | None:
    """A hint to use the machine's other cores for a big run on one worker."""
    if workers != 1 or cores < 2 or n < HINT_WORKERS_FROM:
        return None
    return (
        f"hint: {n:,} nodes ran in one process; --workers {min(cores, 8)} shards them over "
        f"{min(cores, 8)} cores (near-linear here; results are deterministic per worker count)"
    )


def _summary(res: ExperimentResult, args: argparse.Namespace) -> dict[str, Any]:
    return {"topology": res.name, **res.summary()}


def _print(console: Any, res: ExperimentResult, wall: float) -> None:
    from rich.table import Table

    table = Table(title=f"{res.name}: {res.kind}, {res.n} nodes", title_justify="left")
    rows = res.table()
    robust = any(report_note(r) for r in rows)
    private = any(r.get("dp_epsilon") is not None for r in rows)
    personal = any(r.get("personal_accuracy") is not None for r in rows)
    cols = (
        ["round", "accuracy", "loss", "MB", "MB total"]
        + (["consensus"] if res.consensus is not None else [])
        + (["aggregation"] if robust else [])
        + (["epsilon"] if private else [])
        + (["personal acc", "personal min"] if personal else [])
    )
    for col in cols:
        table.add_column(col, justify="right")
    shown = rows if len(rows) <= 30 else rows[:10] + rows[-10:]
    for row in shown:
        cells = [
            str(row["round"]),
            _fmt(row["accuracy"]),
            _fmt(row["loss"]),
            f"{row['bytes'] / 1e6:.2f}",
            f"{row['bytes_total'] / 1e6:.2f}",
        ]
        if res.consensus is not None:
            ce = row.get("consensus_error")
            cells.append("-" if ce is None else f"{ce:.2e}")
        if robust:
            cells.append(report_note(row) or "-")
        if private:
            eps = row.get("dp_epsilon")
            cells.append("-" if eps is None else f"{eps:.3f}")
        if personal:  # [personal]: members' own models on their own held-out data
            cells += [_fmt(row.get("personal_accuracy")), _fmt(row.get("personal_accuracy_min"))]
        table.add_row(*cells)
    console.print(table)
    if res.error:
        console.print(f"[red]failed[/]: {res.error}")
    for note in res.notes:
        console.print(f"note: {note}")
    privacy = res.summary().get("privacy")
    if privacy:
        console.print(
            f"privacy ({privacy['mode']}): epsilon [bold]{privacy['epsilon']:.3f}[/] at delta "
            f"{privacy['delta']:g} after {privacy['rounds_released']} rounds "
            f"({privacy['accountant']}, noise multiplier {privacy['noise_multiplier']:g})"
        )
        if privacy["stopped_by_budget"]:
            console.print(f"stopped: {privacy['stop_reason']}")
    mine = res.summary().get("personal")
    if mine:
        console.print(
            f"personalised accuracy ({mine['mode']}): mean [bold]{_fmt(mine['final_accuracy'])}"
            f"[/], min {_fmt(mine['final_accuracy_min'])} over {mine['members']} members"
        )
    console.print(
        f"final accuracy [bold]{res.final_accuracy:.4f}[/] after {len(res.rounds)} rounds; "
        f"{res.messages:,} messages, {res.bytes.sum() / 1e6:.1f} MB; {wall:.1f}s wall, "
        f"{res.virtual_s:.1f}s virtual" + (f"; folder {res.out_dir}" if res.out_dir else "")
    )
    console.print(target_line(res.measure_accuracy, *res.to_target()))


def target_line(target: float | None, rounds: int | None, nbytes: int | None) -> str:
    """The bytes-to-target sentence of ``fednode sim`` and ``fednode demo``."""
    if target is None:
        return "bytes to target: not measured (set rounds.measure_accuracy)"
    if rounds is None or nbytes is None:
        return f"bytes to {target:.0%}: not reached"
    return f"bytes to {target:.0%}: {nbytes / 1e6:.3f} MB on all links, reached at round {rounds}"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
