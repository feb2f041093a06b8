"""Personalisation: each mode's personalised accuracy beside the global model's, one run.

For every (topology, partition, seed) the same federation runs once per ``[personal]``
mode (none, fedper, fedbn, ditto, finetune) with the same task, seed and held-out splits
(``personal.holdout``: each member keeps that share of its local data aside, drawn from
the seed). The baseline is mode ``none``: there a member scores the *global* model it
received on its own held-out split — the global model's accuracy on the same splits.
Every other mode scores the member's own model on the same split. Reported: the mean over
members of the last round (mean over seeds, and the spread over seeds), the minimum over
members, the gain over ``none`` in points, and the global model's accuracy on the shared
test split (the ordinary ``accuracy`` column of each run).

Topologies: ``star`` (a coordinator and ``--clients`` clients, all selected every round)
and ``gossip`` (``--clients`` peers on a random 4-regular graph, synchronous gossip).
Partitions: ``dirichlet:0.1`` (label skew) and ``rotated:4`` (feature shift: four groups
of members see the digits turned by 0, 90, 180 and 270 degrees).

    .venv/bin/python scripts/bench/personal.py [--clients 20] [--seeds 0,1,2] [--rounds 10]
        [--modes none,fedper,fedbn,ditto,finetune] [--partitions dirichlet:0.1,rotated:4]
        [--topologies star,gossip] [--task digits:mlpbn:64] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from typing import Any

from fednode.sim import build_topology, run_experiment

MODES = ("none", "fedper", "fedbn", "ditto", "finetune")


def run(args: argparse.Namespace, topology: str, partition: str, mode: str, seed: int) -> dict:
    if topology == "star":
        topo = build_topology("star", "star", args.clients + 1, name="star")
    else:
        topo = build_topology("gossip", "random_regular_graph", args.clients, name="gossip", d=4)
    overrides: dict[str, Any] = {
        "data.task": args.task,
        "data.partition": partition,
        "rounds.rounds": args.rounds,
        "train.local_epochs": args.local_epochs,
        "seed": seed,
        "personal.mode": mode,
        "personal.holdout": args.holdout,
        "personal.finetune_steps": args.finetune_steps,
        "personal.ditto_lambda": args.ditto_lambda,
    }
    t0 = time.perf_counter()
    res = run_experiment(topo, overrides=overrides)
    last = res.personal[max(res.personal)] if res.personal else {}
    return {
        "topology": topology,
        "partition": partition,
        "mode": mode,
        "seed": seed,
        "error": res.error,
        "personal": last.get("personal_accuracy", math.nan),
        "personal_min": last.get("personal_accuracy_min", math.nan),
        "members": int(last.get("personal_members", 0)),
        "global_test": res.final_accuracy,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["topology"], r["partition"]) for r in rows}, key=str)
    for topology, partition in keys:
        group = [r for r in rows if (r["topology"], r["partition"]) == (topology, partition)]
        base = {r["seed"]: r["personal"] for r in group if r["mode"] == "none"}
        for mode in MODES:
            runs = [r for r in group if r["mode"] == mode]
            if not runs:
                continue
            acc = [r["personal"] for r in runs]
            gains = [r["personal"] - base[r["seed"]] for r in runs if r["seed"] in base]
            out.append(
                {
                    "topology": topology,
                    "partition": partition,
                    "mode": mode,
                    "seeds": len(runs),
                    "personal": statistics.fmean(acc),
                    "personal_sd": statistics.pstdev(acc),
                    "personal_min": statistics.fmean(r["personal_min"] for r in runs),
                    "gain_points": 100 * statistics.fmean(gains) if gains else math.nan,
                    "global_test": statistics.fmean(r["global_test"] for r in runs),
                }
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--partitions", default="dirichlet:0.1,rotated:4")
    p.add_argument("--topologies", default="star,gossip")
    p.add_argument("--task", default="digits:mlpbn:64")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--finetune-steps", type=int, default=10)
    p.add_argument("--ditto-lambda", type=float, default=0.1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    t0 = time.time()
    rows = []
    for topology in args.topologies.split(","):
        for partition in args.partitions.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                for mode in args.modes.split(","):
                    rows.append(run(args, topology, partition, mode, seed))
                    if not args.json:
                        r = rows[-1]
                        print(
                            f"  {topology} {partition} seed {seed} {mode:<8} personal "
                            f"{r['personal']:.4f} (min {r['personal_min']:.4f}) global test "
                            f"{r['global_test']:.4f}  {r['wall_s']}s"
                            + (f"  ERROR {r['error']}" if r["error"] else ""),
                            flush=True,
                        )
    table = summarise(rows)
    if args.json:
        print(json.dumps({"runs": rows, "table": table}, indent=2))
        return
    print(
        f"\ndigits ({args.task}), {args.clients} members, {args.rounds} rounds x "
        f"{args.local_epochs} local epochs, holdout {args.holdout}, seeds {args.seeds}; "
        f"{platform.node()} ({platform.processor() or platform.machine()}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}, {time.time() - t0:.0f}s"
    )
    print(
        "| topology | partition | mode | personalised acc (mean over members) | sd over "
        "seeds | min over members | vs global on the same splits (points) | global acc, "
        "shared test |\n|---|---|---|---|---|---|---|---|"
    )
    for t in table:
        print(
            f"| {t['topology']} | {t['partition']} | {t['mode']} | {t['personal']:.4f} | "
            f"{t['personal_sd']:.4f} | {t['personal_min']:.4f} | {t['gain_points']:+.1f} | "
            f"{t['global_test']:.4f} |"
        )


if __name__ == "__main__":
    main()
