"""Framework overhead per simulated round, beyond the training and evaluation compute.

Runs the star federation of ``fednode sim`` (tiny model: digits:linear, E=1) with 10 and
100 clients under each simulator driver and, in the same run, a plain sequential FedAvg
loop on the same tasks (the baseline: the same training and evaluation, nothing else).
The drivers (``--driver``, default all three, interleaved: one run of each in turn, so
load changes hit them alike):

* ``trio``: the trio engine (``fednode.sim.engine.Simulation``): the real node runner,
  every message sealed into a signed frame and verified, over the memory transport;
* ``des``: the discrete-event driver (``fednode.sim.des``), ``fednode sim``'s default:
  the same node loop, every message through ``Sealer.seal`` / ``Receiver.open``;
* ``des-unsigned``: the discrete-event driver with the unsigned pair
  (``fednode sim --unsigned``): no signature, no CBOR; payloads still encoded, decoded
  and checked.

Both DES variants run every compute job when it is issued (``lazy_compute=False``), as
the trio engine does, so all three do the same training; ``fednode sim`` itself may batch
training jobs (vectorised compute), which changes the compute, not the framework work.

For each run the round splits into

* compute: time spent inside ``task.train`` / ``task.evaluate`` (measured around each
  job, wall and thread CPU time, by :class:`~fednode.runner.InlineExecutor` in the trio
  engine and by the DES driver itself);
* framework overhead: the rest (roles, aggregation, codecs, envelope: Ed25519 + BLAKE3 +
  CBOR where the driver seals, the transport or event queue, trio). Two ways: wall time
  minus compute wall time, and process CPU time minus compute CPU time. On a quiet
  machine they agree; when other jobs share the cores the wall figure also counts time
  the process was not running, so the CPU figure is the better estimate of what the
  framework costs.

Every figure is the best of ``--repeat`` runs (noisy machines); the load average is
printed beside them. Issue #3's target: overhead < 5 ms per round at 10 clients; a
verdict line per driver says whether it is met.

    .venv/bin/python scripts/bench/round_overhead.py [--rounds 20] [--repeat 5]
        [--clients 10 100] [--task digits:linear] [--driver trio des des-unsigned]
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
from fednode.sim.des import DesSimulation
from fednode.sim.scenarios import build_star
from fednode.training.task import load_task

TARGET_MS = 5.0  # issue #3: framework overhead per round at 10 clients
DEFAULT_DRIVER = "des"  # fednode sim's default (fednode/sim/experiment.py SimOptions.driver)
DRIVERS = {
    "trio": "trio engine: real runner, signed frames, memory transport",
    "des": "discrete-event driver, signed frames (fednode sim's default)",
    "des-unsigned": "discrete-event driver, unsigned frames (fednode sim --unsigned)",
}


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


def simulated(driver: str, task: str, num_clients: int, rounds: int) -> Run:
    """One star run of ``rounds`` rounds under ``driver``, per-round figures."""
    config = load_config(
        None,
        {
            "data.task": task,
            "rounds.rounds": rounds,
            "train.local_epochs": 1,
            "rounds.min_available_clients": num_clients,
            "rounds.min_fit_clients": num_clients,
        },
    )
    sim, root = build_star(config, num_clients)
    t0, c0 = time.perf_counter(), time.process_time()
    if driver == "trio":
        result = sim.run(root)
        nodes = sim.nodes
    else:
        des = DesSimulation.from_simulation(
            sim, unsigned=driver == "des-unsigned", lazy_compute=False
        )
        result = des.run(des.nodes[root.index])
        nodes = des.nodes
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert len(result.rounds) == rounds, (driver, result.stop)
    executors = [n.executor for n in nodes if isinstance(n.executor, InlineExecutor)]
    compute_wall = sum(e.wall_compute_s for e in executors)
    compute_cpu = sum(e.cpu_compute_s for e in executors)
    return Run(wall / rounds, cpu / rounds, compute_wall / rounds, compute_cpu / rounds)


def plain_loop(task: str, num_clients: int, rounds: int) -> float:
    """Wall seconds per round of sequential FedAvg on the same tasks (no framework)."""
    tasks = [load_task(task, client_index=i, num_clients=num_clients) for i in range(num_clients)]
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
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="drivers: " + "; ".join(f"{k} = {v}" for k, v in DRIVERS.items()),
    )
    ap.add_argument("--rounds", type=int, default=20, help="rounds per run (default 20)")
    ap.add_argument(
        "--repeat", type=int, default=5, help="runs per driver, best one reported (default 5)"
    )
    ap.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[10, 100],
        help="client counts (default 10 100; the target is for 10)",
    )
    ap.add_argument("--task", default="digits:linear")
    ap.add_argument(
        "--driver",
        nargs="+",
        choices=list(DRIVERS),
        default=list(DRIVERS),
        help="drivers to measure, interleaved (default: all three)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    for driver in args.driver:
        simulated(driver, args.task, 2, 2)  # warm up torch, imports and caches
    started = datetime.now().strftime("%Y-%m-%d %H:%M")
    print(
        f"task {args.task}, E=1, {args.rounds} rounds, best of {args.repeat}; "
        f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}, {started}"
    )
    for driver in args.driver:
        print(f"  {driver:<10} = {DRIVERS[driver]}")
    print(
        "ms per round          | baseline: plain | fednode | of which  |  framework overhead     "
        " | overhead"
    )
    print(
        "clients  driver       | FedAvg loop     | wall    | compute   |  wall-based   CPU-based "
        " | / client (CPU)"
    )
    verdicts = []
    for n in args.clients:
        base = min(plain_loop(args.task, n, args.rounds) for _ in range(args.repeat))
        runs: dict[str, list[Run]] = {d: [] for d in args.driver}
        for _ in range(args.repeat):
            for driver in args.driver:
                runs[driver].append(simulated(driver, args.task, n, args.rounds))
        for driver, rs in runs.items():
            wall = min(r.wall for r in rs)
            compute = min(r.compute_wall for r in rs)
            over_wall = min(r.overhead_wall for r in rs)
            over_cpu = min(r.overhead_cpu for r in rs)
            print(
                f"{n:>7}  {driver:<12} | {base * 1e3:>15.2f} | {wall * 1e3:>7.2f} | "
                f"{compute * 1e3:>9.2f} | {over_wall * 1e3:>11.2f}  {over_cpu * 1e3:>10.2f} "
                f" | {over_cpu * 1e3 / n:>8.3f}"
            )
            print(
                f"{'':>7}  {'':<12}   wall / plain loop {wall / base:.2f}x; CPU overhead of "
                f"each run (ms): {', '.join(f'{r.overhead_cpu * 1e3:.2f}' for r in rs)}"
            )
            if n == 10:
                met = "met" if over_cpu * 1e3 < TARGET_MS else "NOT met"
                default = ", `fednode sim`'s default driver" if driver == DEFAULT_DRIVER else ""
                verdicts.append(
                    f"{driver:<10} target < {TARGET_MS:g} ms/round at 10 clients: {met} "
                    f"(CPU-based {over_cpu * 1e3:.2f} ms, wall-based {over_wall * 1e3:.2f} ms"
                    f"{default})"
                )
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    for verdict in verdicts:
        print(verdict)
    print(
        "overhead = simulated run minus time inside task.train/evaluate: roles, aggregation, "
        "codecs, signing/verification and CBOR (trio, des), the transport or event "
        "queue, trio (trio engine only)."
    )


if __name__ == "__main__":
    main()
