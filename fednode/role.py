"""The one interface between a role's state machine and whatever runs it (pure, no I/O).

Every role — :class:`~fednode.hierarchy.coordinator.Coordinator`,
:class:`~fednode.hierarchy.fedbuff.AsyncCoordinator`,
:class:`~fednode.hierarchy.aggregator.RegionalAggregator`,
:class:`~fednode.hierarchy.client.Client`, :class:`~fednode.gossip.peer.GossipPeer` — is
a :class:`Role`. Two kinds of caller use it:

* **the loop** (:class:`fednode.loop.NodeLoop`, on every driver) feeds it inputs
  with the time they happen — ``start``, ``handle``, ``on_peer``, ``on_result``,
  ``poll`` — and executes the actions it returns (:mod:`fednode.actions`); it asks
  ``next_deadline`` when to poll next;
* **the adapters around the loop** (:mod:`fednode.node`, :mod:`fednode.control`, the
  simulator's builders) ask what the node must know to do its I/O: where it listens
  (``set_listen_addrs``), what to tell peers when it leaves (``goodbye``), what the
  operator sees (``status``) and may ask (``control``), and whether a restarted process
  rejoins (``rejoin``).

Nothing outside a role's own package inspects a role's type or its attributes: what an
adapter needs is a method here. :class:`RoleDefaults` gives the answers of a role that
has nothing special to say; roles override what they do differently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .actions import Action, EvalResult, Send, TrainResult
from .wire import messages as m
from .wire.schema import MAX_STR_LEN

#: control requests a role may be asked (``{"op": ...}``); ``status`` is :meth:`Role.status`
CONTROL_OPS = ("status", "promote")


class Role(Protocol):
    """A sans-IO role: inputs with their time in, actions out; never blocks, never reads a clock."""

    #: what this node is now: "coordinator", "aggregator", "client" or "peer" (a promoted
    #: client says "aggregator" from its promotion on)
    role: str
    #: True once the role has stopped (it returned a :class:`~fednode.actions.Stop`)
    done: bool

    # --- the loop --------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]: ...
    def handle(self, msg: m.Message, now: float) -> list[Action]: ...
    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]: ...
    def on_result(self, result: TrainResult | EvalResult, now: float) -> list[Action]: ...
    def poll(self, now: float) -> list[Action]: ...
    def next_deadline(self) -> float | None: ...

    # --- the adapters ----------------------------------------------------------------------
    def set_listen_addrs(self, addrs: tuple[str, ...]) -> None:
        """The node listens on ``addrs`` (called once, before :meth:`start`). Roles that
        advertise where to dial them (clients, aggregators: the coordinator passes it on
        to the clients it places under them) put them in their adverts; others ignore it."""
        ...

    def goodbye(self, peers: Iterable[str], reason: str) -> list[Send]:
        """The ``Bye`` for each of ``peers`` (the connected members) when the node stops."""
        ...

    def status(self) -> dict[str, Any]:
        """What ``fednode status`` shows: JSON values, ``role`` always, then what the role
        has (``round``, ``model_version``, ``parent``, ``tree``, ``direct_clients``, ...)."""
        ...

    def control(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Answer an operator's request other than ``status`` (``{"op": "promote", ...}``):
        ``{"ok": True, ...}`` or ``{"ok": False, "error": "..."}``; never raises for a bad
        request. A role that does not take the op says so."""
        ...

    def rejoin(self) -> None:
        """This role replaces one that crashed (a restarted process, called before
        :meth:`start`): it has lost its state and rejoins the federation as a newcomer
        (a gossip peer adopts the model and round of its first neighbour)."""
        ...


def byes(peers: Iterable[str], reason: str, epoch: Mapping[str, int] | None = None) -> list[Send]:
    """A ``Bye`` to each peer; ``Bye.round`` is ``epoch[peer]`` (a gossip link's epoch,
    which tells the neighbour which link ends) or 0. The reason is cut to what fits."""
    text = reason[:MAX_STR_LEN]
    epoch = epoch or {}
    return [Send(p, m.Bye(round=epoch.get(p, 0), reason=text)) for p in peers]


class RoleDefaults:
    """The adapter methods of :class:`Role` for a role with nothing special to say."""

    role: str

    def set_listen_addrs(self, addrs: tuple[str, ...]) -> None:
        return None  # this role does not tell anyone where it listens

    def goodbye(self, peers: Iterable[str], reason: str) -> list[Send]:
        return byes(peers, reason)

    def status(self) -> dict[str, Any]:
        return {"role": self.role}

    def control(self, request: Mapping[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "promote":
            error = f"only a coordinator promotes; this node is a {self.role}"
            return {"ok": False, "error": error}
        return {"ok": False, "error": f"a {self.role} takes no {op!r} request"}

    def rejoin(self) -> None:
        return None  # a hierarchy role finds its place again from adverts
