"""The star coordinator with secure aggregation: :class:`SecureCoordinator` (pure).

(Two-tier: :mod:`.secure_region`; the stage machine both use: :mod:`.secure_stages`.)

It is the :class:`~fednode.hierarchy.coordinator.Coordinator` (selection, ``Fit``,
evaluation, checkpoints, the server optimiser) with the round's middle replaced: instead
of folding ``Update`` s it runs one :class:`~.secure_stages.SecureStages` (one
:class:`~fednode.crypto.secagg_server.SecAggServer`) per round attempt over ``SecAgg``
frames (kind 9, :mod:`fednode.crypto.secagg_wire`)::

    round_start: Fit (config secagg=True) + params to every selected member
    ADVERTISE  until every live member advertised or the round deadline (training first)
    SHARE      keys out; until every advertiser shared or stage_timeout_s
    MASK       shares out; until every sharer sent its masked input or stage_timeout_s
    UNMASK     unmask request out; until every survivor answered or stage_timeout_s
    finish     sum -> mean -> the coordinator's aggregator (one input) -> server step

A member that misses a stage's deadline (or goes down) is out of the round; a close with
fewer than ``t`` members, or (distributed DP) fewer masked inputs than the noise needs,
aborts the round: ``secagg_aborted`` and ``round_failed`` (``secagg: true``) are
emitted, the model is unchanged and the next round starts. The coordinator never holds an
individual unmasked update: the server keeps only the running sum of masked inputs, and
the aggregator gets one vector, the survivors' mean.

A plain ``Update`` during a secure round is refused (``RemoteProtocolError``, counted):
a member that is not configured for secure aggregation simply fails the round's stages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Unpack

import numpy as np

from ..actions import Action, Emit
from ..config.secagg import SecAggConfig
from ..crypto.secagg_server import SecAggResult
from ..errors import ConfigError, RemoteProtocolError, SecAggAborted
from ..wire import messages as m
from .coordinator import Coordinator, State
from .root import RootArgs
from .secure_stages import SecureStages

__all__ = ["SecureCoordinator", "min_survivors"]


def min_survivors(secagg: SecAggConfig, n: int, distributed_dp: bool, rounds: Any) -> int:
    """The fewest masked inputs a round of ``n`` members may release a sum of: ``t``, and
    under distributed DP also what the noise shares were sized for (privacy/distributed.py)."""
    t = secagg.threshold_for(n)
    if not distributed_dp:
        return t
    lost = math.floor(rounds.max_failure_fraction * n)
    return max(t, rounds.min_fit_clients, n - lost)


class SecureCoordinator(Coordinator):
    """Synchronous rounds whose aggregate is computed under secure aggregation."""

    def __init__(
        self,
        *,
        secagg: SecAggConfig,
        distributed_dp: bool = False,
        max_retries: int | None = None,
        **root: Unpack[RootArgs],
    ) -> None:
        super().__init__(max_retries=max_retries, **root)
        self.secagg = secagg
        self.distributed_dp = distributed_dp
        #: the current attempt's stages (None between rounds)
        self.stages: SecureStages | None = None
        self._key: tuple[int, int] | None = None
        for state in State:
            self._table[(state, m.Kind.SECAGG)] = self._on_late
        self._table[(State.FITTING, m.Kind.SECAGG)] = self._on_secagg
        self._table[(State.FITTING, m.Kind.UPDATE)] = self._on_plain_update

    @property
    def server(self) -> Any:
        """The current round's SecAggServer (None between rounds)."""
        return self.stages.server if self.stages else None

    def control(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """No ``promote``: an aggregator under this coordinator would see its region's
        updates in the clear."""
        if request.get("op") == "promote":
            return {"ok": False, "error": "promotion is off under secure aggregation"}
        return super().control(request)

    # --- round start ---------------------------------------------------------------------
    def train_config(self) -> dict[str, Any]:
        config = super().train_config()
        config["secagg"] = True
        if self.current is not None:
            n = len(self.current.selected)
            config["secagg_min_survivors"] = self._min_survivors(n)
        return config

    def _min_survivors(self, n: int) -> int:
        return min_survivors(self.secagg, n, self.distributed_dp, self.rounds)

    def _try_start_round(self, now: float) -> list[Action]:
        actions = super()._try_start_round(now)
        cur = self.current
        if self.state is not State.FITTING or cur is None or self._key == (cur.number, cur.attempt):
            return actions
        self._key = (cur.number, cur.attempt)
        members = tuple(sorted(cur.selected))
        dim = self.params.shape[0] + 2
        try:
            self.stages = SecureStages(
                self.secagg, members, cur.number, dim, self._min_survivors(len(members))
            )
        except ConfigError as exc:
            self.stages = None
            return actions + self._abort(
                now, f"secagg cannot run with {len(members)} members: {exc}"
            )
        sends = self.stages.begin()
        cur.bytes_down += self.stages.bytes_down
        return actions + list(sends)

    # --- inputs ---------------------------------------------------------------------------
    def _on_plain_update(self, msg: m.Update, now: float) -> list[Action]:
        raise RemoteProtocolError(
            "plain Update during a secure-aggregation round (is [secagg] enabled on it?)",
            peer=msg.sender,
        )

    def _on_late(self, msg: m.Message, now: float) -> list[Action]:
        return [Emit("secagg_late", {"peer": msg.sender, "round": msg.round})]

    def _on_secagg(self, msg: m.Message, now: float) -> list[Action]:
        assert isinstance(msg, m.SecAgg)
        cur, stages = self.current, self.stages
        if cur is None or stages is None or msg.round != cur.number:
            return self._on_late(msg, now)
        before = stages.bytes_up
        stages.receive(msg)
        cur.bytes_up += stages.bytes_up - before
        return self._maybe_finish(now)

    # --- stage progress (replaces the plain round's finish tests) -------------------------
    def _maybe_finish(self, now: float) -> list[Action]:
        cur, stages = self.current, self.stages
        if cur is None or self.state is not State.FITTING or stages is None:
            return []
        stages.drop(cur.failed | cur.declined)
        return self._close(now) if stages.done() else []

    def poll(self, now: float) -> list[Action]:
        cur = self.current
        if self.state is State.FITTING and cur and self.stages is not None:
            return self._close(now) if now >= cur.deadline else []
        return super().poll(now)

    def _close(self, now: float) -> list[Action]:
        cur, stages = self.current, self.stages
        assert cur is not None and stages is not None
        out: list[Action] = [Emit("secagg_stage", {"round": cur.number, "stage": stages.stage})]
        before = stages.bytes_down
        try:
            sends, result = stages.close()
        except SecAggAborted as exc:
            return out + self._abort(now, str(exc))
        if result is not None:
            return out + self._release(now, result)
        cur.bytes_down += stages.bytes_down - before
        cur.deadline = now + self.secagg.stage_timeout_s
        return out + list(sends)

    def _release(self, now: float, result: SecAggResult) -> list[Action]:
        """Hand the survivors' mean to the aggregator and finish as a plain round."""
        cur = self.current
        assert cur is not None
        self.stages = None
        total = result.total
        dim = self.params.shape[0]
        weight = float(total[dim])
        survivors = set(result.survivors)
        if weight <= 0:
            return self._abort(now, f"secagg round {cur.number}: the survivors' weight is 0")
        if self.distributed_dp:  # the fixed denominator: the members selected
            weight = float(len(cur.selected))
        cur.arrived = survivors
        cur.failed = set(cur.selected) - survivors - cur.declined
        cur.clients = len(survivors)
        cur.examples = round(float(total[dim]))
        cur.train_loss = float(total[dim + 1])
        for peer in survivors:
            self.broadcast.acked(peer, self.model_version)
            self.observe(peer).duration_s = now - cur.started
        self.aggregator.add((total[:dim] / weight).astype(np.float32), weight, "secagg")
        info = {
            "round": cur.number,
            "survivors": len(result.survivors),
            "dropped": len(result.dropped),
            "members": len(cur.selected),
        }
        return [Emit("secagg_round", info), *self._finish_round(now)]

    def _abort(self, now: float, reason: str) -> list[Action]:
        """The round cannot release a sum: skipped, model unchanged, the next round starts."""
        self.stages = None
        return self._skip_round(now, reason, mark="secagg", event="secagg_aborted")
