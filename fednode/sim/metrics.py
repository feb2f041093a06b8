"""Experiment metrics from role events plus an omniscient look at the gossip peers' models.

Star / two-tier: the coordinator's ``round`` record is the global model's accuracy and
loss; the network's frame bytes are read at each round record. Gossip: on every peer's
``gossip_round`` event the collector folds that peer's model into its round's
accumulators — shifted sums ``sum(x - ref)`` and ``sum(||x - ref||^2)`` in float64, so the
consensus error of round ``r`` needs O(model) memory, not O(peers x model), and merges
across worker processes — and keeps the models of a fixed sample of peers (``eval_nodes``)
to score on the test set at the end (batched with ``evaluate_many`` when the task has it).

Consensus error (as :mod:`fednode.sim.gossip` defines it)::

    consensus_error(r) = ||X_r - 1 xbar_r^T||_F / (sqrt(n_r) ||xbar_r||)

over the ``n_r`` peers that finished round ``r`` (round 0: the initial models).

Per-node rows (``nodes.jsonl``): one per node per round for a fixed, evenly spaced sample
of at most ``node_metrics`` nodes. Everything here is a deterministic function of the
events, so the same seed writes byte-identical files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loop import EventSink
from ..training.personal import PERSONAL_KEYS, PersonalTally

#: models folded into the consensus sums per array operation (bounded extra memory)
_FOLD_BATCH = 2048
ROW_KEYS = (
    "neighbours",
    "degree",
    "distance",
    "train_loss",
    "missed",
    "model_version",
    "dp_epsilon",  # local DP (fednode.privacy.local)
)


@dataclass
class RoundTable:
    rounds: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    bytes: np.ndarray
    time_s: np.ndarray
    consensus: np.ndarray | None
    accuracy_min: np.ndarray
    accuracy_max: np.ndarray
    accuracy_of_mean: np.ndarray


def sample_indices(n: int, limit: int) -> list[int]:
    """At most ``limit`` (0 = all) evenly spaced indices of ``range(n)``; no RNG."""
    if limit <= 0 or n <= limit:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, limit)})


def json_safe(v: Any) -> Any:
    """``v`` as JSON holds it: numpy scalars as Python numbers, NaN / Inf as None,
    dicts, lists and tuples walked."""
    if isinstance(v, np.floating | np.integer):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    return v


class Collector:
    """Listens to one simulation's events (or one shard's) and builds the round table."""

    def __init__(self, topo: Any, built: Any, config: Any, options: Any) -> None:
        from .scenarios import client_task

        self.kind = topo.kind
        self.n = topo.n
        self.root_index = built.root.index if built.root is not None else None
        self.rows_for = frozenset(sample_indices(self.n, options.node_metrics))
        self.eval_for = frozenset(sample_indices(self.n, options.eval_nodes))
        self._config = config
        self._task_factory: Callable[[], Any] = lambda: client_task(config, 0, max(self.n, 1))
        self.root_rows: list[dict[str, Any]] = []
        self.node_rows: list[dict[str, Any]] = []
        self.net_bytes: list[tuple[int, int]] = []  # (round, cumulative frame bytes)
        #: sharded runs: (window end, frame bytes of all shards so far)
        self.window_bytes: list[tuple[float, int]] = []
        self._last_sent: dict[int, int] = {}
        self._last_recv: dict[int, int] = {}
        # gossip, per round: [count, sum(x - ref) f64, sum ||x - ref||^2, bytes, t_max]
        self.acc: dict[int, list[Any]] = {}
        #: (round, model) folded into ``acc`` in bulk by :meth:`_drain`, not one by one
        self._pending: list[tuple[int, np.ndarray]] = []
        self.samples: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.ref: np.ndarray | None = None
        #: the highest round any node has finished so far, and who hears when it grows
        #: (``progress(done, total)``; ``run_experiment(progress=...)``)
        self.front = 0
        self.progress: Callable[[int, int], None] | None = None
        #: sharded runs: whether a node is this shard's (None: one process, every node)
        self.local: Callable[[int], bool] | None = None
        self._rows_done = 0
        #: gossip, per round: the peers' personalised accuracies ([personal])
        self.personal: dict[int, PersonalTally] = {}
        if self.kind == "gossip":
            models = [node.role.params for node in built.sim.nodes[: self.n]]
            self.ref = np.asarray(models[0], dtype=np.float64)
            for i, x in enumerate(models):
                self._fold(0, i, x, 0, 0.0)

    # --- event input ------------------------------------------------------------------
    def listener(self, sim: Any) -> EventSink:
        """What listens to ``sim`` (either driver; ``sim.listeners``)."""
        nodes, stats = sim.nodes, sim.model.stats

        def listen(peer: str, event: str, data: dict[str, Any]) -> None:
            if event == "gossip_round" or event == "round":
                index = sim.node(peer).index
                if event == "gossip_round" or index == self.root_index:
                    self.on_event(nodes, index, event, data, sim.now, stats.sent_bytes)

        return listen

    def on_event(
        self, nodes: Any, index: int, event: str, data: dict[str, Any], now: float, sent: int
    ) -> None:
        rnd = int(data["round"])
        if rnd > self.front:
            self.advance(rnd)
        if event == "round":
            self.root_rows.append(dict(data))
            self.net_bytes.append((rnd, sent))
            if self.local is None:  # sharded: each shard writes its rows (at_boundary)
                for i in self.rows_for:
                    self._node_row(nodes[i], rnd, now, {})
            return
        if "personal_accuracy" in data:  # [personal]
            self.personal.setdefault(rnd, PersonalTally()).add(data)
        node = nodes[index]
        delta = node.stats.sent_bytes - self._last_sent.get(index, 0)
        self._last_sent[index] = node.stats.sent_bytes
        x = node.role.params
        self._fold(rnd, index, x, delta, now)
        if index in self.rows_for:
            self._node_row(node, rnd, now, data, sent_delta=delta)

    def advance(self, front: int) -> None:
        """Some node finished round ``front`` (the highest so far): tell ``progress``."""
        if front > self.front:
            self.front = front
            if self.progress is not None:
                self.progress(front, int(self._config.rounds.rounds))

    def _node_row(
        self, node: Any, rnd: int, now: float, data: dict[str, Any], sent_delta: int | None = None
    ) -> None:
        i = node.index
        if sent_delta is None:
            sent_delta = node.stats.sent_bytes - self._last_sent.get(i, 0)
            self._last_sent[i] = node.stats.sent_bytes
        recv = node.stats.received_frames - self._last_recv.get(i, 0)
        self._last_recv[i] = node.stats.received_frames
        row: dict[str, Any] = {"round": rnd, "node": i, "t": round(now, 6), "bytes": sent_delta}
        row["frames_in"] = recv
        row["alive"] = bool(getattr(node, "alive", True))
        for key in ROW_KEYS:
            if key in data:
                row[key] = json_safe(data[key])
        self.node_rows.append(row)

    def _fold(self, rnd: int, index: int, x: np.ndarray, nbytes: int, now: float) -> None:
        """Count node ``index``'s model ``x`` at the end of round ``rnd``. The model's
        sums are added later, many at once (``x`` is read-only: peers replace their
        model, never modify it)."""
        assert self.ref is not None
        acc = self.acc.get(rnd)
        if acc is None:
            acc = self.acc[rnd] = [0, np.zeros_like(self.ref), 0.0, 0, 0.0]
        acc[0] += 1
        acc[3] += nbytes
        acc[4] = max(acc[4], now)
        self._pending.append((rnd, x))
        if len(self._pending) >= _FOLD_BATCH:
            self._drain()
        if index in self.eval_for:
            self.samples.setdefault(rnd, []).append((index, x))

    def _drain(self) -> None:
        """Add the pending models to their rounds' sums: ``sum(x - ref)`` and
        ``sum ||x - ref||^2`` in float64, one array operation per round."""
        pending, self._pending = self._pending, []
        ref = self.ref
        if ref is None or not pending:
            return
        by_round: dict[int, list[np.ndarray]] = {}
        for rnd, x in pending:
            by_round.setdefault(rnd, []).append(x)
        for rnd, xs in by_round.items():
            d = np.subtract(np.stack(xs), ref, dtype=np.float64)
            acc = self.acc[rnd]
            acc[1] += d.sum(axis=0)
            acc[2] += float(np.einsum("ij,ij->", d, d))

    # --- shards (fednode.sim.parallel) -------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """This collector's state as plain data (marshal-able) for merging."""
        self._drain()
        return {
            "root_rows": self.root_rows,
            "personal": {r: [t.total, t.low, t.members] for r, t in self.personal.items()},
            "node_rows": self.node_rows,
            "net_bytes": self.net_bytes,
            "acc": {
                r: [a[0], a[1].tobytes(), a[2], a[3], a[4]] for r, a in self.acc.items() if r > 0
            },
            "samples": {
                r: [(i, np.asarray(x, dtype=np.float32).tobytes()) for i, x in s]
                for r, s in self.samples.items()
                if r > 0
            },
        }

    def merge(self, state: dict[str, Any]) -> None:
        self._drain()
        self.root_rows += state["root_rows"]
        for r, (total, low, members) in state.get("personal", {}).items():
            tally = self.personal.setdefault(r, PersonalTally())
            tally.total, tally.low = tally.total + total, min(tally.low, low)
            tally.members += members
        self.node_rows += state["node_rows"]
        self.net_bytes += [tuple(x) for x in state["net_bytes"]]
        for r, (count, s, q, nbytes, t) in state["acc"].items():
            acc = self.acc.get(r)
            vec = np.frombuffer(s, dtype=np.float64)
            if acc is None:
                self.acc[r] = [count, vec.copy(), q, nbytes, t]
            else:
                acc[0] += count
                acc[1] += vec
                acc[2] += q
                acc[3] += nbytes
                acc[4] = max(acc[4], t)
        for r, items in state["samples"].items():
            self.samples.setdefault(r, []).extend(
                (i, np.frombuffer(b, dtype=np.float32)) for i, b in items
            )

    def at_boundary(self, nodes: Any, boundary: int, now: float) -> None:
        """Sharded trees: rows of this shard's sampled nodes for the rounds before
        ``boundary`` (the parent announces it at a window start; the round record itself
        happens in the coordinator's shard only)."""
        if self.kind == "gossip" or self.local is None:
            return
        for rnd in range(max(self._rows_done + 1, 1), boundary):
            for i in sorted(self.rows_for):
                if self.local(i):
                    self._node_row(nodes[i], rnd, now, {})
        self._rows_done = max(self._rows_done, boundary - 1)

    def reset_shard_state(self) -> None:
        """Forget round 0 (the parent holds it) before a shard starts collecting."""
        self.acc = {}
        self._pending = []
        self.samples = {}

    # --- output -----------------------------------------------------------------------------
    def finish(self, nodes: Any) -> None:
        """Nothing to do after a single-process run (kept for symmetry with shards)."""

    def personal_rounds(self) -> dict[int, dict[str, float]]:
        """[personal]: per round, the members' mean and minimum personalised accuracy and
        how many reported (star / two-tier: the coordinator's records; gossip: the peers'
        ``gossip_round`` records)."""
        if self.kind == "gossip":
            return {r: t.record() for r, t in sorted(self.personal.items()) if t.members}
        return {
            int(r["round"]): {k: float(r[k]) for k in PERSONAL_KEYS}
            for r in self.root_rows
            if all(k in r for k in PERSONAL_KEYS)
        }

    def table(self) -> RoundTable:
        self._drain()
        self.node_rows.sort(key=lambda r: (r["round"], r["node"]))
        if self.kind != "gossip":
            return self._tree_table()
        return self._gossip_table()

    def _tree_table(self) -> RoundTable:
        rows = sorted(self.root_rows, key=lambda r: r["round"])
        cum = dict(sorted(self.net_bytes))
        if self.window_bytes:  # sharded: bytes of all shards at the window of the record
            import bisect

            ends = [t for t, _b in self.window_bytes]
            for r in rows:
                i = bisect.bisect_left(ends, float(r.get("time_s", 0.0)))
                cum[r["round"]] = self.window_bytes[min(i, len(ends) - 1)][1]
        prev = 0
        per_round = []
        for r in rows:
            total = cum.get(r["round"], prev)
            per_round.append(total - prev)
            prev = total
        nan = np.full(len(rows), math.nan)
        return RoundTable(
            rounds=np.array([r["round"] for r in rows], dtype=np.int64),
            accuracy=np.array([r["accuracy"] for r in rows], dtype=np.float64),
            loss=np.array([r["loss"] for r in rows], dtype=np.float64),
            bytes=np.array(per_round, dtype=np.int64),
            time_s=np.array([r.get("time_s", math.nan) for r in rows], dtype=np.float64),
            consensus=None,
            accuracy_min=nan,
            accuracy_max=nan.copy(),
            accuracy_of_mean=nan.copy(),
        )

    def _gossip_table(self) -> RoundTable:
        task = self._task_factory()
        assert self.ref is not None
        rounds = sorted(r for r in self.acc if r > 0)
        consensus = [self._consensus(0)] + [self._consensus(r) for r in rounds]
        acc, loss, lo, hi, means = [], [], [], [], []
        scores: dict[int, dict[int, tuple[float, float]]] = {}
        for r in rounds:
            count, s = self.acc[r][0], self.acc[r][1]
            means.append((s / max(count, 1) + self.ref).astype(np.float32))
            items = sorted(self.samples.get(r, []), key=lambda t: t[0])
            losses, accs = _evaluate(task, [x for _i, x in items])
            scores[r] = {i: (float(lv), float(av)) for (i, _x), lv, av in zip(items, losses, accs)}
            acc.append(float(np.mean(accs)) if len(accs) else math.nan)
            loss.append(float(np.mean(losses)) if len(losses) else math.nan)
            lo.append(float(np.min(accs)) if len(accs) else math.nan)
            hi.append(float(np.max(accs)) if len(accs) else math.nan)
        _mean_losses, of_mean = _evaluate(task, means)
        for row in self.node_rows:  # attach the scores of the eval sample
            score = scores.get(row["round"], {}).get(row["node"])
            if score is not None:
                row["loss"], row["accuracy"] = score
        return RoundTable(
            rounds=np.array(rounds, dtype=np.int64),
            accuracy=np.array(acc, dtype=np.float64),
            loss=np.array(loss, dtype=np.float64),
            bytes=np.array([self.acc[r][3] for r in rounds], dtype=np.int64),
            time_s=np.array([self.acc[r][4] for r in rounds], dtype=np.float64),
            consensus=np.array(consensus, dtype=np.float64),
            accuracy_min=np.array(lo, dtype=np.float64),
            accuracy_max=np.array(hi, dtype=np.float64),
            accuracy_of_mean=np.array(of_mean, dtype=np.float64),
        )

    def _consensus(self, r: int) -> float:
        self._drain()
        count, s, q = self.acc[r][0], self.acc[r][1], self.acc[r][2]
        if count == 0:
            return math.nan
        mean_d = s / count
        spread2 = max(q - count * float(mean_d @ mean_d), 0.0)
        assert self.ref is not None
        norm = float(np.linalg.norm(mean_d + self.ref))
        return math.sqrt(spread2) / (math.sqrt(count) * norm) if norm else math.nan


def _evaluate(task: Any, vecs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(losses, accuracies) of ``vecs`` on the task's test set."""
    if not vecs:
        return np.zeros(0), np.zeros(0)
    many = getattr(task, "evaluate_many", None)
    if many is not None:
        losses, accs = many(np.stack(vecs))
        return np.asarray(losses), np.asarray(accs)
    out = [task.evaluate(v) for v in vecs]
    return (
        np.array([o[0] for o in out], dtype=np.float64),
        np.array([o[2].get("accuracy", math.nan) for o in out], dtype=np.float64),
    )
