"""A plug-in task whose training takes long, for shutdown tests (``--task
fednode.testing.slow_task:SlowTask``).

``train`` runs ``FEDNODE_SLOW_BATCHES`` batches (default 600) of ``FEDNODE_SLOW_BATCH_S``
seconds each (default 0.05: half a minute in all). It calls
:func:`~fednode.training.cancel_point` before each batch unless ``FEDNODE_SLOW_COOPERATIVE``
is ``0``. When ``FEDNODE_SLOW_LOG`` names a file, each job appends a JSON line there when
it starts and one when it ends (``batches`` done, ``stopped`` early or not), so a test
can tell when training is under way and how it ended.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..training import cancel_point
from ..wire.tensors import DTYPE, Layout

SIZE = 16


class SlowTask:
    name = "slow"

    def __init__(
        self, *, client_index: int = 0, num_clients: int = 1, partition: str = "iid", seed: int = 0
    ) -> None:
        self.client_index = client_index
        self.batches = int(os.environ.get("FEDNODE_SLOW_BATCHES", "600"))
        self.batch_s = float(os.environ.get("FEDNODE_SLOW_BATCH_S", "0.05"))
        self.cooperative = os.environ.get("FEDNODE_SLOW_COOPERATIVE", "1") != "0"
        self.log = os.environ.get("FEDNODE_SLOW_LOG")
        #: jobs running now (a test checks it never exceeds 1) and the most seen at once
        self.running = 0
        self.most_at_once = 0
        self.finished: list[dict[str, Any]] = []

    def layout(self) -> Layout:
        return Layout(names=("w",), shapes=((SIZE,),))

    def init_params(self, seed: int) -> np.ndarray:
        return np.zeros(SIZE, dtype=DTYPE)

    def _note(self, record: dict[str, Any]) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps(record) + "\n")

    def train(
        self, params: np.ndarray, config: Mapping[str, Any]
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        rnd = int(config.get("round", 0))
        self._note({"event": "train_start", "round": rnd})
        done, stopped = 0, True
        try:
            for _ in range(self.batches):
                if self.cooperative:
                    cancel_point()
                time.sleep(self.batch_s)
                done += 1
            stopped = False
        finally:
            self.running -= 1
            record = {"event": "train_end", "round": rnd, "batches": done, "stopped": stopped}
            self.finished.append(record)
            self._note(record)
        return np.asarray(params, dtype=DTYPE) + 1.0, 10, {"train_loss": 1.0}

    def evaluate(self, params: np.ndarray) -> tuple[float, int, dict[str, float]]:
        return 1.0, 10, {"accuracy": 0.5, "loss": 1.0}
