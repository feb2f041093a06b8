"""Star, two-tier and gossip federations of real ``fednode run`` processes on a netns LAN.

Each node runs in its own namespace (:mod:`fednode.testing.netns`) with **no address,
bootstrap list or config file**: nodes find each other by mDNS, as on a real LAN. The
flags given are the ones an operator gives anyway — role, rounds, how many clients to
wait for, which data partition a node holds — and, for gossip, the consortium's network
key. ``tests/lan`` asserts on the results; ``scripts/lan-demo`` prints them.

Each ``run_*`` builds the LAN, starts the nodes, waits (bounded) for the federation to
finish, stops the nodes that keep running (SIGTERM: they say goodbye and exit 0) and
tears everything down, also on failure or Ctrl-C.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .netns import Lan, LanTimeout, NodeProcess

Progress = Callable[[str], None]

#: how long a whole federation may take once its nodes are started (2-core machine,
#: each process needs ~10 s of CPU just to start: torch, libp2p, the dataset)
FEDERATION_TIMEOUT_S = 240.0


@dataclass
class NodeSummary:
    name: str
    role: str
    address: str
    peer_id: str
    exit_code: int | None
    stopped: str  # the reason of its "stopped" event
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass
class LanResult:
    topology: str
    #: per round: the coordinator's round records (star, two-tier), or for gossip the
    #: mean over peers of accuracy / distance
    rounds: list[dict[str, Any]]
    nodes: list[NodeSummary]
    wall_s: float
    startup_s: float
    #: gossip: each peer's gossip_round and gossip_eval events
    per_peer: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def clean_exit(self) -> bool:
        return all(n.exit_code == 0 for n in self.nodes)


def _quiet(_: str) -> None:
    return None


def _summaries(nodes: list[NodeProcess], roles: dict[str, str]) -> list[NodeSummary]:
    out = []
    for node in nodes:
        stopped = node.events("stopped")
        out.append(
            NodeSummary(
                name=node.name,
                role=roles[node.name],
                address=node.address,
                peer_id=node.peer_id or "?",
                exit_code=node.returncode,
                stopped=stopped[-1]["reason"] if stopped else "",
                rejected=stopped[-1].get("rejected", {}) if stopped else {},
            )
        )
    return out


def _round_watch(coordinator: NodeProcess, progress: Progress, total: int) -> Callable[[], None]:
    reported = 0

    def poll() -> None:
        nonlocal reported
        for r in coordinator.events("round")[reported:]:
            reported += 1
            progress(
                f"round {r['round']}/{total}: accuracy {r['accuracy']:.4f}, "
                f"{r['clients_completed']} clients"
                + (f" via {r['aggregators']} aggregators" if r.get("aggregators") else "")
                + f", {r['duration_s']:.1f}s"
            )

    return poll


def _started(lan: Lan, nodes: list[NodeProcess], progress: Progress, timeout: float) -> float:
    took = lan.wait_for(lambda: all(n.peer_id for n in nodes), timeout, "nodes listening")
    progress(f"{len(nodes)} nodes listening after {took:.1f}s")
    return took


def _start_coordinator(
    lan: Lan, rounds: int, clients: int, min_fit: int, common: list[str]
) -> NodeProcess:
    args = ["--role", "coordinator", "--rounds", str(rounds)]
    args += ["--min-available-clients", str(clients), "--min-fit-clients", str(min_fit)]
    return lan.start(0, [*args, *common], name="coordinator")


def _start_client(
    lan: Lan, index: int, i: int, clients: int, common: list[str], region: str = ""
) -> NodeProcess:
    """Client ``i`` of ``clients`` in namespace ``index`` (``--region`` when given)."""
    args = ["--role", "client", "--client-index", str(i), "--num-clients", str(clients)]
    args += ["--region", region] if region else []
    return lan.start(index, [*args, *common], name=f"client{i}")


def _run_to_end(
    lan: Lan,
    kind: str,
    nodes: list[NodeProcess],
    *,
    rounds: int,
    started: tuple[float, float],
    progress: Progress,
    timeout: float,
) -> LanResult:
    """Wait for the coordinator (``nodes[0]``) to finish ``rounds``, stop the rest, report.
    ``started``: (monotonic start of the run, seconds the nodes took to listen)."""
    coord = nodes[0]
    lan.wait_for(
        lambda: coord.returncode is not None,
        timeout,
        f"coordinator finishing {rounds} rounds",
        on_poll=_round_watch(coord, progress, rounds),
    )
    progress(f"coordinator: {coord.events('stopped')[-1]['reason']}; stopping the rest")
    lan.stop(nodes[1:])
    roles = {n.name: n.name.rstrip("0123456789") for n in nodes}
    t0, startup = started
    return LanResult(
        kind, coord.events("round"), _summaries(nodes, roles), time.monotonic() - t0, startup
    )


def run_star(
    workdir: Path,
    *,
    clients: int = 4,
    rounds: int = 5,
    local_epochs: int | None = None,
    progress: Progress = _quiet,
    timeout: float = FEDERATION_TIMEOUT_S,
) -> LanResult:
    """1 coordinator + ``clients`` clients, mDNS only; the coordinator runs ``rounds``."""
    t0 = time.monotonic()
    common = [] if local_epochs is None else ["--local-epochs", str(local_epochs)]
    with Lan(1 + clients, workdir) as lan:
        progress(f"LAN up: {lan.size} namespaces on bridge {lan.hub}")
        nodes = [_start_coordinator(lan, rounds, clients, clients, common)]
        nodes += [_start_client(lan, 1 + i, i, clients, common) for i in range(clients)]
        startup = _started(lan, nodes, progress, timeout)
        return _run_to_end(
            lan,
            "star",
            nodes,
            rounds=rounds,
            started=(t0, startup),
            progress=progress,
            timeout=timeout,
        )


def run_two_tier(
    workdir: Path,
    *,
    aggregators: int = 2,
    clients: int = 4,
    rounds: int = 3,
    local_epochs: int | None = None,
    progress: Progress = _quiet,
    timeout: float = FEDERATION_TIMEOUT_S,
) -> LanResult:
    """Coordinator, ``aggregators`` regional aggregators and ``clients`` clients, mDNS only.

    Aggregator ``a`` serves region ``r<a>``; client ``i`` is in region ``r<i mod
    aggregators>`` (``--region``, the one setting a two-tier deployment needs beyond the
    role). A client moves under the aggregator of its region when it hears that
    aggregator's advert, and the coordinator places it there too (same region first). The
    aggregators start with the coordinator and the clients once the coordinator is
    connected to every aggregator, so the first round already runs through them.
    """
    t0 = time.monotonic()
    common = [] if local_epochs is None else ["--local-epochs", str(local_epochs)]
    with Lan(1 + aggregators + clients, workdir) as lan:
        progress(f"LAN up: {lan.size} namespaces on bridge {lan.hub}")
        coord = _start_coordinator(lan, rounds, clients, aggregators, common)
        aggs = [
            lan.start(
                1 + a, ["--role", "aggregator", "--region", f"r{a}", *common], f"aggregator{a}"
            )
            for a in range(aggregators)
        ]
        startup = _started(lan, [coord, *aggs], progress, timeout)

        def coordinator_sees_aggregators() -> bool:
            up = {e["peer"] for e in coord.events("peer_up")}
            return all(a.peer_id in up for a in aggs)

        took = lan.wait_for(coordinator_sees_aggregators, timeout, "aggregators connected")
        progress(f"coordinator connected to {aggregators} aggregators after {took:.1f}s")
        nodes = [coord, *aggs]
        nodes += [
            _start_client(lan, 1 + aggregators + i, i, clients, common, f"r{i % aggregators}")
            for i in range(clients)
        ]
        startup += _started(lan, nodes, progress, timeout)
        return _run_to_end(
            lan,
            "two-tier",
            nodes,
            rounds=rounds,
            started=(t0, startup),
            progress=progress,
            timeout=timeout,
        )


def write_network_key(path: Path) -> Path:
    """A fresh consortium key in go-libp2p ``swarm.key`` format (mode 0600)."""
    path.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{os.urandom(32).hex()}\n")
    path.chmod(0o600)
    return path


def run_gossip(
    workdir: Path,
    *,
    peers: int = 4,
    rounds: int = 8,
    local_epochs: int | None = None,
    progress: Progress = _quiet,
    timeout: float = FEDERATION_TIMEOUT_S,
) -> LanResult:
    """``peers`` gossip peers, no coordinator: only the consortium key (pnet) is shared.

    Each peer waits for the other ``peers - 1`` (``--min-available-clients``), then runs
    ``rounds`` rounds of local training + Metropolis-Hastings averaging and stops.
    """
    t0 = time.monotonic()
    common = [] if local_epochs is None else ["--local-epochs", str(local_epochs)]
    workdir.mkdir(parents=True, exist_ok=True)
    key = write_network_key(workdir / "consortium.key")
    with Lan(peers, workdir) as lan:
        progress(f"LAN up: {lan.size} namespaces on bridge {lan.hub}; consortium key {key.name}")
        nodes = [
            lan.start(
                i,
                [
                    "--role",
                    "peer",
                    "--network-key-file",
                    str(key),
                    "--rounds",
                    str(rounds),
                    "--min-available-clients",
                    str(peers),
                    "--client-index",
                    str(i),
                    "--num-clients",
                    str(peers),
                    *common,
                ],
                name=f"peer{i}",
            )
            for i in range(peers)
        ]
        startup = _started(lan, nodes, progress, timeout)
        reported = 0

        def poll() -> None:
            nonlocal reported
            done = min(len(n.events("gossip_eval")) for n in nodes)
            for rnd in range(reported + 1, done + 1):
                row = _gossip_row(nodes, rnd)
                progress(
                    f"round {rnd}/{rounds}: mean accuracy {row['accuracy']:.4f}, "
                    f"neighbour distance {row['distance']:.4f}"
                )
            reported = max(reported, done)

        lan.wait_for(
            lambda: all(n.returncode is not None for n in nodes),
            timeout,
            f"{peers} peers finishing {rounds} rounds",
            on_poll=poll,
        )
        poll()
        per_peer = {n.name: n.events("gossip_round") + n.events("gossip_eval") for n in nodes}
        table = [_gossip_row(nodes, r) for r in range(1, rounds + 1)]
        return LanResult(
            "gossip",
            [row for row in table if row["peers"]],
            _summaries(nodes, {n.name: "peer" for n in nodes}),
            time.monotonic() - t0,
            startup,
            per_peer,
        )


def _gossip_row(nodes: list[NodeProcess], rnd: int) -> dict[str, Any]:
    accs = [e["accuracy"] for n in nodes for e in n.events("gossip_eval") if e["round"] == rnd]
    recs = [e for n in nodes for e in n.events("gossip_round") if e["round"] == rnd]
    dists = [r["distance"] for r in recs if not math.isnan(r["distance"])]
    return {
        "round": rnd,
        "peers": len(recs),
        "accuracy": sum(accs) / len(accs) if accs else math.nan,
        "accuracy_min": min(accs) if accs else math.nan,
        "distance": sum(dists) / len(dists) if dists else math.nan,
        "distance_max": max(dists) if dists else math.nan,
        # neighbours averaged with in the round (the step's degree; "neighbours" is the
        # link count after it, 0 after the last round: links close when peers finish)
        "neighbours": sum(r.get("degree", r["neighbours"]) for r in recs) / len(recs)
        if recs
        else 0,
    }


RUNNERS: dict[str, Callable[..., LanResult]] = {
    "star": run_star,
    "two-tier": run_two_tier,
    "gossip": run_gossip,
}

__all__ = ["RUNNERS", "LanResult", "LanTimeout", "run_gossip", "run_star", "run_two_tier"]
