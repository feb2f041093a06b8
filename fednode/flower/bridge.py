"""fednode's rounds as Flower messages and back, with the installed flwr's own classes.

A decorator-style ClientApp (``@app.train()`` / ``@app.evaluate()``) gets what a Flower
strategy sends: a ``Message`` of type ``train`` or ``evaluate`` whose ``content`` holds the
model as an ``ArrayRecord`` under ``"arrays"`` (the keys and dtypes of the ServerApp's
initial arrays, e.g. a torch ``state_dict``) and a ``ConfigRecord`` under ``"config"``
(the ServerApp's train/evaluate config, ``server-round``, and ``proximal-mu`` under FedProx).
Its reply carries an ``ArrayRecord`` (train) and a ``MetricRecord`` with ``num-examples``.

A ``ClientApp(client_fn=...)`` speaks Flower's legacy records (``fitins.parameters``,
``fitins.config``, ...): the message is built and the reply read with flwr's own
``recorddict_compat`` functions, so its ``NumPyClient`` / ``Client`` sees ``fit`` /
``evaluate`` exactly as under ``flwr run``.

Parameters travel in fednode as one flat float32 vector; :class:`ModelShape` keeps the
keys, shapes and dtypes to rebuild the record each round. Every malformed reply is a
:class:`~fednode.errors.TaskError` (the runner counts it; the node keeps running).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TaskError
from ..wire.tensors import DTYPE, Layout

#: where fednode looks for a model's accuracy and loss in an evaluate reply, in order
ACCURACY_KEYS = ("accuracy", "eval_acc", "eval_accuracy", "acc", "test_accuracy")
LOSS_KEYS = ("loss", "eval_loss", "test_loss")
NUM_EXAMPLES = "num-examples"  # Flower strategies' default weighted_by_key


@dataclass(frozen=True)
class ModelShape:
    """Keys, shapes and dtypes of the app's arrays, in record order."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype[Any], ...]

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> ModelShape:
        for key, a in arrays.items():
            if a.dtype.kind not in "fiub":
                raise TaskError(f"array {key!r} is {a.dtype} (fednode carries numbers only)")
        return cls(
            tuple(arrays),
            tuple(tuple(int(d) for d in a.shape) for a in arrays.values()),
            tuple(a.dtype for a in arrays.values()),
        )

    def layout(self) -> Layout:
        return Layout(names=self.keys, shapes=self.shapes)

    def split(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """The flat vector as the app's arrays (fresh copies, in their own dtypes)."""
        views = self.layout().views(np.asarray(params, dtype=DTYPE))
        return {k: views[k].astype(dt, copy=True) for k, dt in zip(self.keys, self.dtypes)}

    def flat(self, arrays: Mapping[str, np.ndarray] | list[np.ndarray], where: str) -> np.ndarray:
        """The app's arrays as fednode's vector; TaskError for other keys or shapes."""
        values = list(arrays.values()) if isinstance(arrays, Mapping) else list(arrays)
        if isinstance(arrays, Mapping) and tuple(arrays) != self.keys:
            raise TaskError(f"{where}: arrays {tuple(arrays)}, the model's are {self.keys}")
        shapes = tuple(tuple(int(d) for d in np.shape(a)) for a in values)
        if shapes != self.shapes:
            raise TaskError(f"{where}: arrays of shapes {shapes}, the model's are {self.shapes}")
        for a in values:
            if np.asarray(a).dtype.kind not in "fiub":
                raise TaskError(f"{where}: a {np.asarray(a).dtype} array (not numeric)")
        if not values:
            return np.zeros(0, dtype=DTYPE)
        return np.concatenate([np.asarray(a, dtype=DTYPE).ravel() for a in values])


def array_record(arrays: Mapping[str, np.ndarray]) -> Any:
    """A flwr ``ArrayRecord`` holding ``arrays`` under their keys."""
    from flwr.app import Array, ArrayRecord

    record = ArrayRecord()
    for key, a in arrays.items():
        record[key] = Array.from_numpy_ndarray(np.ascontiguousarray(a))
    return record


def record_arrays(record: Any, where: str) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` as ``{key: ndarray}``; TaskError for anything else."""
    from flwr.app import ArrayRecord

    if not isinstance(record, ArrayRecord):
        raise TaskError(f"{where}: expected an ArrayRecord, got {type(record).__name__}")
    try:
        return {k: v.numpy() for k, v in record.items()}
    except Exception as exc:  # undecodable array bytes
        raise TaskError(f"{where}: the ArrayRecord cannot be read ({exc})") from exc


def scalars(config: Mapping[str, Any]) -> dict[str, Any]:
    """Config values a ``ConfigRecord`` takes (numbers, strings, bools; numpy made plain)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool | int | float | str | bytes):
            out[str(key)] = value
    return out


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of a record (Flower also allows strings, bytes and lists)."""
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, bool | int | float | np.integer | np.floating)
    }


# --- decorator style: Message API --------------------------------------------------------
def message(kind: str, arrays: Mapping[str, np.ndarray], config: Mapping[str, Any], node: int,
            group: str) -> Any:  # fmt: skip
    """A ``train`` / ``evaluate`` Message as a Flower strategy builds it."""
    from flwr.app import ConfigRecord, RecordDict

    content = RecordDict({"arrays": array_record(arrays), "config": ConfigRecord(scalars(config))})
    return _new_message(content, kind, node, group)


def _new_message(content: Any, kind: str, node: int, group: str) -> Any:
    """A Message to ``node`` as the SuperLink would deliver it. flwr's instruction-message
    constructor needs a running Flower task's identity (``TaskIdentity``); fednode is
    none, so the metadata is given: run 0, from node 0, message id
    ``fednode-<node>-<group>-<kind>``."""
    import time

    from flwr.app import DEFAULT_TTL, Message, Metadata

    metadata = Metadata(
        run_id=0,
        message_id=f"fednode-{node}-{group}-{kind}",
        src_node_id=0,
        dst_node_id=node,
        reply_to_message_id="",
        group_id=group,
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=kind,
    )
    return Message(metadata=metadata, content=content)  # type: ignore[call-overload]


def _reply_content(reply: Any, where: str) -> Any:
    from flwr.app import Message

    if not isinstance(reply, Message):
        raise TaskError(f"{where} must return a flwr Message, got {type(reply).__name__}")
    if reply.has_error():
        raise TaskError(f"{where} replied with an error: {reply.error.reason}")
    return reply.content


def _metric_record(content: Any, where: str) -> dict[str, Any]:
    records = content.metric_records
    if not records:
        raise TaskError(f"{where}: the reply has no MetricRecord (num-examples, metrics)")
    record = records.get("metrics") or next(iter(records.values()))
    return dict(record)


def _num_examples(metrics: Mapping[str, Any], where: str) -> int:
    n = metrics.get(NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, int | float | np.integer | np.floating):
        raise TaskError(f"{where}: the reply's MetricRecord needs {NUM_EXAMPLES!r} (a number)")
    if not np.isfinite(n) or n < 0:
        raise TaskError(f"{where}: {NUM_EXAMPLES} = {n} (expected a count >= 0)")
    return int(n)


def train_reply(reply: Any, where: str) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
    """(arrays, num_examples, metrics) of a train reply."""
    content = _reply_content(reply, where)
    records = content.array_records
    if not records:
        raise TaskError(f"{where}: the reply has no ArrayRecord (the trained model)")
    arrays = record_arrays(records.get("arrays") or next(iter(records.values())), where)
    metrics = _metric_record(content, where)
    n = _num_examples(metrics, where)
    return arrays, n, {k: v for k, v in numbers(metrics).items() if k != NUM_EXAMPLES}


def evaluate_reply(reply: Any, where: str) -> tuple[float, int, dict[str, float]]:
    """(loss, num_examples, metrics) of an evaluate reply; ``accuracy`` set from the first
    of :data:`ACCURACY_KEYS` the app reports."""
    metrics = _metric_record(_reply_content(reply, where), where)
    n = _num_examples(metrics, where)
    return _scored(numbers(metrics), n, where)


def _scored(metrics: dict[str, float], n: int, where: str) -> tuple[float, int, dict[str, float]]:
    metrics.pop(NUM_EXAMPLES, None)
    loss = next((metrics[k] for k in LOSS_KEYS if k in metrics), None)
    if loss is None:
        raise TaskError(f"{where}: the evaluate reply names no loss (one of {LOSS_KEYS})")
    acc = next((metrics[k] for k in ACCURACY_KEYS if k in metrics), None)
    if acc is not None:
        metrics["accuracy"] = acc
    metrics.setdefault("loss", loss)
    return float(loss), n, metrics


# --- client_fn style: legacy records, with flwr's own converters -------------------------
def legacy_message(kind: str, arrays: list[np.ndarray], config: Mapping[str, Any], node: int,
                   group: str) -> Any:  # fmt: skip
    """``fit`` / ``evaluate`` / ``get_parameters`` for a ``client_fn`` ClientApp."""
    from flwr.common import EvaluateIns, FitIns, GetParametersIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    cfg = scalars(config)
    if kind == "train":
        content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(arrays), cfg), True)
    elif kind == "evaluate":
        content = compat.evaluateins_to_recorddict(
            EvaluateIns(ndarrays_to_parameters(arrays), cfg), True
        )
    else:
        content = compat.getparametersins_to_recorddict(GetParametersIns(cfg))
    return _new_message(content, kind, node, group)


def legacy_reply(kind: str, reply: Any, where: str) -> Any:
    """A ``client_fn`` reply: (arrays, n, metrics) for train, (loss, n, metrics) for
    evaluate, the arrays for get_parameters."""
    from flwr.common import Code, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    content = _reply_content(reply, where)
    res: Any
    try:
        if kind == "train":
            res = compat.recorddict_to_fitres(content, False)
        elif kind == "evaluate":
            res = compat.recorddict_to_evaluateres(content)
        else:
            res = compat.recorddict_to_getparametersres(content, False)
    except (KeyError, TypeError, ValueError) as exc:
        raise TaskError(f"{where}: not a Flower {kind} reply ({exc})") from exc
    if res.status.code != Code.OK:
        raise TaskError(f"{where}: status {res.status.code.name}: {res.status.message}")
    if kind == "evaluate":
        metrics = numbers(res.metrics)
        metrics.setdefault("loss", float(res.loss))
        return _scored(metrics, int(res.num_examples), where)
    arrays = parameters_to_ndarrays(res.parameters)
    if kind == "train":
        return arrays, int(res.num_examples), numbers(res.metrics)
    return arrays
