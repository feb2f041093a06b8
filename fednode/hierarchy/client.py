"""Client role: train on local data when a parent asks, send back a compressed delta.

Pure state machine. The parent is whoever sent the ``Fit`` (coordinator or regional
aggregator), so re-homing after a failover needs no extra step here. Error feedback
(EF-SGD, Karimireddy et al. 2019; DGC, Lin et al. 2018) keeps what the lossy codec
dropped and adds it to the next update.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from ..actions import Action, Compute, Emit, EvalResult, Send, TrainJob, TrainResult
from ..errors import RemoteProtocolError
from ..wire import messages as m
from ..wire.codecs import ErrorFeedback, parse_codec


class State(enum.Enum):
    IDLE = "idle"
    TRAINING = "training"


class Client:
    role = "client"

    def __init__(
        self,
        *,
        model_size: int,
        federation: str = "fednode",
        task: str = "digits",
        codec: str = "none",
        error_feedback: bool = True,
        region: str = "",
        accepting: bool = True,
        parent: str = "",
    ) -> None:
        self.federation = federation
        self.task = task
        self.region = region
        self.accepting = accepting
        self.parent = parent
        self.codec = parse_codec(codec)
        self.ef = (
            ErrorFeedback(self.codec, model_size) if error_feedback and codec != "none" else None
        )
        self.state = State.IDLE
        self.done = False
        self._job: tuple[str, m.Fit, np.ndarray] | None = None
        self._pending: m.Fit | None = None
        self.rounds_trained = 0

    def advert(self) -> m.Advert:
        return m.Advert(
            role="client",
            federation=self.federation,
            task=self.task,
            region=self.region,
            parent=self.parent,
            accepting=self.accepting,
        )

    def start(self, now: float) -> list[Action]:
        return [Send(self.parent, self.advert())] if self.parent else []

    def next_deadline(self) -> float | None:
        return None

    def poll(self, now: float) -> list[Action]:
        return []

    def on_peer(self, peer: str, up: bool, now: float) -> list[Action]:
        if up:
            return [Send(peer, self.advert())]
        if peer == self.parent:
            return [Emit("parent_lost", {"peer": peer})]
        return []

    def handle(self, msg: m.Message, now: float) -> list[Action]:
        if isinstance(msg, m.Advert):
            return self._on_advert(msg)
        if isinstance(msg, m.Fit):
            return self._on_fit(msg)
        if isinstance(msg, m.Assign):
            self.parent = msg.parent
            return [Send(msg.parent, self.advert())] if msg.parent else []
        if isinstance(msg, m.Bye | m.Ack | m.Reject):
            return []
        raise RemoteProtocolError(f"client does not accept {msg.KIND.name}", peer=msg.sender)

    def _on_advert(self, msg: m.Advert) -> list[Action]:
        if msg.federation != self.federation or msg.role not in ("coordinator", "aggregator"):
            return []
        if not self.parent or (
            msg.role == "aggregator" and msg.region == self.region and self.region
        ):
            self.parent = msg.sender
            return [Send(msg.sender, self.advert())]
        return []

    def _on_fit(self, msg: m.Fit) -> list[Action]:
        if msg.vector is None:
            raise RemoteProtocolError("Fit without a model", peer=msg.sender)
        if self.state is State.TRAINING:
            self._pending = msg  # the newest request wins once the current job ends
            return []
        self.parent = msg.sender
        return self._start(msg)

    def _start(self, msg: m.Fit) -> list[Action]:
        self.state = State.TRAINING
        base = msg.vector
        assert base is not None
        self._job = (msg.sender, msg, base)
        config: dict[str, Any] = dict(msg.config)
        config["round"] = msg.round
        return [
            Compute(TrainJob(msg.round, base, config, work=float(config.get("local_epochs", 1))))
        ]

    def on_result(self, result: TrainResult | EvalResult, now: float) -> list[Action]:
        assert isinstance(result, TrainResult) and self._job is not None
        to, fit, base = self._job
        self._job = None
        self.state = State.IDLE
        self.rounds_trained += 1
        delta = np.subtract(result.params, base, dtype=np.float32)
        payload = self.ef.encode(delta) if self.ef else self.codec.encode(delta)
        actions: list[Action] = [
            Send(
                to,
                m.Update(
                    round=fit.round,
                    model_version=fit.model_version,
                    num_examples=result.num_examples,
                    metrics=result.metrics,
                    codec=self.codec.spec,
                    payload=payload,
                ),
            )
        ]
        if self._pending is not None:
            pending, self._pending = self._pending, None
            actions += self._start(pending)
        return actions
