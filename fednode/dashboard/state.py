"""What the dashboard shows, built from node events: rounds, nodes, the graph, the log.

A :class:`Board` is fed by one writer — a node's event sink (:mod:`.nodeview`) or the
simulator's listener (:mod:`fednode.sim.live`, which runs the simulation in a worker
thread) — and read by the server. A lock guards every read and write, and ``on_change``
(set by the server) is called after each change, from the writer's thread, so the
server can wake its live streams. Everything is bounded: the rounds kept
(:data:`MAX_ROUNDS`), the nodes shown (``max_nodes``; the rest are counted), the log
(``event_log`` entries). Pure Python: no trio, no sockets.

What it reads from events (the names the roles and drivers emit):

* ``round`` (the coordinator's round record): accuracy, loss, bytes up and down;
* ``gossip_round`` / ``gossip_eval`` (each peer): the round's mean train loss, the bytes
  sent since the peer's previous round, and the mean tested accuracy and loss;
* ``rejected`` (a frame or message refused): one more rejection for the peer it came
  from (``data["peer"]``), else for the node that refused it;
* ``peer_up`` / ``peer_down``, ``crashed`` / ``restarted``, ``stopped``: up / down /
  dead; ``parent_lost``, ``orphaned``, ``gossip_link_down``: the peer named is *suspect*.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_ROUNDS = 10_000
#: events not written to the log (one per peer per round; the charts show them)
QUIET = frozenset({"gossip_round", "gossip_eval", "edge_round_start"})
_UP = {"peer_up": "up", "restarted": "up", "peer_down": "down", "crashed": "dead"}
_SUSPECT = frozenset({"parent_lost", "orphaned", "gossip_link_down"})


@dataclass
class NodeRow:
    id: str
    role: str
    label: str = ""
    state: str = "up"
    round: int | None = None
    last_seen: float | None = None
    rejections: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label or self.id,
            "role": self.role,
            "state": self.state,
            "round": self.round,
            "last_seen": self.last_seen,
            "rejections": self.rejections,
        }


@dataclass
class _GossipRound:
    peers: int = 0
    train_loss: float = 0.0
    losses: int = 0
    bytes_up: int = 0
    tested: int = 0
    accuracy: float = 0.0
    loss: float = 0.0


@dataclass
class Cursor:
    """What one live stream has sent so far (versions of rows and events, the graph)."""

    rounds: int = 0
    event: int = 0
    graph: int = -1


@dataclass
class Board:
    """The dashboard's state. ``title`` and ``kind`` (star, two-tier, gossip, node) head
    the page; ``clock`` says whether times are ``"virtual"`` (simulated seconds) or
    ``"wall"`` (unix seconds)."""

    title: str
    kind: str
    clock: str = "wall"
    event_log: int = 200
    max_nodes: int = 500
    on_change: Callable[[], None] | None = None
    status: str = "running"
    nodes: dict[str, NodeRow] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)
    hidden_nodes: int = 0
    now: float = 0.0
    graph_version: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        #: round -> its row (``_v``: when it last changed, for the streams' cursors)
        self._rounds: dict[int, dict[str, Any]] = {}
        self._row_seq = 0
        self._gossip: dict[int, _GossipRound] = {}
        self._sent: dict[str, int] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=self.event_log)
        self._seq = 0
        self._layout: tuple[int, dict[str, tuple[float, float]]] = (-1, {})

    # --- writing ---------------------------------------------------------------------
    def set_graph(
        self, roles: dict[str, str], edges: list[tuple[str, str]], labels: dict[str, str]
    ) -> None:
        """Replace the graph: node id -> role, edges, display labels. Rows of nodes kept
        keep their counts; at most ``max_nodes`` are shown (the first, in the given order)."""
        with self._lock:
            shown = list(roles)[: self.max_nodes]
            keep = set(shown)
            old = self.nodes
            self.nodes = {}
            for n in shown:
                row = old.get(n) or NodeRow(n, roles[n])
                row.role, row.label = roles[n], labels.get(n, row.label)
                self.nodes[n] = row
            self.hidden_nodes = len(roles) - len(shown)
            self.edges = {(a, b) for a, b in edges if a in keep and b in keep}
            self.graph_version += 1
        self._changed()

    def observe(self, node: str, event: str, data: dict[str, Any], now: float) -> None:
        """One event of ``node`` at time ``now``."""
        with self._lock:
            self.now = max(self.now, now)
            row = self.nodes.get(node)
            if row is not None:
                row.last_seen = now
                rnd = data.get("round")
                if isinstance(rnd, int) and event != "stale_update":
                    row.round = max(row.round or 0, rnd)
            self._read(node, event, data, now)
            if event not in QUIET:
                self._seq += 1
                self._events.append(
                    {"seq": self._seq, "t": now, "node": node, "event": event, "data": _brief(data)}
                )
        self._changed()

    def set_row(
        self,
        node: str,
        *,
        round: int | None = None,
        state: str | None = None,
        seen: float | None = None,
    ) -> None:
        """What the driver knows of a node without an event: its role's round, whether it
        is up, when it last sent something."""
        with self._lock:
            row = self.nodes.get(node)
            if row is None:
                return
            if round is not None:
                row.round = max(row.round or 0, round)
            if seen is not None:
                row.last_seen = max(row.last_seen or seen, seen)
            if state is not None and row.state != "dead":
                row.state = state

    def finish(self, status: str = "finished") -> None:
        with self._lock:
            self.status = status
        self._changed()

    def _read(self, node: str, event: str, data: dict[str, Any], now: float) -> None:
        other = data.get("peer") if isinstance(data.get("peer"), str) else None
        if event == "round":
            rnd = int(data.get("round", len(self._rounds) + 1))
            self._put_row(
                rnd,
                {
                    "round": rnd,
                    "accuracy": _num(data.get("accuracy")),
                    "loss": _num(data.get("loss")),
                    "bytes_up": int(data.get("bytes_up", 0) or 0),
                    "bytes_down": int(data.get("bytes_down", 0) or 0),
                    "t": now,
                    # [privacy]: epsilon spent after the round (docs/PRIVACY.md)
                    **({"epsilon": _num(data["dp_epsilon"])} if "dp_epsilon" in data else {}),
                },
            )
        elif event in ("gossip_round", "gossip_eval"):
            self._gossip_event(node, event, data, now)
        elif event == "rejected":
            target = self.nodes.get(other or "") or self.nodes.get(node)
            if target is not None:
                target.rejections += 1
        elif event in _UP:
            target = self.nodes.get((other or "") if event.startswith("peer_") else node)
            if target is not None:
                target.state = _UP[event]
                target.last_seen = now
        elif event == "stopped" and node in self.nodes:
            self.nodes[node].state = "stopped"
        elif event in _SUSPECT and other in self.nodes and self.nodes[other].state == "up":
            self.nodes[other].state = "suspect"

    def _gossip_event(self, node: str, event: str, data: dict[str, Any], now: float) -> None:
        rnd = data.get("round")
        if not isinstance(rnd, int):
            return
        acc = self._gossip.setdefault(rnd, _GossipRound())
        if event == "gossip_round":
            acc.peers += 1
            loss = _num(data.get("train_loss"))
            if loss is not None:
                acc.train_loss += loss
                acc.losses += 1
            sent = int(data.get("bytes_sent", 0) or 0)
            acc.bytes_up += max(sent - self._sent.get(node, 0), 0)
            self._sent[node] = sent
        else:
            a, lv = _num(data.get("accuracy")), _num(data.get("loss"))
            if a is not None and lv is not None:
                acc.tested += 1
                acc.accuracy += a
                acc.loss += lv
        while len(self._gossip) > MAX_ROUNDS:
            del self._gossip[min(self._gossip)]
        self._put_row(
            rnd,
            {
                "round": rnd,
                "accuracy": acc.accuracy / acc.tested if acc.tested else None,
                # tested loss where peers tested their model, else the mean train loss
                "loss": acc.loss / acc.tested
                if acc.tested
                else (acc.train_loss / acc.losses if acc.losses else None),
                "bytes_up": acc.bytes_up,
                "bytes_down": acc.bytes_up,  # every byte a peer sends, another receives
                "peers": acc.peers,
                "t": now,
            },
        )

    def _put_row(self, rnd: int, row: dict[str, Any]) -> None:
        self._row_seq += 1
        row["_v"] = self._row_seq
        self._rounds[rnd] = row
        while len(self._rounds) > MAX_ROUNDS:
            del self._rounds[min(self._rounds)]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- reading ---------------------------------------------------------------------
    def graph_copy(self) -> tuple[int, dict[str, str], list[tuple[str, str]]]:
        with self._lock:
            roles = {n: r.role for n, r in self.nodes.items()}
            return self.graph_version, roles, sorted(self.edges)

    def cached_layout(self, version: int) -> dict[str, tuple[float, float]] | None:
        with self._lock:
            return self._layout[1] if self._layout[0] == version else None

    def keep_layout(self, version: int, positions: dict[str, tuple[float, float]]) -> None:
        with self._lock:
            if version >= self._layout[0]:
                self._layout = (version, positions)

    def delta(self, cursor: Cursor) -> tuple[dict[str, Any], bool]:
        """What changed since ``cursor`` (advanced in place), and whether the graph did
        (the caller adds the laid-out graph then). Rows are sent again when they change:
        a gossip round's row fills in as its peers report."""
        with self._lock:
            rounds = [
                {k: v for k, v in row.items() if k != "_v"}
                for row in sorted(self._rounds.values(), key=lambda r: r["round"])
                if row["_v"] > cursor.rounds
            ]
            events = [e for e in self._events if e["seq"] > cursor.event]
            cursor.rounds = self._row_seq
            cursor.event = self._seq
            graph_changed = cursor.graph != self.graph_version
            cursor.graph = self.graph_version
            out = {
                "title": self.title,
                "kind": self.kind,
                "clock": self.clock,
                "status": self.status,
                "now": self.now,
                "rounds": rounds,
                "events": events,
                "nodes": [r.as_dict() for r in self.nodes.values()],
                "hidden_nodes": self.hidden_nodes,
            }
        return out, graph_changed


def _num(value: Any) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        v = float(value)
        return v if math.isfinite(v) else None
    return None


def _brief(data: dict[str, Any], limit: int = 8) -> dict[str, Any]:
    """At most ``limit`` scalar fields of an event (the log is for people)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if len(out) >= limit:
            break
        if isinstance(v, bool | int | str) or v is None:
            out[k] = v if not isinstance(v, str) else v[:80]
        elif isinstance(v, float):
            out[k] = round(v, 6) if math.isfinite(v) else None
    return out
