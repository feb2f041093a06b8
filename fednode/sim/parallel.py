"""The discrete-event driver on several cores: nodes sharded over forked worker processes.

Conservative synchronous windows (the "YAWNS" scheme; Nicol, "The cost of conservative
synchronization in parallel discrete event simulations", JACM 1993). Every link delivers
no sooner than the *lookahead* ``L`` (the smallest link latency, at least 1 µs: sharded
runs give every link that floor). So if ``T`` is the earliest pending event anywhere, no
shard can receive anything before ``T + L`` that it does not already hold, and each shard
processes all its events in ``[T, T + L)`` on its own. Then the parent relays the frames
that crossed shards, advances the fault schedule and grants the next window.

* Workers are ``fork``-ed after the scenario is built: each holds every role (copy-on-write)
  and runs only its shard. Liveness, partitions and epochs of *all* nodes are replicated:
  the parent applies each fault in every shard at the same window start, so all shards
  agree who is reachable.
* Frames between shards travel as plain tuples encoded with :mod:`marshal`
  (:meth:`~fednode.crypto.unsigned.StampedFrame.pack`, or a signed frame's bytes) through
  pipes; nothing is pickled.
* Shards: a gossip graph's Louvain communities packed into equal shards (few edges
  cross); in a tree every region stays together, the coordinator on shard 0.
* Metrics: each worker's :class:`~fednode.sim.metrics.Collector` exports its state at the
  end; the parent merges them (the consensus accumulators are sums).

Differences from one process: faults take effect at the next window start after their
round is reached (not at the event itself); ties at one instant break by (time, source
node, order) across shards; links get the 1 µs floor. Results are deterministic for a given
seed and worker count. Needs ``os.fork`` (Linux, macOS); elsewhere use one worker.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import math
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ..crypto import unsigned
from ..errors import ConfigError, SimWorkerError
from ..wire.frames import Frame
from .des import DELIVER, DesSimulation
from .faults import FaultSchedule
from .metrics import Collector

MIN_LOOKAHEAD_S = 1e-6


@dataclass
class ShardOutcome:
    virtual_s: float
    messages: int
    error: str | None
    windows: int
    notes: list[str] = field(default_factory=list)
    processed: int = 0
    worker_cpu_s: list[float] = field(default_factory=list)


def shard_nodes(topo: Any, node_of: dict[int, int], k: int) -> list[int]:
    """Simulator index -> shard. Gossip: communities packed into k equal shards. Tree: the
    coordinator on shard 0, aggregator j on shard j % k with its clients."""
    n = topo.n
    owner = [0] * n
    if topo.kind == "gossip":
        for v, s in _communities(topo.graph, k).items():
            owner[node_of[v]] = s
        return owner
    aggs = sorted(v for v, r in topo.roles.items() if r == "aggregator")
    home = {a: j % k for j, a in enumerate(aggs)}
    clients = sorted(v for v, r in topo.roles.items() if r == "client")
    for i, v in enumerate(clients):
        parent = topo.parent.get(v)
        owner[node_of[v]] = home.get(parent, i % k) if parent in home else i * k // len(clients)
    for a, s in home.items():
        owner[node_of[a]] = s
    return owner


def _communities(g: Any, k: int) -> dict[int, int]:
    """Louvain communities (seeded) packed greedily into ``k`` shards of near-equal size,
    largest first; a community larger than a shard's share is cut along a BFS order. On a
    10,000-node random 4-regular graph 23% of edges cross (a BFS split: 29%), in ~1.5 s."""
    import networkx as nx

    n = g.number_of_nodes()
    comms = sorted(
        (sorted(c) for c in nx.community.louvain_communities(g, seed=0)),
        key=lambda c: (-len(c), c[0]),
    )
    cap = -(-n // k)
    sizes = [0] * k
    owner: dict[int, int] = {}
    for c in comms:
        s = min(range(k), key=lambda j: (sizes[j], j))
        if sizes[s] + len(c) > cap:  # too big for any shard: split it in BFS order
            for v in _bfs_order(g.subgraph(c)):
                s = min(range(k), key=lambda j: (sizes[j], j))
                owner[v] = s
                sizes[s] += 1
            continue
        for v in c:
            owner[v] = s
        sizes[s] += len(c)
    return owner


def _bfs_order(g: Any) -> list[int]:
    """Breadth-first order from the lowest node (then the next unvisited one): consecutive
    slices are connected balls."""
    seen: set[int] = set()
    order: list[int] = []
    for start in sorted(g):
        if start in seen:
            continue
        seen.add(start)
        queue = [start]
        while queue:
            order.extend(queue)
            nxt = []
            for v in queue:
                for u in sorted(g[v]):
                    if u not in seen:
                        seen.add(u)
                        nxt.append(u)
            queue = nxt
    return order


def run_sharded(
    built: Any,
    topo: Any,
    schedule: FaultSchedule,
    collector: Collector,
    options: Any,
) -> ShardOutcome:
    """Run ``built`` on ``options.workers`` processes; merge the metrics into ``collector``."""
    from .wiring import des_of, follow

    k = options.workers
    if "fork" not in mp.get_all_start_methods():
        raise ConfigError("workers", k, "1 on this platform (sharding needs os.fork)")
    des = des_of(topo, built, options, frozenset({"round", "round_failed"}))
    des.min_latency = MIN_LOOKAHEAD_S
    des.owner = shard_nodes(topo, built.node_of, k)
    schedule.defer = True  # workers report the boundary; the parent says when it applies
    root = follow(topo, built, des, schedule, collector)
    lookahead = max(MIN_LOOKAHEAD_S, min(lp.latency_s for lp in des.links()))
    # Move everything built so far out of the collector's sight: a full collection in a
    # worker would otherwise walk (and so copy-on-write) every object of the parent.
    gc.collect()
    gc.freeze()
    ctx = mp.get_context("fork")
    pipes: list[Connection] = []
    procs = []
    for shard in range(k):
        parent_end, child_end = ctx.Pipe()
        # the child closes its copies of the parent's ends: a worker then sees EOF (and
        # exits) as soon as the parent closes its pipe, whatever the other workers hold
        parent_ends = [*pipes, parent_end]
        proc = ctx.Process(
            target=_worker,
            args=(des, root, collector, schedule, shard, child_end, parent_ends),
            daemon=True,
        )
        proc.start()
        child_end.close()
        pipes.append(parent_end)
        procs.append(proc)
    try:
        return _drive(pipes, procs, lookahead, options.max_virtual_s, schedule, collector, k)
    finally:
        gc.unfreeze()
        for p in pipes:
            p.close()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=1)


def _drive(
    pipes: list[Connection],
    procs: list[Any],
    lookahead: float,
    max_virtual_s: float,
    schedule: FaultSchedule,
    collector: Collector,
    k: int,
) -> ShardOutcome:
    inbox: list[list[tuple[float, bytes]]] = [[] for _ in range(k)]

    def recv_all() -> list[dict[str, Any]]:
        return [_recv(p, proc, shard) for shard, (p, proc) in enumerate(zip(pipes, procs))]

    replies = recv_all()  # started: next event time of each shard
    windows, boundary, now, crossed = 0, schedule.boundary, 0.0, 0
    error: str | None = None
    while True:
        next_t = min([r["next"] for r in replies] + [x[0] for box in inbox for x in box])
        running = sum(r["running"] for r in replies)
        halted = [r for r in replies if r["halted"]]
        if halted or next_t == math.inf or next_t > max_virtual_s or running == 0:
            error = next((r["error"] for r in halted if r["error"]), None)
            now = max(r["active"] for r in replies)
            if not halted and running and next_t != math.inf:
                now = max_virtual_s  # ran out of time with nodes still going
            break
        boundary = max([boundary] + [r["boundary"] for r in replies])
        now = next_t
        until = next_t + lookahead
        for shard, p in enumerate(pipes):  # frames are forwarded as the blobs they came in
            p.send_bytes(marshal.dumps(("run", now, until, boundary, inbox[shard])))
        inbox = [[] for _ in range(k)]
        replies = recv_all()
        for r in replies:
            for dst, (count, first, blob) in r["outbox"].items():
                inbox[dst].append((first, blob))
                crossed += count
        collector.window_bytes.append((until, sum(r["bytes"] for r in replies)))
        collector.advance(max(r["front"] for r in replies))
        windows += 1
    boundary = max([boundary] + [r["boundary"] for r in replies])
    for p in pipes:
        p.send_bytes(marshal.dumps(("finish", now, boundary)))
    finals = recv_all()
    messages = 0
    for f in finals:
        collector.merge(f["collector"])
        messages += f["messages"]
    schedule.log[:] = finals[0]["faults"]
    return ShardOutcome(
        virtual_s=now,
        messages=messages,
        error=error,
        windows=windows,
        notes=[
            f"{k} worker processes, {windows} windows, lookahead {lookahead:g} s, "
            f"{crossed} frames crossed shards, worker CPU "
            + " / ".join(f"{f['cpu_s']:.1f}" for f in finals)
            + " s"
        ],
        processed=sum(f["processed"] for f in finals),
        worker_cpu_s=[f["cpu_s"] for f in finals],
    )


def _recv(p: Connection, proc: Any, shard: int) -> dict[str, Any]:
    try:
        msg = marshal.loads(p.recv_bytes())
    except (EOFError, OSError) as exc:  # it died without a word
        proc.join(timeout=1)
        code = proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        hint = " (SIGKILL: often the out-of-memory killer)" if code == -9 else ""
        raise SimWorkerError(f"simulation worker {shard} died: {how}{hint}") from exc
    if isinstance(msg, dict) and "crash" in msg:
        raise SimWorkerError(f"simulation worker {shard} failed:\n{msg['crash']}")
    return msg


def _worker(
    des: DesSimulation,
    root: Any,
    collector: Collector,
    schedule: FaultSchedule,
    shard: int,
    conn: Connection,
    parent_ends: list[Connection],
) -> None:
    import traceback

    for end in parent_ends:
        end.close()
    cpu0 = time.process_time()
    try:
        des.shard = shard
        collector.reset_shard_state()
        collector.progress = None  # the parent reports progress, from the window replies
        owner = des.owner
        assert owner is not None
        collector.local = lambda i: owner[i] == shard
        des.start(root)
        conn.send_bytes(marshal.dumps(_status(des, schedule, collector)))
        while True:
            try:
                raw = conn.recv_bytes()
            except EOFError:
                return  # the parent ended the run (or died): nobody to report to
            cmd = marshal.loads(raw)
            if cmd[0] == "finish":
                collector.at_boundary(des.nodes, cmd[2], des.now)
                state = {
                    "collector": collector.export(),
                    "messages": des.net.sent_frames,
                    "faults": schedule.log,
                    "processed": des.processed,
                    "cpu_s": time.process_time() - cpu0,
                }
                conn.send_bytes(marshal.dumps(state))
                return
            _op, start, until, boundary, blobs = cmd
            des._now = max(des.now, start)
            schedule.advance(boundary)
            collector.at_boundary(des.nodes, boundary, des.now)
            _inject(des, [item for _first, blob in blobs for item in marshal.loads(blob)])
            des.outbox = {}
            des.run_window(until)
            conn.send_bytes(marshal.dumps(_status(des, schedule, collector)))
    except BaseException:
        with contextlib.suppress(OSError):  # the parent may be gone too
            conn.send_bytes(marshal.dumps({"crash": traceback.format_exc()}))


def _status(des: DesSimulation, schedule: FaultSchedule, collector: Collector) -> dict[str, Any]:
    halt = des.halted
    return {
        "front": collector.front,
        "next": des.next_time,
        "running": des._running,
        "boundary": schedule.boundary,
        "halted": halt is not None,
        "error": halt.reason if halt is not None and halt.error is not None else None,
        "outbox": {  # per destination: (frames, earliest arrival, marshalled frames)
            dst: (len(items), min(x[0] for x in items), marshal.dumps([_pack(x) for x in items]))
            for dst, items in des.outbox.items()
            if items
        },
        "bytes": des.net.sent_bytes,
        "active": des.last_active,
    }


def _pack(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """An outbox entry ``(at, src, n, dst, epoch, frame)`` as plain data for another shard
    (marshal-able; nothing is pickled)."""
    frame = item[5]
    if isinstance(frame, Frame):
        return (*item[:5], (0, bytes(frame.head), bytes(frame.payload)))
    return (*item[:5], (1, frame.pack()))


def _inject(des: DesSimulation, items: list[tuple[Any, ...]]) -> None:
    """Deliveries from other shards (their outboxes), in a canonical order."""
    for at, src, _n, dst, epoch, data in sorted(items, key=lambda x: (x[0], x[1], x[2])):
        if data[0] == 0:
            frame: Any = Frame(head=data[1], payload=data[2])
        else:
            frame = unsigned.unpack(data[1], des.nodes[dst].model_size)
        des._schedule(at, (DELIVER, dst, epoch, frame, src))
