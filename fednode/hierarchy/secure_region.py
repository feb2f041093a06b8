"""The regional aggregator with secure aggregation: :class:`SecureRegion` (pure).

In a two-tier tree with ``[secagg] enabled`` each regional aggregator runs one
secure-aggregation round (:class:`~.secure_stages.SecureStages`) per edge round with its
clients, as the star coordinator does (:mod:`.secure_root`): the children train on the
``Fit`` (config ``secagg: true``), then answer the stages; the aggregator unmasks only
the region's sum and sends its mean up as an ordinary ``Update`` (``num_examples``: the
survivors' example total), signed by the frame envelope like any update. The
coordinator therefore learns each region's aggregate, the regional aggregator its
region's sum, and nobody one client's update.

Stage deadlines: advertise ends with the edge round's deadline (training happens inside
it), each later stage ``stage_timeout_s`` after the previous close. Nothing shortens them
to fit the coordinator's round deadline: with dropouts a region needs up to
``3 * stage_timeout_s`` beyond its edge deadline, so ``stage_timeout_s`` must be small
enough for that to end before the coordinator's deadline, or the region's update comes
too late (a straggler). Below ``t`` the edge round fails (``secagg_aborted``,
``edge_round_failed``) and the parent gets a ``Reject``.

:class:`RegionSumCoordinator` is the two-tier coordinator under ``[secagg]``: a plain
:class:`~.coordinator.Coordinator` over the regions' updates that refuses operator
promotion (a promoted client would aggregate its region in the clear).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..actions import Action, Emit
from ..config.secagg import SecAggConfig
from ..errors import ConfigError, RemoteProtocolError, SecAggAborted
from ..wire import messages as m
from .aggregator import RegionalAggregator, State
from .coordinator import Coordinator
from .secure_stages import SecureStages

__all__ = ["RegionSumCoordinator", "SecureRegion"]


class RegionSumCoordinator(Coordinator):
    """The two-tier coordinator under ``[secagg]`` (see the module docstring)."""

    def control(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if request.get("op") == "promote":
            return {"ok": False, "error": "promotion is off under secure aggregation"}
        return super().control(request)


class SecureRegion(RegionalAggregator):
    """A regional aggregator whose edge rounds run under secure aggregation."""

    def __init__(self, *, secagg: SecAggConfig, **kwargs: Any) -> None:
        if kwargs.get("trains"):
            raise ConfigError("secagg.enabled", True, "a regional aggregator that does not train")
        super().__init__(**kwargs)
        self.secagg = secagg
        self.stages: SecureStages | None = None
        for state in State:
            self._table[(state, m.Kind.SECAGG)] = self._on_late
        self._table[(State.FITTING, m.Kind.SECAGG)] = self._on_secagg
        self._table[(State.FITTING, m.Kind.UPDATE)] = self._on_plain_update

    # --- edge rounds ----------------------------------------------------------------
    def _child_config(self, job: Any) -> dict[str, Any]:
        config = super()._child_config(job)
        config["secagg"] = True
        config["secagg_min_survivors"] = self.secagg.threshold_for(max(len(job.selected), 2))
        return config

    def _start_edge_round(self, now: float) -> list[Action]:
        self.stages = None
        actions = super()._start_edge_round(now)
        job = self.job
        if self.state is not State.FITTING or job is None:
            return actions
        members = tuple(sorted(job.selected))
        try:
            self.stages = SecureStages(
                self.secagg,
                members,
                job.fit.round,
                job.base.shape[0] + 2,
                self.secagg.threshold_for(len(members)),
            )
        except ConfigError as exc:
            return actions + self._fail(
                now, f"secagg cannot run with {len(members)} members: {exc}"
            )
        return actions + list(self.stages.begin())

    def _on_plain_update(self, msg: m.Update, now: float) -> list[Action]:
        raise RemoteProtocolError(
            "plain Update during a secure-aggregation edge round", peer=msg.sender
        )

    def _on_late(self, msg: m.Message, now: float) -> list[Action]:
        return [Emit("secagg_late", {"peer": msg.sender, "round": msg.round})]

    def _on_secagg(self, msg: m.Message, now: float) -> list[Action]:
        assert isinstance(msg, m.SecAgg)
        job, stages = self.job, self.stages
        if job is None or stages is None or msg.round != job.fit.round:
            return self._on_late(msg, now)
        stages.receive(msg)
        return self._maybe_finish(now)

    def _maybe_finish(self, now: float) -> list[Action]:
        job, stages = self.job, self.stages
        if job is None or self.state is not State.FITTING or stages is None:
            return []
        stages.drop(job.failed | job.declined)
        return self._close(now) if stages.done() else []

    def poll(self, now: float) -> list[Action]:
        job = self.job
        if self.state is State.FITTING and job and self.stages is not None:
            return self._close(now) if now >= job.deadline else []
        return super().poll(now)

    def _close(self, now: float) -> list[Action]:
        job, stages = self.job, self.stages
        assert job is not None and stages is not None
        out: list[Action] = [Emit("secagg_stage", {"round": job.fit.round, "stage": stages.stage})]
        try:
            sends, result = stages.close()
        except SecAggAborted as exc:
            return out + self._fail(now, str(exc))
        if result is None:
            job.deadline = now + self.secagg.stage_timeout_s
            return out + list(sends)
        self.stages = None
        dim = job.base.shape[0]
        total = result.total
        weight = float(total[dim])
        if weight <= 0:
            return out + self._fail(now, "the survivors' weight is 0")
        survivors = set(result.survivors)
        job.arrived = survivors
        job.failed = set(job.selected) - survivors - job.declined
        job.examples = round(weight)
        job.loss = float(total[dim + 1])
        job.clients = len(survivors)
        self.aggregator.add((total[:dim] / weight).astype(np.float32), weight, "secagg")
        info = {
            "round": job.fit.round,
            "survivors": len(result.survivors),
            "dropped": len(result.dropped),
            "members": len(job.selected),
        }
        return [*out, Emit("secagg_round", info), *self._finish_edge_round(now)]

    def _fail(self, now: float, reason: str) -> list[Action]:
        self.stages = None
        job = self.job
        info = {"round": job.fit.round if job else 0, "reason": reason, "secagg": True}
        return [Emit("secagg_aborted", info), *self._give_up(now, reason)]
