"""A NumPyClient built by client_fn(context), Flower 1.x's legacy ClientApp style."""

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from fednode.training.digits import DigitsTask


class DigitsClient(NumPyClient):
    def __init__(self, partition_id: int, num_partitions: int, seed: int, epochs: int) -> None:
        self.task = DigitsTask(client_index=partition_id, num_clients=num_partitions, seed=seed)
        self.seed, self.epochs = seed, epochs

    def _arrays(self, flat):
        return [a.copy() for a in self.task.layout().views(flat).values()]

    def get_parameters(self, config):
        return self._arrays(self.task.init_params(self.seed))

    def fit(self, parameters, config):
        flat = np.concatenate([np.asarray(p, np.float32).ravel() for p in parameters])
        job = {"local_epochs": self.epochs, "lr": config["lr"], "round": config["server-round"]}
        new, n, metrics = self.task.train(flat, job)
        return self._arrays(new), n, metrics

    def evaluate(self, parameters, config):
        flat = np.concatenate([np.asarray(p, np.float32).ravel() for p in parameters])
        loss, n, metrics = self.task.evaluate(flat)
        return loss, n, {"accuracy": metrics["accuracy"]}


def client_fn(context: Context):
    return DigitsClient(
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        int(context.run_config["seed"]),
        int(context.run_config["local-epochs"]),
    ).to_client()


app = ClientApp(client_fn=client_fn)
