"""``fednode train --centralized``: the task's model on all data, the baseline to beat."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from ..errors import ConfigError
from .common import add_common, config_of, console


def add_parser(sub: Any) -> None:
    train = sub.add_parser(
        "train",
        help="centralized baseline on all data",
        description="Train the task's model on all training data, "
        "without federation, as a baseline.",
    )
    train.add_argument(
        "--centralized",
        action="store_true",
        required=True,
        help="train on the union of all data (the only mode)",
    )
    train.add_argument("--epochs", type=int, default=15, help="training epochs (15)")
    add_common(train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.task import load_task

    if args.epochs < 1:
        raise ConfigError("--epochs", args.epochs, "an integer >= 1")
    config = config_of(args)
    task = load_task(config.data.task, seed=config.seed)
    params = task.init_params(config.seed)
    table = Table(title=f"centralized {config.data.task}", title_justify="left")
    for col in ("epoch", "accuracy", "loss"):
        table.add_column(col, justify="right")
    for epoch in range(1, args.epochs + 1):
        params, _n, _m = task.train(
            params,
            {
                "local_epochs": 1,
                "batch_size": config.train.batch_size,
                "lr": config.train.lr,
                "momentum": config.train.momentum,
                "round": epoch,
            },
        )
        loss, _n, metrics = task.evaluate(params)
        table.add_row(str(epoch), f"{metrics['accuracy']:.4f}", f"{loss:.4f}")
    console.print(table)
    return 0
