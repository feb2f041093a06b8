"""A flwr.client.Client (not a NumPyClient) built by client_fn(context); no ServerApp."""

import numpy as np
from flwr.app import Context
from flwr.client import Client
from flwr.clientapp import ClientApp
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    GetParametersRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from fednode.training.digits import DigitsTask

OK = Status(code=Code.OK, message="ok")


class DigitsClient(Client):
    def __init__(self, context: Context) -> None:
        self.context = context
        self.seed = int(context.run_config["seed"])
        self.task = DigitsTask(
            client_index=int(context.node_config["partition-id"]),
            num_clients=int(context.node_config["num-partitions"]),
            seed=self.seed,
        )

    def _params(self, flat):
        return ndarrays_to_parameters([a.copy() for a in self.task.layout().views(flat).values()])

    @staticmethod
    def _flat(parameters):
        return np.concatenate([a.ravel() for a in parameters_to_ndarrays(parameters)])

    def get_parameters(self, ins):
        initial = self.task.init_params(self.seed)
        return GetParametersRes(status=OK, parameters=self._params(initial))

    def fit(self, ins):
        job = {
            "local_epochs": int(self.context.run_config["local-epochs"]),
            "lr": float(self.context.run_config["lr"]),
            "round": int(ins.config["server-round"]),
        }
        new, n, metrics = self.task.train(self._flat(ins.parameters), job)
        # the state persists across rounds on this node: count the rounds it trained
        rounds = self.context.state.config_records.get("trained")
        done = int(rounds["rounds"]) if rounds is not None else 0
        from flwr.app import ConfigRecord

        self.context.state["trained"] = ConfigRecord({"rounds": done + 1})
        metrics = {**metrics, "rounds_trained": done + 1}
        return FitRes(status=OK, parameters=self._params(new), num_examples=n, metrics=metrics)

    def evaluate(self, ins):
        loss, n, metrics = self.task.evaluate(self._flat(ins.parameters))
        return EvaluateRes(status=OK, loss=loss, num_examples=n, metrics=metrics)


def client_fn(context: Context):
    return DigitsClient(context)


app = ClientApp(client_fn=client_fn)
