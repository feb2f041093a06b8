"""What one experiment returns: per-round arrays, per-node rows and the summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RoundParams
from ..privacy import DP_KEYS
from ..privacy.accountant import BUDGET_STOP
from .metrics import RoundTable, json_safe
from .topology import Topology

#: round-record fields of the aggregation report copied into ``rounds.jsonl``
AGG_KEYS = (
    "agg_rule",
    "agg_selected",
    "agg_discarded",
    "agg_clipped",
    "agg_trimmed",
    "agg_capped",
    "agg_flagged",
)


@dataclass
class ExperimentResult(RoundTable):
    """Plain result of one run: the collector's :class:`~.metrics.RoundTable` (numpy arrays
    over rounds: ``rounds``, ``accuracy``, ``loss``, ``bytes``, ``time_s``, ``consensus`` —
    gossip only, round 0 = start —, ``accuracy_min`` / ``max`` / ``of_mean``), per-node
    rows, summary numbers."""

    name: str
    kind: str
    n: int
    config: dict[str, Any]
    spectral: dict[str, Any]
    node_rows: list[dict[str, Any]]
    #: star / two-tier: the coordinator's full round records (selected, completed, ...)
    records: list[dict[str, Any]]
    faults: list[dict[str, Any]]
    wall_s: float
    virtual_s: float
    messages: int
    error: str | None
    notes: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    #: merged into :meth:`summary` (e.g. the CLI's client count for ``--topology star``)
    extra_summary: dict[str, Any] = field(default_factory=dict)
    topology: Topology | None = field(default=None, repr=False)
    #: why the root (or the run) stopped, also when it stopped cleanly
    stop_reason: str = ""
    #: the run's ``[privacy]`` (mode, noise multiplier, delta, budget, accountant)
    privacy: dict[str, Any] = field(default_factory=dict)
    #: [personal]: per round, the members' personalised accuracy (mean, min, members)
    personal: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy[-1]) if len(self.accuracy) else math.nan

    @property
    def bound(self) -> np.ndarray | None:
        """Spectral prediction of the consensus error: ``e_0 * rho^(steps * r)`` (gossip)."""
        if self.consensus is None or not len(self.consensus):
            return None
        rho = float(self.spectral.get("rho", math.nan))
        steps = int(self.config.get("gossip_steps", 1))
        start = (
            self.consensus[0]
            if self.consensus[0] > 0
            else self.consensus[min(1, len(self.consensus) - 1)]
        )
        first = 0 if self.consensus[0] > 0 else 1
        return np.array([start * rho ** (steps * max(r - first, 0)) for r in self.consensus_rounds])

    @property
    def consensus_rounds(self) -> np.ndarray:
        return np.arange(len(self.consensus)) if self.consensus is not None else np.arange(0)

    @property
    def measure_accuracy(self) -> float | None:
        """The accuracy bytes-to-target is measured at: ``rounds.measure_accuracy``, or
        0.95 on the digits task when that is 0 (``RoundParams.measured_at``)."""
        cfg = self.config.get("node_config", {})
        rounds = RoundParams(**cfg["rounds"]) if "rounds" in cfg else RoundParams()
        return rounds.measured_at(str(cfg.get("data", {}).get("task", "digits")))

    def to_target(self) -> tuple[int | None, int | None]:
        """(first round whose accuracy reached :attr:`measure_accuracy`, frame bytes every
        node sent until that round's record, all links): (None, None) if never reached."""
        target = self.measure_accuracy
        total = 0
        for r, acc, nbytes in zip(self.rounds, self.accuracy, self.bytes):
            total += int(nbytes)
            if target is not None and int(r) > 0 and acc >= target:
                return int(r), total
        return None, None

    def table(self) -> list[dict[str, Any]]:
        """One dict per round (what ``rounds.jsonl`` holds); ``bytes`` is the round's frame
        bytes on all links, ``bytes_total`` the sum up to and including the round."""
        out = []
        local_eps: dict[int, float] = {}
        for nrow in self.node_rows:
            if "dp_epsilon" in nrow:
                rnd = int(nrow["round"])
                local_eps[rnd] = max(local_eps.get(rnd, 0.0), float(nrow["dp_epsilon"]))
        cumulative = np.cumsum(self.bytes) if len(self.bytes) else self.bytes
        for i, r in enumerate(self.rounds):
            row: dict[str, Any] = {
                "round": int(r),
                "accuracy": json_safe(self.accuracy[i]),
                "loss": json_safe(self.loss[i]),
                "bytes": int(self.bytes[i]),
                "bytes_total": int(cumulative[i]),
                "time_s": json_safe(self.time_s[i]),
            }
            if i < len(self.records):
                rec = self.records[i]
                for key in ("selected", "completed", "failed", "clients_completed"):
                    row[key] = rec.get(key)
                for key in AGG_KEYS:  # what the aggregation rule did (docs/ROBUSTNESS.md)
                    if key in rec:
                        row[key] = rec[key]
                for key in DP_KEYS:  # central DP (docs/PRIVACY.md)
                    if key in rec:
                        row[key] = rec[key]
            elif int(r) in local_eps:  # local DP: the largest epsilon of a peer that round
                row["dp_epsilon"] = local_eps[int(r)]
            for key, value in self.personal.get(int(r), {}).items():  # [personal]
                row[key] = json_safe(int(value) if key == "personal_members" else value)
            if self.consensus is not None:
                row["consensus_error"] = (
                    json_safe(self.consensus[int(r)]) if int(r) < len(self.consensus) else None
                )
                row["accuracy_min"] = json_safe(self.accuracy_min[i])
                row["accuracy_max"] = json_safe(self.accuracy_max[i])
                row["accuracy_of_mean"] = json_safe(self.accuracy_of_mean[i])
            out.append(row)
        return out

    def to_pandas(self) -> Any:
        """The per-round table as a ``pandas.DataFrame`` (pandas is not a dependency)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas() needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.table()).set_index("round")

    def summary(self) -> dict[str, Any]:
        hit = next((int(r) for r, a in zip(self.rounds, self.accuracy) if a >= 0.9), None)
        rounds_to_target, bytes_to_target = self.to_target()
        return {
            "name": self.name,
            "kind": self.kind,
            "nodes": self.n,
            "rounds": len(self.rounds),
            "final_accuracy": json_safe(self.final_accuracy),
            "rounds_to_90": hit,
            "final_consensus_error": json_safe(self.consensus[-1])
            if self.consensus is not None and len(self.consensus)
            else None,
            "total_bytes": int(self.bytes.sum()) if len(self.bytes) else 0,
            "measure_accuracy": self.measure_accuracy,
            "rounds_to_target": rounds_to_target,
            "bytes_to_target": bytes_to_target,
            "messages": self.messages,
            "virtual_s": round(self.virtual_s, 6),
            "wall_s": round(self.wall_s, 3),
            "spectral": self.spectral,
            "faults": self.faults,
            "error": self.error,
            "notes": self.notes,
            **self.aggregation_summary(),
            **self.privacy_summary(),
            **self.personal_summary(),
            **self.extra_summary,
        }

    def personal_summary(self) -> dict[str, Any]:
        """With personalised accuracy reported ([personal] holdout > 0): the last round's
        mean and minimum over members, next to the global model's final accuracy."""
        if not self.personal:
            return {}
        last = self.personal[max(self.personal)]
        mode = self.config.get("node_config", {}).get("personal", {}).get("mode", "none")
        return {
            "personal": {
                "mode": mode,
                "final_accuracy": json_safe(last.get("personal_accuracy")),
                "final_accuracy_min": json_safe(last.get("personal_accuracy_min")),
                "members": int(last.get("personal_members", 0)),
                "global_final_accuracy": json_safe(self.final_accuracy),
            }
        }

    def privacy_summary(self) -> dict[str, Any]:
        """With ``[privacy]`` on: the final epsilon at delta, the budget, and whether the
        budget stopped training (and why)."""
        if not self.privacy or self.privacy.get("mode", "off") == "off":
            return {}
        eps = [row["dp_epsilon"] for row in self.table() if row.get("dp_epsilon") is not None]
        budget_stop = self.stop_reason.startswith(BUDGET_STOP)
        return {
            "privacy": {
                **self.privacy,
                "epsilon": eps[-1] if eps else 0.0,
                "rounds_released": len(eps),
                "stopped_by_budget": budget_stop,
                "stop_reason": self.stop_reason if budget_stop else "",
            }
        }

    def aggregation_summary(self) -> dict[str, Any]:
        """Star / two-tier: the coordinator's rule and, over all rounds, how many updates it
        discarded / clipped, how many claims it capped, which peers it flagged."""
        recs = [r for r in self.records if "agg_rule" in r]
        if not recs:
            return {}
        return {
            "aggregation": {
                "rule": recs[-1]["agg_rule"],
                "discarded": sum(len(r.get("agg_discarded", ())) for r in recs),
                "clipped": sum(int(r.get("agg_clipped", 0)) for r in recs),
                "capped": sum(len(r.get("agg_capped", ())) for r in recs),
                "flagged_updates": sum(len(r.get("agg_flagged", ())) for r in recs),
                "flagged_peers": sorted({p for r in recs for p in r.get("agg_flagged", ())}),
            }
        }
