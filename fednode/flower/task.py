""":class:`FlowerAppTask`: a Flower app's ClientApp as a fednode
:class:`~fednode.training.task.Task`.

One task per node, one ``Context`` per task: ``node_id`` is fednode's client index,
``node_config`` holds ``partition-id`` / ``num-partitions`` (``data.client_index`` /
``data.num_clients``), ``run_config`` the app's config with the spec's overrides, and
``state`` persists across every round this node trains. Each fednode train job is one
``train`` Message to the ClientApp, each evaluation one ``evaluate`` Message
(:mod:`.bridge` builds them and reads the replies).

The initial model is the ServerApp's (``initial_arrays`` of its ``strategy.start``, or a
legacy strategy's ``initial_parameters``), else a ``client_fn`` app's ``get_parameters``;
fednode's seed does not change it. The app's train config (``strategy.start(train_config=)``)
goes with every train message, with ``server-round`` and, when ``train.prox_mu`` > 0,
``proximal-mu`` (what FedProx sends); fednode's own ``[train]`` knobs are not sent: the
app trains as its code says.

A train reply fednode cannot use (an exception in the app, no arrays, other shapes, no
``num-examples``) is logged, counted in :attr:`FlowerAppTask.errors` and becomes an
update of NaNs with 0 examples, which the node refuses to send (counted as refused,
``local_error``): the round goes on without it and the node keeps running. A NaN the app
itself returns takes the same path. An evaluate reply it cannot use is counted and scores
NaN.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, FednodeError, TaskError
from ..wire.tensors import DTYPE, Layout
from .app import FlowerApp, import_component, read_app
from .bridge import ModelShape, evaluate_reply, legacy_message, legacy_reply, message, train_reply
from .serverapp import ServerPlan, plan_serverapp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedApp:
    """An app read, its ClientApp imported and its ServerApp planned (once per process)."""

    app: FlowerApp
    clientapp: Any
    plan: ServerPlan
    legacy: bool  #: ClientApp(client_fn=...): Flower's legacy records


_LOADED: dict[str, LoadedApp] = {}


def load_app(spec: str) -> LoadedApp:
    """The app of ``spec``, cached per spec. ConfigError for everything found at start."""
    if spec in _LOADED:
        return _LOADED[spec]
    app = read_app(spec)
    clientapp = import_component(app, "clientapp")
    from flwr.clientapp import ClientApp

    if not isinstance(clientapp, ClientApp):
        raise ConfigError(
            f"{app.path / 'pyproject.toml'} [tool.flwr.app.components] clientapp",
            app.clientapp,
            f"a flwr ClientApp, not {type(clientapp).__name__}",
        )
    # flwr 1.40: ClientApp(client_fn=...) keeps its legacy handler in _call; the
    # decorator style registers functions instead
    legacy = getattr(clientapp, "_call", None) is not None
    loaded = LoadedApp(app, clientapp, plan_serverapp(app), legacy)
    _LOADED[spec] = loaded
    return loaded


class FlowerAppTask:
    """Train and evaluate by sending Flower Messages to the app's ClientApp."""

    def __init__(
        self,
        spec: str,
        *,
        client_index: int = 0,
        num_clients: int = 1,
        partition: str = "iid",
        seed: int = 0,
    ) -> None:
        from flwr.app import Context, RecordDict

        self.loaded = load_app(spec)
        self.name = spec
        self.client_index = client_index
        node_config: dict[str, Any] = {"partition-id": client_index, "num-partitions": num_clients}
        self.context = Context(
            run_id=0,
            node_id=client_index,
            node_config=node_config,
            state=RecordDict(),
            run_config=dict(self.loaded.app.run_config),
        )
        #: replies fednode could not use, by reason
        self.errors: Counter[str] = Counter()
        #: examples of the last train reply (None before one): the simulator's compute charge
        self.num_examples: int | None = None
        initial = self.loaded.plan.initial_arrays
        if initial is None:
            initial = self._initial_from_client()
        self.shape = ModelShape.of(initial)
        self._initial = self.shape.flat(initial, "initial arrays")

    def _initial_from_client(self) -> dict[str, np.ndarray]:
        if not self.loaded.legacy:
            raise ConfigError(
                "flower-app",
                self.loaded.app.serverapp or "(no serverapp)",
                "a ServerApp that starts its strategy with initial_arrays (a decorator "
                "ClientApp has no get_parameters to ask for the initial model)",
            )
        msg = legacy_message("get_parameters", [], {}, self.client_index, "0")
        arrays = legacy_reply("get_parameters", self._call(msg, "get_parameters"), self._where)
        return {str(i): np.asarray(a) for i, a in enumerate(arrays)}

    @property
    def _where(self) -> str:
        return f"{self.loaded.app.name} ClientApp"

    def layout(self) -> Layout:
        return self.shape.layout()

    def init_params(self, seed: int) -> np.ndarray:
        """The ServerApp's initial model (or the client's ``get_parameters``); ``seed`` unused."""
        return self._initial.copy()

    def _call(self, msg: Any, kind: str) -> Any:
        try:
            return self.loaded.clientapp(msg, self.context)
        except FednodeError:
            raise  # JobCancelled from a cancel_point in the app: the node is stopping
        except Exception as exc:  # the app's code: any failure is the app's
            raise TaskError(f"{self._where} {kind} raised {type(exc).__name__}: {exc}") from exc

    def _config(self, base: Mapping[str, Any], fn: Any, rnd: int, prox_mu: float) -> dict[str, Any]:
        """What the strategy would send: its config (a legacy strategy's
        ``on_fit_config_fn(round)``), ``server-round`` and FedProx's ``proximal-mu``."""
        if fn is not None:
            try:
                base = dict(fn(rnd))
            except Exception as exc:  # the app's code
                raise TaskError(f"{self._where}: on_*_config_fn raised {exc!r}") from exc
        config = {**base, "server-round": rnd}
        if prox_mu > 0:
            config["proximal-mu"] = prox_mu
        return config

    def train(
        self, params: np.ndarray, config: Mapping[str, Any]
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        rnd = int(config.get("round", 0))
        plan = self.loaded.plan
        try:
            mu = float(config.get("prox_mu", 0))
            cfg = self._config(plan.train_config, plan.fit_config_fn, rnd, mu)
            return self._train(params, cfg, rnd)
        except TaskError as exc:
            self.errors[_reason(exc)] += 1
            log.warning("%s: round %d: %s; this update is not sent", self.name, rnd, exc)
            return np.full(self.shape.layout().size, np.nan, dtype=DTYPE), 0, {}

    def _train(
        self, params: np.ndarray, cfg: dict[str, Any], rnd: int
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        arrays = self.shape.split(params)
        where = f"{self._where} train"
        if self.loaded.legacy:
            msg = legacy_message("train", list(arrays.values()), cfg, self.client_index, str(rnd))
            out, n, metrics = legacy_reply("train", self._call(msg, "train"), where)
            flat = self.shape.flat(list(out), where)
        else:
            msg = message("train", arrays, cfg, self.client_index, str(rnd))
            reply_arrays, n, metrics = train_reply(self._call(msg, "train"), where)
            flat = self.shape.flat(reply_arrays, where)
        self.num_examples = n
        return flat, n, metrics

    def evaluate(self, params: np.ndarray) -> tuple[float, int, dict[str, float]]:
        """The app's evaluate; a reply fednode cannot use is counted and scores NaN."""
        try:
            return self._evaluate(params)
        except TaskError as exc:
            self.errors[_reason(exc)] += 1
            log.warning("%s: evaluate: %s", self.name, exc)
            return float("nan"), 0, {"accuracy": float("nan"), "loss": float("nan")}

    def _evaluate(self, params: np.ndarray) -> tuple[float, int, dict[str, float]]:
        plan = self.loaded.plan
        cfg = self._config(plan.evaluate_config, plan.evaluate_config_fn, 0, 0.0)
        arrays = self.shape.split(params)
        where = f"{self._where} evaluate"
        if self.loaded.legacy:
            msg = legacy_message("evaluate", list(arrays.values()), cfg, self.client_index, "0")
            loss, n, metrics = legacy_reply("evaluate", self._call(msg, "evaluate"), where)
        else:
            msg = message("evaluate", arrays, cfg, self.client_index, "0")
            loss, n, metrics = evaluate_reply(self._call(msg, "evaluate"), where)
        return float(loss), int(n), metrics


def _reason(exc: TaskError) -> str:
    text = str(exc)
    for key in ("raised", "shapes", "no ArrayRecord", "no MetricRecord", "num-examples", "arrays"):
        if key in text:
            return key
    return "other"
