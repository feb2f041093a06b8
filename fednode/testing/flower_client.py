"""A client written for Flower, used by fednode unchanged (tests and the README example).

``--task fednode.testing.flower_client:DigitsClient`` runs it. It is what a Flower user
already has: a ``NumPyClient`` (here duck-typed, so flwr need not be installed; with flwr
it would subclass ``flwr.client.NumPyClient`` and change nothing else) that trains a
numpy softmax regression on its share of scikit-learn's digits, made from Flower's
string client id ``cid``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.datasets import load_digits

CLIENTS = 10


class DigitsClient:
    def __init__(self, cid: str = "0") -> None:
        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32)
        test = np.arange(len(y)) % 5 == 0  # every fifth image is held out
        share = np.flatnonzero(~test)[int(cid) % CLIENTS :: CLIENTS]
        self.x, self.y = x[share], y[share]
        self.x_test, self.y_test = x[test], y[test]
        rng = np.random.default_rng(0)
        self.w = (rng.standard_normal((64, 10)) * 0.01).astype(np.float32)
        self.b = np.zeros(10, dtype=np.float32)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [self.w, self.b]

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        w, b = (np.array(p, dtype=np.float32) for p in parameters)
        lr = float(config.get("lr", 0.1))
        for _ in range(int(config.get("local_epochs", 1)) * 5):
            p = _softmax(self.x @ w + b)
            p[np.arange(len(self.y)), self.y] -= 1.0
            w -= lr * (self.x.T @ p) / len(self.y)
            b -= lr * p.mean(axis=0)
        return [w, b], len(self.y), {"train_accuracy": self._accuracy(w, b, self.x, self.y)}

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        w, b = parameters
        p = _softmax(self.x_test @ w + b)
        loss = float(-np.log(p[np.arange(len(self.y_test)), self.y_test] + 1e-12).mean())
        acc = self._accuracy(w, b, self.x_test, self.y_test)
        return loss, len(self.y_test), {"accuracy": acc, "split": "test"}

    @staticmethod
    def _accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        return float(((x @ w + b).argmax(axis=1) == y).mean())


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
