"""A client's part of a secure-aggregation round (pure, no I/O): :class:`SecureMember`.

A :class:`~fednode.hierarchy.client.Client` built with ``secagg`` holds one; it trains
on a ``Fit`` as always and then, when the ``Fit`` config says ``secagg``, answers with the
stages of :mod:`fednode.crypto.secagg` (``SecAgg`` frames, kind 9) instead of an
``Update``::

    Fit --train--> (input ready) --params--> advertise --keys--> share
        --shares--> masked --unmask_request--> unmask

The coordinator's ``params`` may arrive before or after training ends; the member
advertises once it has both. Its input is one vector of ``model_size + 2`` values,
fixed-point encoded by :class:`~fednode.crypto.fixedpoint.FixedPoint`:

* plain: ``[n * delta, n, n * train_loss]`` with ``n = num_examples`` (after
  ``norm_bound:<c>`` clipping of ``delta`` when the rule has it), so the unmasked sum
  gives the example-weighted FedAvg mean, the survivors' example total and mean loss,
  and no member's count travels in the clear;
* distributed DP: ``[clip(delta, C) + noise share, 1, train_loss]``
  (:mod:`fednode.privacy.distributed`).

Stage messages come only from the parent (the coordinator that sent the ``Fit``);
anything else, out of order, for another round, or malformed raises a typed error
(``RemoteProtocolError`` / ``SchemaError`` / ``AuthError`` / ``PayloadError``) that the
loop counts and logs; the member's state is unchanged by it.
"""

from __future__ import annotations

import numpy as np

from ..actions import Action, Emit, Send
from ..crypto import secagg_wire
from ..crypto.identity import Identity
from ..crypto.secagg import SecAggClient, Stage
from ..crypto.secagg_messages import KeysForYou, SecAggParams, SharesForYou, UnmaskRequest
from ..errors import RemoteProtocolError
from ..privacy.central import clip_update
from ..privacy.distributed import NoiseShare
from ..wire import messages as m
from ..wire.tensors import DTYPE

__all__ = ["SecureMember", "input_vector"]


def input_vector(
    delta: np.ndarray,
    num_examples: int,
    loss: float,
    *,
    norm_bound: float = 0.0,
    noise: NoiseShare | None = None,
    min_survivors: int = 1,
) -> np.ndarray:
    """The float64 vector a member masks (see the module docstring)."""
    if noise is not None:
        head = noise.apply(delta, min_survivors)
        return np.concatenate([head, [1.0, float(loss)]])
    vec = np.asarray(delta, dtype=DTYPE)
    if norm_bound > 0:
        vec, _ = clip_update(vec, norm_bound)
    n = float(num_examples)
    return np.concatenate([vec.astype(np.float64) * n, [n, n * float(loss)]])


class SecureMember:
    """One client's secure-aggregation state, one round at a time."""

    def __init__(
        self, identity: Identity, *, norm_bound: float = 0.0, noise: NoiseShare | None = None
    ) -> None:
        self.identity = identity
        self.norm_bound = norm_bound
        self.noise = noise
        self.params: SecAggParams | None = None
        self.client: SecAggClient | None = None
        #: (round, parent, input vector) once trained for a secure round
        self.ready: tuple[int, str, np.ndarray] | None = None
        self.rounds = 0

    def trained(
        self, to: str, fit: m.Fit, delta: np.ndarray, num_examples: int, loss: float
    ) -> list[Action]:
        """Training for secure round ``fit.round`` ended: hold the input, advertise if the
        round's parameters are here."""
        min_survivors = int(fit.config.get("secagg_min_survivors", 1))
        x = input_vector(
            delta,
            num_examples,
            loss,
            norm_bound=self.norm_bound,
            noise=self.noise,
            min_survivors=min_survivors,
        )
        self.ready = (fit.round, to, x)
        return self._advertise()

    def handle(self, msg: m.Message, parent: str) -> list[Action]:
        """A ``SecAgg`` frame from ``msg.sender``."""
        assert isinstance(msg, m.SecAgg)
        if not parent or msg.sender != parent:
            raise RemoteProtocolError("secagg stage from a peer that is not our parent")
        if msg.stage not in secagg_wire.FROM_COORDINATOR:
            raise RemoteProtocolError(f"secagg stage {msg.stage[:32]!r} is not for a member")
        body = secagg_wire.decode(msg.stage, msg.payload)
        if isinstance(body, SecAggParams):
            if body.round != msg.round:
                raise RemoteProtocolError("secagg params for another round than the frame's")
            if self.identity.peer_id not in body.members:
                raise RemoteProtocolError("secagg params that do not list this member")
            self.params, self.client = body, SecAggClient(body, self.identity)
            return self._advertise()
        client = self.client
        if client is None or msg.round != client.params.round:
            raise RemoteProtocolError(f"secagg {msg.stage} for a round we are not in")
        if isinstance(body, KeysForYou):
            self._expect(client, Stage.SHARE, msg.stage)
            return self._send(parent, client.share_keys(body))
        if isinstance(body, SharesForYou):
            self._expect(client, Stage.MASK, msg.stage)
            ready = self.ready
            if ready is None or ready[0] != client.params.round:
                raise RemoteProtocolError("secagg shares before this member trained")
            x = ready[2]
            if x.shape[0] != client.params.dim:
                raise RemoteProtocolError(
                    f"secagg params of dim {client.params.dim}, our input has {x.shape[0]}"
                )
            out = self._send(parent, client.masked_input(body, x))
            self.ready = None  # the input is masked and gone: never again this round
            if client.clipped:
                info = {"round": client.params.round, "clipped": client.clipped}
                out.insert(0, Emit("secagg_clipped", info))
            return out
        if isinstance(body, UnmaskRequest):
            if client.stage is not Stage.DONE:
                self._expect(client, Stage.UNMASK, msg.stage)
            reply = self._send(parent, client.unmask(body))
            self.rounds += 1
            return reply
        raise RemoteProtocolError(f"secagg stage {msg.stage} is not for a member")

    # --------------------------------------------------------------------- helpers
    def _advertise(self) -> list[Action]:
        client, ready = self.client, self.ready
        if client is None or ready is None or client.stage is not Stage.ADVERTISE:
            return []
        if ready[0] != client.params.round:
            return []
        return self._send(ready[1], client.advertise())

    @staticmethod
    def _expect(client: SecAggClient, stage: Stage, name: str) -> None:
        if client.stage is not stage:
            raise RemoteProtocolError(
                f"secagg {name} while this member is in stage {client.stage.value}"
            )

    def _send(self, to: str, body: secagg_wire.StageMessage) -> list[Action]:
        stage, payload = secagg_wire.encode(body)
        rnd = self.client.params.round if self.client else 0
        return [Send(to, m.SecAgg(round=rnd, stage=stage, payload=payload))]
