"""``fednode`` command line: parsing and presentation only; the work lives in the package.

Commands: ``run`` (a real node), ``demo``, ``sim``, ``train --centralized``, ``keygen``.
Every command has ``--help``; configuration errors print one line naming the field and
exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import __version__
from .config import NodeConfig, load_config
from .errors import ConfigError, FednodeError

console = Console(highlight=False)

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
    run.add_argument("--key-file", help="node key file (created if missing)")
    run.add_argument("--allow", action="append", help="allowed peer id (repeat); closes membership")
    run.add_argument("--network-key-file", help="pre-shared network key (private network)")
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
        description="Run a star federation of --clients clients on the "
        "built-in digits task in the simulator and show the results.",
    )
    demo.add_argument("--clients", type=int, default=10, help="number of clients (10)")
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


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .sim.scenarios import build_star

    config = _config(
        args,
        {
            "rounds.min_available_clients": args.clients,
            "rounds.min_fit_clients": args.min_fit_clients or max(1, args.clients // 2),
        },
    )
    console.print(
        f"[bold]fednode demo[/]: star federation, {args.clients} clients, "
        f"{config.rounds.rounds} rounds, task {config.data.task}, partition "
        f"{config.data.partition}, E={config.train.local_epochs}, codec "
        f"{config.wire.codec} (simulated, virtual time)"
    )
    t0 = time.perf_counter()
    sim, root = build_star(config, args.clients)
    progress = Progress(
        TextColumn("star"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=console,
        auto_refresh=False,
        transient=True,
    )
    bar = progress.add_task("", total=config.rounds.rounds)

    def on_round(s: Any, peer: str, event: str, data: dict[str, Any]) -> None:
        if event == "round" and peer == root.peer:
            progress.update(bar, completed=data["round"], description=f"acc {data['accuracy']:.3f}")
            progress.refresh()

    sim.fault_hooks.append(on_round)
    with progress:
        result = sim.run(root)
    console.print(round_table(result.rounds, "star FedAvg"))
    _summary(result, time.perf_counter() - t0)
    return 0 if result.stop and result.stop.error is None else 1


def _summary(result: Any, wall: float) -> None:
    if result.stop and result.stop.error:
        console.print(f"[red]failed[/]: {result.stop.reason}")
    hit = result.rounds_to(0.95)
    up = sum(r["bytes_up"] for r in result.rounds)
    down = sum(r["bytes_down"] for r in result.rounds)
    console.print(
        f"final accuracy [bold]{result.final_accuracy:.4f}[/] after {len(result.rounds)} "
        f"rounds; 95% reached at round {hit if hit else '-'}; "
        f"{_human(up)} up, {_human(down)} down; {wall:.1f}s wall, "
        f"{result.virtual_s:.1f}s virtual"
    )


def cmd_sim(args: argparse.Namespace) -> int:
    from .sim.cli_sim import run_sim

    return run_sim(args)


def cmd_train(args: argparse.Namespace) -> int:
    from .training.task import load_task

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


def cmd_run(args: argparse.Namespace) -> int:
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
        "net.key_file": args.key_file,
        "net.network_key_file": args.network_key_file,
    }
    if args.allow:
        extra["net.allow"] = tuple(args.allow)
        extra["net.open_membership"] = False
    config = _config(args, extra)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    sink = json_lines() if args.log == "json" else _human_events()
    node = Node(config, on_event=sink)
    console.print(f"[bold]fednode[/] {config.role} {node.peer_id}", highlight=False)
    stop = trio.run(node.run)
    if stop is None:
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
        elif event in ("round_failed", "rejected", "send_failed", "parent_lost"):
            console.print(f"[yellow]{event}[/] {data}")

    return sink


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "sim": cmd_sim,
    "train": cmd_train,
    "keygen": cmd_keygen,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
