"""``scripts/lan-demo``: a real federation of ``fednode run`` processes on a netns LAN.

Builds one network namespace per node on a private bridge (root and iproute2 needed),
starts the nodes with no addresses or config (mDNS finds them), prints progress and a
results table, and removes every namespace and process again — also on an error or
Ctrl-C. Traffic stays inside the namespaces it creates.
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from .lan import RUNNERS, LanResult
from .netns import LanTimeout, NetnsError, cleanup_leftovers, unavailable_reason

console = Console(highlight=False, width=None if sys.stdout.isatty() else 110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/lan-demo",
        description="Run a federation of real fednode processes, each in its own network "
        "namespace on a private bridge, discovering each other by mDNS only. Needs root "
        "and iproute2; everything it creates is removed when it ends.",
    )
    p.add_argument(
        "--topology",
        choices=sorted(RUNNERS),
        default="star",
        help="star: coordinator + clients; two-tier: + regional aggregators; "
        "gossip: peers only, sharing a consortium (network) key (default: star)",
    )
    p.add_argument("--clients", type=int, default=4, help="clients (star, two-tier; 4)")
    p.add_argument("--aggregators", type=int, default=2, help="aggregators (two-tier; 2)")
    p.add_argument("--peers", type=int, default=4, help="gossip peers (gossip; 4)")
    p.add_argument("--rounds", type=int, help="rounds (star 5, two-tier 3, gossip 8)")
    p.add_argument("--local-epochs", type=int, help="local epochs E (default: fednode's, 5)")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds the federation may take (300)"
    )
    p.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="keep each node's key and JSON-lines log under DIR (default: a temp dir, removed)",
    )
    return p


def _kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"local_epochs": args.local_epochs, "timeout": args.timeout}
    if args.rounds is not None:
        kw["rounds"] = args.rounds
    if args.topology == "star":
        kw["clients"] = args.clients
    elif args.topology == "two-tier":
        kw["clients"], kw["aggregators"] = args.clients, args.aggregators
    else:
        kw["peers"] = args.peers
    return kw


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return "-" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def results_table(result: LanResult) -> Table:
    table = Table(title=f"{result.topology}: rounds", title_justify="left")
    cols: tuple[str, ...]
    if result.topology == "gossip":
        cols = ("round", "accuracy", "accuracy_min", "distance", "distance_max", "neighbours")
    else:
        cols = ("round", "accuracy", "loss", "clients_completed", "failed", "duration_s")
        if result.topology == "two-tier":
            cols = (*cols[:3], "aggregators", *cols[3:])
    for col in cols:
        table.add_column(col.replace("_", " "), justify="right")
    for row in result.rounds:
        table.add_row(*(_fmt(row.get(c, "")) for c in cols))
    return table


def nodes_table(result: LanResult) -> Table:
    table = Table(title="nodes", title_justify="left")
    for col in ("node", "role", "address", "peer id", "exit", "stopped", "rejected"):
        table.add_column(col)
    for n in result.nodes:
        table.add_row(
            n.name,
            n.role,
            n.address,
            n.peer_id[:16] + "…",
            str(n.exit_code),
            n.stopped,
            ", ".join(f"{k} {v}" for k, v in n.rejected.items()) or "-",
        )
    return table


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the LAN's teardown


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        console.print(f"[red]cannot run the LAN demo[/]: {reason}")
        return 2
    removed = cleanup_leftovers()
    if removed:
        console.print(f"removed {len(removed)} namespaces left by an earlier run")
    signal.signal(signal.SIGTERM, _terminate)
    workdir = args.keep_logs or Path(tempfile.mkdtemp(prefix="fednode-lan-"))
    t0 = time.monotonic()

    def progress(text: str) -> None:
        console.print(f"[dim]{time.monotonic() - t0:6.1f}s[/]  {text}")

    console.print(
        f"[bold]fednode LAN demo[/]: {args.topology}, one network namespace per node, "
        "mDNS discovery, no addresses given"
    )
    try:
        result = RUNNERS[args.topology](workdir, progress=progress, **_kwargs(args))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: every namespace and process was removed")
        return 130
    except (LanTimeout, NetnsError) as exc:
        console.print(f"[red]failed[/]: {exc}")
        return 1
    finally:
        if args.keep_logs is None:
            shutil.rmtree(workdir, ignore_errors=True)
    console.print(results_table(result))
    console.print(nodes_table(result))
    console.print(
        f"{result.wall_s:.1f}s wall ({result.startup_s:.1f}s until every node listened); "
        "namespaces removed" + (f"; logs in {workdir}" if args.keep_logs else "")
    )
    return 0 if result.clean_exit and result.rounds else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
