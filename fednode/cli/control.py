"""``fednode status`` and ``fednode promote``: ask a running node over its control socket."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from .common import console


def add_parsers(sub: Any) -> None:
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


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from ..control import request

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
    from ..control import request

    reply = request(args.control_socket, {"op": "promote", "peer": args.peer, "share": args.share})
    if not reply.get("ok"):
        console.print(f"[red]refused[/]: {reply.get('error')}")
        return 1
    console.print(
        f"promotion of {reply['peer']} to {args.to} queued "
        f"(share {reply['share']:.2f}); it takes effect before the next round"
    )
    return 0
