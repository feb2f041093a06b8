"""What the sync and async coordinators share: model, tree, observations, checkpoints.

Pure (no I/O) except for the optional checkpoint store, which the coordinator calls at the
end of a round (see :mod:`fednode.hierarchy.checkpoint`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Required, TypedDict

import numpy as np

from ..actions import Action, Emit, Send, Stop
from ..config import RoundParams, TierParams, TrainParams
from ..errors import ControlError
from ..privacy import PrivacyLedger
from ..role import RoleDefaults
from ..training.aggregate import AggregateReport, Aggregator, StreamingMean
from ..wire import messages as m
from ..wire.codecs import parse_codec
from .broadcast import Broadcaster
from .checkpoint import (
    DirectoryCheckpoints,
    Snapshot,
    load_checkpoint,
    rng_state_from_json,
    rng_state_to_json,
)
from .selection import Candidate, Observed, Selection, UniformSelection
from .tree import Tree

log = logging.getLogger("fednode.privacy")

ServerUpdate = Callable[[np.ndarray, np.ndarray], np.ndarray]


class RootArgs(TypedDict, total=False):
    """The keyword arguments of :class:`RootRole`; the coordinators forward them unchanged
    (``**root: Unpack[RootArgs]``), so the list is written once and still type-checked."""

    params: Required[np.ndarray]
    rounds: Required[RoundParams]
    train: Required[TrainParams]
    federation: str
    task: str
    codec_down: str
    aggregator: Aggregator | None
    selection: Selection | None
    seed: int
    start_round: int
    model_version: int
    server_update: ServerUpdate | None
    tier: TierParams | None
    checkpoints: DirectoryCheckpoints | None
    resume_from: str | Path | None
    privacy: PrivacyLedger | None


class RootRole(RoleDefaults):
    """Base of :class:`~.coordinator.Coordinator` and :class:`~.fedbuff.AsyncCoordinator`."""

    role = "coordinator"
    mode = "sync"

    def __init__(
        self,
        *,
        params: np.ndarray,
        rounds: RoundParams,
        train: TrainParams,
        federation: str = "fednode",
        task: str = "digits",
        codec_down: str = "none",
        aggregator: Aggregator | None = None,
        selection: Selection | None = None,
        seed: int = 0,
        start_round: int = 1,
        model_version: int = 0,
        server_update: ServerUpdate | None = None,
        tier: TierParams | None = None,
        checkpoints: DirectoryCheckpoints | None = None,
        resume_from: str | Path | None = None,
        privacy: PrivacyLedger | None = None,
    ) -> None:
        self.params = np.array(params, dtype=np.float32, copy=True)
        #: central DP: the rounds released so far and the budget (None: DP off)
        self.privacy = privacy
        self.rounds = rounds
        self.train = train
        self.federation = federation
        self.task = task
        self.codec_down = parse_codec(codec_down)
        #: delta broadcasts of the public model (codec_down set; hierarchy/broadcast.py)
        self.broadcast = Broadcaster(codec_down, seed=seed)
        self.aggregator = aggregator or StreamingMean()
        self.selection = selection or UniformSelection()
        self.rng = random.Random(seed)
        self.round_number = start_round
        self.model_version = model_version
        self.server_update: ServerUpdate = server_update or (lambda params, delta: params + delta)
        self.tree = Tree(tier or TierParams())
        self.observed: dict[str, Observed] = {}
        self.checkpoints = checkpoints
        self.history: list[dict[str, Any]] = []
        self.done = False
        self.resumed_from: Snapshot | None = None
        self._promotions: list[tuple[str, float]] = []
        if resume_from is not None:
            self._restore(load_checkpoint(resume_from))

    # --- tree ------------------------------------------------------------------------
    @property
    def children(self) -> dict[str, m.Advert]:
        """Direct children (clients and aggregators) by their last advert."""
        return self.tree.direct

    def hierarchy(self) -> dict[str, list[str]]:
        """The tree as ``{parent: [children]}``; the coordinator is the key "" until it
        learned its own id from a message."""
        return self.tree.as_dict()

    def advert(self) -> m.Advert:
        return m.Advert(
            role="coordinator",
            federation=self.federation,
            task=self.task,
            load=len(self.tree.direct),
            round=self.round_number,
            model_version=self.model_version,
        )

    def request_promotion(self, peer: str, share: float = 0.5) -> None:
        """Promote direct client ``peer`` to aggregator before the next round starts and move
        ``share`` of its region's direct clients under it (operator / API entry point)."""
        self._promotions.append((peer, share))

    def direct_clients(self) -> list[str]:
        """Direct children that are clients (the peers an operator may promote)."""
        return sorted(p for p, a in self.tree.direct.items() if a.role == "client")

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "round": int(self.round_number),
            "model_version": int(self.model_version),
            "tree": self.hierarchy(),
            "direct_clients": self.direct_clients(),
        }

    def control(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``{"op": "promote", "peer": <id or a unique part>, "share": 0.5}``: queued with
        :meth:`request_promotion`, effective before the next round."""
        if request.get("op") != "promote":
            return super().control(request)
        peer = request.get("peer")
        share = request.get("share", 0.5)
        if not isinstance(peer, str) or not peer:
            return {"ok": False, "error": "promote needs 'peer': a peer id"}
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            return {"ok": False, "error": f"'share' must be a number in [0, 1], got {share!r}"}
        try:
            target = resolve_peer(peer, self.direct_clients())
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        self.request_promotion(target, float(share))
        return {"ok": True, "peer": target, "share": float(share), "effective": "next round"}

    def promote(self, peer: str, now: float, share: float = 0.5) -> list[Action]:
        """Promote now (between rounds): returns the Assign messages."""
        return self.tree.promote(peer, now, share)

    def _tree_maintenance(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for peer, share in self._promotions:
            actions += self.tree.promote(peer, now, share)
        self._promotions.clear()
        return actions + self.tree.auto_promote(now)

    def _advert_in(self, msg: m.Advert) -> list[Action]:
        if msg.federation != self.federation or msg.role not in ("client", "aggregator"):
            return []
        return self.tree.on_advert(msg)

    def _peer_up(self, peer: str) -> list[Action]:
        return [Send(peer, self.advert())]

    def _peer_down(self, peer: str) -> list[Action]:
        self.broadcast.forget(peer)
        orphans = self.tree.on_down(peer)
        return [Emit("orphaned", {"peer": peer, "clients": len(orphans)})] if orphans else []

    # --- observations for selection --------------------------------------------------
    def observe(self, peer: str) -> Observed:
        obs = self.observed.get(peer)
        if obs is None:
            obs = self.observed[peer] = Observed()
        return obs

    def candidates(self) -> list[Candidate]:
        """Direct children that accept work, with what we observed of them."""
        out = []
        for peer, advert in sorted(self.tree.direct.items()):
            if advert.accepting and self.tree.leaves(peer) > 0:
                obs = self.observed.get(peer) or Observed()
                out.append(obs.candidate(peer, advert.load, True, self.round_number))
        return out

    def train_config(self) -> dict[str, Any]:
        t = self.train
        return {
            "round": self.round_number,
            "local_epochs": t.local_epochs,
            "batch_size": t.batch_size,
            "lr": t.lr,
            "momentum": t.momentum,
            "prox_mu": t.prox_mu,
            "deadline_s": self.rounds.round_deadline_s,
        }

    def _fits(self, peers: list[str]) -> dict[str, m.Fit]:
        """This round's Fit for each of ``peers``: one dense model encoded once with
        ``codec_down`` "none" (the default), else each peer's public-model broadcast."""
        config = self.train_config()
        round_, version = self.round_number, self.model_version
        bc = self.broadcast
        if not bc.enabled:
            payload = self.codec_down.encode(self.params)
            fit = m.Fit(
                round=round_,
                model_version=version,
                codec=self.codec_down.spec,
                payload=payload,
                config=config,
            )
            return dict.fromkeys(peers, fit)
        bc.advance(self.params, version)
        return {p: bc.fit_for(p, round=round_, model_version=version, config=config) for p in peers}

    def _resend_full(self, msg: m.Reject) -> list[Action]:
        """A child refused a delta broadcast (it lacks the base): send it the full public
        model of the same version once (a second refusal is a failure)."""
        bc = self.broadcast
        if bc.version != msg.model_version or not bc.refused(msg.sender, msg.reason):
            return []
        fit = self._fits([msg.sender])[msg.sender]
        return [
            Emit("full_resent", {"peer": msg.sender, "round": msg.round}),
            Send(msg.sender, fit),
        ]

    def _apply(self, delta: np.ndarray) -> None:
        self.params = np.asarray(self.server_update(self.params, delta), dtype=np.float32)
        self.model_version += 1

    # --- checkpoints -----------------------------------------------------------------
    def snapshot(self, completed_round: int) -> Snapshot:
        opt = self.server_update
        state = opt.state_dict() if hasattr(opt, "state_dict") else {}
        return Snapshot(
            round=completed_round,
            model_version=self.model_version,
            params=self.params,
            optimizer=str(getattr(opt, "name", "fedavg")),
            optimizer_state=dict(state),
            membership=self.hierarchy(),
            extra={
                "mode": self.mode,
                "rng": rng_state_to_json(self.rng.getstate()),
                "observed": {
                    p: [o.loss, o.duration_s, o.examples, o.last_selected]
                    for p, o in sorted(self.observed.items())
                },
            },
        )

    # --- central DP (fednode.privacy) ---------------------------------------------------
    def privacy_stop(self, q: float, number: int) -> list[Action]:
        """Before a release at sampling rate ``q``: ``[]`` when the budget allows it, else
        the ``privacy_budget`` event and a clean Stop (the role is done)."""
        ledger = self.privacy
        if ledger is None or ledger.allows(q):
            return []
        reason = ledger.budget_reason(q, number)
        log.warning("stopping training: %s", reason)
        self.done = True
        info = {
            "round": number,
            "epsilon": ledger.epsilon,
            "next_epsilon": ledger.epsilon_after(q),
            "epsilon_budget": ledger.budget,
            "delta": ledger.delta,
            "reason": reason,
        }
        return [Emit("privacy_budget", info), Stop(reason)]

    def privacy_record(self) -> dict[str, Any]:
        """The ledger's ``dp_*`` round-record fields (none with DP off)."""
        return self.privacy.record() if self.privacy is not None else {}

    def _checkpoint(self, completed_round: int) -> list[Action]:
        if self.checkpoints is None:
            return []
        path = self.checkpoints.save(self.snapshot(completed_round))
        return [Emit("checkpoint", {"round": completed_round, "path": str(path)})]

    def _restore(self, snap: Snapshot) -> None:
        if snap.params.shape != self.params.shape:
            from ..errors import ConfigError

            raise ConfigError(
                "resume_from", snap.round, f"a model of {self.params.shape[0]} values"
            )
        self.params = np.array(snap.params, dtype=np.float32, copy=True)
        self.round_number = snap.round + 1
        self.model_version = snap.model_version
        opt = self.server_update
        if hasattr(opt, "load_state_dict") and getattr(opt, "name", None) == snap.optimizer:
            opt.load_state_dict(snap.optimizer_state)
        if "rng" in snap.extra:
            self.rng.setstate(rng_state_from_json(snap.extra["rng"]))
        for peer, (loss, duration, examples, last) in snap.extra.get("observed", {}).items():
            self.observed[peer] = Observed(loss, duration, examples, last)
        self.resumed_from = snap


def flag_events(report: AggregateReport, round_number: int) -> list[Action]:
    """One ``update_flagged`` warning per flagged update, one ``claim_capped`` per capped
    claim (docs/ROBUSTNESS.md, "Weights are claims")."""
    actions: list[Action] = [
        Emit("update_flagged", {"round": round_number, "peer": p, "rule": report.rule})
        for p in sorted(report.flagged)
    ]
    actions += [Emit("claim_capped", {"round": round_number, "peer": p}) for p in report.capped]
    return actions


def resolve_peer(query: str, candidates: list[str]) -> str:
    """``query`` exactly, or the one candidate containing it (at least 6 characters).

    Errors: :class:`~fednode.errors.ControlError` when none or several match.
    """
    if query in candidates:
        return query
    if len(query) >= 6:
        hits = [c for c in candidates if query in c]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ControlError(f"{query!r} matches {len(hits)} direct clients; give more of it")
    raise ControlError(
        f"{query!r} is not a direct client of this coordinator "
        f"({len(candidates)} direct clients; see `fednode status`)"
    )
