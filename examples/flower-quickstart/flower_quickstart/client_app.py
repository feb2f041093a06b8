"""flower-quickstart: the ClientApp (decorator style, Flower >= 1.21)."""

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_quickstart.task import Net, load_data
from flower_quickstart.task import test as test_fn
from flower_quickstart.task import train as train_fn

# Flower ClientApp
app = ClientApp()


def _data(context: Context):
    return load_data(
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        str(context.run_config["partitioner"]),
        int(context.run_config["seed"]),
    )


@app.train()
def train(msg: Message, context: Context):
    """Train the model on local data."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y, _, _ = _data(context)
    config = msg.content["config"]
    rng = np.random.default_rng(
        (int(context.run_config["seed"]), int(context.node_config["partition-id"]),
         int(config["server-round"]))
    )  # fmt: skip
    train_loss = train_fn(
        model,
        x,
        y,
        int(context.run_config["local-epochs"]),
        float(config["lr"]),
        float(context.run_config["momentum"]),
        int(context.run_config["batch-size"]),
        rng,
    )
    model_record = ArrayRecord(model.state_dict())
    metrics = MetricRecord({"train_loss": train_loss, "num-examples": len(y)})
    content = RecordDict({"arrays": model_record, "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Evaluate the model on the test split."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, _, x_test, y_test = _data(context)
    eval_loss, eval_acc = test_fn(model, x_test, y_test)
    metrics = MetricRecord(
        {"eval_loss": eval_loss, "eval_acc": eval_acc, "num-examples": len(y_test)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
