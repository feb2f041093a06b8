"""What an app's ServerApp would start, found without running a round of it.

Three ServerApp styles:

* ``@app.main()`` (Flower 1.2x's documented style): ``main(grid, context)`` builds a
  strategy and calls ``strategy.start(grid=grid, initial_arrays=..., num_rounds=...,
  train_config=...)``. fednode calls ``main`` with a grid that answers nothing: the first
  use of it raises, and the ``start`` frame on the stack gives the strategy, the rounds,
  the initial arrays and the configs. Code of ``main`` before ``start`` runs (it builds the
  model); nothing after it does. A ``main`` that uses the grid itself (its own loop, not a
  stock ``strategy.start``) is refused.
* ``ServerApp(server_fn=...)``: ``server_fn(context)`` returns the strategy and
  ``ServerConfig(num_rounds)``; ``ServerApp(strategy=..., config=...)`` holds them.
* no ``serverapp`` component: nothing to map; the ClientApp must give the initial model
  (a ``client_fn`` app's ``get_parameters``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .app import FlowerApp, import_component

CUSTOM_MAIN = (
    "a ServerApp whose main() starts a stock strategy (strategy.start(grid, initial_arrays, "
    "num_rounds, ...)); fednode's coordinator runs the rounds itself, so a custom main loop "
    "cannot run under fednode. Keep the ClientApp, drop the serverapp component (or start "
    "a stock strategy in main) and set rounds/selection with fednode's own flags"
)


@dataclass
class ServerPlan:
    """The strategy a ServerApp would run and what it would start it with."""

    style: str  #: "main", "server_fn", "components" or "none"
    strategy: Any = None
    num_rounds: int | None = None
    initial_arrays: dict[str, np.ndarray] | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    evaluate_config: dict[str, Any] = field(default_factory=dict)
    #: a legacy strategy's ``on_fit_config_fn(server_round)`` / ``on_evaluate_config_fn``
    fit_config_fn: Callable[[int], dict[str, Any]] | None = None
    evaluate_config_fn: Callable[[int], dict[str, Any]] | None = None


class _Reached(Exception):
    """The probe grid was used: main reached the point where rounds begin."""

    def __init__(self, method: str) -> None:
        super().__init__(method)
        self.method = method


class _ProbeGrid:
    """A Grid every method of which raises :class:`_Reached` (nothing is sent anywhere)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def reached(*args: Any, **kwargs: Any) -> Any:
            raise _Reached(name)

        return reached


def server_context(app: FlowerApp) -> Any:
    from flwr.app import Context, RecordDict

    return Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                   run_config=dict(app.run_config))  # fmt: skip


def plan_serverapp(app: FlowerApp) -> ServerPlan:
    """The :class:`ServerPlan` of the app's ServerApp (``style="none"`` without one).
    ConfigError for an object that is not a ServerApp, a main that fails before it starts
    a strategy, or a custom main."""
    if not app.serverapp:
        return ServerPlan("none")
    from flwr.serverapp import ServerApp

    server = import_component(app, "serverapp")
    where = f"{app.path / 'pyproject.toml'} [tool.flwr.app.components] serverapp"
    if not isinstance(server, ServerApp):
        raise ConfigError(where, app.serverapp, f"a flwr ServerApp, not {type(server).__name__}")
    # flwr 1.40 keeps the three styles in these attributes (ServerApp.__call__ reads them)
    main = getattr(server, "_main", None)
    if main is not None:
        return _probe_main(main, app, where)
    server_fn: Any = getattr(server, "_server_fn", None)
    if server_fn is not None:
        try:
            components = server_fn(server_context(app))
        except Exception as exc:  # the app's code
            raise ConfigError(where, app.serverapp, f"a server_fn that runs ({exc!r})") from exc
        return _legacy("server_fn", components.strategy, components.config)
    return _legacy("components", server._strategy, server._config)


def _legacy(style: str, strategy: Any, config: Any) -> ServerPlan:
    rounds = getattr(config, "num_rounds", None)
    initial = getattr(strategy, "initial_parameters", None)
    arrays = None
    if initial is not None:
        from flwr.common import parameters_to_ndarrays

        arrays = {str(i): a for i, a in enumerate(parameters_to_ndarrays(initial))}
    return ServerPlan(
        style,
        strategy,
        int(rounds) if rounds else None,
        arrays,
        fit_config_fn=getattr(strategy, "on_fit_config_fn", None),
        evaluate_config_fn=getattr(strategy, "on_evaluate_config_fn", None),
    )


def _probe_main(main: Any, app: FlowerApp, where: str) -> ServerPlan:
    import logging

    from flwr.serverapp.strategy import Strategy

    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.WARNING)  # strategy.start logs its banner before the grid
    try:
        main(_ProbeGrid(), server_context(app))
    except _Reached as reached:
        tb = reached.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            owner = frame.f_locals.get("self")
            if frame.f_code.co_name == "start" and isinstance(owner, Strategy):
                return _plan_of_start(owner, frame.f_locals, app)
            tb = tb.tb_next
        raise ConfigError(
            where, app.serverapp, f"{CUSTOM_MAIN} (main used grid.{reached.method} itself)"
        ) from None
    except Exception as exc:  # the app's code before it starts a strategy
        raise ConfigError(
            where, app.serverapp, f"a main() that reaches strategy.start ({exc!r})"
        ) from exc
    finally:
        flwr_log.setLevel(level)
    raise ConfigError(where, app.serverapp, f"{CUSTOM_MAIN} (main returned without one)")


def _plan_of_start(strategy: Any, local: dict[str, Any], app: FlowerApp) -> ServerPlan:
    from flwr.app import ArrayRecord

    initial = local.get("initial_arrays")
    arrays = None
    if isinstance(initial, ArrayRecord):
        arrays = {k: v.numpy() for k, v in initial.items()}
    return ServerPlan(
        "main",
        strategy,
        int(local.get("num_rounds") or 3),
        arrays,
        dict(local.get("train_config") or {}),
        dict(local.get("evaluate_config") or {}),
    )
