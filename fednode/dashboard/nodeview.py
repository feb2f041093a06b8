"""A running node's events on a dashboard board: the node, the peers it sees, its tree.

The node (:mod:`fednode.node`) passes every event here as well as to its sink. The graph
is this node's view: a coordinator draws its tree (its role's ``status()["tree"]``:
aggregators and the clients under them), an aggregator its parent and the peers it
sees, a gossip peer itself and the peers it is connected to, a client itself and its
parent. Peers that go away stay in the graph, marked down. Times are wall-clock (unix
seconds, shown in UTC).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .state import Board

#: the role a peer is drawn with when the node's role says no more about it
_PEER_ROLE = {"peer": "peer", "coordinator": "client", "aggregator": "client"}
#: events after which the coordinator's tree may have changed
_REDRAW = frozenset({"round", "round_start", "promoted", "orphaned", "rehomed", "peer_down"})


def short(peer: str) -> str:
    """A peer id people can tell apart in a small graph: its last 8 characters."""
    return f"…{peer[-8:]}" if len(peer) > 12 else peer


class NodeView:
    """Feeds ``board`` from one node's events (:meth:`on_event` is an event sink)."""

    def __init__(
        self,
        board: Board,
        me: str,
        role: str,
        status: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.board, self.me, self.role, self.status, self.clock = board, me, role, status, clock
        self.peers: set[str] = set()
        self.redraw()

    @classmethod
    def of(cls, config: Any, me: str, status: Callable[[], dict[str, Any]]) -> NodeView:
        """The view of a node with ``config`` (its role, ``[dashboard]``) and peer id."""
        board = Board(
            title=f"{config.role} {short(me)}",
            kind=config.role,
            event_log=config.dashboard.event_log,
        )
        return cls(board, me, config.role, status)

    def on_event(self, peer: str, event: str, data: dict[str, Any]) -> None:
        other = data.get("peer")
        redraw = event in _REDRAW and self.role == "coordinator"
        if (
            event == "peer_up"
            and isinstance(other, str)
            and data.get("member", True)
            and self.role in _PEER_ROLE
            and other not in self.peers
        ):
            self.peers.add(other)
            redraw = True
        if redraw or event == "listening":
            self.redraw()
        self.board.observe(self.me, event, data, self.clock())
        if event in ("round", "gossip_round", "edge_round"):
            rnd = self.status().get("round")
            self.board.set_row(self.me, round=rnd if isinstance(rnd, int) else None)

    def redraw(self) -> None:
        status = self.status()
        roles = {self.me: self.role}
        edges: list[tuple[str, str]] = []
        tree = status.get("tree")
        if isinstance(tree, dict):
            for parent, children in tree.items():
                top = parent or self.me
                if top != self.me:
                    roles[top] = "aggregator"
                for child in children:
                    roles.setdefault(child, "client")
                    edges.append((top, child))
        parent = status.get("parent")
        if isinstance(parent, str) and parent:
            roles[parent] = "coordinator" if self.role == "aggregator" else "parent"
            edges.append((parent, self.me))
        drawn = {n for edge in edges for n in edge}
        for peer in sorted(self.peers):
            if peer not in roles:
                roles[peer] = _PEER_ROLE.get(self.role, "other")
            if peer not in drawn:
                edges.append((self.me, peer))
        labels = {n: ("this node" if n == self.me else short(n)) for n in roles}
        self.board.set_graph(roles, edges, labels)
