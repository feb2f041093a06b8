"""The fault interface both simulators share, backed by their network model.

:class:`~fednode.sim.engine.Simulation` (trio, memory transport) and
:class:`~fednode.sim.des.DesSimulation` (discrete events) both derive from
:class:`NetworkFaults`: the same methods, the same :class:`~fednode.p2p.netmodel.NetworkModel`
behind them, so a fault schedule (:mod:`fednode.sim.faults`) or a topology's links apply to
either without knowing which. Nodes are named by their simulator index (``nodes[i]``) or,
for crash and restart, peer id. Pure (no trio).
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from ..errors import ConfigError
from ..loop import EventSink
from ..p2p.netmodel import Link, NetworkModel
from ..role import Role


def fresh_copies(role: Role) -> Callable[[], Role]:
    """Fresh copies of ``role`` as it is now (before it ran): the role a restarted node
    builds, as a new process would from its config, told that it rejoins
    (:meth:`~fednode.role.Role.rejoin`: a gossip peer adopts the model and round of its
    first welcome). Both drivers restart this way."""
    pristine = copy.deepcopy(role)

    def fresh() -> Role:
        copied = copy.deepcopy(pristine)
        copied.rejoin()
        return copied

    return fresh


class NetworkFaults(abc.ABC):
    """Links and faults of a simulation. Subclasses give :attr:`model`, :attr:`nodes`
    (objects with ``role``, ``peer`` and ``fresh``), :meth:`_key` (a node index as the
    model names it) and :meth:`_tell` (carry out the model's peer up/down events)."""

    model: NetworkModel[Any]
    nodes: Sequence[Any]
    #: see every event a role emits (and the simulator's ``crashed`` / ``restarted``)
    listeners: list[EventSink]

    @abc.abstractmethod
    def _key(self, index: int) -> Hashable: ...

    @abc.abstractmethod
    def _tell(self, events: list[tuple[Any, Any, bool]]) -> None: ...

    @abc.abstractmethod
    def at_start(self, fn: Callable[[], None]) -> None: ...

    @abc.abstractmethod
    def after(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run ``fn()`` ``delay_s`` virtual seconds from now (inside a run)."""

    @abc.abstractmethod
    def crash(self, peer: str) -> None: ...

    @abc.abstractmethod
    def restart(self, peer: str) -> None:
        """Start a crashed node again with a role from :meth:`prepare_restart`."""

    def set_slowdown(self, index: int, factor: float) -> None:
        """Node ``index`` computes ``factor`` times slower than its builder made it."""
        self.nodes[index].slowdown = factor

    def prepare_restart(self, index: int) -> None:
        """Keep a pristine copy of node ``index``'s role for :meth:`restart` (before run)."""
        self.nodes[index].fresh = fresh_copies(self.nodes[index].role)

    def _fresh(self, index: int) -> Callable[[], Role]:
        """What builds node ``index``'s role on a restart (kept by :meth:`prepare_restart`).

        Errors: :class:`~fednode.errors.ConfigError` if none was kept."""
        fresh: Callable[[], Role] | None = self.nodes[index].fresh
        if fresh is None:
            raise ConfigError("faults.restart_round", index, "a node kept for restart")
        return fresh

    @property
    def default_link(self) -> Link:
        return self.model.default

    @default_link.setter
    def default_link(self, link: Link) -> None:
        self.model.default = link

    @property
    def extra_loss(self) -> float:
        """Drop rate on every link on top of its own (a loss fault)."""
        return self.model.extra_loss

    @extra_loss.setter
    def extra_loss(self, rate: float) -> None:
        self.model.extra_loss = rate

    def set_link(self, a: int, b: int, link: Link, *, both_ways: bool = True) -> None:
        self.model.set_link(self._key(a), self._key(b), link, both_ways=both_ways)

    def links(self) -> list[Link]:
        """The default link and every override."""
        return [self.model.default, *self.model.links().values()]

    def set_visible(self, visible: Sequence[Iterable[int]]) -> None:
        """Node ``i`` hears of the up/down of nodes ``visible[i]`` only (sorted lists)."""
        table = {self._key(i): [self._key(j) for j in v] for i, v in enumerate(visible)}
        self.model.visible = table.__getitem__

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Only nodes in the same group reach each other; unnamed nodes share group 0."""
        self._tell(self.model.partition([[self._key(i) for i in g] for g in groups]))

    def heal(self) -> None:
        self._tell(self.model.heal())
