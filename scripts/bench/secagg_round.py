"""Secure aggregation in the star round (``[secagg] enabled``) beside the plain round,
in one run: ``fednode sim`` stars of ``--clients`` clients on digits, both simulator
drivers' node loop with real signing, the same seeds.

Printed per mode: accuracy after the last round, bytes up and down per round (the
coordinator's round records: payloads of every Fit / Update / SecAgg frame), frames
sent per round (all nodes), wall seconds per round (compute of every node in this one
process: training, masking, key agreement, Shamir, signatures), and the ratio secure /
plain. Times are wall seconds on this machine.

    .venv/bin/python scripts/bench/secagg_round.py [--clients 20] [--rounds 5]
        [--task digits] [--driver des]
"""

from __future__ import annotations

import argparse
import time

from fednode.sim import SimOptions, build_topology, run_experiment


def run(secure: bool, args: argparse.Namespace) -> dict[str, float]:
    topo = build_topology("star", "star", args.clients + 1, links={"latency_s": 0.005})
    over = {
        "data.task": args.task,
        "rounds.rounds": args.rounds,
        "train.local_epochs": 1,
        "rounds.min_available_clients": args.clients,
        "secagg.enabled": secure,
    }
    t0 = time.perf_counter()
    res = run_experiment(topo, overrides=over, options=SimOptions(driver=args.driver))
    wall = time.perf_counter() - t0
    if res.error:
        raise SystemExit(f"run failed: {res.error}")
    recs = res.records
    n = len(recs)
    return {
        "accuracy": float(recs[-1]["accuracy"]),
        "bytes_up": sum(r["bytes_up"] for r in recs) / n,
        "bytes_down": sum(r["bytes_down"] for r in recs) / n,
        "frames": res.messages / n,
        "seconds": wall / n,
        "completed": min(r["completed"] for r in recs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--task", default="digits")
    p.add_argument("--driver", choices=("des", "trio"), default="des")
    args = p.parse_args()
    plain, secure = run(False, args), run(True, args)
    print(f"star of {args.clients} clients, {args.task}, {args.rounds} rounds, {args.driver}")
    print(f"{'':14}{'plain':>14}{'secagg':>14}{'ratio':>9}")
    for key in ("accuracy", "bytes_up", "bytes_down", "frames", "seconds"):
        a, b = plain[key], secure[key]
        print(f"{key:14}{a:>14,.4f}{b:>14,.4f}{b / a:>9.2f}x")
    print(f"completed per round: plain {plain['completed']}, secagg {secure['completed']}")


if __name__ == "__main__":
    main()
