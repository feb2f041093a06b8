"""Prometheus text metrics of a running node (``net.metrics_listen``, ``--metrics-listen``).

``GET /metrics`` on ``host:port`` returns the exposition format of prometheus-client,
from a registry of this node's own (no global state): traffic from the runner's
:class:`~fednode.runner.RunStats` (read at scrape time, so nothing is counted twice),
rejected frames by error type, connected members, and what the node's events said last
(round, accuracy, model version; what the aggregation rule discarded, clipped, flagged
and capped, docs/ROBUSTNESS.md; under ``[privacy]`` the epsilon spent so far, at its delta,
and whether the budget stopped training, docs/PRIVACY.md). Off by default;
``127.0.0.1:9464`` keeps it on the machine. It serves one connection at a time, each
bounded by :data:`REQUEST_TIMEOUT_S` and :data:`MAX_REQUEST_BYTES`; a malformed request
gets ``400`` and changes nothing.
HTTP parsing is h11's (:mod:`fednode.http11`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import h11
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .http11 import MAX_REQUEST_BYTES, next_request, open_listeners, refuse_malformed, respond
from .loop import RunStats

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
ALLOW = ("Allow", "GET, HEAD")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
AGGREGATION_ACTIONS = ("discarded", "clipped", "flagged", "capped")


class NodeMetrics(Collector):
    """The metric families of one node, computed when scraped."""

    def __init__(
        self,
        *,
        role: str,
        peer_id: str,
        federation: str,
        stats: RunStats,
        peers: Callable[[], int],
    ) -> None:
        self.role, self.peer_id, self.federation = role, peer_id, federation
        self.stats = stats
        self.peers = peers
        self.started = time.time()
        #: from the node's events: the last round, its accuracy, the model version
        self.round = 0
        self.accuracy = math.nan
        self.model_version = 0
        self.rounds_done = 0
        #: from the aggregation report of each round / edge round and the warning events
        self.aggregation = dict.fromkeys(AGGREGATION_ACTIONS, 0)
        self.rule_failures = 0
        #: [privacy]: epsilon after the last round (NaN: DP off or no round yet), its delta
        self.dp_epsilon = math.nan
        self.dp_delta = math.nan
        self.dp_budget_stop = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        """Note what a node event says (``round``, ``gossip_round``, ``gossip_eval``, ...)."""
        if event in ("round", "gossip_round", "edge_round"):
            self.round = max(self.round, int(data.get("round", 0)))
            self.rounds_done += 1
        if "accuracy" in data and event in ("round", "gossip_eval"):
            with contextlib.suppress(TypeError, ValueError):
                self.accuracy = float(data["accuracy"])
        if "model_version" in data:
            with contextlib.suppress(TypeError, ValueError):
                self.model_version = max(self.model_version, int(data["model_version"]))
        if event in ("round", "edge_round"):
            agg = self.aggregation
            agg["discarded"] += len(data.get("agg_discarded", ()))
            agg["clipped"] += int(data.get("agg_clipped", 0))
        elif event == "update_flagged":
            self.aggregation["flagged"] += 1
        elif event == "claim_capped":
            self.aggregation["capped"] += 1
        elif event == "round_failed" and data.get("rule"):
            self.rule_failures += 1
        elif event == "privacy_budget":
            self.dp_budget_stop = 1
        if event in ("round", "gossip_round") and data.get("dp_epsilon") is not None:
            with contextlib.suppress(TypeError, ValueError):
                self.dp_epsilon = float(data["dp_epsilon"])
                self.dp_delta = float(data.get("dp_delta", math.nan))

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        info = GaugeMetricFamily(
            "fednode_info",
            "this node: role, peer id, federation",
            labels=["role", "peer", "federation"],
        )
        info.add_metric([self.role, self.peer_id, self.federation], 1)
        yield info
        yield GaugeMetricFamily(
            "fednode_start_time_seconds", "when the node started (unix time)", value=self.started
        )
        yield CounterMetricFamily("fednode_frames_sent", "frames sent", value=s.sent_frames)
        yield CounterMetricFamily("fednode_sent_bytes", "frame bytes sent", value=s.sent_bytes)
        yield CounterMetricFamily(
            "fednode_frames_received", "frames received and accepted", value=s.received_frames
        )
        yield CounterMetricFamily(
            "fednode_send_failures", "sends that failed (peer gone, timeout)", value=s.send_failures
        )
        rejected = CounterMetricFamily(
            "fednode_frames_rejected",
            "inbound frames and messages refused, by error type",
            labels=["error"],
        )
        for error, count in sorted(s.rejected.items()):
            rejected.add_metric([error], count)
        yield rejected
        refused = CounterMetricFamily(
            "fednode_sends_refused",
            "outbound messages this node refused to send, by error type",
            labels=["error"],
        )
        for error, count in sorted(s.refused.items()):
            refused.add_metric([error], count)
        yield refused
        yield GaugeMetricFamily("fednode_peers_connected", "connected members", value=self.peers())
        yield GaugeMetricFamily(
            "fednode_round", "the last round this node saw finish", value=self.round
        )
        yield CounterMetricFamily(
            "fednode_rounds", "rounds this node finished or reported", value=self.rounds_done
        )
        yield GaugeMetricFamily(
            "fednode_model_version", "the last model version reported", value=self.model_version
        )
        robust = CounterMetricFamily(
            "fednode_aggregation_updates",
            "updates the aggregation rule discarded or clipped, norms flagged, claims capped",
            labels=["action"],
        )
        for action, count in self.aggregation.items():
            robust.add_metric([action], count)
        yield robust
        yield CounterMetricFamily(
            "fednode_aggregation_rule_failures",
            "rounds failed because the rule could not run on the updates received",
            value=self.rule_failures,
        )
        yield GaugeMetricFamily(
            "fednode_accuracy",
            "the last test accuracy reported (NaN: none yet)",
            value=self.accuracy,
        )
        eps = GaugeMetricFamily(
            "fednode_dp_epsilon",
            "differential privacy: epsilon spent so far at delta (NaN: DP off / no round yet)",
            labels=["delta"],
        )
        eps.add_metric([f"{self.dp_delta:g}"], self.dp_epsilon)
        yield eps
        yield GaugeMetricFamily(
            "fednode_dp_budget_stopped",
            "1 when the privacy budget stopped training",
            value=self.dp_budget_stop,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(
    metrics: NodeMetrics,
    listen: str,
    *,
    timeout_s: float = REQUEST_TIMEOUT_S,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``listen`` until cancelled; ``task_status.started`` gets
    the bound ``host:port`` (port 0 picks one)."""
    listeners, bound = await open_listeners("net.metrics_listen", listen)
    log.info("metrics at http://%s/metrics", bound)
    task_status.started(bound)
    async with contextlib.AsyncExitStack() as stack:
        for each in listeners:  # one for an address; all are closed on the way out
            await stack.enter_async_context(each)
        listener = listeners[0]
        while True:
            stream = await listener.accept()
            async with stream:
                with trio.move_on_after(timeout_s) as scope:
                    try:
                        await _serve_one(metrics, stream)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        log.info("metrics client went away: %s", exc)  # e.g. a reset
                if scope.cancelled_caught:
                    log.warning("metrics request timed out after %.0fs", timeout_s)


async def _serve_one(metrics: NodeMetrics, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        request = await next_request(conn, stream)
    except h11.RemoteProtocolError as exc:
        await refuse_malformed(stream, exc)
        return
    if request is None:
        return  # the client closed without asking
    target = request.target.split(b"?", 1)[0]
    if request.method not in (b"GET", b"HEAD"):
        await respond(conn, stream, 405, b"only GET /metrics\n", headers=[ALLOW])
    elif target != b"/metrics":
        await respond(conn, stream, 404, b"not found: try /metrics\n")
    else:
        body = metrics.exposition()
        await respond(
            conn, stream, 200, b"" if request.method == b"HEAD" else body, CONTENT_TYPE, len(body)
        )
