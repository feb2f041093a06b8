"""The Task protocol: what a node trains. Built-in ``digits`` or a plug-in by import path.

A task owns its model and its local data shard. Parameters cross the task boundary only
as the flat float32 vector of :mod:`fednode.wire.tensors`, so the rest of fednode never
touches torch.

Plug-in contract: ``--task mypkg.mod:MyTask`` imports ``MyTask`` and calls it with
keyword arguments ``client_index``, ``num_clients``, ``partition`` (a string) and
``seed`` — all four when it takes ``**kwargs``, else those it names (and ``cid``, Flower's
string client id, if it names that). The object must provide the methods of
:class:`Task`, or be a Flower ``NumPyClient`` (``get_parameters`` / ``fit`` /
``evaluate``), which :mod:`fednode.training.flower` wraps unchanged.

Stopping. A real node runs ``train`` / ``evaluate`` in a worker thread, which Python
cannot interrupt. A task whose jobs take more than a moment should call
:func:`~fednode.training.cancel.cancel_point` between batches: when the node is stopping
(Ctrl-C, SIGTERM, its role finished) it raises :class:`~fednode.errors.JobCancelled`,
which unwinds the job and lets the node shut down at once. The built-in tasks do. A job
that never calls it is waited for up to ``ThreadExecutor.stop_grace_s`` and then left to
finish on its own.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import TaskError
from ..wire.tensors import Layout

Metrics = dict[str, float]


@runtime_checkable
class Task(Protocol):
    """A model, its local data, and how to train and evaluate it."""

    name: str

    def layout(self) -> Layout:
        """Names and shapes of the model's parameters."""
        ...

    def init_params(self, seed: int) -> np.ndarray:
        """Initial flat parameter vector, a deterministic function of ``seed``."""
        ...

    def train(
        self, params: np.ndarray, config: Mapping[str, Any]
    ) -> tuple[np.ndarray, int, Metrics]:
        """Train from ``params`` on local data; return (new params, num_examples, metrics)."""
        ...

    def evaluate(self, params: np.ndarray) -> tuple[float, int, Metrics]:
        """Evaluate on held-out data; return (loss, num_examples, metrics incl. accuracy)."""
        ...


def load_task(
    spec: str, *, client_index: int = 0, num_clients: int = 1, partition: str = "iid", seed: int = 0
) -> Task:
    """Build the task named by ``spec`` (``digits[:mlp|linear|numpy]``, ``synthetic[:<samples>]``,
    ``flower:PATH[?k=v ...]`` (a Flower app, :mod:`fednode.flower`) or
    ``package.module:Class``: a Task, or a Flower NumPyClient, which is wrapped).

    Errors: :class:`TaskError` if the import fails or the object is not a Task.
    """
    kwargs: dict[str, Any] = dict(
        client_index=client_index, num_clients=num_clients, partition=partition, seed=seed
    )
    if spec == "digits:numpy" or spec == "synthetic" or spec.startswith("synthetic:"):
        from .linear import load_linear_task  # numpy softmax regression for big simulations

        return load_linear_task(spec, **kwargs)
    if spec.startswith("flower:"):  # a Flower app folder (fednode.flower; flwr required)
        from ..flower.task import FlowerAppTask

        return FlowerAppTask(spec, **kwargs)
    if spec == "digits" or spec.startswith("digits:"):
        from .digits import DigitsTask

        variant = spec.partition(":")[2] or "mlp"
        return DigitsTask(model=variant, **kwargs)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(f"task {spec!r}: expected 'digits' or 'package.module:Class'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TaskError(f"task {spec!r} could not be loaded: {exc}") from exc
    try:
        task = factory(**_accepted(factory, kwargs))
        from .flower import NumPyClientTask, is_numpy_client

        if is_numpy_client(task):  # a Flower NumPyClient, unchanged
            return NumPyClientTask(task, name=spec)
    except TaskError:
        raise
    except Exception as exc:  # plug-in boundary: any failure is the plug-in's
        raise TaskError(f"task {spec!r} failed to construct: {exc}") from exc
    missing = [n for n in ("layout", "init_params", "train", "evaluate") if not hasattr(task, n)]
    if missing:
        raise TaskError(f"task {spec!r} is missing method(s): {', '.join(missing)}")
    return task


def _accepted(factory: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``factory`` takes: all of fednode's four when it accepts
    ``**kwargs`` or its signature is unknown, else those it names, plus ``cid`` (Flower's
    string client id) when it names that."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    offered = {**kwargs, "cid": str(kwargs["client_index"])}
    return {k: v for k, v in offered.items() if k in params}
