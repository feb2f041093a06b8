"""Built-in task: scikit-learn's 8x8 digits, a small torch model. No download.

The defaults are fixed on purpose (benchmarks compare against other frameworks on this
very task): X = data / 16 as float32; stratified train/test split with test_size 0.2 and
random_state 0; model MLP 64 -> 64 (ReLU) -> 10; SGD lr 0.05, momentum 0.9, batch 32,
E local epochs, reshuffled every epoch; cross-entropy; the initial model comes from
``torch.manual_seed(seed)``. ``digits:linear`` is a 650-parameter softmax regression for
large simulations. ``digits:mlpbn:H`` puts a batch-norm layer after the hidden layer (the
model FedBN needs; its running statistics are buffers, never part of the parameter
vector, so they stay on the node that computed them).

Personalisation (:mod:`fednode.training.personal`) uses four extras: :meth:`DigitsTask.hold_out`
(keep a share of the local data aside), :meth:`DigitsTask.evaluate_local` (score on it),
:meth:`DigitsTask.norm_layers`, and the ``train`` config keys ``steps`` (that many
mini-batches instead of epochs), ``freeze`` (layer names left unchanged) and
``prox_anchor`` (the vector the FedProx term pulls to, instead of the starting point).
A feature-shift partition (``rotated:<k>``, ``permuted:<k>``) transforms this client's
training data; the shared test split stays as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TaskError
from ..wire.tensors import DTYPE, Layout
from .cancel import cancel_point
from .partition import parse_partition, partition_indices, shift_features

MODELS = ("mlp", "linear", "mlpbn")


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
    parameters: ``mlp:13400`` has 1,005,010), ``mlpbn[:H]`` (``mlp[:H]`` with a batch-norm
    layer ``1`` after the hidden layer: 2 H more parameters) or ``linear``."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    if kind == "mlpbn" or kind.startswith("mlpbn:"):
        h = kind.removeprefix("mlpbn").removeprefix(":") or "64"
        if h.isdigit() and 1 <= int(h) <= 1_000_000:
            hidden = int(h)
            return nn.Sequential(
                nn.Linear(64, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 10)
            )
    width = kind.removeprefix("mlp:")
    if width != kind and width.isdigit() and 1 <= int(width) <= 1_000_000:
        return nn.Sequential(nn.Linear(64, int(width)), nn.ReLU(), nn.Linear(int(width), 10))
    if kind == "linear":
        return nn.Sequential(nn.Linear(64, 10))
    raise TaskError(
        f"digits model {kind!r} unknown; expected one of {', '.join(MODELS)}, mlp:H, mlpbn:H"
    )


class MomentumSGD:
    """``torch.optim.SGD(params, lr, momentum)`` (no dampening, weight decay or Nesterov):
    the same tensor operations in the same order as torch's single-tensor step, so the
    result is bit-identical, without ``torch.optim``, whose first optimiser imports
    ``torch._dynamo`` (1-2.5 s per process here, more than a whole 10-client digits run)."""

    def __init__(self, params: Sequence[torch.Tensor], *, lr: float, momentum: float) -> None:
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

    #: the extra ``train`` config keys it takes (personalisation, fednode.training.personal)
    train_keys = frozenset({"steps", "freeze", "prox_anchor"})

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
        spec = parse_partition(partition)
        x_local = shift_features(x_tr[indices], spec, client_index, seed)
        self._x = torch.from_numpy(np.ascontiguousarray(x_local))
        self._y = torch.from_numpy(np.ascontiguousarray(y_tr[indices]))
        #: the held-out local split (:meth:`hold_out`), None until one is kept
        self._x_local: torch.Tensor | None = None
        self._y_local: torch.Tensor | None = None
        self._x_test = torch.from_numpy(np.array(x_te))
        self._y_test = torch.from_numpy(np.array(y_te))
        self._layout = Layout.of(
            (name, p.detach().numpy()) for name, p in self._model.named_parameters()
        )
        self._loss = nn.CrossEntropyLoss()
        self._has_bn = any(isinstance(mod, nn.BatchNorm1d) for mod in self._model.modules())

    @property
    def num_examples(self) -> int:
        return int(self._y.shape[0])

    def layout(self) -> Layout:
        return self._layout

    def norm_layers(self) -> tuple[str, ...]:
        """Names of the normalisation layers' parameters (FedBN keeps them local)."""
        norms = (nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm)
        return tuple(
            f"{mod}.{p}"
            for mod, module in self._model.named_modules()
            if isinstance(module, norms)
            for p, _ in module.named_parameters(recurse=False)
        )

    def hold_out(self, share: float) -> int:
        """Keep ``share`` of the local data aside (at least one sample, at least one left
        to train on), drawn from ``(seed, client_index)``; returns how many were kept."""
        n = self.num_examples
        k = min(max(round(share * n), 1), n - 1) if share > 0 and n >= 2 else 0
        if k == 0:
            return 0
        order = torch.from_numpy(
            np.random.default_rng((self.seed, self.client_index, 0x401D)).permutation(n)
        )
        keep, train = order[:k], order[k:]
        self._x_local, self._y_local = self._x[keep], self._y[keep]
        self._x, self._y = self._x[train], self._y[train]
        return k

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
        """Local SGD for ``local_epochs`` epochs (or ``steps`` mini-batches); FedProx term
        when ``prox_mu`` > 0 (pulling to ``prox_anchor`` when given); layers named in
        ``freeze`` are not changed."""
        epochs = int(config.get("local_epochs", 5))
        max_steps = int(config.get("steps", 0))
        frozen = set(config.get("freeze", ()))
        batch = int(config.get("batch_size", 32))
        lr = float(config.get("lr", 0.05))
        momentum = float(config.get("momentum", 0.9))
        mu = float(config.get("prox_mu", 0.0))
        rnd = int(config.get("round", 0))
        self._set(params)
        model = self._model
        model.train()
        named = list(model.named_parameters())
        trained = [p for name, p in named if name not in frozen]
        opt = MomentumSGD(trained, lr=lr, momentum=momentum)
        anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
        if mu > 0 and config.get("prox_anchor") is not None:
            anchor = list(self._unflatten(np.asarray(config["prox_anchor"], dtype=DTYPE)))
        rng = np.random.default_rng((self.seed, self.client_index, rnd))
        n = self.num_examples
        total_loss, steps = 0.0, 0
        passes = epochs if max_steps <= 0 else -(-max_steps // max(-(-n // batch), 1))
        for _ in range(passes):
            order = torch.from_numpy(rng.permutation(n))
            for start in range(0, n, batch):
                if 0 < max_steps <= steps:
                    break
                cancel_point()  # a stopping node need not wait for the epoch
                idx = order[start : start + batch]
                if len(idx) < 2 and self._has_bn:
                    continue  # batch norm cannot train on one sample
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

    def _unflatten(self, vec: np.ndarray) -> list[torch.Tensor]:
        views = self._layout.views(vec)
        return [torch.from_numpy(np.array(views[name])) for name in self._layout.names]

    @torch.no_grad()
    def evaluate(self, params: np.ndarray) -> tuple[float, int, dict[str, float]]:
        """Score ``params`` on the shared test split. A model with batch norm is scored
        with the test batch's own statistics: the node's running statistics are its own
        data's, and a coordinator that never trains has none."""
        self._set(params)
        model = self._model
        norms = [mod for mod in model.modules() if isinstance(mod, nn.BatchNorm1d)]
        saved = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in norms]  # type: ignore[union-attr]
        if norms:
            model.train()  # batch statistics; the running ones are put back below
        else:
            model.eval()
        logits = model(self._x_test)
        for bn, (mean, var) in zip(norms, saved):
            bn.running_mean.copy_(mean)  # type: ignore[union-attr]
            bn.running_var.copy_(var)  # type: ignore[union-attr]
            bn.num_batches_tracked.sub_(1)  # type: ignore[union-attr]
        return self._score(logits, self._y_test)

    def _score(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, int, dict[str, float]]:
        loss = float(self._loss(logits, y))
        # exact (correct / n): a float32 mean puts 342/360 at 0.94999999 < 0.95
        acc = int((logits.argmax(1) == y).sum()) / max(int(y.shape[0]), 1)
        return loss, int(y.shape[0]), {"accuracy": acc, "loss": loss}

    @torch.no_grad()
    def evaluate_local(self, params: np.ndarray) -> tuple[float, int, dict[str, float]]:
        """Score ``params`` on this client's held-out local split (:meth:`hold_out`), with
        the node's own running statistics. TaskError when none is kept."""
        if self._x_local is None or self._y_local is None:
            raise TaskError("digits: no local split held out (hold_out was not called)")
        self._set(params)
        self._model.eval()
        return self._score(self._model(self._x_local), self._y_local)
