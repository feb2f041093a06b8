"""``fednode run``: one real node on the network, until its role stops or a signal."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..loop import EventSink
from ..training.aggregate import report_note as note
from .common import (
    add_common,
    add_dashboard,
    add_personal,
    add_privacy,
    console,
    dashboard_overrides,
    human,
    overrides,
    personal_overrides,
    privacy_overrides,
)
from .flower import add_flower, flower_overrides


def add_parser(sub: Any) -> None:
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
    add_dashboard(run)
    add_privacy(run)
    add_personal(run)
    run.add_argument(
        "--log",
        choices=("human", "json"),
        default="human",
        help="event output: a round table (human) or JSON lines (json)",
    )
    run.add_argument(
        "--i-am-testing-an-attack",
        dest="testing_attack",
        action="store_true",
        help="allow an [attack] section: this node poisons its updates (tests only)",
    )
    add_common(run)
    add_flower(run)


def refuse_attack(config: Any, testing: bool) -> None:
    """ConfigError for a real node with an ``[attack]`` unless the operator said it tests
    one (``--i-am-testing-an-attack``); ``attack.omniscient`` is a simulator mode only."""
    from ..errors import ConfigError

    attack = config.attack
    if attack.on and not testing:
        raise ConfigError(
            "attack.kind",
            attack.kind,
            "no attack on a real node (this node would poison its updates); pass "
            "--i-am-testing-an-attack to run it in a test",
        )
    if attack.omniscient:
        raise ConfigError("attack.omniscient", True, "false on a real node (a simulator-only mode)")


def cmd_run(args: argparse.Namespace) -> int:
    """Run one node until its role stops or SIGINT/SIGTERM; prints ``stopped: <why>``.

    Exit status: 0 when the role finished or a signal asked the node to stop (it said
    goodbye to its peers first; the line reads ``stopped: SIGTERM``), 1 when the role
    failed (e.g. a round could not complete), 2 for a configuration error, 130 when
    interrupted before the node was up.
    """
    import logging

    import trio
    from rich.console import Console

    from ..config import load_config
    from ..node import Node, json_lines

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
        **dashboard_overrides(args),
        **privacy_overrides(args),
        **personal_overrides(args),
    }
    if args.allow:
        extra["net.allow"] = tuple(args.allow)
        extra["net.open_membership"] = False
    # with --log json stdout is JSON lines only: the lines for people go to stderr
    say = console if args.log != "json" else Console(stderr=True, highlight=False)
    flower = flower_overrides(args, say)  # a Flower app: its strategy below the flags
    config = load_config(args.config, {**flower, **overrides(args, extra)})
    refuse_attack(config, args.testing_attack)  # before anything starts
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    # main() made SIGTERM a KeyboardInterrupt while starting up ("interrupted", 130); once
    # up, the node's own handler takes over (Node.run: goodbye, "stopped: SIGTERM", 0)
    sink = json_lines() if args.log == "json" else _human_events()
    node = Node(config, on_event=sink)
    say.print(f"[bold]fednode[/] {config.role} {node.peer_id}", highlight=False)
    stop = trio.run(node.run)
    if stop is None:
        say.print("stopped: cancelled")
        return 130
    say.print(f"stopped: {stop.reason}")
    return 0 if stop.error is None else 1


def _human_events() -> EventSink:
    def sink(peer: str, event: str, data: dict[str, Any]) -> None:
        if event == "round":
            console.print(
                f"round {data['round']:>3}  acc {data['accuracy']:.4f}  loss "
                f"{data['loss']:.4f}  clients {data['completed']}/{data['selected']}  "
                f"up {human(data['bytes_up'])}  down {human(data['bytes_down'])}  "
                f"{data['duration_s']:.1f}s{_epsilon(data)}{_personal(data)}"
                f"{_bracket(note(data))}"
            )
        elif event == "gossip_round":
            console.print(
                f"round {data['round']:>3}  neighbours {data.get('neighbours', 0)}  "
                f"distance {data.get('distance', float('nan')):.4f}  "
                f"train loss {data.get('train_loss', float('nan')):.4f}{_epsilon(data)}"
            )
        elif event == "privacy_budget":
            console.print(f"[yellow]{event}[/] {data['reason']}")
        elif event == "gossip_eval":
            console.print(
                f"round {data['round']:>3}  acc {data['accuracy']:.4f}  loss {data['loss']:.4f}"
            )
        elif event in ("metrics", "dashboard"):
            console.print(f"{event} at {data['url']}")
        elif event in (
            "round_failed",
            "rejected",
            "send_failed",
            "parent_lost",
            "update_flagged",
            "claim_capped",
        ):
            console.print(f"[yellow]{event}[/] {data}")

    return sink


def _epsilon(data: dict[str, Any]) -> str:
    """``  eps 1.234 (d=1e-05)`` under [privacy], else ""."""
    if data.get("dp_epsilon") is None:
        return ""
    return f"  eps {data['dp_epsilon']:.3f} (d={data.get('dp_delta', 0):g})"


def _personal(data: dict[str, Any]) -> str:
    """``  personal 0.912 (min 0.801)`` under [personal] holdout > 0, else ""."""
    if data.get("personal_accuracy") is None:
        return ""
    return f"  personal {data['personal_accuracy']:.4f} (min {data['personal_accuracy_min']:.4f})"


def _bracket(text: str) -> str:
    return f"  [{text}]" if text else ""
