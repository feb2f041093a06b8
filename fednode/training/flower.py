"""A Flower ``NumPyClient`` as a fednode task, unchanged.

Flower's client interface (``flwr.client.NumPyClient``) is three methods on lists of
numpy arrays::

    get_parameters(config) -> list[ndarray]
    fit(parameters, config) -> (list[ndarray], num_examples, metrics)
    evaluate(parameters, config) -> (loss, num_examples, metrics)

:class:`NumPyClientTask` maps them onto the :class:`~fednode.training.task.Task` protocol:
the arrays travel as fednode's one flat float32 vector (:mod:`fednode.wire.tensors`), in
the order ``get_parameters`` returns them. ``--task mypkg.mod:MyClient`` wraps any object
with those three methods and no ``train`` — flwr need not be installed, nothing of it is
imported. The constructor (a class or a ``client_fn``) is called with whichever of
``client_index``, ``num_clients``, ``partition``, ``seed`` and ``cid`` (Flower's string
client id, ``str(client_index)``) it accepts.

Differences a Flower user should know: the initial global model is the coordinator's
client's ``get_parameters`` (fednode's ``init_params`` ignores its seed for such a task);
parameters are float32 on the wire (float64 arrays are converted, and come back as
float32); metrics are kept when they are numbers (Flower also allows strings and bytes);
fit's ``config`` carries fednode's training knobs (``round``, ``local_epochs``,
``batch_size``, ``lr``, ``momentum``, ``prox_mu``). A long ``fit`` may call
:func:`~fednode.training.cancel_point` between batches so a stopping node need not
wait for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import TaskError
from ..wire.tensors import DTYPE, Layout

NUMPY_CLIENT_METHODS = ("get_parameters", "fit", "evaluate")


def is_numpy_client(obj: object) -> bool:
    """True for an object with Flower NumPyClient's methods that is not a fednode Task."""
    return all(callable(getattr(obj, n, None)) for n in NUMPY_CLIENT_METHODS) and not hasattr(
        obj, "train"
    )


class NumPyClientTask:
    """A fednode Task that runs a Flower NumPyClient's ``fit`` and ``evaluate``."""

    def __init__(self, client: Any, *, name: str = "flower") -> None:
        self.client = client
        self.name = name
        arrays = self._arrays(client.get_parameters(config={}), "get_parameters")
        self._layout = Layout(
            names=tuple(f"p{i}" for i in range(len(arrays))),
            shapes=tuple(tuple(int(d) for d in a.shape) for a in arrays),
        )
        self._initial = self._flat(arrays, "get_parameters")

    def layout(self) -> Layout:
        return self._layout

    def init_params(self, seed: int) -> np.ndarray:
        """The client's own initial parameters (``get_parameters``); ``seed`` is unused."""
        return self._initial.copy()

    def train(
        self, params: np.ndarray, config: Mapping[str, Any]
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        out = self.client.fit(self._split(params), dict(config))
        if not isinstance(out, tuple | list) or len(out) != 3:
            raise TaskError(f"{self.name}: fit must return (parameters, num_examples, metrics)")
        arrays, n, metrics = out
        return self._flat(self._arrays(arrays, "fit"), "fit"), int(n), _numbers(metrics)

    def evaluate(self, params: np.ndarray) -> tuple[float, int, dict[str, float]]:
        out = self.client.evaluate(self._split(params), {})
        if not isinstance(out, tuple | list) or len(out) != 3:
            raise TaskError(f"{self.name}: evaluate must return (loss, num_examples, metrics)")
        loss, n, metrics = out
        return float(loss), int(n), _numbers(metrics)

    # --- conversions ------------------------------------------------------------------
    def _split(self, params: np.ndarray) -> list[np.ndarray]:
        """The flat vector as the client's arrays: views of a private copy, because a
        Flower client may update the arrays it is given in place (Flower hands each
        client freshly deserialised ones), and ``params`` is a model others share."""
        params = np.array(params, dtype=DTYPE, copy=True)
        out, start = [], 0
        for shape, size in zip(self._layout.shapes, self._layout.sizes):
            out.append(params[start : start + size].reshape(shape))
            start += size
        return out

    def _arrays(self, arrays: Any, where: str) -> list[np.ndarray]:
        if not isinstance(arrays, list | tuple) or not arrays:
            raise TaskError(f"{self.name}: {where} must return a non-empty list of arrays")
        return [np.asarray(a) for a in arrays]

    def _flat(self, arrays: list[np.ndarray], where: str) -> np.ndarray:
        shapes = tuple(tuple(int(d) for d in a.shape) for a in arrays)
        if hasattr(self, "_layout") and shapes != self._layout.shapes:
            raise TaskError(
                f"{self.name}: {where} returned arrays of shapes {shapes}, the model's are "
                f"{self._layout.shapes}"
            )
        for a in arrays:
            if a.dtype.kind not in "fiu":
                raise TaskError(f"{self.name}: {where} returned a {a.dtype} array (not numeric)")
        return np.concatenate([a.astype(DTYPE, copy=False).ravel() for a in arrays])


def _numbers(metrics: Any) -> dict[str, float]:
    """Flower metrics (numbers, strings, bytes) as fednode's: the numbers only. A NaN stays
    (the runner refuses to send it, as for any task, and says so)."""
    if not isinstance(metrics, Mapping):
        return {}
    return {
        str(key): float(value)
        for key, value in metrics.items()
        if isinstance(value, bool | int | float | np.integer | np.floating)
    }
