"""Built-in task: scikit-learn's 8x8 digits, a small torch model. No download.

The defaults are fixed on purpose (benchmarks compare against other frameworks on this
very task): X = data / 16 as float32; stratified train/test split with test_size 0.2 and
random_state 0; model MLP 64 -> 64 (ReLU) -> 10; SGD lr 0.05, momentum 0.9, batch 32,
E local epochs, reshuffled every epoch; cross-entropy; the initial model comes from
``torch.manual_seed(seed)``. ``digits:linear`` is a 650-parameter softmax regression for
large simulations.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TaskError
from ..wire.tensors import DTYPE, Layout
from .cancel import cancel_point
from .partition import partition_indices

MODELS = ("mlp", "linear")


@functools.lru_cache(maxsize=1)
def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), computed once per process and shared read-only."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    for arr in (x_tr, x_te, y_tr, y_te):
        arr.flags.writeable = False
    return x_tr, y_tr, x_te, y_te


def build_model(kind: str = "mlp") -> nn.Module:
    """``mlp`` (64 hidden units, 4,810 parameters), ``mlp:H`` (H hidden units, 75 H + 10
    parameters: ``mlp:13400`` has 1,005,010) or ``linear``."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    width = kind.removeprefix("mlp:")
    if width != kind and width.isdigit() and 1 <= int(width) <= 1_000_000:
        return nn.Sequential(nn.Linear(64, int(width)), nn.ReLU(), nn.Linear(int(width), 10))
    if kind == "linear":
        return nn.Sequential(nn.Linear(64, 10))
    raise TaskError(f"digits model {kind!r} unknown; expected one of {', '.join(MODELS)}, mlp:H")


class MomentumSGD:
    """``torch.optim.SGD(params, lr, momentum)`` (no dampening, weight decay or Nesterov):
    the same tensor operations in the same order as torch's single-tensor step, so the
    result is bit-identical, without ``torch.optim``, whose first optimiser imports
    ``torch._dynamo`` (1-2.5 s per process here, more than a whole 10-client digits run)."""

    def __init__(self, params: list[torch.Tensor], *, lr: float, momentum: float) -> None:
        self.params = params
        self.lr = lr
        self.momentum = momentum
        self._buf: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if self.momentum != 0:
                buf = self._buf[i]
                if buf is None:
                    buf = self._buf[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)
                grad = buf
            p.add_(grad, alpha=-self.lr)


class DigitsTask:
    """Digits classification on this client's partition; evaluation on the shared test split."""

    def __init__(
        self,
        *,
        client_index: int = 0,
        num_clients: int = 1,
        partition: str = "iid",
        seed: int = 0,
        model: str = "mlp",
        indices: np.ndarray | None = None,
    ) -> None:
        self.name = "digits" if model == "mlp" else f"digits:{model}"
        self.model_kind = model
        self.client_index = client_index
        self.seed = seed
        self._model = build_model(model)
        x_tr, y_tr, x_te, y_te = load_digits_split()
        if indices is None:
            parts = partition_indices(y_tr, num_clients, partition, seed=seed)
            indices = parts[client_index]
        self._x = torch.from_numpy(np.ascontiguousarray(x_tr[indices]))
        self._y = torch.from_numpy(np.ascontiguousarray(y_tr[indices]))
        self._x_test = torch.from_numpy(np.array(x_te))
        self._y_test = torch.from_numpy(np.array(y_te))
        self._layout = Layout.of(
            (name, p.detach().numpy()) for name, p in self._model.named_parameters()
        )
        self._loss = nn.CrossEntropyLoss()

    @property
    def num_examples(self) -> int:
        return int(self._y.shape[0])

    def layout(self) -> Layout:
        return self._layout

    def init_params(self, seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        model = build_model(self.model_kind)
        return self._get(model)

    @staticmethod
    def _get(model: nn.Module) -> np.ndarray:
        vec = torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
        return np.ascontiguousarray(vec, dtype=DTYPE)

    def _set(self, params: np.ndarray) -> None:
        vec = torch.from_numpy(np.array(params, dtype=DTYPE, copy=True))
        torch.nn.utils.vector_to_parameters(vec, self._model.parameters())

    def train(
        self, params: np.ndarray, config: Mapping[str, Any]
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        """Local SGD for ``local_epochs`` epochs; FedProx term when ``prox_mu`` > 0."""
        epochs = int(config.get("local_epochs", 5))
        batch = int(config.get("batch_size", 32))
        lr = float(config.get("lr", 0.05))
        momentum = float(config.get("momentum", 0.9))
        mu = float(config.get("prox_mu", 0.0))
        rnd = int(config.get("round", 0))
        self._set(params)
        model = self._model
        model.train()
        opt = MomentumSGD(list(model.parameters()), lr=lr, momentum=momentum)
        anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
        rng = np.random.default_rng((self.seed, self.client_index, rnd))
        n = self.num_examples
        total_loss, steps = 0.0, 0
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(n))
            for start in range(0, n, batch):
                cancel_point()  # a stopping node need not wait for the epoch
                idx = order[start : start + batch]
                opt.zero_grad(set_to_none=True)
                loss = self._loss(model(self._x[idx]), self._y[idx])
                if mu > 0:
                    prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                    loss = loss + 0.5 * mu * prox
                loss.backward()
                opt.step()
                total_loss += float(loss.detach())
                steps += 1
        return self._get(model), n, {"train_loss": total_loss / max(steps, 1)}

    @torch.no_grad()
    def evaluate(self, params: np.ndarray) -> tuple[float, int, dict[str, float]]:
        self._set(params)
        model = self._model
        model.eval()
        logits = model(self._x_test)
        loss = float(self._loss(logits, self._y_test))
        # exact (correct / n): a float32 mean puts 342/360 at 0.94999999 < 0.95
        acc = int((logits.argmax(1) == self._y_test).sum()) / max(int(self._y_test.shape[0]), 1)
        return loss, int(self._y_test.shape[0]), {"accuracy": acc, "loss": loss}
