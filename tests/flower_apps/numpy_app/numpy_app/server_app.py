"""Legacy ServerApp(server_fn=...): FedAvg with initial parameters and a fit config."""

import torch
from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from fednode.training.digits import build_model


def server_fn(context: Context):
    torch.manual_seed(int(context.run_config["seed"]))
    model = build_model("mlp")
    initial = ndarrays_to_parameters([p.detach().numpy() for p in model.parameters()])
    lr = float(context.run_config["lr"])
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        initial_parameters=initial,
        on_fit_config_fn=lambda server_round: {"lr": lr},
    )
    rounds = int(context.run_config["num-server-rounds"])
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))


app = ServerApp(server_fn=server_fn)
