"""Framework overhead per simulated round, beyond the training and evaluation compute.

Runs `fednode sim`'s star federation (tiny model: digits:linear, E=1) with 10 and 100
clients and, in the same run, a plain sequential FedAvg loop on the same tasks (the
baseline: the same training and evaluation, nothing else). For the simulated run it
splits each round into

* compute: time spent inside ``task.train`` / ``task.evaluate`` (measured around each
  job by :class:`~fednode.runner.InlineExecutor`);
* framework overhead: the rest (roles, aggregation, codecs, envelope: Ed25519 + BLAKE3 +
  CBOR, the memory transport, trio). Two ways: wall time minus compute wall time, and
  process CPU time minus compute CPU time. On a quiet machine they agree; when other
  jobs share the cores the wall figure also counts time the process was not running,
  so the CPU figure is the better estimate of what the framework costs.

Every figure is the best of ``--repeat`` runs (noisy machines); the load average is
printed beside them. Issue #3's target: overhead < 5 ms per round at 10 clients.

    .venv/bin/python scripts/bench/round_overhead.py [--rounds 20] [--repeat 5]
        [--clients 10 100] [--task digits:linear]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch

from fednode.config import load_config
from fednode.runner import InlineExecutor
from fednode.sim.scenarios import build_star
from fednode.training.task import load_task

TARGET_MS = 5.0  # issue #3: framework overhead per round at 10 clients


@dataclass
class Run:
    wall: float  # s per round, whole simulated run
    cpu: float  # process CPU s per round
    compute_wall: float  # s per round inside task.train / evaluate
    compute_cpu: float

    @property
    def overhead_wall(self) -> float:
        return self.wall - self.compute_wall

    @property
    def overhead_cpu(self) -> float:
        return self.cpu - self.compute_cpu


def simulated(task: str, num_clients: int, rounds: int) -> Run:
    config = load_config(None, {
        "data.task": task, "rounds.rounds": rounds, "train.local_epochs": 1,
        "rounds.min_available_clients": num_clients, "rounds.min_fit_clients": num_clients,
    })
    sim, root = build_star(config, num_clients)
    t0, c0 = time.perf_counter(), time.process_time()
    result = sim.run(root)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert len(result.rounds) == rounds, result.stop
    executors = [n.executor for n in sim.nodes if isinstance(n.executor, InlineExecutor)]
    compute_wall = sum(e.wall_compute_s for e in executors)
    compute_cpu = sum(e.cpu_compute_s for e in executors)
    return Run(wall / rounds, cpu / rounds, compute_wall / rounds, compute_cpu / rounds)


def plain_loop(task: str, num_clients: int, rounds: int) -> float:
    """Wall seconds per round of sequential FedAvg on the same tasks (no framework)."""
    tasks = [load_task(task, client_index=i, num_clients=num_clients)
             for i in range(num_clients)]
    params = tasks[0].init_params(0)
    t0 = time.perf_counter()
    for rnd in range(1, rounds + 1):
        cfg = {"round": rnd, "local_epochs": 1}
        results = [t.train(params, cfg) for t in tasks]
        total = sum(n for _, n, _ in results)
        params = sum(p.astype(np.float64) * (n / total) for p, n, _ in results).astype(np.float32)
        tasks[0].evaluate(params)
    return (time.perf_counter() - t0) / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--task", default="digits:linear")
    args = ap.parse_args()
    torch.set_num_threads(1)
    simulated(args.task, 2, 2)  # warm up torch and imports
    started = datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"task {args.task}, E=1, {args.rounds} rounds, best of {args.repeat}; "
          f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}, {started}")
    print("ms per round   | baseline: plain | fednode | of which  |  framework overhead      |"
          " overhead")
    print("clients        | FedAvg loop     | wall    | compute   |  wall-based   CPU-based  |"
          " / client (CPU)")
    verdicts = []
    for n in args.clients:
        base = min(plain_loop(args.task, n, args.rounds) for _ in range(args.repeat))
        runs = [simulated(args.task, n, args.rounds) for _ in range(args.repeat)]
        wall = min(r.wall for r in runs)
        compute = min(r.compute_wall for r in runs)
        over_wall = min(r.overhead_wall for r in runs)
        over_cpu = min(r.overhead_cpu for r in runs)
        print(f"{n:>14} | {base * 1e3:>15.2f} | {wall * 1e3:>7.2f} | {compute * 1e3:>9.2f} | "
              f"{over_wall * 1e3:>11.2f}  {over_cpu * 1e3:>10.2f}  | {over_cpu * 1e3 / n:>8.3f}")
        print(f"{'':>14}   ratio fednode wall / plain loop: {wall / base:.2f}x; all runs "
              f"(CPU overhead ms): {', '.join(f'{r.overhead_cpu * 1e3:.2f}' for r in runs)}")
        if n == 10:
            met = "met" if over_cpu * 1e3 < TARGET_MS else "NOT met"
            verdicts.append(
                f"target < {TARGET_MS:g} ms/round at 10 clients: {met} (CPU-based "
                f"{over_cpu * 1e3:.2f} ms, wall-based {over_wall * 1e3:.2f} ms)"
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    for verdict in verdicts:
        print(verdict)
    print("overhead = simulated run minus time inside task.train/evaluate: roles, aggregation, "
          "codecs, signing/verification, CBOR, the memory transport and trio.")


if __name__ == "__main__":
    main()
