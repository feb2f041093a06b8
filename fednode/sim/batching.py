"""Lazy training jobs of the discrete-event driver, run as one batch.

Pure (no trio). :class:`~fednode.sim.des.DesSimulation` defers a training job whose task
knows its ``num_examples`` (its virtual-time charge needs no result) and, when the first
deferred result falls due, runs every job pending then with :func:`run_batch`: grouped by
task class and vectorised where the class offers ``train_batch``. Inputs are fixed when a
job is deferred, so results equal those of running each job at once.
"""

from __future__ import annotations

import time
from typing import Any

from ..actions import EvalResult, TrainResult
from ..runner import compute


def run_batch(jobs: list[list[Any]]) -> None:
    """Fill in ``p[3]`` (the result) of every pending ``p = [node, epoch, job, None]``
    whose node is still in that epoch; charge each node's executor its share of the time."""
    groups: dict[type, list[list[Any]]] = {}
    for p in jobs:
        if p[0].epoch == p[1]:  # skip the jobs of nodes that crashed meanwhile
            groups.setdefault(type(p[0].executor.task), []).append(p)
    for task_cls, group in groups.items():
        t0, c0 = time.perf_counter(), time.thread_time()
        batch = getattr(task_cls, "train_batch", None)
        out = None
        if batch is not None and len(group) > 1:
            out = batch(
                [p[0].executor.task for p in group], [(p[2].params, p[2].config) for p in group]
            )
        results: list[TrainResult | EvalResult]
        if out is not None:
            results = [TrainResult(p[2].round, *r) for p, r in zip(group, out)]
        else:
            results = [compute(p[0].executor.task, p[2]) for p in group]
        share = (time.perf_counter() - t0) / len(group)
        cpu_share = (time.thread_time() - c0) / len(group)
        for p, result in zip(group, results):
            p[3] = result
            p[0].executor.wall_compute_s += share
            p[0].executor.cpu_compute_s += cpu_share
