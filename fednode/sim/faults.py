"""Fault schedules: a topology's ``[[faults]]`` applied by the simulator at round boundaries.

A spec names faults by *round* (see :mod:`fednode.sim.topology`): a crash for rounds
``round <= r < restart_round``, a partition / extra loss / stragglers while
``from_round <= r < to_round``, a join at ``round`` (the node is away before it, then
starts like a restart: a fresh role). The simulator has no global round clock, so the schedule
keeps one from the events the roles emit anyway:

* ``round`` / ``gossip_round`` (round ``r`` finished: the coordinator's round record, or
  a gossip peer's) means round ``r + 1`` is next;
* ``round_start`` (round ``r`` started) means round ``r`` is current.

The *boundary* is the highest round reached that way by any node (0 before anything
happened). Whenever it moves, :meth:`FaultSchedule.apply` brings the simulation to the state
the spec asks for at that round: crash or restart nodes, split or heal the network, set
the extra loss rate and each node's slowdown. A fault therefore takes effect before the
first message of its round is delivered (the coordinator's ``round`` event of ``r - 1``
comes before its ``Fit`` sends for ``r``) — in the star and two-tier roles exactly at the
boundary; in gossip, :data:`~fednode.p2p.netmodel.ANNOUNCE_S` after the fastest peer gets
there, so that the peers finishing the round at that same instant (its neighbours, in
step) all finish it first, whichever order a driver runs them in.

Both drivers take every fault type through the interface they share
(:class:`~fednode.sim.netfaults.NetworkFaults`, backed by one
:class:`~fednode.p2p.netmodel.NetworkModel`): the discrete-event driver
(:class:`~fednode.sim.des.DesSimulation`) and the trio
:class:`~fednode.sim.engine.Simulation`. A restart runs a fresh copy of the node's role as
it was before the run. One difference: the discrete-event driver applies the state of
round 0 at virtual time 0; the trio engine has no call at a time, so there round-0 faults
take effect at the first boundary a role reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from ..p2p.netmodel import ANNOUNCE_S
from .netfaults import NetworkFaults
from .topology import CrashFault, Fault, JoinFault, LossFault, PartitionFault, StragglerFault


class FaultSchedule:
    """The faults of one topology, mapped onto simulator node indices.

    ``node_of`` maps a topology node id to the simulator's node index (builders may put
    the coordinator first); it must cover every node the faults name.
    """

    def __init__(self, faults: tuple[Fault, ...], node_of: Mapping[int, int]) -> None:
        self.faults = faults
        self.node_of = dict(node_of)
        self.boundary = 0
        self.applied = -1
        #: sharded runs: only track the boundary; :meth:`advance` applies it
        self.defer = False
        #: called with the round after the faults of each new boundary were applied
        self.on_round: list[Callable[[int], None]] = []
        self.log: list[dict[str, Any]] = []
        self._down: set[int] = set()
        #: nodes of ``join`` faults: their first start is logged as a join, not a restart
        self._joiners: set[int] = set()
        self._partition: PartitionFault | None = None
        self._loss = 0.0
        self._slow: dict[int, float] = {}
        self._sim: NetworkFaults | None = None
        for fault in faults:
            for v in _nodes(fault):
                if v not in self.node_of:
                    raise ConfigError("faults", v, "a node id of the topology")

    @property
    def empty(self) -> bool:
        return not self.faults

    # --- state the spec asks for at round r ---------------------------------------------
    def down_at(self, rnd: int) -> set[int]:
        away = (CrashFault, JoinFault)  # a joiner is away until its round
        return {f.node for f in self.faults if isinstance(f, away) and f.active(rnd)}

    def partition_at(self, rnd: int) -> PartitionFault | None:
        active = [f for f in self.faults if isinstance(f, PartitionFault) and f.active(rnd)]
        return active[-1] if active else None  # the last one listed wins

    def loss_at(self, rnd: int) -> float:
        keep = math.prod(
            1.0 - f.rate for f in self.faults if isinstance(f, LossFault) and f.active(rnd)
        )
        return round(1.0 - keep, 12)

    def slowdown_at(self, rnd: int) -> dict[int, float]:
        out: dict[int, float] = {}
        for f in self.faults:
            if isinstance(f, StragglerFault) and f.active(rnd):
                for v in f.nodes:
                    out[v] = out.get(v, 1.0) * f.slowdown
        return out

    # --- wiring ---------------------------------------------------------------------------
    def install(self, sim: NetworkFaults) -> None:
        """Hook into a simulation before it runs: round tracking, restart snapshots, and
        the state for round 0 at virtual time 0, once the nodes are started (both
        drivers)."""
        self._sim = sim
        for f in self.faults:
            if isinstance(f, CrashFault) and f.restart_round is not None:
                sim.prepare_restart(self.node_of[f.node])
            if isinstance(f, JoinFault):  # it starts as a restart does: a fresh role
                sim.prepare_restart(self.node_of[f.node])
                self._joiners.add(f.node)
        sim.listeners.append(self._observe)
        sim.at_start(lambda: self.apply(self.boundary))

    def _observe(self, peer: str, event: str, data: dict[str, Any]) -> None:
        if event == "round" or event == "gossip_round":
            reached = int(data.get("round", 0)) + 1
        elif event == "round_start":
            reached = int(data.get("round", 0))
        else:
            return
        if reached > self.boundary:
            self.boundary = reached
            if self.defer:
                return
            if event == "gossip_round":
                # the fastest peer's neighbours finish the round at the same instant: let
                # them, whichever the driver runs first, and apply just after it
                assert self._sim is not None
                self._sim.after(ANNOUNCE_S, lambda: self.apply(self.boundary))
            else:
                self.apply(reached)

    def advance(self, boundary: int) -> None:
        """Deferred mode (sharded runs): adopt the global boundary and apply it now."""
        self.boundary = max(self.boundary, boundary)
        self.apply(self.boundary)

    def apply(self, rnd: int) -> None:
        """Bring the simulation to the faults' state for round ``rnd``."""
        if rnd <= self.applied:
            return
        self.applied = rnd
        want_down = self.down_at(rnd)
        for v in sorted(want_down - self._down):
            self._crash(v, rnd)
        for v in sorted(self._down - want_down):
            self._restart(v, rnd)
        self._down = want_down
        part = self.partition_at(rnd)
        if part is not self._partition:
            self._split(part, rnd)
            self._partition = part
        loss = self.loss_at(rnd)
        if loss != self._loss:
            self._loss = loss
            assert self._sim is not None
            self._sim.extra_loss = loss
            self.log.append({"round": rnd, "fault": "loss", "rate": loss})
        slow = self.slowdown_at(rnd)
        if slow != self._slow:
            for v in set(slow) | set(self._slow):
                self._set_slowdown(v, slow.get(v, 1.0))
            self._slow = slow
            self.log.append({"round": rnd, "fault": "straggler", "nodes": sorted(slow)})
        for callback in self.on_round:
            callback(rnd)

    # --- effects ---------------------------------------------------------------------------
    def _peer(self, v: int) -> str:
        assert self._sim is not None
        return str(self._sim.nodes[self.node_of[v]].peer)

    def _crash(self, v: int, rnd: int) -> None:
        kind = "away" if v in self._joiners else "crash"  # a joiner: not there yet
        self.log.append({"round": rnd, "fault": kind, "node": v})
        assert self._sim is not None
        self._sim.crash(self._peer(v))

    def _restart(self, v: int, rnd: int) -> None:
        joined = v in self._joiners
        self._joiners.discard(v)
        self.log.append({"round": rnd, "fault": "join" if joined else "restart", "node": v})
        assert self._sim is not None
        self._sim.restart(self._peer(v))

    def _split(self, part: PartitionFault | None, rnd: int) -> None:
        assert self._sim is not None
        if part is None:
            self.log.append({"round": rnd, "fault": "heal"})
            self._sim.heal()
            return
        self.log.append({"round": rnd, "fault": "partition", "groups": len(part.groups)})
        self._sim.partition([[self.node_of[v] for v in g] for g in part.groups])

    def _set_slowdown(self, v: int, factor: float) -> None:
        assert self._sim is not None
        self._sim.set_slowdown(self.node_of[v], factor)


def _nodes(fault: Fault) -> tuple[int, ...]:
    if isinstance(fault, CrashFault | JoinFault):
        return (fault.node,)
    if isinstance(fault, StragglerFault):
        return fault.nodes
    if isinstance(fault, PartitionFault):
        return tuple(v for g in fault.groups for v in g)
    return ()
