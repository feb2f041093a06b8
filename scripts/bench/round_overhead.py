"""Framework overhead per simulated round, beyond the training and evaluation compute.

Runs `fednode sim`'s star federation (tiny model: digits:linear, E=1) with 10 and 100
clients and, in the same run, a plain sequential FedAvg loop on the same tasks (the
baseline). Framework overhead = wall time of the simulated run minus the compute time
spent inside task.train/evaluate, per round. Best of several runs (noisy machines).

    .venv/bin/python scripts/bench/round_overhead.py [--rounds 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fednode.config import load_config
from fednode.sim.scenarios import build_star
from fednode.training.task import load_task


def simulated(num_clients: int, rounds: int) -> tuple[float, float]:
    """(overhead per round, wall per round) in seconds."""
    config = load_config(None, {
        "data.task": "digits:linear", "rounds.rounds": rounds, "train.local_epochs": 1,
        "rounds.min_available_clients": num_clients, "rounds.min_fit_clients": num_clients,
    })
    sim, root = build_star(config, num_clients)
    t0 = time.perf_counter()
    result = sim.run(root)
    wall = time.perf_counter() - t0
    assert len(result.rounds) == rounds, result.stop
    compute = sum(node.executor.wall_compute_s for node in sim.nodes)  # type: ignore[attr-defined]
    return (wall - compute) / rounds, wall / rounds


def plain_loop(num_clients: int, rounds: int) -> float:
    tasks = [load_task("digits:linear", client_index=i, num_clients=num_clients)
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
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    simulated(2, 2)  # warm up torch and imports
    print(f"{'clients':>8} {'plain loop ms/round':>20} {'fednode ms/round':>17} "
          f"{'overhead ms/round':>18} {'overhead/client ms':>19}")
    for n in (10, 100):
        base = min(plain_loop(n, args.rounds) for _ in range(args.repeat))
        runs = [simulated(n, args.rounds) for _ in range(args.repeat)]
        overhead = min(r[0] for r in runs)
        wall = min(r[1] for r in runs)
        print(f"{n:>8} {base * 1e3:>20.2f} {wall * 1e3:>17.2f} {overhead * 1e3:>18.2f} "
              f"{overhead * 1e3 / n:>19.3f}")
    print("overhead = simulated wall time minus time inside task.train/evaluate; "
          "includes signing, verification, CBOR, codecs, the memory transport and trio.")


if __name__ == "__main__":
    main()
