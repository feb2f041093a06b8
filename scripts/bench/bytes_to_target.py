"""Bytes on all links until the model first reaches 95% test accuracy: dense float32 both
ways against compressed updates up (with error feedback) and delta broadcasts down.

Run: .venv/bin/python scripts/bench/bytes_to_target.py [--quick] [--seeds 0-4]
        [--topologies star,two-tier] [--tasks digits,digits:mlp:13400] [--partition iid]
        [--settings NAME=UP/DOWN,...]

Every setting runs in the same process on the same seeds (``fednode sim``'s DES driver,
signed frames): star = 1 coordinator + 10 clients, two-tier = 1 + 2 aggregators + 10
clients; 30 rounds, E = 5, IID by default. For each it prints the mean (and min-max over
seeds) of the frame bytes every node sent until the coordinator's model first reached
95% (``rounds.measure_accuracy``), the rounds to 95%, the accuracy after the last round,
the ratio of dense's bytes-to-95% to the setting's, and the codec CPU per round over all
nodes (10 client encodes + 10 decodes up, one encode + 11 decodes down, timed on the
model's size). It also prints the measured frame overhead per message (signed header and
framing): (all frame bytes - payload bytes) / messages, from the dense star run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from fednode.sim import build_topology, run_experiment
from fednode.wire.codecs import parse_codec

CLIENTS = 10
DEFAULT_SETTINGS = {
    "dense": ("none", "none"),
    "topk1%+int8 / fp16": ("topk:0.01+int8", "fp16"),
    "topk1%+int8 / topk10%+int8": ("topk:0.01+int8", "topk:0.1+int8"),
}


def topology(name: str) -> Any:
    if name == "star":
        return build_topology("star", "star", 1 + CLIENTS, links={"latency_s": 0.002})
    return build_topology(
        "two-tier", "two_tier", 3 + CLIENTS, regions=2, links={"latency_s": 0.002}
    )


def run(topo: str, task: str, partition: str, up: str, down: str, seed: int, rounds: int) -> Any:
    overrides = {
        "seed": seed,
        "data.task": task,
        "data.partition": partition,
        "rounds.rounds": rounds,
        "rounds.min_available_clients": CLIENTS,
        "rounds.min_fit_clients": 2,
        "wire.codec": up,
        "wire.codec_down": down,
    }
    return run_experiment(topology(topo), overrides=overrides)


def codec_cpu_s(up: str, down: str, n: int, repeat: int = 3) -> float:
    """Codec seconds per round over all nodes, on a delta of ``n`` values."""
    rng = np.random.default_rng(0)
    x = (rng.standard_t(df=4, size=n) * 1e-3).astype(np.float32)

    def timed(spec: str) -> tuple[float, float]:
        codec = parse_codec(spec)
        enc = dec = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            payload = codec.encode(x)
            t1 = time.perf_counter()
            codec.decode(payload, n)
            t2 = time.perf_counter()
            enc, dec = min(enc, t1 - t0), min(dec, t2 - t1)
        return enc, dec

    enc_up, dec_up = timed(up)
    enc_dn, dec_dn = timed(down)
    return CLIENTS * (enc_up + dec_up) + enc_dn + (CLIENTS + 1) * dec_dn


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{format(mean, fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def parse_settings(text: str | None) -> dict[str, tuple[str, str]]:
    if not text:
        return DEFAULT_SETTINGS
    out = {"dense": ("none", "none")}
    for item in text.split(","):
        name, _, pair = item.partition("=")
        up, _, down = pair.partition("/")
        out[name] = (up or "none", down or "none")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seed 0 only, star, digits")
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2")
    parser.add_argument("--topologies", default="star,two-tier")
    parser.add_argument("--tasks", default="digits,digits:mlp:13400")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--settings", help="NAME=UP/DOWN,... (dense is always run)")
    args = parser.parse_args()
    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi) + 1)) if hi else [int(s) for s in args.seeds.split(",")]
    topologies, tasks = args.topologies.split(","), args.tasks.split(",")
    if args.quick:
        seeds, topologies, tasks = [0], ["star"], ["digits"]
    settings = parse_settings(args.settings)
    print(f"partition {args.partition}, seeds {seeds}, {args.rounds} rounds, {CLIENTS} clients")
    header = (
        f"{'task':<18} {'topology':<9} {'setting':<28} {'MB to 95%':>22} "
        f"{'rounds to 95%':>16} {'final acc':>22} {'x fewer':>8} {'codec ms/rnd':>12}"
    )
    print(header)
    overhead_done = False
    for task in tasks:
        for topo in topologies:
            dense_bytes: float | None = None
            dense_rounds: float | None = None
            for name, (up, down) in settings.items():
                results = [run(topo, task, args.partition, up, down, s, args.rounds) for s in seeds]
                hits = [r.to_target() for r in results]
                nbytes = [float(b) for _r, b in hits if b is not None]
                rounds = [float(r) for r, _b in hits if r is not None]
                finals = [r.final_accuracy for r in results]
                reached = f"{len(nbytes)}/{len(seeds)}"
                mean_bytes = statistics.fmean(nbytes) if len(nbytes) == len(seeds) else None
                if name == "dense":
                    dense_bytes, dense_rounds = (
                        mean_bytes,
                        (statistics.fmean(rounds) if rounds else None),
                    )
                ratio = f"{dense_bytes / mean_bytes:.1f}" if dense_bytes and mean_bytes else "-"
                n = model_size(task)
                cpu = codec_cpu_s(up, down, n) * 1e3
                print(
                    f"{task:<18} {topo:<9} {name:<28} "
                    f"{spread([b / 1e6 for b in nbytes], '.3f'):>22} "
                    f"{spread(rounds, '.1f'):>16} {spread(finals, '.4f'):>22} "
                    f"{ratio:>8} {cpu:>12.2f}  reached {reached}"
                    + (
                        f", rounds x{statistics.fmean(rounds) / dense_rounds:.2f}"
                        if dense_rounds and rounds and name != "dense"
                        else ""
                    )
                )
                if name == "dense" and topo == "star" and not overhead_done:
                    overhead_done = True
                    res = results[0]
                    payload = sum(r["bytes_up"] + r["bytes_down"] for r in res.records)
                    print(
                        f"  frame overhead: {(res.bytes.sum() - payload) / res.messages:.0f} "
                        f"bytes/message ({res.messages} messages, {res.bytes.sum():,} frame "
                        f"bytes, {payload:,} payload bytes; model {n:,} values)"
                    )


def model_size(task: str) -> int:
    from fednode.training.task import load_task

    return int(load_task(task).layout().size)


if __name__ == "__main__":
    main()
