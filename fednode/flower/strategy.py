"""A stock Flower strategy as fednode coordinator config, and what does not map.

:func:`map_strategy` turns the :class:`~.serverapp.ServerPlan` of an app's ServerApp into
dotted config overrides (the ``fednode run|sim`` flags win over them) and two lists for
the start-up report: what was mapped (``FedAvg.fraction_train=0.5 -> rounds.fraction_fit``)
and what was not. The strategies of ``flwr.serverapp.strategy`` (1.2x Message API) and of
``flwr.server.strategy`` (legacy) map alike; their settings differ only in names.

==================  =========================================================
Flower              fednode
==================  =========================================================
num_rounds          rounds.rounds
fraction_train/fit  rounds.fraction_fit
min_train_nodes     rounds.min_fit_clients (when not Flower's default, 2)
min_available       rounds.min_available_clients (idem; the simulator then waits for all)
FedProx mu          train.prox_mu (sent to the app as config "proximal-mu")
FedAdam/FedYogi     server.optimizer, server.lr (eta), server.momentum (beta_1),
                    server.beta2 (beta_2), server.tau
FedAvgM             server.optimizer fedavgm, server.lr, server.momentum
FedMedian           aggregation.rule median
FedTrimmedAvg beta  aggregation.rule trimmed:<beta>
Krum f              aggregation.rule krum:<f>
==================  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .serverapp import ServerPlan

STOCK = ("FedAvg", "FedProx", "FedAdam", "FedYogi", "FedAvgM", "FedMedian", "FedTrimmedAvg", "Krum")
#: settings every strategy has that fednode does not take (said once, not per strategy)
_IGNORED = {
    "fraction_evaluate": "fednode's coordinator evaluates the global model",
    "min_evaluate_nodes": "fednode's coordinator evaluates the global model",
    "min_evaluate_clients": "fednode's coordinator evaluates the global model",
    "eta_l": "the client learning rate is the app's own (its train config / run config)",
}


@dataclass
class Mapping:
    """Dotted config overrides, and the lines that say what mapped and what did not."""

    overrides: dict[str, Any] = field(default_factory=dict)
    mapped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def set(self, source: str, dotted: str, value: Any) -> None:
        self.overrides[dotted] = value
        self.mapped.append(f"{source}={value!r} -> {dotted}")


def _get(strategy: Any, *names: str) -> Any:
    for name in names:
        if hasattr(strategy, name):
            return getattr(strategy, name)
    return None


def _default(strategy: Any, attr: str) -> Any:
    """The default of ``attr`` in the strategy's constructor (None if it has none)."""
    import inspect

    try:
        param = inspect.signature(type(strategy).__init__).parameters.get(attr)
    except (TypeError, ValueError):
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def map_strategy(plan: ServerPlan) -> Mapping:
    """The overrides of ``plan``; ConfigError for a strategy fednode cannot run."""
    out = Mapping()
    if plan.style == "none":
        out.unmapped.append("no serverapp component: fednode's own round settings apply")
        return out
    strategy = plan.strategy
    name = type(strategy).__name__
    if name not in STOCK:
        raise ConfigError(
            "serverapp strategy",
            name,
            f"one of the stock strategies {', '.join(STOCK)} (a custom strategy's "
            "aggregation cannot run in fednode's coordinator; use [aggregation] rule and "
            "[server] optimizer instead)",
        )
    if plan.num_rounds is not None:
        out.set("num_rounds", "rounds.rounds", int(plan.num_rounds))
    fraction = _get(strategy, "fraction_train", "fraction_fit")
    if fraction is not None:
        if fraction > 0:
            out.set(f"{name}.fraction_train", "rounds.fraction_fit", float(fraction))
        else:
            out.unmapped.append(f"{name}.fraction_train=0 (no training): not mapped")
    for attrs, dotted in (
        (("min_train_nodes", "min_fit_clients"), "rounds.min_fit_clients"),
        (("min_available_nodes", "min_available_clients"), "rounds.min_available_clients"),
    ):
        attr = next((a for a in attrs if hasattr(strategy, a)), attrs[0])
        value = getattr(strategy, attr, None)
        if value is None or value < 1:
            continue
        if value == _default(strategy, attr):  # Flower's default: fednode's own applies
            out.unmapped.append(
                f"{name}.{attr}={value!r} (Flower's default; fednode's {dotted} applies)"
            )
        else:
            out.set(f"{name}.{attr}", dotted, int(value))
    fit = out.overrides.get("rounds.min_fit_clients")
    if fit is not None and "rounds.min_available_clients" not in out.overrides:
        # Flower samples max(fraction * available, min_train_nodes) nodes: it waits for
        # that many; fednode needs min_available_clients >= min_fit_clients
        out.set(f"{name}.min_train_nodes", "rounds.min_available_clients", int(fit))
    _specific(name, strategy, out)
    for attr, why in _IGNORED.items():
        if hasattr(strategy, attr):
            out.unmapped.append(f"{name}.{attr}={getattr(strategy, attr)!r} ({why})")
    if getattr(strategy, "evaluate_fn", None) is not None:
        out.unmapped.append(f"{name}.evaluate_fn: not run (the coordinator evaluates)")
    if plan.evaluate_config:
        out.unmapped.append(
            f"evaluate_config {sorted(plan.evaluate_config)}: sent with every evaluate message"
        )
    return out


def _specific(name: str, strategy: Any, out: Mapping) -> None:
    if name == "FedProx":
        out.set("FedProx.proximal_mu", "train.prox_mu", float(strategy.proximal_mu))
    elif name in ("FedAdam", "FedYogi"):
        out.set(name, "server.optimizer", name.lower())
        out.set(f"{name}.eta", "server.lr", float(strategy.eta))
        out.set(f"{name}.beta_1", "server.momentum", float(strategy.beta_1))
        out.set(f"{name}.beta_2", "server.beta2", float(strategy.beta_2))
        out.set(f"{name}.tau", "server.tau", float(strategy.tau))
    elif name == "FedAvgM":
        momentum = float(strategy.server_momentum)
        out.set(name, "server.optimizer", "fedavgm" if momentum > 0 else "fedavg")
        out.set(f"{name}.server_learning_rate", "server.lr", float(strategy.server_learning_rate))
        if momentum > 0:
            out.set(f"{name}.server_momentum", "server.momentum", momentum)
    elif name == "FedMedian":
        out.set(name, "aggregation.rule", "median")
    elif name == "FedTrimmedAvg":
        out.set(f"{name}.beta", "aggregation.rule", f"trimmed:{float(strategy.beta):g}")
    elif name == "Krum":
        f = int(_get(strategy, "num_malicious_nodes", "num_malicious_clients") or 0)
        keep = _get(strategy, "num_nodes_to_select", "num_clients_to_keep") or 0
        out.set(f"{name}.num_malicious_nodes", "aggregation.rule", f"krum:{f}")
        if keep:
            out.unmapped.append(f"{name}.num_nodes_to_select={keep}: not mapped (krum keeps one)")


def report(mapping: Mapping, plan: ServerPlan, app_name: str) -> list[str]:
    """The start-up lines ``fednode run|sim`` prints for a Flower app."""
    strategy = type(plan.strategy).__name__ if plan.strategy is not None else "none"
    lines = [f"flower app {app_name}: serverapp style {plan.style}, strategy {strategy}"]
    lines += [f"  mapped: {line}" for line in mapping.mapped]
    lines += [f"  not mapped: {line}" for line in mapping.unmapped]
    return lines


def app_overrides(spec: str) -> tuple[dict[str, Any], list[str]]:
    """The dotted config overrides of the Flower app ``spec`` names (its strategy's and
    ``data.task``) and the start-up report; what ``fednode run|sim --flower-app`` applies."""
    from .task import load_app

    loaded = load_app(spec)
    mapping = map_strategy(loaded.plan)
    return {**mapping.overrides, "data.task": spec}, report(mapping, loaded.plan, loaded.app.name)
