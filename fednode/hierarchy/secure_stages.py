"""The aggregator's side of one secure-aggregation round as stages with deadlines (pure).

:class:`SecureStages` wraps one :class:`~fednode.crypto.secagg_server.SecAggServer` and
the bookkeeping both aggregating roles need: the star coordinator
(:mod:`.secure_root`) and the regional aggregator of a two-tier tree
(:mod:`.secure_region`). The role decides when a stage closes (everyone expected
answered, or its deadline passed) and what to do with the result::

    stages = SecureStages(config, members, round_no, dim, min_survivors)
    sends = stages.begin()                  # params to every member
    stages.receive(msg)                     # a member's SecAgg frame (typed errors)
    stages.drop(peers); stages.done()       # True: nobody left to wait for
    sends, result = stages.close()          # next stage's messages, or the result

``close`` raises :class:`~fednode.errors.SecAggAborted` when the round cannot release
a sum (fewer than ``t`` members at a close, a secret with fewer than ``t`` shares, or
fewer masked inputs than ``min_survivors``); after that the object is spent.
"""

from __future__ import annotations

import hashlib
import os

from ..actions import Send
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
from ..crypto.secagg_server import SecAggResult, SecAggServer
from ..errors import AuthError, RemoteProtocolError, SecAggAborted
from ..wire import messages as m

__all__ = ["SecureStages"]


class SecureStages:
    """One secure-aggregation round, stage by stage (see the module docstring).

    Errors: ``ConfigError`` from the constructor when the round's parameters cannot be
    built (too few members for the threshold, an encoding that could wrap)."""

    def __init__(
        self,
        config: SecAggConfig,
        members: tuple[str, ...],
        round_no: int,
        dim: int,
        min_survivors: int = 1,
    ) -> None:
        n = len(members)
        self.params = SecAggParams(
            round=round_no,
            round_seed=hashlib.sha256(os.urandom(32)).digest(),
            members=tuple(sorted(members)),
            threshold=config.threshold_for(n),
            neighbours=config.neighbours_for(n),
            encoding=FixedPoint(n, config.clip, config.frac_bits),
            dim=dim,
        )
        self.server = SecAggServer(self.params)
        self.round = round_no
        self.min_survivors = min_survivors
        self.stage = "advertise"
        #: members still expected in the current stage
        self.pending: set[str] = set(self.params.members)
        #: payload bytes received from members / sent to them
        self.bytes_up = 0
        self.bytes_down = 0

    def _sends(self, bodies: dict[str, secagg_wire.StageMessage]) -> list[Send]:
        out = []
        for peer, body in bodies.items():
            stage, payload = secagg_wire.encode(body)
            self.bytes_down += len(payload)
            out.append(Send(peer, m.SecAgg(round=self.round, stage=stage, payload=payload)))
        return out

    def begin(self) -> list[Send]:
        """The ``params`` message to every member."""
        return self._sends(dict.fromkeys(self.params.members, self.params))

    def receive(self, msg: m.SecAgg) -> None:
        """A member's stage message. Errors: ``RemoteProtocolError`` (not expected from it
        now), ``SchemaError`` (does not decode), ``AuthError`` (names another sender or a
        bad signature), ``PayloadError``; nothing changes on an error."""
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
        server = self.server
        if isinstance(body, AdvertiseKeys):
            server.receive_advertise(body)
        elif isinstance(body, ShareKeys):
            server.receive_shares(body)
        elif isinstance(body, MaskedInput):
            server.receive_masked(body)
        elif isinstance(body, UnmaskResponse):
            server.receive_unmask(body)
        self.pending.discard(msg.sender)
        self.bytes_up += len(msg.payload)

    def drop(self, peers: set[str]) -> None:
        """``peers`` will not answer (down, declined): stop waiting for them."""
        self.pending -= peers

    def done(self) -> bool:
        """Nobody left to wait for in this stage."""
        return not self.pending

    def close(self) -> tuple[list[Send], SecAggResult | None]:
        """Close the current stage: the next stage's messages, or (after unmask) the
        result. Errors: ``SecAggAborted`` (see the module docstring)."""
        server, r = self.server, self.round
        if self.stage == "advertise":
            bodies: dict[str, secagg_wire.StageMessage] = dict(server.close_advertise())
            self.stage = "share"
        elif self.stage == "share":
            bodies = dict(server.close_shares())
            self.stage = "masked"
        elif self.stage == "masked":
            request = server.close_masked()
            if len(request.survivors) < self.min_survivors:
                raise SecAggAborted(
                    f"secagg round {r}: {len(request.survivors)} masked inputs, the "
                    f"distributed DP noise needs {self.min_survivors}"
                )
            bodies = dict.fromkeys(request.survivors, request)
            self.stage = "unmask"
        else:
            self.stage = "done"
            return [], server.finish()
        self.pending = set(bodies)
        return self._sends(bodies), None
