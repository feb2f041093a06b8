"""DP-FedAvg: digits test accuracy vs epsilon, beside no-DP in the same run.

A star of ``--clients`` clients (default 100) samples ``--q`` of them per round (0.1) for
``--rounds`` rounds; the same seed, partition and task run once without DP (the baseline)
and once per noise multiplier (default 0.5, 1.0, 2.0) with ``[privacy] mode = --mode``
(``central``: the coordinator clips and noises; ``distributed``: secure aggregation on,
each client clips and adds its share of the noise), clip ``--clip``. Each row prints
the final accuracy, the best accuracy, epsilon at ``--delta`` (RDP, as reported by the
run) and the accuracy gap to the no-DP baseline.

    .venv/bin/python scripts/bench/dp_accuracy.py [--rounds 100] [--clients 100] [--q 0.1]
        [--noise 0.5,1.0,2.0] [--clip 1.0] [--task digits:numpy] [--mode central] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from fednode.sim import build_topology, run_experiment


def run(args: argparse.Namespace, noise: float | None) -> dict[str, Any]:
    topo = build_topology("star", "star", args.clients + 1)
    overrides: dict[str, Any] = {
        "data.task": args.task,
        "data.partition": args.partition,
        "rounds.rounds": args.rounds,
        "rounds.fraction_fit": args.q,
        "train.local_epochs": args.local_epochs,
        "seed": args.seed,
    }
    if noise is not None:
        overrides.update(
            {
                "privacy.mode": args.mode,
                "privacy.noise_multiplier": noise,
                "privacy.clip": args.clip,
                "privacy.delta": args.delta,
            }
        )
        if args.mode == "distributed":
            overrides["secagg.enabled"] = True
    t0 = time.perf_counter()
    res = run_experiment(topo, overrides=overrides)
    rows = res.table()
    clipped = sum(int(r.get("dp_clipped", 0)) for r in rows)
    return {
        "noise_multiplier": noise,
        "rounds": len(rows),
        "final_accuracy": res.final_accuracy,
        "best_accuracy": float(max(res.accuracy)) if len(res.accuracy) else float("nan"),
        "epsilon": rows[-1].get("dp_epsilon") if rows else None,
        "clipped_fraction": clipped / max(sum(int(r["completed"]) for r in rows), 1),
        "error": res.error,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--q", type=float, default=0.1)
    p.add_argument("--noise", default="0.5,1.0,2.0")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--task", default="digits:numpy")
    p.add_argument("--partition", default="iid")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("central", "distributed"), default="central")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    base = run(args, None)
    rows = [base] + [run(args, float(z)) for z in args.noise.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{args.mode} DP, digits ({args.task}), {args.clients} clients, q = {args.q}, "
        f"{args.rounds} rounds, "
        f"clip {args.clip}, delta {args.delta:g}, {args.partition}, seed {args.seed}"
    )
    print(
        f"{'noise':>6} {'epsilon':>9} {'final acc':>10} {'best acc':>9} {'gap':>7} "
        f"{'clipped':>8} {'wall s':>7}"
    )
    for r in rows:
        z = "no DP" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:g}"
        eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        gap = r["final_accuracy"] - base["final_accuracy"]
        print(
            f"{z:>6} {eps:>9} {r['final_accuracy']:>10.4f} {r['best_accuracy']:>9.4f} "
            f"{gap:>+7.4f} {r['clipped_fraction']:>8.0%} {r['wall_s']:>7}"
        )


if __name__ == "__main__":
    main()
