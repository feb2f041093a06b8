"""Personalisation: each member keeps a model of its own beside the federation's.

:func:`personalise` wraps a node's :class:`~fednode.training.task.Task` in a
:class:`Personalised` task per ``[personal]`` (:class:`~fednode.config.PersonalParams`).
The wrapper is the one implementation every role that trains uses — the star / two-tier
client and the gossip peer hand it the model they received and send on what it returns —
so the roles need no personalisation logic of their own. Modes:

* ``fedper`` (Arivazhagan et al. 2019): the named layers (default: the last layer, the
  head) stay on the member. Before training, the member puts its own values of them into
  the received model; after training it keeps their new values and hands back the
  received values in their place. The update (star: ``trained - received``) is therefore
  exactly zero there, and a gossip peer's model holds the common initial values there
  (every peer starts from them and averaging keeps them): the member's own values never
  leave it. Zeros rather than a shorter vector, so the wire format, the codecs, error
  feedback and every aggregation rule stay as they are; a zero costs nothing under
  ``topk`` and averages to "unchanged" under FedAvg, the median and the trimmed mean.
* ``fedbn`` (Li et al., ICLR 2021): ``fedper`` with the task's normalisation layers
  (``task.norm_layers()``, e.g. ``digits:mlpbn:H``) as the local layers. Their running
  statistics are buffers of the node's torch model, never part of the vector: local too.
* ``ditto`` (Li et al., ICML 2021): the global update is trained as usual; beside it the
  member trains a personal model ``v`` for the same epochs on ``loss + lambda/2 ||v - w||^2``,
  ``w`` the received global model. ``v`` never leaves the member.
* ``finetune``: the update is trained as usual; the model scored is the received one after
  ``finetune_steps`` local mini-batches (it changes what is evaluated, nothing that is sent).

Personalised accuracy (``personal.holdout`` > 0): the task keeps that share of the local
data aside (``task.hold_out``); every ``train`` adds ``personal_accuracy`` (and
``personal_loss``) to its metrics: the member's own model on its own held-out split — for
``none`` the received global model, for ``fedper`` / ``fedbn`` the received model with the
member's local layers, for ``ditto`` the personal model after this round, for ``finetune``
the fine-tuned one. The metrics travel in the ``Update`` (star) and the ``gossip_round``
record (gossip); :class:`PersonalTally` sums them up the tree.

Cold start (``personal.warmup_steps``): a member whose first training is for a round
after the first (it joined late) first trains only its personal part (local layers, the
Ditto model) for that many mini-batches on the received model, so its first contribution
is not computed against a random head.

Errors: :class:`~fednode.errors.ConfigError` naming the ``personal.*`` field when the task
cannot do what the config asks (an unknown layer, no normalisation layers, no held-out
split, no ``steps`` / ``prox_anchor`` support, every parameter local).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config import PersonalParams
from ..errors import ConfigError
from ..wire.tensors import DTYPE, Layout
from .task import Metrics, Task

#: metrics a member adds to its update, and the round-record keys they are summed into
PERSONAL_KEYS = ("personal_accuracy", "personal_accuracy_min", "personal_members")
#: the ``Fit.config`` key of a cold-start Fit: the current model for a member admitted
#: mid-run, to hold at once, not to train on (hierarchy.coordinator / client)
COLD_START = "cold_start"
#: the ``train`` config keys a task must accept for a mode (``task.train_keys``)
NEEDS = {"ditto": ("prox_anchor",), "finetune": ("steps",)}


def personalise(task: Task, params: PersonalParams) -> Task:
    """``task`` itself when ``[personal]`` is off, else a :class:`Personalised` around it."""
    return Personalised(task, params) if params.on else task


def layer_groups(layout: Layout) -> dict[str, list[str]]:
    """Parameter names grouped by layer (the module prefix before the last dot), in order."""
    groups: dict[str, list[str]] = {}
    for name in layout.names:
        groups.setdefault(name.rpartition(".")[0], []).append(name)
    return groups


def local_layers(task: Task, params: PersonalParams) -> tuple[str, ...]:
    """The parameter names that stay local under ``params`` (checked against the layout)."""
    layout = task.layout()
    groups = layer_groups(layout)
    if params.mode not in ("fedper", "fedbn"):
        return ()
    field = "personal.local_layers"
    if params.local_layers:
        names: list[str] = []
        for item in params.local_layers:
            if item in layout.names:
                names.append(item)
            elif item in groups:
                names += groups[item]
            else:
                raise ConfigError(
                    field,
                    list(params.local_layers),
                    f"names of task {task.name!r}'s layout or their layer prefix "
                    f"({', '.join(layout.names)}); {item!r} is neither",
                )
    elif params.mode == "fedper":
        names = groups[list(groups)[-1]]  # the head: the last layer
    else:
        norm = getattr(task, "norm_layers", None)
        names = list(norm()) if norm is not None else []
        if not names:
            raise ConfigError(
                "personal.mode",
                params.mode,
                f"a mode task {task.name!r} supports: it has no normalisation layers "
                "(use digits:mlpbn:H, or name the layers in personal.local_layers)",
            )
    chosen = tuple(n for n in layout.names if n in set(names))
    if len(chosen) == len(layout.names):
        raise ConfigError(
            field, list(chosen), "a part of the model: keeping every parameter local shares nothing"
        )
    return chosen


def _mask(layout: Layout, names: tuple[str, ...]) -> np.ndarray:
    mask = np.zeros(layout.size, dtype=bool)
    offset = 0
    for name, size in zip(layout.names, layout.sizes):
        if name in names:
            mask[offset : offset + size] = True
        offset += size
    return mask


class Personalised:
    """A task that personalises ``inner`` per ``params`` (see the module docstring)."""

    def __init__(self, inner: Task, params: PersonalParams) -> None:
        self.inner = inner
        self.params = params
        self.name = inner.name
        self.mode = params.mode
        keys = frozenset(getattr(inner, "train_keys", ()))
        missing = [k for k in NEEDS.get(self.mode, ()) if k not in keys]
        if missing:
            raise ConfigError(
                "personal.mode",
                self.mode,
                f"a mode task {inner.name!r} supports (its train() does not take "
                f"{', '.join(missing)}; the built-in digits tasks do)",
            )
        if params.warmup_steps and not {"steps", "freeze"} <= keys:
            raise ConfigError(
                "personal.warmup_steps",
                params.warmup_steps,
                f"0: task {inner.name!r}'s train() does not take steps and freeze",
            )
        self.local_names = local_layers(inner, params)
        layout = inner.layout()
        self.mask = _mask(layout, self.local_names)
        self.shared_names = tuple(n for n in layout.names if n not in self.local_names)
        #: fedper / fedbn: this member's values of its local layers (None: not trained yet)
        self.local: np.ndarray | None = None
        #: ditto: this member's personal model (None: not trained yet)
        self.personal: np.ndarray | None = None
        self.trained = 0
        self.held_out = 0
        many = getattr(inner, "evaluate_many", None)
        if many is not None:  # the simulator scores many gossip models at once with it
            self.evaluate_many = many
        if params.holdout > 0:
            hold_out = getattr(inner, "hold_out", None)
            if hold_out is None or not hasattr(inner, "evaluate_local"):
                raise ConfigError(
                    "personal.holdout",
                    params.holdout,
                    f"0: task {inner.name!r} has no hold_out() / evaluate_local()",
                )
            self.held_out = int(hold_out(params.holdout))

    # --- Task -----------------------------------------------------------------------------
    def layout(self) -> Layout:
        return self.inner.layout()

    def init_params(self, seed: int) -> np.ndarray:
        return self.inner.init_params(seed)

    def evaluate(self, params: np.ndarray) -> tuple[float, int, Metrics]:
        """The global model on the task's shared test data (unchanged by personalisation)."""
        return self.inner.evaluate(params)

    def evaluate_local(self, params: np.ndarray) -> tuple[float, int, Metrics]:
        return self.inner.evaluate_local(params)  # type: ignore[attr-defined]

    def train(
        self, params: np.ndarray, config: Mapping[str, Any]
    ) -> tuple[np.ndarray, int, Metrics]:
        received = np.asarray(params, dtype=DTYPE)
        late = self.trained == 0 and int(config.get("round", 0)) > 1
        self.trained += 1
        if self.mode in ("fedper", "fedbn"):
            start = self.with_local(received)
            if late and self.params.warmup_steps:
                start = self._warmup(start, config, freeze=self.shared_names)
            scored = start
            new, n, metrics = self.inner.train(start, config)
            self.local = new[self.mask].copy()
            out = np.array(new, dtype=DTYPE, copy=True)
            out[self.mask] = received[self.mask]  # the local layers are never handed on
        elif self.mode == "ditto":
            out, n, metrics = self.inner.train(received, config)
            v = received if self.personal is None else self.personal
            pull = {**config, "prox_mu": self.params.ditto_lambda, "prox_anchor": received}
            if late and self.params.warmup_steps:
                v = self._warmup(v, pull, freeze=())
            v = self.inner.train(v, pull)[0]
            self.personal = np.array(v, dtype=DTYPE, copy=True)
            scored = self.personal
        elif self.mode == "finetune":
            out, n, metrics = self.inner.train(received, config)
            tune = {**config, "steps": self.params.finetune_steps}
            scored = self.inner.train(received, tune)[0]
        else:
            out, n, metrics = self.inner.train(received, config)
            scored = received
        metrics = dict(metrics)
        if self.held_out:
            loss, _n, scores = self.inner.evaluate_local(scored)  # type: ignore[attr-defined]
            metrics["personal_accuracy"] = float(scores.get("accuracy", math.nan))
            metrics["personal_loss"] = float(loss)
        return out, n, metrics

    # --- helpers --------------------------------------------------------------------------
    def with_local(self, model: np.ndarray) -> np.ndarray:
        """``model`` with this member's local layers in place (a new array)."""
        out = np.array(model, dtype=DTYPE, copy=True)
        if self.local is not None:
            out[self.mask] = self.local
        return out

    def personal_model(self, received: np.ndarray) -> np.ndarray:
        """The model this member would use on ``received`` (without training)."""
        if self.mode == "ditto" and self.personal is not None:
            return self.personal
        return self.with_local(received)

    def _warmup(
        self, start: np.ndarray, config: Mapping[str, Any], *, freeze: tuple[str, ...]
    ) -> np.ndarray:
        steps = {**config, "steps": self.params.warmup_steps, "freeze": freeze}
        return np.asarray(self.inner.train(start, steps)[0], dtype=DTYPE)


class PersonalTally:
    """Sums members' personalised accuracies for a round record: the mean, the minimum
    and how many members reported one. Takes a member's ``personal_accuracy`` or a
    regional aggregator's already-summed ``personal_accuracy`` / ``_min`` / ``members``."""

    __slots__ = ("low", "members", "total")

    def __init__(self) -> None:
        self.total, self.low, self.members = 0.0, math.inf, 0

    def add(self, metrics: Mapping[str, Any]) -> None:
        acc = metrics.get("personal_accuracy")
        if acc is None or not math.isfinite(float(acc)):
            return
        k = int(metrics.get("personal_members", 1))
        if k < 1:
            return
        self.total += float(acc) * k
        self.low = min(self.low, float(metrics.get("personal_accuracy_min", acc)))
        self.members += k

    def record(self) -> dict[str, float]:
        """The round-record fields (nothing when no member reported)."""
        if not self.members:
            return {}
        return {
            "personal_accuracy": self.total / self.members,
            "personal_accuracy_min": self.low,
            "personal_members": float(self.members),
        }
