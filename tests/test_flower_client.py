"""A Flower NumPyClient as a fednode task, unchanged: the adapter and a federation of them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fednode.config import load_config
from fednode.errors import TaskError
from fednode.sim.scenarios import run_star
from fednode.testing.flower_client import DigitsClient
from fednode.training.flower import NumPyClientTask, is_numpy_client
from fednode.training.task import _accepted, load_task

SPEC = "fednode.testing.flower_client:DigitsClient"


def test_load_task_wraps_a_numpy_client_built_from_its_cid() -> None:
    task = load_task(SPEC, client_index=3, num_clients=10)
    assert isinstance(task, NumPyClientTask)
    assert task.layout().shapes == ((64, 10), (10,)) and task.layout().size == 650
    direct = DigitsClient("3")  # the same client Flower would build for cid "3"
    np.testing.assert_array_equal(task.client.y, direct.y)  # type: ignore[attr-defined]
    init = task.init_params(0)
    assert init.dtype == np.float32 and init.shape == (650,)
    np.testing.assert_array_equal(init, np.concatenate([direct.w.ravel(), direct.b]))


def test_train_and_evaluate_go_through_fit_and_evaluate() -> None:
    task = load_task(SPEC, client_index=0, num_clients=10)
    client = DigitsClient("0")
    params = task.init_params(0)
    trained, n, metrics = task.train(params, {"round": 1, "local_epochs": 2, "lr": 0.5})
    arrays, n_direct, _ = client.fit([client.w, client.b], {"local_epochs": 2, "lr": 0.5})
    np.testing.assert_allclose(trained, np.concatenate([a.ravel() for a in arrays]), rtol=1e-6)
    assert n == n_direct > 0 and set(metrics) == {"train_accuracy"}
    loss, n_test, scores = task.evaluate(trained)
    assert n_test == 360 and loss > 0 and scores["accuracy"] > 0.5
    assert "split" not in scores  # Flower allows strings; fednode keeps the numbers


def test_a_star_of_flower_clients_learns_digits() -> None:
    config = load_config(
        overrides={
            "data.task": SPEC, "rounds.rounds": 5, "train.local_epochs": 2, "train.lr": 0.5,
        }
    )  # fmt: skip
    result = run_star(config, 10)
    assert result.stop is not None and result.stop.error is None, result.stop
    accuracies = [r["accuracy"] for r in result.rounds]
    assert len(accuracies) == 5 and accuracies[-1] > 0.85 and accuracies[-1] > accuracies[0]


class _Wrong:
    """A NumPyClient whose fit misbehaves in the way chosen by ``mode``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        if self.mode == "shape":
            return [np.zeros((3, 2), np.float32), np.zeros(3, np.float32)], 1, {}
        if self.mode == "dtype":
            return [np.zeros((2, 3), dtype=object), np.zeros(3, np.float32)], 1, {}
        return parameters, 1  # "arity": two values instead of three

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        return 0.0, 1, {}


@pytest.mark.parametrize(
    ("mode", "message"),
    [("shape", "shapes"), ("dtype", "not numeric"), ("arity", "must return (parameters")],
)
def test_a_misbehaving_fit_is_a_task_error(mode: str, message: str) -> None:
    task = NumPyClientTask(_Wrong(mode))
    with pytest.raises(TaskError, match=message.replace("(", r"\(")):
        task.train(task.init_params(0), {})


class _InPlace(_Wrong):
    """Updates the arrays it is given in place, as some Flower examples do."""

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        for p in parameters:
            p += 1.0
        return parameters, 1, {}


def test_a_client_updating_its_arrays_in_place_does_not_touch_the_shared_model() -> None:
    task = NumPyClientTask(_InPlace("in place"))
    shared = np.zeros(9, dtype=np.float32)
    shared.flags.writeable = False  # as the global model handed to every client is
    trained, _n, _m = task.train(shared, {})
    np.testing.assert_array_equal(trained, np.ones(9, dtype=np.float32))
    np.testing.assert_array_equal(shared, np.zeros(9, dtype=np.float32))


def test_which_objects_count_as_numpy_clients_and_which_arguments_factories_get() -> None:
    assert is_numpy_client(DigitsClient("0"))
    assert not is_numpy_client(load_task("digits:numpy"))  # a fednode task (it has train)
    four = {"client_index": 2, "num_clients": 5, "partition": "iid", "seed": 1}
    assert _accepted(DigitsClient, four) == {"cid": "2"}
    assert _accepted(lambda **kw: kw, four) == four  # **kwargs: fednode's four, as always

    def named(client_index: int, seed: int) -> None: ...

    assert _accepted(named, four) == {"client_index": 2, "seed": 1}
