"""Flower's side of ``vs_flower.py sim`` / ``scale``: one Flower 1.40 simulation, one process.

Run ONLY by ``vs_flower.py``, inside a loopback-only network namespace with
``FLWR_TELEMETRY_ENABLED=0`` and ``RAY_USAGE_STATS_ENABLED=0`` (never import this module
elsewhere: it imports flwr and starts Ray).

Only the framework differs from ``fednode sim``: each Flower client is a ``NumPyClient``
wrapping fednode's own :class:`~fednode.training.digits.DigitsTask` (the same data loader,
split, partition, torch model, SGD settings, E and per-round shuffling seed), the initial
model is ``task.init_params(seed)``, the server evaluates the global model on the same
test split after every round (Flower's ``evaluate_fn``) and aggregates with Flower's
``FedAvg`` (weighted by examples, as fednode's). Parameters travel as one flat float32
array, as fednode's do.

Output, one JSON line each on stdout: ``{"round": r, "accuracy": a, "t": time.time()}``
per evaluation (round 0 = the initial model) and a final ``{"done": ..., "bytes": [...]}``
with the bytes of the serialised parameters Flower sent and received in each round
(``Parameters.tensors``, Flower's own ``ndarray_to_bytes`` format; counted in the strategy).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--partition", default="iid")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--task", default="mlp", help="digits model: mlp, linear, mlp:H")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--client-cpus", type=float, default=1.0)
    args = ap.parse_args()

    import numpy as np
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fednode.training.digits import DigitsTask

    n = args.clients
    train_cfg = {"local_epochs": args.epochs, "batch_size": 32, "lr": 0.05, "momentum": 0.9}

    class DigitsClient(NumPyClient):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            self.task = DigitsTask(
                client_index=index, num_clients=n, partition=args.partition,
                seed=args.seed, model=args.task,
            )  # fmt: skip

        def fit(self, parameters: list[Any], config: dict[str, Any]) -> Any:
            vec, num, metrics = self.task.train(parameters[0], {**train_cfg, **config})
            return [vec], num, metrics

    def client_fn(context: Context) -> Any:
        return DigitsClient(int(context.node_config["partition-id"])).to_client()

    server_task = DigitsTask(client_index=0, num_clients=1, seed=args.seed, model=args.task)
    per_round: dict[int, int] = {}

    def evaluate_fn(rnd: int, params: list[Any], _cfg: dict[str, Any]) -> Any:
        loss, _num, metrics = server_task.evaluate(params[0])
        row = {"round": rnd, "accuracy": metrics["accuracy"], "t": time.time()}
        print(json.dumps(row), flush=True)
        return loss, {"accuracy": metrics["accuracy"]}

    class CountingFedAvg(FedAvg):  # type: ignore[misc]
        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            ins = super().configure_fit(server_round, parameters, client_manager)
            per_round[server_round] = per_round.get(server_round, 0) + sum(
                len(t) for _c, fit_ins in ins for t in fit_ins.parameters.tensors
            )
            return ins

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            per_round[server_round] = per_round.get(server_round, 0) + sum(
                len(t) for _c, res in results for t in res.parameters.tensors
            )
            return super().aggregate_fit(server_round, results, failures)

    min_fit = max(1, int(n * args.fraction))
    strategy = CountingFedAvg(
        fraction_fit=args.fraction,
        fraction_evaluate=0.0,
        min_fit_clients=min_fit,
        min_evaluate_clients=0,
        min_available_clients=n,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda rnd: {"round": rnd},
        initial_parameters=ndarrays_to_parameters([server_task.init_params(args.seed)]),
    )

    def server_fn(_context: Context) -> ServerAppComponents:
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0.0}},
    )
    rows = [per_round.get(r, 0) for r in range(1, args.rounds + 1)]
    print(json.dumps({"done": True, "bytes": rows, "np": np.__version__}), flush=True)


if __name__ == "__main__":
    main()
