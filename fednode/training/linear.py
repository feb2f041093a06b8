"""Softmax regression in plain numpy: 650-parameter tasks for large simulations (no torch).

Two tasks share one model (``weight`` 10 x 64 then ``bias`` 10, the layout of torch's
``nn.Linear(64, 10)``) and one vectorised trainer:

* ``digits:numpy`` — scikit-learn's digits, the same split and partitions as the torch
  ``digits`` task (:class:`DigitsNumpyTask`). At most 1,437 clients (one sample each).
* ``synthetic[:<samples>]`` — a 10-class Gaussian mixture in 64 dimensions
  (:class:`SyntheticTask`): every client draws its own ``samples`` (default 16) from its
  own seed, so a node needs nothing from the others and 50,000 nodes cost no more per
  node than 10. Partitions: ``iid``; ``dirichlet:<a>`` (the node's class mix ~ Dir(a));
  ``shards:<k>`` (k classes per node).

Why not torch here: one ``train`` call of this model through torch costs ~1 ms of
framework overhead; in numpy the whole local epoch on 16 samples is ~30-60 µs, which is
what lets the discrete-event simulator (:mod:`fednode.sim.des`) run 10,000 nodes.

Training mirrors the torch task's knobs (``local_epochs``, ``batch_size``, ``lr``,
``momentum``, ``prox_mu``, ``round``) with torch's SGD momentum rule
(``buf = m * buf + g; w -= lr * buf``) and a per-(seed, client, round) shuffle, so a run is
deterministic. Pure: numpy (and scikit-learn for the digits data) only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import TaskError
from ..wire.tensors import DTYPE, Layout
from .cancel import cancel_point
from .partition import parse_partition, partition_indices

FEATURES, CLASSES = 64, 10
SIZE = CLASSES * FEATURES + CLASSES  # 650
LAYOUT = Layout(names=("weight", "bias"), shapes=((CLASSES, FEATURES), (CLASSES,)))
SYNTHETIC_TEST = 1000
SYNTHETIC_DEFAULT_SAMPLES = 16


def _split(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = params[: CLASSES * FEATURES].reshape(CLASSES, FEATURES)
    return w, params[CLASSES * FEATURES :]


def init_params(seed: int) -> np.ndarray:
    """torch's default ``nn.Linear`` init range: U(-1/sqrt(64), 1/sqrt(64)), seeded."""
    bound = 1.0 / np.sqrt(FEATURES)
    rng = np.random.default_rng((seed, 0x11AE))
    return rng.uniform(-bound, bound, SIZE).astype(DTYPE)


def _loss_acc(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    logits = x @ w.T + b
    logits -= logits.max(axis=1, keepdims=True)
    logz = np.log(np.exp(logits).sum(axis=1))
    loss = float(np.mean(logz - logits[np.arange(len(y)), y]))
    acc = float(np.mean(logits.argmax(axis=1) == y))
    return loss, acc


def sgd_softmax(
    params: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    config: Mapping[str, Any],
    seed: tuple[int, ...],
) -> tuple[np.ndarray, float]:
    """Local minibatch SGD with momentum (torch's rule); returns (new params, mean loss).

    Samples are reshuffled every epoch with a generator seeded by ``seed`` — created only
    when there is more than one batch (a full batch's gradient does not depend on the
    order, and seeding a generator costs more than this whole step).
    """
    epochs = int(config.get("local_epochs", 1))
    batch = max(int(config.get("batch_size", 32)), 1)
    lr = float(config.get("lr", 0.05))
    momentum = float(config.get("momentum", 0.9))
    mu = float(config.get("prox_mu", 0.0))
    theta = np.array(params, dtype=np.float32, copy=True)
    anchor = np.asarray(params, dtype=np.float32) if mu > 0 else None
    w, b = _split(theta)  # views: updating them updates theta
    buf: np.ndarray | None = None
    n = len(y)
    total, steps = 0.0, 0
    grad = np.empty(SIZE, dtype=np.float32)
    gw, gb = _split(grad)
    rows = np.arange(min(batch, n))
    rng = np.random.default_rng(seed) if n > batch else None
    for _ in range(epochs):
        order = rng.permutation(n) if rng is not None else None
        for start in range(0, n, batch):
            cancel_point()  # a stopping node need not wait for the epoch
            if order is None:
                xb, yb = x, y
            else:
                idx = order[start : start + batch]
                xb, yb = x[idx], y[idx]
            k = len(yb)
            logits = xb @ w.T + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            z = p.sum(axis=1, keepdims=True)
            r = rows[:k]
            total += float((np.log(z[:, 0]) - logits[r, yb]).sum()) / k
            p /= z
            p[r, yb] -= 1.0
            p *= 1.0 / k
            np.matmul(p.T, xb, out=gw)
            np.sum(p, axis=0, out=gb)
            buf = _momentum_step(theta, grad, buf, anchor, lr=lr, momentum=momentum, mu=mu)
            steps += 1
    return theta, total / max(steps, 1)


def _momentum_step(
    theta: np.ndarray,
    grad: np.ndarray,
    buf: np.ndarray | None,
    anchor: np.ndarray | None,
    *,
    lr: float,
    momentum: float,
    mu: float,
) -> np.ndarray:
    """One SGD step with momentum (torch's rule) and the FedProx term when ``anchor`` is
    given, on ``theta`` in place (one model, or a stack of them); returns the new
    momentum buffer. ``grad`` is modified (the proximal term is added to it)."""
    if anchor is not None:
        grad += mu * (theta - anchor)
    if buf is None:
        buf = grad.copy()
    else:
        buf *= momentum
        buf += grad
    theta -= lr * buf
    return buf


class LinearTask:
    """Softmax regression on this client's ``(x, y)``; evaluation on a shared test set."""

    name = "linear"

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        *,
        client_index: int,
        seed: int,
    ) -> None:
        self._x, self._y = x, y
        self._x_test, self._y_test = x_test, y_test
        self.client_index = client_index
        self.seed = seed

    @property
    def num_examples(self) -> int:
        return int(self._y.shape[0])

    def layout(self) -> Layout:
        return LAYOUT

    def init_params(self, seed: int) -> np.ndarray:
        return init_params(seed)

    def train(
        self, params: np.ndarray, config: Mapping[str, Any]
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        seed = (self.seed, self.client_index, int(config.get("round", 0)))
        theta, loss = sgd_softmax(params, self._x, self._y, config, seed)
        return theta, self.num_examples, {"train_loss": loss}

    @staticmethod
    def train_batch(
        tasks: list[LinearTask], jobs: list[tuple[np.ndarray, Mapping[str, Any]]]
    ) -> list[tuple[np.ndarray, int, dict[str, float]]] | None:
        """:meth:`train` for many nodes in one set of array operations, or None.

        Vectorised only where that is the same computation: every node holds the same
        number of samples, all of them fit one batch (full-batch steps, so no shuffle) and
        every job has the same knobs. Otherwise None: the caller trains them one by one.
        The simulator batches the training jobs that are pending at the same time.
        """
        knobs = ("local_epochs", "batch_size", "lr", "momentum", "prox_mu")
        ref = tuple(jobs[0][1].get(k) for k in knobs)
        n = tasks[0].num_examples if isinstance(tasks[0], LinearTask) else 0
        if n < 1 or n > int(jobs[0][1].get("batch_size", 32)):
            return None
        for task, (_p, config) in zip(tasks, jobs):
            same = isinstance(task, LinearTask) and task.num_examples == n
            if not same or tuple(config.get(k) for k in knobs) != ref:
                return None
        config = jobs[0][1]
        k = len(tasks)
        epochs = int(config.get("local_epochs", 1))
        lr = float(config.get("lr", 0.05))
        momentum = float(config.get("momentum", 0.9))
        mu = float(config.get("prox_mu", 0.0))
        # concatenate, not stack: stack costs ~5 µs per small array, this ~1 µs
        x = np.concatenate([t._x for t in tasks]).reshape(k, n, FEATURES)
        y = np.concatenate([t._y for t in tasks]).reshape(k, n)
        theta = np.concatenate([p for p, _c in jobs]).astype(np.float32).reshape(k, SIZE)
        anchor = theta.copy() if mu > 0 else None
        w = theta[:, : CLASSES * FEATURES].reshape(k, CLASSES, FEATURES)
        b = theta[:, CLASSES * FEATURES :]
        kk, rr = np.arange(k)[:, None], np.arange(n)[None, :]
        losses = np.zeros(k)
        buf: np.ndarray | None = None
        grad = np.empty_like(theta)
        gw = grad[:, : CLASSES * FEATURES].reshape(k, CLASSES, FEATURES)
        for _ in range(epochs):
            logits = x @ w.transpose(0, 2, 1) + b[:, None, :]  # (k, n, 10)
            logits -= logits.max(axis=2, keepdims=True)
            p = np.exp(logits)
            z = p.sum(axis=2, keepdims=True)
            losses += (np.log(z[..., 0]) - logits[kk, rr, y]).sum(axis=1) / n
            p /= z
            p[kk, rr, y] -= 1.0
            p *= 1.0 / n
            np.matmul(p.transpose(0, 2, 1), x, out=gw)
            np.sum(p, axis=1, out=grad[:, CLASSES * FEATURES :])
            buf = _momentum_step(theta, grad, buf, anchor, lr=lr, momentum=momentum, mu=mu)
        return [(theta[i], n, {"train_loss": float(losses[i]) / epochs}) for i in range(k)]

    def evaluate(self, params: np.ndarray) -> tuple[float, int, dict[str, float]]:
        w, b = _split(np.asarray(params, dtype=np.float32))
        loss, acc = _loss_acc(w, b, self._x_test, self._y_test)
        return loss, int(self._y_test.shape[0]), {"accuracy": acc, "loss": loss}

    def evaluate_many(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(losses, accuracies) of many models at once: ``params`` is (k, 650).

        The simulator's analysis uses it to score many gossip peers each round with one
        matrix product per 128 models instead of k Python calls.
        """
        p = np.asarray(params, dtype=np.float32).reshape(-1, SIZE)
        losses = np.empty(len(p))
        accs = np.empty(len(p))
        x, y = self._x_test, self._y_test
        rows = np.arange(len(y))
        for lo in range(0, len(p), 128):  # bounded temporaries: n_test x 10 x 128 floats
            chunk = p[lo : lo + 128]
            k = len(chunk)
            # class-major rows (10 * k, 64): reductions over classes run along contiguous k
            w = chunk[:, : CLASSES * FEATURES].reshape(k, CLASSES, FEATURES).transpose(1, 0, 2)
            logits = (x @ w.reshape(CLASSES * k, FEATURES).T).reshape(len(y), CLASSES, k)
            logits += chunk[:, CLASSES * FEATURES :].T[None]
            logits -= logits.max(axis=1, keepdims=True)
            logz = np.log(np.exp(logits).sum(axis=1))  # (n_test, k)
            losses[lo : lo + k] = np.mean(logz - logits[rows, y, :], axis=0)
            accs[lo : lo + k] = np.mean(logits.argmax(axis=1) == y[:, None], axis=0)
        return losses, accs


class DigitsNumpyTask(LinearTask):
    """``digits:numpy``: the torch digits task's data and partition, softmax regression."""

    name = "digits:numpy"

    def __init__(
        self,
        *,
        client_index: int = 0,
        num_clients: int = 1,
        partition: str = "iid",
        seed: int = 0,
    ) -> None:
        from .digits import load_digits_split

        x_tr, y_tr, x_te, y_te = load_digits_split()
        idx = partition_indices(y_tr, num_clients, partition, seed=seed)[client_index]
        super().__init__(
            np.ascontiguousarray(x_tr[idx]),
            np.ascontiguousarray(y_tr[idx]),
            x_te,
            y_te,
            client_index=client_index,
            seed=seed,
        )


@functools.lru_cache(maxsize=4)
def _mixture(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class means 10 x 64, test x, test y) of the synthetic task; shared read-only."""
    rng = np.random.default_rng((seed, 0x5E7))
    means = (rng.standard_normal((CLASSES, FEATURES)) * 0.35).astype(np.float32)
    y = rng.integers(0, CLASSES, SYNTHETIC_TEST)
    x = (means[y] + rng.standard_normal((SYNTHETIC_TEST, FEATURES))).astype(np.float32)
    for arr in (means, x, y):
        arr.flags.writeable = False
    return means, x, y


class SyntheticTask(LinearTask):
    """``synthetic[:<samples>]``: a Gaussian mixture; each node draws its own samples.

    Class means ~ N(0, 0.35^2 I) (fixed by ``seed``), unit-variance noise: a linear model
    reaches ~80% test accuracy, a single node's 16 samples far less — so collaboration
    visibly helps. Node ``i``'s data depend only on ``(seed, i)`` and the partition.
    """

    def __init__(
        self,
        *,
        client_index: int = 0,
        num_clients: int = 1,
        partition: str = "iid",
        seed: int = 0,
        samples: int = SYNTHETIC_DEFAULT_SAMPLES,
    ) -> None:
        if samples < 1:
            raise TaskError(f"synthetic task: samples per node must be >= 1, got {samples}")
        means, x_te, y_te = _mixture(seed)
        rng = np.random.default_rng((seed, client_index, 0xDA7A))
        spec = parse_partition(partition)
        if spec.scheme == "dirichlet":
            probs = rng.dirichlet(np.full(CLASSES, spec.param))
            y = rng.choice(CLASSES, samples, p=probs)
        elif spec.scheme == "shards":
            k = min(int(spec.param), CLASSES)
            classes = rng.choice(CLASSES, k, replace=False)
            y = classes[rng.integers(0, k, samples)]
        else:
            y = rng.integers(0, CLASSES, samples)
        x = (means[y] + rng.standard_normal((samples, FEATURES))).astype(np.float32)
        super().__init__(x, y, x_te, y_te, client_index=client_index, seed=seed)
        self.name = "synthetic" if samples == SYNTHETIC_DEFAULT_SAMPLES else f"synthetic:{samples}"


def load_linear_task(spec: str, **kwargs: Any) -> LinearTask:
    """``digits:numpy`` or ``synthetic[:<samples>]`` (the one branch in ``load_task``).

    Errors: :class:`TaskError` for an unknown spec or a bad sample count.
    """
    if spec == "digits:numpy":
        return DigitsNumpyTask(**kwargs)
    head, _, arg = spec.partition(":")
    if head == "synthetic":
        try:
            samples = int(arg) if arg else SYNTHETIC_DEFAULT_SAMPLES
        except ValueError:
            raise TaskError(f"task {spec!r}: expected synthetic:<samples per node>") from None
        return SyntheticTask(samples=samples, **kwargs)
    raise TaskError(f"task {spec!r}: expected 'digits:numpy' or 'synthetic[:<samples>]'")
