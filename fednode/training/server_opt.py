"""Server optimisers: how the coordinator applies the aggregated delta to the global model.

The aggregated client delta Δ (weighted mean of ``local - global``) is a pseudo-gradient
(negated); a server optimiser turns it into the model step. Adaptive Federated
Optimization (Reddi et al., ICLR 2021), Algorithm 2::

    FedAvg   x <- x + lr * Δ                                  (McMahan et al. 2017)
    FedAvgM  m <- beta1 * m + Δ;              x <- x + lr * m  (Hsu et al. 2019)
    FedAdam  m <- beta1 * m + (1 - beta1) Δ
             v <- beta2 * v + (1 - beta2) Δ²;  x <- x + lr * m / (sqrt(v) + tau)
    FedYogi  as FedAdam but v <- v - (1 - beta2) Δ² sign(v - Δ²)

An optimiser is the coordinator's ``server_update(params, delta) -> params`` hook. Its
state (moments, step count) goes into checkpoints as plain arrays and numbers through
:meth:`state_dict` / :meth:`load_state_dict` — never pickled. State arrays are float32
(memory O(model)); the arithmetic runs in float64 per call and is cast back.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from ..errors import ConfigError
from ..wire.tensors import DTYPE

State = dict[str, np.ndarray | float | int]

DEFAULT_LR = {"fedavg": 1.0, "fedavgm": 1.0, "fedadam": 0.03, "fedyogi": 0.03}


class ServerOptimizer(Protocol):
    name: str

    def __call__(self, params: np.ndarray, delta: np.ndarray) -> np.ndarray: ...
    def state_dict(self) -> State: ...
    def load_state_dict(self, state: State) -> None: ...


class FedAvg:
    """x <- x + lr * Δ (lr 1 is plain FedAvg)."""

    name = "fedavg"

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr
        self.steps = 0

    def __call__(self, params: np.ndarray, delta: np.ndarray) -> np.ndarray:
        self.steps += 1
        return (params.astype(np.float64) + self.lr * delta).astype(DTYPE)

    def state_dict(self) -> State:
        return {"steps": self.steps}

    def load_state_dict(self, state: State) -> None:
        steps = state.get("steps", 0)
        self.steps = int(steps) if not isinstance(steps, np.ndarray) else int(steps.item())


class FedAvgM(FedAvg):
    """Server momentum (Hsu et al. 2019, "Measuring the effects of non-identical data...")."""

    name = "fedavgm"

    def __init__(self, lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(lr)
        self.momentum = momentum
        self.m: np.ndarray | None = None

    def __call__(self, params: np.ndarray, delta: np.ndarray) -> np.ndarray:
        self.steps += 1
        m = np.zeros_like(delta, dtype=np.float64) if self.m is None else self.m.astype(np.float64)
        m = self.momentum * m + delta
        self.m = m.astype(DTYPE)
        return (params.astype(np.float64) + self.lr * m).astype(DTYPE)

    def state_dict(self) -> State:
        state: State = {"steps": self.steps}
        if self.m is not None:
            state["m"] = self.m
        return state

    def load_state_dict(self, state: State) -> None:
        super().load_state_dict(state)
        m = state.get("m")
        self.m = np.asarray(m, dtype=DTYPE) if m is not None else None


class FedAdam(FedAvg):
    """FedAdam (Reddi et al. 2021); no bias correction, as in the paper."""

    name = "fedadam"

    def __init__(
        self, lr: float = 0.03, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(lr)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * d2

    def __call__(self, params: np.ndarray, delta: np.ndarray) -> np.ndarray:
        self.steps += 1
        d = delta.astype(np.float64)
        zeros = np.zeros_like(d)
        m = zeros if self.m is None else self.m.astype(np.float64)
        # v0 = tau^2 as in Reddi et al. (keeps the first step bounded by lr)
        v = np.full_like(d, self.tau**2) if self.v is None else self.v.astype(np.float64)
        m = self.beta1 * m + (1 - self.beta1) * d
        v = self._second_moment(v, d * d)
        self.m, self.v = m.astype(DTYPE), v.astype(DTYPE)
        return (params.astype(np.float64) + self.lr * m / (np.sqrt(v) + self.tau)).astype(DTYPE)

    def state_dict(self) -> State:
        state: State = {"steps": self.steps}
        if self.m is not None and self.v is not None:
            state["m"], state["v"] = self.m, self.v
        return state

    def load_state_dict(self, state: State) -> None:
        super().load_state_dict(state)
        m, v = state.get("m"), state.get("v")
        self.m = np.asarray(m, dtype=DTYPE) if m is not None else None
        self.v = np.asarray(v, dtype=DTYPE) if v is not None else None


class FedYogi(FedAdam):
    """FedYogi (Reddi et al. 2021; Yogi: Zaheer et al. 2018): additive second moment."""

    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v - (1 - self.beta2) * d2 * np.sign(v - d2)


def make_server_optimizer(
    name: str = "fedavg",
    *,
    lr: float = 0.0,
    momentum: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> FedAvg:
    """The optimiser named ``name``; ``lr`` 0 picks its default (:data:`DEFAULT_LR`)."""
    if name not in DEFAULT_LR:
        raise ConfigError("server.optimizer", name, f"one of {', '.join(DEFAULT_LR)}")
    if not (math.isfinite(lr) and lr >= 0):
        raise ConfigError("server.lr", lr, "a finite float >= 0")
    lr = lr or DEFAULT_LR[name]
    if name == "fedavg":
        return FedAvg(lr)
    if name == "fedavgm":
        return FedAvgM(lr, momentum)
    if name == "fedadam":
        return FedAdam(lr, momentum, beta2, tau)
    return FedYogi(lr, momentum, beta2, tau)
