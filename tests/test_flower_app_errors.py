"""Flower apps that are wrong: bad files fail at start with a ConfigError naming what is
wrong; a ClientApp that misbehaves at run time is counted and its update refused while
the federation goes on; every stock strategy maps onto fednode's coordinator config.
Needs flwr (``pip install fednode[flower]``); the module skips without it."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before anything imports flwr
pytest.importorskip("flwr", reason="flwr is not installed: pip install fednode[flower]")

import flwr.server.strategy as legacy
import flwr.serverapp.strategy as stock

from fednode.config import load_config
from fednode.errors import ConfigError
from fednode.flower.app import import_flwr, make_spec, read_app
from fednode.flower.serverapp import ServerPlan
from fednode.flower.strategy import app_overrides, map_strategy
from fednode.sim.scenarios import run_star
from fednode.training.task import load_task

PYPROJECT = """\
[tool.flwr.app.components]
serverapp = "{pkg}.server_app:app"
clientapp = "{pkg}.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 2
lr = 0.1
"""

#: a ServerApp in Flower's documented style: main() starting a stock strategy
SERVER = """\
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import {strategy}

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    arrays = ArrayRecord([np.zeros((4, 3), np.float32), np.zeros(3, np.float32)])
    strategy = {strategy}({kwargs})
    rounds = context.run_config["num-server-rounds"]
    train_config = ConfigRecord({{"lr": context.run_config["lr"]}})
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=rounds, train_config=train_config)
"""

#: a decorator ClientApp: partitions 1, 2 and 3 misbehave (shape, NaN, exception)
CLIENT = """\
import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    pid = context.node_config["partition-id"]
    arrays = msg.content["arrays"].to_numpy_ndarrays()  # keys "0" (w) and "1" (b)
    if pid == 1:
        arrays[0] = np.zeros((3, 4), np.float32)
    elif pid == 2:
        arrays[0] = np.full((4, 3), np.nan, np.float32)
    elif pid == 3:
        raise RuntimeError("the app broke")
    else:
        arrays = [a + msg.content["config"]["lr"] for a in arrays]
    metrics = {{"num-examples": 10, "mu": msg.content["config"].get("proximal-mu", -1.0)}}
    return Message(RecordDict({{"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)}}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    w = msg.content["arrays"]["0"].numpy()
    metrics = MetricRecord({{"eval_loss": float(np.abs(w).sum()), "eval_acc": 0.5,
                             "num-examples": 5}})
    return Message(RecordDict({{"metrics": metrics}}), reply_to=msg)
"""


def _app(
    root: Path,
    pkg: str,
    *,
    pyproject: str = PYPROJECT,
    server: str | None = None,
    client: str = CLIENT,
    strategy: str = "FedAvg",
    kwargs: str = "",
) -> Path:
    """A Flower app folder ``root/pkg`` with package ``pkg`` (unique per test: Python
    imports a module name once per process)."""
    path = root / pkg
    (path / pkg).mkdir(parents=True)
    (path / "pyproject.toml").write_text(pyproject.format(pkg=pkg))
    (path / pkg / "__init__.py").write_text("")
    server = server if server is not None else SERVER.format(strategy=strategy, kwargs=kwargs)
    (path / pkg / "server_app.py").write_text(textwrap.dedent(server))
    (path / pkg / "client_app.py").write_text(client.format())
    return path


# --- at start: ConfigError --------------------------------------------------------------
def test_a_folder_without_the_components_section_fails_at_start(tmp_path: Path) -> None:
    path = _app(tmp_path, "nosection_app", pyproject="[project]\nname = 'x'\n")
    with pytest.raises(ConfigError, match=r"\[tool\.flwr\.app\.components\]"):
        load_task(make_spec(path))
    with pytest.raises(ConfigError, match=r"pyproject\.toml"):
        read_app(make_spec(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("component", "message"),
    [
        ("nosuchmodule_xyz:app", "an importable module"),
        ("{pkg}.client_app:nothing", "an attribute 'nothing'"),
        ("not a spec", "'package.module:attr'"),
        ("{pkg}.server_app:app", "a flwr ClientApp, not ServerApp"),
    ],
)
def test_a_bad_clientapp_name_fails_at_start(tmp_path: Path, component: str, message: str) -> None:
    pkg = f"badname_{abs(hash(component)) % 10**8}"
    pyproject = PYPROJECT.replace('"{pkg}.client_app:app"', f'"{component}"')
    path = _app(tmp_path, pkg, pyproject=pyproject)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_task(make_spec(path))


def test_run_config_overrides_must_name_keys_of_the_app(tmp_path: Path) -> None:
    path = _app(tmp_path, "runcfg_app")
    app = read_app(make_spec(path, "lr=0.5 num-server-rounds=7"))
    assert app.run_config == {"num-server-rounds": 7, "lr": 0.5}
    with pytest.raises(ConfigError, match="a key of the app's config"):
        read_app(make_spec(path, "epochs=3"))
    with pytest.raises(ConfigError, match="key=value pairs"):
        read_app(make_spec(path, "lr"))


def test_a_custom_main_loop_is_refused_with_what_to_do(tmp_path: Path) -> None:
    server = """\
    from flwr.serverapp import ServerApp
    app = ServerApp()

    @app.main()
    def main(grid, context):
        for node in grid.get_node_ids():
            pass
    """
    path = _app(tmp_path, "custommain_app", server=server)
    with pytest.raises(ConfigError, match="custom main loop") as info:
        load_task(make_spec(path))
    assert "grid.get_node_ids" in str(info.value) and "drop the serverapp" in str(info.value)


def test_a_custom_strategy_is_refused(tmp_path: Path) -> None:
    server = SERVER.format(strategy="FedAvg", kwargs="").replace(
        "strategy = FedAvg()", "strategy = type('MyStrategy', (FedAvg,), {})()"
    )
    path = _app(tmp_path, "customstrat_app", server=server)
    with pytest.raises(ConfigError, match="stock strategies"):
        app_overrides(make_spec(path))


def test_without_flwr_the_loader_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flwr", None)  # import flwr raises ImportError
    with pytest.raises(ConfigError, match=r"pip install fednode\[flower\]"):
        import_flwr()


def test_the_cli_fails_at_start_with_exit_2(tmp_path: Path, capsys: Any) -> None:
    from fednode.cli import main

    path = _app(tmp_path, "cli_bad_app", pyproject="[tool.flwr.app]\npublisher = 'x'\n")
    assert main(["sim", "--flower-app", str(path)]) == 2
    assert "[tool.flwr.app.components]" in capsys.readouterr().out.replace("\n", "")


# --- at run time: counted, refused, the node keeps running ------------------------------
def test_bad_train_replies_are_counted_and_refused_while_the_round_goes_on(
    tmp_path: Path,
) -> None:
    path = _app(tmp_path, "runtime_app", strategy="FedProx", kwargs="proximal_mu=0.25")
    overrides, _lines = app_overrides(make_spec(path))
    assert overrides["train.prox_mu"] == 0.25
    more = {"rounds.min_available_clients": 5, "rounds.max_failure_fraction": 0.7}
    config = load_config(overrides={**overrides, **more})
    res = run_star(config, 5)
    assert res.stop is not None and res.stop.error is None, res.stop
    assert [r["round"] for r in res.rounds] == [1, 2]
    assert all(r["completed"] == 2 for r in res.rounds)  # partitions 0 and 4
    tasks = [node.executor.task for node in res.nodes[1:]]  # the clients: partition i, node i+1
    errors = {task.client_index: dict(task.errors) for task in tasks}
    assert errors == {0: {}, 1: {"shapes": 2}, 2: {}, 3: {"raised": 2}, 4: {}}
    local = [e for e in res.events if e["event"] == "local_error"]
    assert len(local) == 6  # shape, NaN and exception, each round: refused to send
    assert all("NaN" in e["detail"] for e in local)
    # the two honest clients moved the model by lr = 0.1 per round: it is 0.2 after two
    final = res.nodes[0].role.params
    np.testing.assert_allclose(final, 0.2, rtol=1e-5)


# --- strategies --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (stock.FedAvg(fraction_train=0.5, min_train_nodes=3),
         {"rounds.fraction_fit": 0.5, "rounds.min_fit_clients": 3,
          "rounds.min_available_clients": 3}),
        (stock.FedProx(proximal_mu=0.1), {"train.prox_mu": 0.1}),
        (stock.FedAdam(eta=0.02, beta_1=0.8, beta_2=0.95, tau=1e-4),
         {"server.optimizer": "fedadam", "server.lr": 0.02, "server.momentum": 0.8,
          "server.beta2": 0.95, "server.tau": 1e-4}),
        (stock.FedYogi(eta=0.01), {"server.optimizer": "fedyogi", "server.lr": 0.01,
          "server.momentum": 0.9, "server.beta2": 0.99, "server.tau": 1e-3}),
        (stock.FedAvgM(server_learning_rate=0.5, server_momentum=0.7),
         {"server.optimizer": "fedavgm", "server.lr": 0.5, "server.momentum": 0.7}),
        (stock.FedMedian(), {"aggregation.rule": "median"}),
        (stock.FedTrimmedAvg(beta=0.1), {"aggregation.rule": "trimmed:0.1"}),
        (stock.Krum(num_malicious_nodes=1), {"aggregation.rule": "krum:1"}),
        (legacy.FedAvg(fraction_fit=0.3, min_available_clients=5),
         {"rounds.fraction_fit": 0.3, "rounds.min_available_clients": 5}),
        (legacy.FedProx(proximal_mu=0.2), {"train.prox_mu": 0.2}),
        (legacy.FedTrimmedAvg(beta=0.25), {"aggregation.rule": "trimmed:0.25"}),
        (legacy.Krum(num_malicious_clients=2), {"aggregation.rule": "krum:2"}),
    ],
)  # fmt: skip
def test_stock_strategies_map_onto_valid_fednode_config(strategy: Any, expected: dict) -> None:
    mapping = map_strategy(ServerPlan("main", strategy, num_rounds=7))
    assert mapping.overrides == {"rounds.rounds": 7, "rounds.fraction_fit": 1.0, **expected}
    load_config(overrides=mapping.overrides)  # fednode accepts every value
    assert any("fraction_evaluate" in line for line in mapping.unmapped)
