"""``fednode sim --dashboard``: follow a simulation live on the dashboard.

The simulators are synchronous (the discrete-event driver is a plain loop; the trio
driver runs its own ``trio.run`` on a mock clock), so :func:`run_live` runs the
experiment in a worker thread owned by a task of one trio nursery, beside the dashboard
server, the way a node runs its training in a worker thread. The experiment's
listener (:meth:`Feed.listener`, installed through ``run_experiment(watch=...)``)
writes the events into the :class:`~fednode.dashboard.state.Board` as they happen
(simulated time); the server wakes its streams. ``dashboard.round_pause_s`` makes the
simulation wait that many wall seconds after each round so a person can follow it;
SIGINT/SIGTERM stops it at its next event (:class:`Stopped`); after the run the page
stays up ``dashboard.linger_s`` seconds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from ..config import DashboardParams
from ..dashboard import Board, serve_dashboard
from .result import ExperimentResult
from .topology import Topology
from .wiring import Built

log = logging.getLogger(__name__)

Listener = Callable[[int, str, dict[str, Any], float], None]


class Stopped(Exception):
    """A signal asked the simulation to stop (raised from the listener, in the run)."""


class Feed:
    """Turns one simulation's events into board updates; see the module docstring."""

    def __init__(self, board: Board, pause_s: float = 0.0) -> None:
        self.board = board
        self.pause_s = pause_s
        self.stop = threading.Event()
        self._sent: dict[str, int] = {}

    def watch(self, topo: Topology, built: Built, driver: Any) -> Listener:
        """The experiment's hook: draw the spec's graph, return the event listener."""
        nodes = driver.nodes
        index_of = {v: i for v, i in built.node_of.items()}
        name = {i: f"n{i}" for i in built.roles}
        roles = {name[i]: built.roles[i] for i in sorted(built.roles)}
        labels = {name[i]: f"{built.roles[i]} {i}" for i in built.roles}
        edges = [(name[index_of[a]], name[index_of[b]]) for a, b in topo.graph.edges()]
        self.board.kind = topo.kind
        self.board.set_graph(roles, edges, labels)
        peer_name = {node.peer: name[node.index] for node in nodes if node.index in name}
        root = built.root.index if built.root is not None else None
        front = 0

        def listen(index: int, event: str, data: dict[str, Any], now: float) -> None:
            nonlocal front
            if self.stop.is_set():
                raise Stopped("stopped by a signal")
            other = data.get("peer")
            if isinstance(other, str) and other in peer_name:
                data = {**data, "peer": peer_name[other]}
            self.board.observe(name.get(index, f"n{index}"), event, data, now)
            rnd = data.get("round")
            ended = (event == "round" and index == root) or (
                event == "gossip_round" and isinstance(rnd, int) and rnd > front
            )
            if not ended:
                return
            if event == "gossip_round":
                front = int(rnd)  # type: ignore[arg-type]
            self._rows(nodes, name, now)
            if self.pause_s:
                time.sleep(self.pause_s)  # in the run's worker thread: pacing for people

        return listen

    def _rows(self, nodes: Any, name: dict[int, str], now: float) -> None:
        """At a round's end: each drawn node's round (a client's: the rounds it trained)
        and liveness as its role says, and ``now`` as last seen if it sent since."""
        for node in nodes:
            key = name.get(node.index)
            if key is None or key not in self.board.nodes:
                continue
            status = node.role.status()
            round_ = status.get("round", status.get("rounds_trained"))
            alive = bool(getattr(node, "alive", True))
            sent = node.stats.sent_frames
            self.board.set_row(
                key,
                round=round_ if isinstance(round_, int) else None,
                state=None if alive else "dead",
                seen=now if sent != self._sent.get(key) else None,
            )
            self._sent[key] = sent


def run_live(
    run: Callable[[Callable[[Topology, Built, Any], Listener]], ExperimentResult],
    params: DashboardParams,
    title: str,
    kind: str,
    on_ready: Callable[[str], None] = lambda url: None,
) -> ExperimentResult | None:
    """Serve the dashboard while ``run(watch)`` runs the experiment; its result, or None
    when a signal stopped it. ``on_ready(url)`` is called once the page is up."""
    board = Board(title=title, kind=kind, clock="virtual", event_log=params.event_log)
    feed = Feed(board, params.round_pause_s)

    async def main() -> ExperimentResult | None:
        result: ExperimentResult | None = None
        signalled = trio.Event()
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_dashboard, board, params)
            nursery.start_soon(_signals, feed.stop, signalled)
            on_ready(f"http://{bound}/")
            try:
                result = await trio.to_thread.run_sync(run, feed.watch)
                board.finish("finished" if result.error is None else f"failed: {result.error}")
            except Exception as exc:
                if not _stopped(exc):
                    raise
                board.finish("stopped")
            if result is not None and params.linger_s:
                log.info("run ended: the dashboard stays up %gs", params.linger_s)
                with trio.move_on_after(params.linger_s):
                    await signalled.wait()
            nursery.cancel_scope.cancel()
        return result

    return trio.run(main)


def _stopped(exc: BaseException) -> bool:
    """Whether ``exc`` is :class:`Stopped`, or a group of them (the trio driver's run)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_stopped(e) for e in exc.exceptions)
    return isinstance(exc, Stopped)


async def _signals(stop: threading.Event, signalled: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("received %s: stopping the simulation", signal.Signals(signum).name)
            stop.set()
            signalled.set()
            return
