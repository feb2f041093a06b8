"""Discrete-event driver: the node loop of every real node, under a plain-Python scheduler.

Each simulated node is a :class:`~fednode.loop.NodeLoop` around the same role objects the
trio simulator (:mod:`fednode.sim.engine`) builds; only the clock and the scheduler differ
(``docs/ARCHITECTURE.md``): one event queue (:mod:`fednode.sim.instants`) feeds the loops:

* **deliveries** at ``send time + latency + bytes / bandwidth`` of the link, as the
  :class:`~fednode.p2p.netmodel.NetworkModel` it shares with the memory transport says
  (it also decides reachability, loss, and the peer events of crashes and partitions);
* **job results** at ``start + train_cost_s x work x examples / 100 x slowdown`` (the
  :class:`~fednode.runner.InlineExecutor` charge);
* **role deadlines**, **peer up/down events** and scheduled **calls**.

Frames are sealed and opened by each node's real sealer and receiver, or by the unsigned
pair of :mod:`fednode.crypto.unsigned` (``unsigned=True``).

Differences from ``run_role`` over the memory transport (``docs/SIMULATION.md``): FIFO
order at one instant (trio shuffles, seeded) but for frames and peer events, which go in
the transport's order (:mod:`fednode.sim.instants`); a stopped non-root node drops what it is
sent; up/down events go to *visible* pairs only; lazy, batched training
(:mod:`fednode.sim.batching`; the role must not modify a job's params in place).

Sharding (:mod:`fednode.sim.parallel`): with ``owner`` set, this process runs only the
nodes of ``shard``; sends to other shards go to :attr:`outbox`, and :meth:`run_window`
advances in the windows the parallel driver grants. Deterministic for a build, seed and
shard count (counter-based loss draws, ordered ties, sorted iteration).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..actions import EvalJob, EvalResult, Stop, TrainJob, TrainResult
from ..crypto.envelope import Membership
from ..crypto.identity import Identity
from ..errors import ConfigError, PeerGone
from ..loop import EventSink, NodeLoop
from ..p2p.netmodel import ANNOUNCE_S, Link, NetStats, NetworkModel
from ..role import Role
from ..runner import InlineExecutor
from ..wire.frames import Inbound
from .batching import run_batch
from .engine import (
    SIM_EPOCH,
    BaseNode,
    RunResult,
    Simulation,
    _seeded_nonces,
    root_rounds,
    sealing,
    sim_identity,
)
from .instants import Instants, order_instant
from .netfaults import NetworkFaults

# event kinds; an event is (kind, node index, node epoch, a, b)
DELIVER, RESULT, TIMER, PEER, CALL = range(5)
Event = tuple[int, int, int, Any, Any]
_SPIN_LIMIT = 10_000  # deadline polls at one instant before we call the role broken


@dataclass
class DesNode(BaseNode):
    """A node of the discrete-event driver; also its loop's port (:meth:`transmit`,
    :meth:`run_job`)."""

    executor: InlineExecutor
    running: bool = True
    epoch: int = 0
    timer: float | None = None
    slowdown: float = 1.0
    spins: int = 0
    spin_t: float = -1.0
    sim: DesSimulation | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        """Up in the network model (not crashed; for reports)."""
        return self.sim is not None and self.sim.model.alive(self.index)

    def transmit(self, to: str, frame: Any, addrs: tuple[str, ...], kind: str) -> None:
        self.sim._send(self, to, frame, kind)  # type: ignore[union-attr]

    def run_job(self, job: TrainJob | EvalJob) -> None:
        self.sim._compute(self, job)  # type: ignore[union-attr]


class DesSimulation(NetworkFaults):
    """Build nodes with :meth:`add` (or :meth:`from_simulation`), then :meth:`run`.

    The network is :attr:`model` (``link`` its default link; ``visible(i)`` names, sorted,
    the nodes whose up/down events node ``i`` gets; None: every node). Links and faults:
    :class:`~fednode.sim.netfaults.NetworkFaults`, as on the trio simulator. ``keep_events``
    limits which events are stored in :attr:`events` (True: all; or a set of names);
    :attr:`listeners` see every event. ``fault_hooks`` have the trio simulator's signature
    ``hook(sim, peer, event, data)``. ``lazy_compute``: see :meth:`_compute`.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        link: Link | None = None,
        unsigned: bool = False,
        membership: Membership | None = None,
        visible: Callable[[int], Iterable[int]] | None = None,
        keep_events: bool | frozenset[str] = True,
        lazy_compute: bool = True,
    ) -> None:
        self.seed, self._now = seed, 0.0
        self.nodes: list[DesNode] = []
        #: node indices, named by peer id in the loss draw (as the memory transport names them)
        name, clock, model = (lambda i: self.nodes[i].peer), (lambda: self._now), NetworkModel[int]
        self.model = model(seed=seed, default=link, visible=visible, name=name, clock=clock)
        self.unsigned, self.keep_events, self.lazy_compute = unsigned, keep_events, lazy_compute
        self.membership = membership or Membership(open=True)
        self.events: list[dict[str, Any]] = []
        self.fault_hooks: list[Callable[[Any, str, str, dict[str, Any]], None]] = []
        self.listeners: list[EventSink] = []
        self.net: NetStats = self.model.stats
        #: floor on every delivery delay (the parallel driver's lookahead)
        self.min_latency = 0.0
        #: sharding: node index -> shard (None: every node is local), this shard, outbox
        self.owner: list[int] | None = None
        self.shard = 0
        self.outbox: dict[int, list[tuple[Any, ...]]] = {}
        self.processed = 0
        #: virtual time of the last event that reached a role
        self.last_active = 0.0
        self._by_peer: dict[str, int] = {}
        self._queue = Instants()
        self._schedule = self._queue.schedule
        self._started = False
        self._halt: Stop | None = None
        self._running = 0
        self._root: DesNode | None = None
        self._pending: list[list[Any]] = []

    # --- building -----------------------------------------------------------------------
    def add(
        self,
        role: Role,
        executor: InlineExecutor,
        model_size: int,
        identity: Identity | None = None,
    ) -> DesNode:
        if not isinstance(executor, InlineExecutor):
            raise ConfigError(
                "executor",
                type(executor).__name__,
                "an InlineExecutor (the des driver charges modelled virtual time for compute)",
            )
        index = len(self.nodes)
        node = DesNode(
            index, identity or sim_identity(self.seed, index), role, executor, model_size
        )
        node.sim = self
        self.nodes.append(node)
        self._by_peer[node.peer] = index
        self.model.add(index)
        return node

    @classmethod
    def from_simulation(cls, sim: Simulation, *, hooks: bool = True, **kw: Any) -> DesSimulation:
        """The nodes (roles, executors, identities), links and fault hooks of a built trio
        :class:`~fednode.sim.engine.Simulation`: every scenario builder works here.
        ``hooks=False`` leaves the hooks behind (e.g. one that reads trio's clock)."""
        des = cls(seed=sim.seed, link=sim.model.default, **kw)
        for node in sim.nodes:
            des.add(node.role, node.executor, node.model_size, node.identity)  # type: ignore[arg-type]
        for (a, b), link in sim.model.links().items():  # set_link overrides
            ia, ib = des._by_peer.get(a), des._by_peer.get(b)
            if ia is not None and ib is not None:
                des.set_link(ia, ib, link, both_ways=False)
        des.extra_loss = sim.model.extra_loss
        if hooks:
            des.fault_hooks.extend(sim.fault_hooks)
        return des

    def node(self, peer: str) -> DesNode:
        return self.nodes[self._by_peer[peer]]

    @property
    def now(self) -> float:
        return self._now

    def clock(self) -> float:
        return SIM_EPOCH + self._now

    def call_at(self, t: float, fn: Callable[[float], None]) -> None:
        """Run ``fn(now)`` at virtual time ``t`` (fault schedules, probes)."""
        self._push(max(t, self._now), CALL, -1, 0, fn, None)

    def after(self, delay_s: float, fn: Callable[[], None]) -> None:
        self.call_at(self._now + delay_s, lambda now: fn())

    def at_start(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` at virtual time 0, after the nodes started."""
        self.call_at(0.0, lambda now: fn())

    def _local(self, i: int) -> bool:
        return self.owner is None or self.owner[i] == self.shard

    # --- faults: the network model's changes, carried out as events ----------------------
    def crash(self, peer: str) -> None:
        """Kill a node now: its pending jobs, timers and in-flight frames (both ways) are
        dropped; visible peers on its side get a down event."""
        node = self.node(peer)
        if not self.model.alive(node.index):
            return
        self._tell(self.model.crash(node.index))
        self._down(node)
        if node.loop is not None:
            node.loop.kill()
        node.epoch += 1
        node.timer = None
        self._record(node.index, "crashed")

    def restart(self, peer: str) -> None:
        """Bring a crashed node back with fresh role state (its task — its data — stays)."""
        node = self.node(peer)
        if self.model.alive(node.index):
            return
        local = self._local(node.index)
        if local:
            node.role = self._fresh(node.index)()
        node.stop = None
        node.epoch += 1
        self._record(node.index, "restarted")
        self._tell(self.model.join(node.index))
        if local:
            node.running = True
            self._running += 1
            self._boot(node)

    def _key(self, index: int) -> int:
        return index

    def _tell(self, events: list[tuple[Any, Any, bool]]) -> None:
        """Queue the model's peer up/down events, :data:`ANNOUNCE_S` from now."""
        nodes, at = self.nodes, self._now + ANNOUNCE_S
        for i, j, up in events:
            self._push(at, PEER, i, nodes[i].epoch, nodes[j].peer, up)

    def _down(self, node: DesNode) -> None:
        """``node`` stopped or crashed; without a root the run ends with the last one."""
        if node.running:
            node.running = False
            self._running -= 1
            if self._root is None and self._running <= 0 and self.owner is None:
                self._halt = Stop("every node stopped")

    # --- the loop -------------------------------------------------------------------------
    def _push(self, t: float, kind: int, idx: int, epoch: int, a: Any, b: Any) -> None:
        if kind not in (CALL, DELIVER) and not self._local(idx):
            return  # events for nodes of other shards happen there
        self._schedule(t, (kind, idx, epoch, a, b))

    @property
    def next_time(self) -> float:
        """Virtual time of the next pending event (inf: none, or the run halted)."""
        return self._queue.next_time if self._halt is None else math.inf

    def _make_loop(self, node: DesNode) -> NodeLoop:
        """A fresh :class:`NodeLoop` for ``node``'s current role and incarnation (each
        incarnation signs with its own nonce stream, as a restarted process would)."""
        nonce = _seeded_nonces(self.seed, node.index * 1000 + node.epoch)
        sealer, receiver = sealing(node, self.membership, self.clock, self.unsigned, nonce)

        def emit(peer: str, event: str, data: dict[str, Any]) -> None:
            self._emit(node, event, data)

        loop = NodeLoop(node.role, sealer, receiver, peer=node.peer, emit=emit, stats=node.stats)
        loop.port = node
        return loop

    def _boot(self, node: DesNode) -> None:
        """Start ``node``'s role on a fresh loop, now."""
        node.loop = loop = self._make_loop(node)
        loop.start(self._now)
        self._settle(node, node.epoch)

    def start(self, root: DesNode | None = None) -> None:
        """t = 0: attach and start the (local) nodes, root first, as the trio engine does."""
        if self._started:
            return
        self._started = True
        self._root = root
        order = ([root] if root is not None else []) + [n for n in self.nodes if n is not root]
        for node in order:
            self._tell(self.model.join(node.index))
            if self._local(node.index):
                self._running += 1
                self._boot(node)
            else:
                node.running = False  # runs in its own shard

    def run(self, root: DesNode | None = None, *, max_virtual_s: float = 1e7) -> RunResult:
        """Run until ``root`` stops (no root: until every node stopped or crashed), nothing
        is left to do, or ``max_virtual_s`` passes."""
        t0 = time.perf_counter()
        self.start(root)
        self._loop(max_virtual_s, inclusive=True)
        if max_virtual_s < self.next_time < math.inf:  # stopped by the limit, work left
            self._now = max_virtual_s
        return RunResult(
            root_rounds(self.events, root.index if root is not None else None),
            self.events,
            root.stop if root is not None else None,
            time.perf_counter() - t0,
            self._now,
            self.nodes,
            self.net,
        )

    def run_window(self, until: float) -> float:
        """Process the events before ``until``; return the time of the next one (or inf)."""
        self._loop(until, inclusive=False)
        return self.next_time

    @property
    def halted(self) -> Stop | None:
        return self._halt

    def _loop(self, limit: float, *, inclusive: bool) -> None:
        times, at, nodes, by_peer = self._queue.times, self._queue.at, self.nodes, self._by_peer
        arrives, ordered = self.model.arrives, -math.inf  # ordered: the instant last sorted

        def rank(event: Event) -> int | None:  # a frame's sender, a peer event's peer
            kind = event[0]
            return event[4] if kind == DELIVER else by_peer[event[3]] if kind == PEER else None

        while times and self._halt is None:
            t = times[0]
            if t > limit or (t == limit and not inclusive):
                return
            bucket = at[t]
            if not bucket:  # every event of this instant ran (events it added ran too)
                heapq.heappop(times)
                del at[t]
                continue
            if t != ordered:  # the memory transport's order of frames and peer events
                ordered = t
                order_instant(bucket, rank)
            kind, idx, epoch, a, b = bucket.popleft()
            self._now = t
            self.processed += 1
            if kind == CALL:
                a(t)
                continue
            node = nodes[idx]
            if node.epoch != epoch or not node.running:
                continue
            self.last_active = t
            loop = node.loop
            assert loop is not None
            if kind == DELIVER:
                if not arrives(b, idx, t):
                    continue  # in flight when its sender crashed or the network split
                loop.on_frame(Inbound(nodes[b].peer, a, t), t)
            elif kind == RESULT:
                if type(a) is list:  # a lazy job: run it (and its batch) now
                    a = self._result_of(a)
                loop.on_result(a, t)
            elif kind == TIMER:
                if node.timer != t:
                    continue  # superseded
                node.timer = None
                node.spins = node.spins + 1 if t == node.spin_t else 0
                node.spin_t = t
                if node.spins > _SPIN_LIMIT:
                    raise RuntimeError(
                        f"{type(node.role).__name__} of node {idx} keeps a deadline at t={t} "
                        "that poll() never clears"
                    )
                loop.on_timer(t)
            else:  # PEER
                loop.on_peer(a, b, t)
            self._settle(node, epoch)

    def _settle(self, node: DesNode, epoch: int) -> None:
        """After an input: note a Stop, or arm the node's next deadline."""
        loop = node.loop
        assert loop is not None
        if loop.stop is not None and node.stop is None:
            node.stop = loop.stop
            self._down(node)
            if node is self._root:
                self._halt = node.stop
        elif node.running and node.epoch == epoch:
            self._arm(node)

    def _arm(self, node: DesNode) -> None:
        assert node.loop is not None
        deadline = node.loop.next_deadline()
        if deadline is None:
            node.timer = None
            return
        at = deadline if deadline > self._now else self._now
        if node.timer != at:
            node.timer = at
            self._schedule(at, (TIMER, node.index, node.epoch, None, None))

    # --- what the loop asks for -----------------------------------------------------------
    def _emit(self, node: DesNode, event: str, data: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(node.peer, event, data)
        keep = self.keep_events
        if keep is True or (keep is not False and event in keep):
            self.events.append(
                {"t": round(self._now, 6), "node": node.index, "event": event, **data}
            )
        for hook in self.fault_hooks:
            hook(self, node.peer, event, data)

    def _record(self, index: int, event: str) -> None:
        for listener in self.listeners:
            listener(self.nodes[index].peer, event, {})
        if self.keep_events is not False and self._local(index):
            self.events.append({"t": round(self._now, 6), "node": index, "event": event})

    def _compute(self, node: DesNode, job: Any) -> None:
        """Schedule a job's result at ``now + charge``. A training job whose task knows its
        ``num_examples`` (so the charge needs no result) runs lazily, when the first pending
        result falls due; the jobs pending then run as one batch (vectorised when the task
        class offers ``train_batch``). Inputs are fixed at the start, so results equal those
        of running each job at once, as the InlineExecutor does."""
        ex = node.executor
        slow = ex.slowdown * node.slowdown
        if isinstance(job, TrainJob) and self.lazy_compute:
            n = getattr(ex.task, "num_examples", None)
            if isinstance(n, int):
                pending = [node, node.epoch, job, None]
                self._pending.append(pending)
                charge = ex.train_cost_s * job.work * n / 100 * slow
                self._push(
                    self._now + max(charge, 0.0), RESULT, node.index, node.epoch, pending, None
                )
                return
        result = ex.timed(job)
        if isinstance(result, TrainResult):
            charge = ex.train_cost_s * job.work * result.num_examples / 100 * slow
        else:
            charge = ex.eval_cost_s
        self._push(self._now + max(charge, 0.0), RESULT, node.index, node.epoch, result, None)

    def _result_of(self, pending: list[Any]) -> TrainResult | EvalResult:
        if pending[3] is None:  # run every pending job now, as one batch
            jobs, self._pending = self._pending, []
            run_batch(jobs)
        return pending[3]

    def _send(self, node: DesNode, to: str, frame: Any, kind: str) -> None:
        """Carry ``frame`` over the link model; a send to a node that is gone, partitioned
        away or unknown fails at once (as the memory transport's ``send_nowait``)."""
        j = self._by_peer.get(to)
        loop = node.loop
        assert loop is not None
        if j is None or not self.model.reachable(node.index, j):
            loop.send_failed(to, kind, PeerGone(f"{to} is unreachable"), self._now)
            return
        nbytes = frame.nbytes
        loop.sent(nbytes)
        delay = self.model.transfer(node.index, j, nbytes)
        if delay is None:
            return  # lost
        at = self._now + max(delay, self.min_latency)
        dst = self.nodes[j]
        if self.owner is not None and self.owner[j] != self.shard:
            box = self.outbox.setdefault(self.owner[j], [])
            box.append((at, node.index, len(box), j, dst.epoch, frame))
            return
        self._schedule(at, (DELIVER, j, dst.epoch, frame, node.index))
