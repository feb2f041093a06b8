"""What a role's state machine asks its runner to do (pure data, no I/O).

Role state machines (:mod:`fednode.hierarchy`, :mod:`fednode.gossip`) consume messages,
peer events, job results and time, and return lists of these actions. The trio runner
(:mod:`fednode.runner`) executes them: real nodes and the simulator run the same one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .wire.messages import Message


@dataclass(frozen=True, slots=True)
class Send:
    """Seal ``msg`` and send it to ``to`` (the message's recipient is set from ``to``).

    ``addrs``: where ``to`` listens, when this node may not know (an ``Assign`` named a
    new parent): the runner dials them first if not connected to ``to``.
    """

    to: str
    msg: Message
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrainJob:
    round: int
    params: np.ndarray = field(repr=False)
    config: dict[str, Any]
    #: how many local "steps" worth of compute this is (the simulator charges virtual time)
    work: float = 1.0


@dataclass(frozen=True, slots=True)
class EvalJob:
    round: int
    params: np.ndarray = field(repr=False)


@dataclass(frozen=True, slots=True)
class Compute:
    """Run a CPU job (train / evaluate) off the event loop; the result comes back."""

    job: TrainJob | EvalJob


@dataclass(frozen=True, slots=True)
class TrainResult:
    round: int
    params: np.ndarray = field(repr=False)
    num_examples: int
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class EvalResult:
    round: int
    loss: float
    num_examples: int
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class Emit:
    """A structured event for the log / metrics (round summaries, rejections, ...)."""

    event: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Stop:
    """The role is finished (``error`` set when it failed)."""

    reason: str
    error: Exception | None = None


Action = Send | Compute | Emit | Stop
