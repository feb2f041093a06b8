"""``fednode`` command line: parsing and presentation only; the work lives in the package.

Commands: ``run`` (a real node), ``demo``, ``sim``, ``train --centralized``, ``keygen``.
Every command has ``--help``; configuration errors print one line naming the field and
exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import __version__
from .config import NodeConfig, load_config
from .errors import ConfigError, FednodeError

console = Console(highlight=False)

DEMO_TOPOLOGIES = ("star", "two-tier", "gossip")

# CLI flag -> dotted config field
COMMON_FLAGS: dict[str, tuple[str, type, str]] = {
    "seed": ("seed", int, "random seed for model init, partitions and selection"),
    "rounds": ("rounds.rounds", int, "number of federated rounds"),
    "fraction_fit": ("rounds.fraction_fit", float, "fraction of available clients per round"),
    "min_fit_clients": ("rounds.min_fit_clients", int, "fewest results a round accepts"),
    "min_available_clients": (
        "rounds.min_available_clients",
        int,
        "clients needed before a round starts",
    ),
    "round_deadline": ("rounds.round_deadline_s", float, "seconds a round waits for results"),
    "target_accuracy": ("rounds.target_accuracy", float, "stop early at this test accuracy"),
    "local_epochs": ("train.local_epochs", int, "local epochs per round (E)"),
    "batch_size": ("train.batch_size", int, "local minibatch size"),
    "lr": ("train.lr", float, "local SGD learning rate"),
    "prox_mu": ("train.prox_mu", float, "FedProx proximal term (0 = off)"),
    "task": (
        "data.task",
        str,
        "digits, digits:linear, digits:numpy, synthetic[:<n>] or package.module:Class",
    ),
    "partition": ("data.partition", str, "'iid', 'dirichlet:<alpha>' or 'shards:<k>'"),
    "codec": ("wire.codec", str, "update codec: none, fp16, int8, topk:<f>[+int8][+zstd]"),
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    for flag, (_dotted, typ, help_) in COMMON_FLAGS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=typ, help=help_)
    p.add_argument(
        "--no-error-feedback",
        dest="error_feedback",
        action="store_const",
        const=False,
        help="disable error feedback for lossy codecs",
    )


def _overrides(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {dotted: getattr(args, flag, None) for flag, (dotted, _t, _h) in COMMON_FLAGS.items()}
    out["wire.error_feedback"] = getattr(args, "error_feedback", None)
    out.update(extra or {})
    return out


def _config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> NodeConfig:
    return load_config(getattr(args, "config", None), _overrides(args, extra))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fednode",
        description="One node program for federated learning: client, regional aggregator, "
        "coordinator or gossip peer. Star, two-tier and gossip from one codebase.",
    )
    parser.add_argument("--version", action="version", version=f"fednode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a real node (libp2p; finds peers by mDNS)",
        description="Run one fednode node on the network. With no config it listens on "
        "all interfaces, finds peers by mDNS and takes the role given.",
    )
    run.add_argument(
        "--role", choices=("client", "aggregator", "coordinator", "peer"), help="node role"
    )
    run.add_argument("--client-index", type=int, help="this client's partition index")
    run.add_argument("--num-clients", type=int, help="number of partitions")
    run.add_argument("--listen", help="listen multiaddr (/ip4/0.0.0.0/tcp/0)")
    run.add_argument("--bootstrap", action="append", help="peer multiaddr to dial (repeat)")
    run.add_argument(
        "--no-mdns", dest="mdns", action="store_const", const=False, help="disable mDNS discovery"
    )
    run.add_argument("--federation", help="federation name (nodes only join their own)")
    run.add_argument(
        "--region", help="region label: clients go under an aggregator of their region"
    )
    run.add_argument(
        "--gossip-mode",
        choices=("sync", "async"),
        help="peer: synchronous MH rounds or asynchronous pairwise gossip (sync)",
    )
    run.add_argument("--degree", type=int, help="peer: neighbours to keep (4)")
    run.add_argument("--key-file", help="node key file (created if missing)")
    run.add_argument("--allow", action="append", help="allowed peer id (repeat); closes membership")
    run.add_argument("--network-key-file", help="pre-shared network key (private network)")
    run.add_argument(
        "--checkpoint-dir", help="coordinator: write a versioned checkpoint here every round"
    )
    resume = run.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        dest="resume_from",
        action="store_const",
        const="latest",
        help="coordinator: continue from the newest checkpoint in --checkpoint-dir, if any",
    )
    resume.add_argument(
        "--resume-from", metavar="PATH", help="coordinator: continue from this checkpoint"
    )
    run.add_argument(
        "--control-socket",
        metavar="PATH",
        help="serve `fednode status` / `fednode promote` on this Unix socket (mode 0600)",
    )
    run.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464)",
    )
    run.add_argument(
        "--log",
        choices=("human", "json"),
        default="human",
        help="event output: a round table (human) or JSON lines (json)",
    )
    _add_common(run)

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
    _add_common(demo)

    sim = sub.add_parser(
        "sim",
        help="run a federation in the simulator (virtual time)",
        description="Run N nodes in one process over the memory transport "
        "with virtual time; the same role code as real nodes.",
    )
    from .sim.cli_sim import add_sim_arguments

    add_sim_arguments(sim)

    train = sub.add_parser(
        "train",
        help="centralized baseline on all data",
        description="Train the task's model on all training data, "
        "without federation, as a baseline.",
    )
    train.add_argument(
        "--centralized",
        action="store_true",
        required=True,
        help="train on the union of all data (the only mode)",
    )
    train.add_argument("--epochs", type=int, default=15, help="training epochs (15)")
    _add_common(train)

    status = sub.add_parser(
        "status",
        help="show a running node's role, round and tree",
        description="Ask a running node (started with --control-socket) for its state.",
    )
    status.add_argument("--control-socket", metavar="PATH", required=True, help="its socket")
    status.add_argument("--json", action="store_true", help="print the raw JSON reply")

    promote = sub.add_parser(
        "promote",
        help="promote a running client to regional aggregator",
        description="Ask a running coordinator (started with --control-socket) to turn one "
        "of its direct clients into a regional aggregator, without restarting it, and move "
        "a share of that client's region under it. It takes effect before the next round.",
    )
    promote.add_argument("peer", help="the client's peer id (or a unique part of it)")
    promote.add_argument(
        "--to", choices=("aggregator",), default="aggregator", help="new role (aggregator)"
    )
    promote.add_argument(
        "--share",
        type=float,
        default=0.5,
        help="fraction of the client's region moved under it (0.5)",
    )
    promote.add_argument(
        "--control-socket", metavar="PATH", required=True, help="the coordinator's socket"
    )

    keygen = sub.add_parser(
        "keygen",
        help="create a node key (Ed25519 = libp2p PeerID)",
        description="Write a new Ed25519 node key (mode 0600).",
    )
    keygen.add_argument("--out", type=Path, default=Path("fednode.key"), help="key file path")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing file")
    return parser


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
            _human(r["bytes_up"]),
            _human(r["bytes_down"]),
        )
    return table


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


@dataclass
class DemoRun:
    """One row of the demo's results table."""

    topology: str
    nodes: str
    accuracy: float
    rounds: int
    hit: int | None
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
    config = _config(
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
    for col in ("topology", "nodes", "accuracy", "rounds", "95% at", "bytes", "wall", "virtual"):
        table.add_column(col, justify="left" if col in ("topology", "nodes") else "right")
    for r in rows:
        table.add_row(
            r.topology if r.ok else f"[red]{r.topology}[/]",
            r.nodes,
            f"{r.accuracy:.4f}",
            str(r.rounds),
            str(r.hit) if r.hit else "-",
            _human(r.bytes_total),
            f"{r.wall_s:.1f}s",
            f"{r.virtual_s:.1f}s",
        )
    console.print(table)
    for r in rows:
        if r.note:
            console.print(f"[red]{r.topology} failed[/]: {r.note}")
    console.print(
        "accuracy: the coordinator's model on the held-out split (gossip: the mean over "
        "peers of each peer's own model); bytes: everything any node sent (all links)"
    )
    return 0 if all(r.ok for r in rows) else 1


DemoProgress = Callable[[int, float], None]


def _hierarchy_row(name: str, nodes: str, sim: Any, root: Any, advance: DemoProgress) -> DemoRun:
    def on_round(s: Any, peer: str, event: str, data: dict[str, Any]) -> None:
        if event == "round" and peer == root.peer:
            advance(data["round"], data["accuracy"])

    sim.fault_hooks.append(on_round)
    result = sim.run(root)
    ok = result.stop is not None and result.stop.error is None
    if name == "star":
        console.print(round_table(result.rounds, "star FedAvg"))
    return DemoRun(
        name,
        nodes,
        result.final_accuracy,
        len(result.rounds),
        result.rounds_to(0.95),
        float(result.network.sent_bytes),
        result.wall_s,
        result.virtual_s,
        ok,
        "" if ok else str(result.stop.reason if result.stop else "no result"),
    )


def _demo_star(config: NodeConfig, args: argparse.Namespace, advance: DemoProgress) -> DemoRun:
    from .sim.scenarios import build_star

    sim, root = build_star(config, args.clients)
    return _hierarchy_row("star", f"1+{args.clients}", sim, root, advance)


def _demo_two_tier(config: NodeConfig, args: argparse.Namespace, advance: DemoProgress) -> DemoRun:
    from .sim.scenarios import build_two_tier

    # a round's results come from the aggregators (each one the weighted sum of its clients)
    rounds = replace(config.rounds, min_fit_clients=args.aggregators)
    sim, root = build_two_tier(replace(config, rounds=rounds), args.aggregators, args.clients)
    nodes = f"1+{args.aggregators}+{args.clients}"
    return _hierarchy_row("two-tier", nodes, sim, root, advance)


def _demo_gossip(config: NodeConfig, args: argparse.Namespace, advance: DemoProgress) -> DemoRun:
    from .sim.gossip import build_gossip
    from .sim.topology import exponential_graph

    sim, _nodes = build_gossip(config, exponential_graph(args.peers))
    result = sim.run_all()
    records = [r for r in result.rounds if r["round"] > 0]
    for r in records:
        advance(r["round"], r["accuracy"])
    hit = result.rounds_to("accuracy", at_least=0.95)
    done = len(records) == config.rounds.rounds
    return DemoRun(
        "gossip",
        f"{args.peers} peers",
        result.final_accuracy,
        len(records),
        hit,
        float(records[-1]["bytes"]) if records else 0.0,
        result.wall_s,
        result.virtual_s,
        done,
        "" if done else f"only {len(records)} of {config.rounds.rounds} rounds completed",
    )


def cmd_sim(args: argparse.Namespace) -> int:
    from .sim.cli_sim import run_sim

    return run_sim(args)


def cmd_train(args: argparse.Namespace) -> int:
    from .training.task import load_task

    if args.epochs < 1:
        raise ConfigError("--epochs", args.epochs, "an integer >= 1")
    config = _config(args)
    task = load_task(config.data.task, seed=config.seed)
    params = task.init_params(config.seed)
    table = Table(title=f"centralized {config.data.task}", title_justify="left")
    for col in ("epoch", "accuracy", "loss"):
        table.add_column(col, justify="right")
    for epoch in range(1, args.epochs + 1):
        params, _n, _m = task.train(
            params,
            {
                "local_epochs": 1,
                "batch_size": config.train.batch_size,
                "lr": config.train.lr,
                "momentum": config.train.momentum,
                "round": epoch,
            },
        )
        loss, _n, metrics = task.evaluate(params)
        table.add_row(str(epoch), f"{metrics['accuracy']:.4f}", f"{loss:.4f}")
    console.print(table)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from .crypto.identity import Identity, save_key

    identity = Identity.generate()
    save_key(identity, args.out, force=args.force)
    console.print(f"wrote {args.out} (mode 0600); peer id {identity.peer_id}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from .control import request

    reply = request(args.control_socket, {"op": "status"})
    if args.json:
        console.print(json.dumps(reply, indent=2, sort_keys=True), markup=False)
        return 0 if reply.get("ok") else 1
    if not reply.get("ok"):
        console.print(f"[red]error[/]: {reply.get('error')}", markup=True)
        return 1
    facts = ", ".join(f"{k} {reply[k]}" for k in ("round", "model_version") if k in reply)
    console.print(f"[bold]{reply['role']}[/] {facts}")
    if "parent" in reply:
        console.print(f"parent: {reply['parent'] or '-'}")
    tree = reply.get("tree")
    if tree is not None:
        table = Table(title="tree", title_justify="left")
        table.add_column("parent")
        table.add_column("children", justify="right")
        table.add_column("peers")
        for parent, children in sorted(tree.items()):
            table.add_row(parent or "(coordinator)", str(len(children)), "\n".join(children))
        console.print(table)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from .control import request

    reply = request(args.control_socket, {"op": "promote", "peer": args.peer, "share": args.share})
    if not reply.get("ok"):
        console.print(f"[red]refused[/]: {reply.get('error')}")
        return 1
    console.print(
        f"promotion of {reply['peer']} to {args.to} queued "
        f"(share {reply['share']:.2f}); it takes effect before the next round"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run one node until its role stops or SIGINT/SIGTERM; prints ``stopped: <why>``.

    Exit status: 0 when the role finished or a signal asked the node to stop (it said
    goodbye to its peers first; the line reads ``stopped: SIGTERM``), 1 when the role
    failed (e.g. a round could not complete), 2 for a configuration error, 130 when
    interrupted before the node was up.
    """
    import logging

    import trio

    from .node import Node, json_lines

    extra: dict[str, Any] = {
        "role": args.role,
        "data.client_index": args.client_index,
        "data.num_clients": args.num_clients,
        "net.listen": args.listen,
        "net.bootstrap": tuple(args.bootstrap) if args.bootstrap else None,
        "net.mdns": args.mdns,
        "net.federation": args.federation,
        "tier.region": args.region,
        "gossip.mode": args.gossip_mode,
        "gossip.degree": args.degree,
        "net.key_file": args.key_file,
        "net.network_key_file": args.network_key_file,
        "net.control_socket": args.control_socket,
        "net.metrics_listen": args.metrics_listen,
        "server.checkpoint_dir": args.checkpoint_dir,
        "server.resume_from": args.resume_from,
    }
    if args.allow:
        extra["net.allow"] = tuple(args.allow)
        extra["net.open_membership"] = False
    config = _config(args, extra)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    # main() made SIGTERM a KeyboardInterrupt while starting up ("interrupted", 130); once
    # up, the node's own handler takes over (Node.run: goodbye, "stopped: SIGTERM", 0)
    sink = json_lines() if args.log == "json" else _human_events()
    node = Node(config, on_event=sink)
    console.print(f"[bold]fednode[/] {config.role} {node.peer_id}", highlight=False)
    stop = trio.run(node.run)
    if stop is None:
        console.print("stopped: cancelled")
        return 130
    console.print(f"stopped: {stop.reason}")
    return 0 if stop.error is None else 1


def _human_events() -> Callable[[str, str, dict[str, Any]], None]:
    def sink(peer: str, event: str, data: dict[str, Any]) -> None:
        if event == "round":
            console.print(
                f"round {data['round']:>3}  acc {data['accuracy']:.4f}  loss "
                f"{data['loss']:.4f}  clients {data['completed']}/{data['selected']}  "
                f"up {_human(data['bytes_up'])}  down {_human(data['bytes_down'])}  "
                f"{data['duration_s']:.1f}s"
            )
        elif event == "gossip_round":
            console.print(
                f"round {data['round']:>3}  neighbours {data.get('neighbours', 0)}  "
                f"distance {data.get('distance', float('nan')):.4f}  "
                f"train loss {data.get('train_loss', float('nan')):.4f}"
            )
        elif event == "gossip_eval":
            console.print(
                f"round {data['round']:>3}  acc {data['accuracy']:.4f}  loss {data['loss']:.4f}"
            )
        elif event in ("round_failed", "rejected", "send_failed", "parent_lost"):
            console.print(f"[yellow]{event}[/] {data}")

    return sink


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "sim": cmd_sim,
    "train": cmd_train,
    "keygen": cmd_keygen,
    "status": cmd_status,
    "promote": cmd_promote,
}


def _sigterm_interrupts() -> None:
    """Make SIGTERM behave like Ctrl-C until a node installs its own handler, so a process
    stopped while it loads (torch takes seconds) says "interrupted" and exits 130."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (e.g. tests)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _sigterm_interrupts()
        import torch

        torch.set_num_threads(1)  # tiny models: one thread per process is fastest
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        console.print(f"[red]config error[/]: {exc}")
        return 2
    except FednodeError as exc:
        console.print(f"[red]error[/]: {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
