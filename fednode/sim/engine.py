"""The simulator: N nodes in one trio run over the memory transport, in virtual time.

Every node runs the real role state machine under the real :func:`fednode.runner.run_role`
with real identities, signed frames and codecs; only the transport (memory) and the
executor (inline, charging modelled virtual time) differ from a deployed node. Time comes
from ``trio.testing.MockClock(autojump_threshold=0)``: deadlines and delays cost no wall
time, and a run is deterministic for a seed (trio's scheduler shuffling is seeded too).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..actions import Stop
from ..crypto.envelope import Membership, Receiver, Sealer
from ..crypto.identity import Identity
from ..crypto.unsigned import UnsignedReceiver, UnsignedSealer
from ..loop import EventSink, NodeLoop, RunStats
from ..p2p.memory import MemoryNetwork
from ..p2p.netmodel import Link
from ..role import Role
from ..runner import Executor, run_role
from .netfaults import NetworkFaults

SIM_EPOCH = 1_800_000_000.0  # wall-clock seconds at virtual time 0 (replay window clock)


def sim_identity(seed: int, index: int) -> Identity:
    """Deterministic identity for simulated node ``index``."""
    return Identity.from_seed(
        hashlib.blake2b(f"fednode-sim/{seed}/{index}".encode(), digest_size=32).digest()
    )


@dataclass
class BaseNode:
    """What a simulated node is on either driver: its id, role, compute model, counters."""

    index: int
    identity: Identity
    role: Role
    executor: Executor
    model_size: int
    stats: RunStats = field(default_factory=RunStats)
    loop: NodeLoop | None = field(default=None, repr=False)
    stop: Stop | None = None
    #: its loop is alive (trio: its task, possibly cancelled by a crash and about to return)
    running: bool = False
    #: builds the role of a restart (:meth:`~.netfaults.NetworkFaults.prepare_restart`)
    fresh: Callable[[], Role] | None = field(default=None, repr=False)

    @property
    def peer(self) -> str:
        return self.identity.peer_id


@dataclass
class SimNode(BaseNode):
    """A node of the trio simulator."""

    scope: trio.CancelScope | None = None
    #: how many times the node was restarted (each incarnation has its own nonce stream)
    incarnation: int = 0
    #: ``(delay_s, make_role)`` of a restart asked for while the old incarnation unwinds
    pending_restart: tuple[float, Callable[[], Role]] | None = None
    #: the executor's slowdown before any straggler fault (:meth:`Simulation.set_slowdown`)
    base_slowdown: float | None = None


@dataclass
class RunResult:
    """What a run produced, for either driver and every topology: the per-round records
    (star / two-tier: the root role's ``round`` events; gossip: the consensus tracker's
    rows, round 0 = start), all events, timings, the nodes and the network (the trio
    driver's :class:`MemoryNetwork`, the discrete-event driver's counters)."""

    rounds: list[dict[str, Any]]
    events: list[dict[str, Any]]
    stop: Stop | None
    wall_s: float
    virtual_s: float
    nodes: list[Any]
    network: Any

    @property
    def final_accuracy(self) -> float:
        return float(self.rounds[-1]["accuracy"]) if self.rounds else float("nan")

    def rounds_to(
        self, at_least: float | None = None, *, key: str = "accuracy", at_most: float | None = None
    ) -> int | None:
        """First round after the start whose ``key`` is >= ``at_least`` (or <= ``at_most``)."""
        for r in self.rounds:
            v = r.get(key)
            if v is None or r["round"] == 0:
                continue
            if (at_least is not None and v >= at_least) or (at_most is not None and v <= at_most):
                return int(r["round"])
        return None


def root_rounds(events: list[dict[str, Any]], root: int | None) -> list[dict[str, Any]]:
    """The ``round`` records of node ``root`` (none without a root), without t/node/event."""
    return [
        {k: v for k, v in e.items() if k not in ("t", "node", "event")}
        for e in events
        if root is not None and e["event"] == "round" and e["node"] == root
    ]


def sealing(
    node: Any, membership: Membership, clock: Callable[[], float], unsigned: bool, nonce: Any
) -> tuple[Any, Any]:
    """A simulated node's sealer and receiver: signed and verified (the default), or the
    unsigned pair of :mod:`fednode.crypto.unsigned`."""
    if unsigned:
        return (
            UnsignedSealer(node.peer, clock, node.model_size),
            UnsignedReceiver(node.peer, membership, model_size=node.model_size),
        )
    return (
        Sealer(node.identity, clock=clock, nonce=nonce),
        Receiver(node.peer, membership, model_size=node.model_size, clock=clock),
    )


FaultHook = Callable[["Simulation", str, str, dict[str, Any]], None]


class Simulation(NetworkFaults):
    """Build nodes with :meth:`add`, then :meth:`run` until the ``root`` node stops.

    Links and faults: :class:`~fednode.sim.netfaults.NetworkFaults` (as on the
    discrete-event driver), backed by the memory network's :attr:`model`.
    :attr:`fault_hooks` see every event of a role, then :attr:`listeners`.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        link: Link | None = None,
        open_membership: bool = True,
        unsigned: bool = False,
    ) -> None:
        self.seed = seed
        #: skip signatures (:mod:`fednode.crypto.unsigned`); default: sign and verify
        self.unsigned = unsigned
        self.network = MemoryNetwork(seed=seed, default=link)
        self.model = self.network.model
        self.nodes: list[SimNode] = []
        self.events: list[dict[str, Any]] = []
        self.fault_hooks: list[FaultHook] = []
        self.listeners: list[EventSink] = []
        self._at_start: list[Callable[[], None]] = []
        self.open_membership = open_membership
        self.allow: frozenset[str] = frozenset()
        self._by_peer: dict[str, SimNode] = {}
        self._nodes_nursery: trio.Nursery | None = None

    def add(
        self, role: Role, executor: Executor, model_size: int, identity: Identity | None = None
    ) -> SimNode:
        index = len(self.nodes)
        node = SimNode(
            index, identity or sim_identity(self.seed, index), role, executor, model_size
        )
        self.nodes.append(node)
        self._by_peer[node.peer] = node
        self.network.model.add(node.peer)  # its rank is its index, as on the des driver
        return node

    def node(self, peer: str) -> SimNode:
        return self._by_peer[peer]

    @property
    def now(self) -> float:
        return trio.current_time()

    def clock(self) -> float:
        return SIM_EPOCH + trio.current_time()

    def _on_event(self, peer: str, event: str, data: dict[str, Any]) -> None:
        record = {
            "t": round(trio.current_time(), 6),
            "node": self._by_peer[peer].index,
            "event": event,
            **data,
        }
        self.events.append(record)
        for hook in self.fault_hooks:
            hook(self, peer, event, data)
        for listener in self.listeners:
            listener(peer, event, data)

    # --- faults (NetworkFaults) -------------------------------------------------------------
    def _key(self, index: int) -> Hashable:
        return self.nodes[index].peer

    def at_start(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` at virtual time 0, once every node's task is started (before any
        of them has run: the discrete-event driver's :meth:`call_at` at 0 runs at the
        same point of its start-up)."""
        self._at_start.append(fn)

    def after(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run ``fn()`` ``delay_s`` virtual seconds from now, in a task of the nodes'
        nursery (inside a run)."""
        nursery = self._nodes_nursery
        if nursery is None:
            raise RuntimeError("Simulation.after is only possible while the simulation runs")

        async def later() -> None:
            await trio.sleep(delay_s)
            fn()

        nursery.start_soon(later)

    def _started(self) -> None:
        for fn in self._at_start:
            fn()

    def _tell(self, events: list[tuple[Any, Any, bool]]) -> None:
        self.network._announce(events)

    def set_slowdown(self, index: int, factor: float) -> None:
        """Node ``index`` computes ``factor`` times slower than its builder made it."""
        node, executor = self.nodes[index], self.nodes[index].executor
        if hasattr(executor, "slowdown"):
            if node.base_slowdown is None:
                node.base_slowdown = float(executor.slowdown)
            executor.slowdown = node.base_slowdown * factor

    def crash(self, peer: str) -> None:
        """Kill a node now: its loop is cancelled and the network drops it."""
        node = self._by_peer[peer]
        self.network.crash(peer)
        if node.loop is not None:
            node.loop.kill()
        if node.scope is not None:
            node.scope.cancel()
        self.events.append(
            {"t": round(trio.current_time(), 6), "node": node.index, "event": "crashed"}
        )

    def restart(
        self, peer: str, make_role: Callable[[], Role] | None = None, *, after_s: float = 0.0
    ) -> None:
        """Start a crashed node again under the same identity, ``after_s`` virtual seconds
        from now, as a new process would: ``make_role()`` builds its role then (e.g. a
        coordinator resuming from its checkpoint; default: a fresh copy kept by
        :meth:`prepare_restart`). Call it while the simulation runs, for example from a
        fault hook right after :meth:`crash`. The new incarnation gets its own nonce
        stream, so peers do not take its messages for replays.

        Raises :class:`ValueError` for a node that is running and was not crashed, and
        :class:`~fednode.errors.ConfigError` without ``make_role`` or a kept copy.
        """
        node = self._by_peer[peer]
        make_role = make_role or self._fresh(node.index)
        if after_s < 0:
            raise ValueError(f"after_s must be >= 0, got {after_s}")
        if node.running and not (node.scope is not None and node.scope.cancel_called):
            raise ValueError(f"node {node.index} is running: crash it before restarting it")
        if self._nodes_nursery is None:
            raise RuntimeError("Simulation.restart is only possible while the simulation runs")
        node.pending_restart = (after_s, make_role)
        if not node.running:  # its old task already returned: start a new one
            self._nodes_nursery.start_soon(self._run_incarnations, node)

    async def _run_incarnations(self, node: SimNode) -> None:
        """Run ``node``, then each restart asked for while it ran, until none is pending."""
        node.running = True
        try:
            if node.pending_restart is None:
                await self._run_node(node, node.incarnation)
            while node.pending_restart is not None:
                delay, make_role = node.pending_restart
                node.pending_restart = None
                await trio.sleep(delay)
                node.role, node.stop = make_role(), None
                node.incarnation += 1
                self.events.append(
                    {"t": round(trio.current_time(), 6), "node": node.index, "event": "restarted"}
                )
                await self._run_node(node, node.incarnation)
        finally:
            node.running = False

    async def _run_node(self, node: SimNode, incarnation: int = 0) -> None:
        """Run one incarnation of ``node`` until it stops or crashes."""
        transport = self.network.attach(node.peer)
        membership = Membership(self.allow, open=self.open_membership)
        nonce = _seeded_nonces(self.seed, node.index, incarnation)
        sealer, receiver = sealing(node, membership, self.clock, self.unsigned, nonce)
        node.loop = NodeLoop(
            node.role, sealer, receiver, peer=node.peer, emit=self._on_event, stats=node.stats
        )
        with trio.CancelScope() as scope:
            node.scope = scope
            node.stop = await run_role(node.loop, transport, node.executor)

    def run(self, root: SimNode, *, max_virtual_s: float = 1e7) -> RunResult:
        """Run until ``root`` stops (or ``max_virtual_s`` of virtual time passes)."""
        t0 = time.perf_counter()

        async def until_root_stops(nodes: trio.Nursery) -> None:
            self._nodes_nursery = nodes
            for node in self.nodes:
                if node is not root:
                    nodes.start_soon(self._run_incarnations, node)
            self._started()
            await self._run_incarnations(root)
            self._nodes_nursery = None

        virtual = self._drive(until_root_stops, max_virtual_s)
        return RunResult(
            root_rounds(self.events, root.index),
            self.events,
            root.stop,
            time.perf_counter() - t0,
            virtual,
            self.nodes,
            self.network,
        )

    def _drive(
        self, body: Callable[[trio.Nursery], Awaitable[None]], max_virtual_s: float
    ) -> float:
        """Run ``body(nodes)`` in virtual time with the network up, until it returns (the
        nodes' nursery is then cancelled) or ``max_virtual_s`` passes; the time at the end."""

        async def main() -> float:
            _seed_trio_scheduler(self.seed)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.network.run)
                with trio.move_on_after(max_virtual_s):
                    async with trio.open_nursery() as nodes:
                        await body(nodes)
                        nodes.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
            return trio.current_time()

        import trio.testing  # here, not at the top: trio.testing imports pytest (~0.2 s)

        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _seeded_nonces(seed: int, index: int, incarnation: int = 0) -> Callable[[int], bytes]:
    import random

    key = f"nonce/{seed}/{index}" if incarnation == 0 else f"nonce/{seed}/{index}/{incarnation}"
    rng = random.Random(key)
    return rng.randbytes


def _seed_trio_scheduler(seed: int) -> None:
    """Trio shuffles its run queue on purpose; make that shuffle reproducible.

    Trio has two shuffles: reverse each batch with probability 1/2 (the default), or sort
    the batch by task creation order and then shuffle it (``_ALLOW_DETERMINISTIC_SCHEDULING``,
    which importing hypothesis or pytest-trio switches on). Which one is active changed the
    numbers a seed gives between a script and the test suite, so a simulation always selects
    the second one (for the rest of the process: it costs one sort per scheduler batch) and
    seeds it.
    """
    run_mod = trio._core._run  # type: ignore[attr-defined]
    if hasattr(run_mod, "_ALLOW_DETERMINISTIC_SCHEDULING"):
        run_mod._ALLOW_DETERMINISTIC_SCHEDULING = True
    rng = getattr(run_mod, "_r", None)
    if rng is not None:  # absent in a future trio without the shuffle
        rng.seed(seed)
