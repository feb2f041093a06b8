"""The star coordinator with secure aggregation: :class:`SecureCoordinator` (pure).

It is the :class:`~fednode.hierarchy.coordinator.Coordinator` (selection, ``Fit``,
evaluation, checkpoints, the server optimiser) with the round's middle replaced: instead
of folding ``Update`` s it runs one :class:`~fednode.crypto.secagg_server.SecAggServer`
per round attempt over ``SecAgg`` frames (kind 9, :mod:`fednode.crypto.secagg_wire`)::

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

import hashlib
import math
import os
from typing import Any, Unpack

import numpy as np

from ..actions import Action, Emit, Send
from ..config.secagg import SecAggConfig
from ..crypto import secagg_wire
from ..crypto.fixedpoint import FixedPoint
from ..crypto.secagg_messages import (
    AdvertiseKeys,
    MaskedInput,
    SecAggParams,
    ShareKeys,
    UnmaskResponse,
)
from ..crypto.secagg_server import SecAggServer
from ..errors import AuthError, ConfigError, RemoteProtocolError, SecAggAborted
from ..wire import messages as m
from .coordinator import Coordinator, State
from .root import RootArgs

__all__ = ["SecureCoordinator"]

STAGES = ("advertise", "share", "masked", "unmask")


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
        self.server: SecAggServer | None = None
        self.stage = ""
        #: members still expected in the current stage
        self.pending: set[str] = set()
        self.min_survivors = 1
        self._key: tuple[int, int] | None = None
        for state in State:
            self._table[(state, m.Kind.SECAGG)] = self._on_late
        self._table[(State.FITTING, m.Kind.SECAGG)] = self._on_secagg
        self._table[(State.FITTING, m.Kind.UPDATE)] = self._on_plain_update

    # --- round start ---------------------------------------------------------------------
    def train_config(self) -> dict[str, Any]:
        config = super().train_config()
        config["secagg"] = True
        if self.current is not None:
            config["secagg_min_survivors"] = self._min_survivors(len(self.current.selected))
        return config

    def _min_survivors(self, n: int) -> int:
        t = self.secagg.threshold_for(n)
        if not self.distributed_dp:
            return t
        lost = math.floor(self.rounds.max_failure_fraction * n)
        return max(t, self.rounds.min_fit_clients, n - lost)

    def _try_start_round(self, now: float) -> list[Action]:
        actions = super()._try_start_round(now)
        cur = self.current
        if self.state is not State.FITTING or cur is None or self._key == (cur.number, cur.attempt):
            return actions
        self._key = (cur.number, cur.attempt)
        members = tuple(sorted(cur.selected))
        n = len(members)
        try:
            params = SecAggParams(
                round=cur.number,
                round_seed=hashlib.sha256(os.urandom(32)).digest(),
                members=members,
                threshold=self.secagg.threshold_for(n),
                neighbours=self.secagg.neighbours_for(n),
                encoding=FixedPoint(n, self.secagg.clip, self.secagg.frac_bits),
                dim=self.params.shape[0] + 2,
            )
        except ConfigError as exc:
            self.server = None
            return actions + self._abort(now, f"secagg cannot run with {n} members: {exc}")
        self.server = SecAggServer(params)
        self.min_survivors = self._min_survivors(n)
        self.stage, self.pending = "advertise", set(members)
        stage, payload = secagg_wire.encode(params)
        for peer in members:
            cur.bytes_down += len(payload)
            actions.append(Send(peer, m.SecAgg(round=cur.number, stage=stage, payload=payload)))
        return actions

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
        cur, server = self.current, self.server
        if cur is None or server is None or msg.round != cur.number:
            return self._on_late(msg, now)
        if msg.stage not in secagg_wire.FROM_MEMBER:
            raise RemoteProtocolError(f"secagg stage {msg.stage[:32]!r} is not a member's")
        if msg.stage != self.stage or msg.sender not in self.pending:
            raise RemoteProtocolError(
                f"secagg {msg.stage} while stage {self.stage} expects nothing from it",
                peer=msg.sender,
            )
        body = secagg_wire.decode(msg.stage, msg.payload)
        if getattr(body, "sender", None) != msg.sender:  # the envelope names the sender
            raise AuthError("secagg message names another sender than its frame", peer=msg.sender)
        if isinstance(body, AdvertiseKeys):
            server.receive_advertise(body)
        elif isinstance(body, ShareKeys):
            server.receive_shares(body)
        elif isinstance(body, MaskedInput):
            server.receive_masked(body)
        elif isinstance(body, UnmaskResponse):
            server.receive_unmask(body)
        self.pending.discard(msg.sender)
        cur.bytes_up += len(msg.payload)
        return self._maybe_finish(now)

    # --- stage progress (replaces the plain round's finish tests) -------------------------
    def _maybe_finish(self, now: float) -> list[Action]:
        cur = self.current
        if cur is None or self.state is not State.FITTING or self.server is None:
            return []
        self.pending -= cur.failed | cur.declined
        return self._close(now) if not self.pending else []

    def poll(self, now: float) -> list[Action]:
        cur = self.current
        if self.state is State.FITTING and cur and self.server is not None:
            return self._close(now) if now >= cur.deadline else []
        return super().poll(now)

    def _close(self, now: float) -> list[Action]:
        cur, server = self.current, self.server
        assert cur is not None and server is not None
        stage, r = self.stage, cur.number
        out: list[Action] = [Emit("secagg_stage", {"round": r, "stage": stage})]
        try:
            if stage == "advertise":
                sends: dict[str, Any] = server.close_advertise()
                self.stage = "share"
            elif stage == "share":
                sends = server.close_shares()
                self.stage = "masked"
            elif stage == "masked":
                request = server.close_masked()
                if len(request.survivors) < self.min_survivors:
                    return out + self._abort(
                        now,
                        f"secagg round {r}: {len(request.survivors)} masked inputs, the "
                        f"distributed DP noise needs {self.min_survivors}",
                    )
                sends = dict.fromkeys(request.survivors, request)
                self.stage = "unmask"
            else:
                return out + self._release(now, server)
        except SecAggAborted as exc:
            return out + self._abort(now, str(exc))
        self.pending = set(sends)
        cur.deadline = now + self.secagg.stage_timeout_s
        for peer, body in sends.items():
            kind, payload = secagg_wire.encode(body)
            cur.bytes_down += len(payload)
            out.append(Send(peer, m.SecAgg(round=r, stage=kind, payload=payload)))
        return out

    def _release(self, now: float, server: SecAggServer) -> list[Action]:
        """Unmask the sum; hand the survivors' mean to the aggregator and the plain path."""
        cur = self.current
        assert cur is not None
        result = server.finish()  # SecAggAborted: caught by _close
        self.server = None
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
        mean = (total[:dim] / weight).astype(np.float32)
        self.aggregator.add(mean, weight, "secagg")
        events: list[Action] = [
            Emit(
                "secagg_round",
                {
                    "round": cur.number,
                    "survivors": len(result.survivors),
                    "dropped": len(result.dropped),
                    "members": len(cur.selected),
                },
            )
        ]
        return events + self._finish_round(now)

    def _abort(self, now: float, reason: str) -> list[Action]:
        """The round cannot release a sum: skipped, model unchanged, the next round starts."""
        cur = self.current
        assert cur is not None
        self.server = None
        self.stage, self.pending = "", set()
        info = {"round": cur.number, "attempt": cur.attempt, "reason": reason, "secagg": True}
        actions: list[Action] = [Emit("secagg_aborted", dict(info)), Emit("round_failed", info)]
        self.previous = cur
        if cur.number >= self.rounds.rounds:
            self.state, self.done = State.DONE, True
            return [*actions, *self._stop_after(cur.number, reason)]
        self.round_number += 1
        self._attempt = 0
        self.state = State.WAITING
        self.waiting_since = now
        return actions + self._try_start_round(now)

    @staticmethod
    def _stop_after(number: int, reason: str) -> list[Action]:
        from ..actions import Stop

        return [Stop(f"finished {number} rounds (the last failed: {reason})")]
