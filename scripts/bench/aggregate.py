"""Aggregation rules: seconds and peak extra memory, fednode beside Flower, in one run.

For each shape (default 20 x 5M and 100 x 1M float32 updates, ~400 MB of updates each)
the same seeded updates (``f`` of them scaled x100, so Krum has something to discard) go
through every fednode rule (``make_aggregator(spec)``: ``start`` + ``add`` of each update
+ ``finish``, i.e. the copy into the rule's block and the input checks included) and
through Flower's counterparts in ``flwr.server.strategy.aggregate`` (``aggregate``,
``aggregate_median``, ``aggregate_trimmed_avg``, ``aggregate_krum``, ``aggregate_bulyan``),
called as Flower's strategies call them: a list of ``([layer], num_examples)``.

Time: wall seconds, best of ``--repeat``. Memory: in one more call, under tracemalloc
(not timed: it slows allocation), the peak minus what was allocated before it (numpy
reports its buffers to tracemalloc), i.e. the extra memory beyond the updates
themselves; printed also as a multiple of one ``(n, d)`` float32 block. Each row prints
Flower's time / fednode's time (> 1: fednode faster) and, where both exist, the largest
difference between the two results.

Flower runs in a subprocess (``--flower-python``: by default this interpreter when it has
flwr, the ``bench`` extra, else /work/venv-flwr/bin/python),
inside a loopback-only network namespace (``unshare -n``, root) with
``FLWR_TELEMETRY_ENABLED=0``; without that interpreter or without ``unshare`` the Flower
columns say so and fednode's figures still print.

    .venv/bin/python scripts/bench/aggregate.py [--shapes 20x5000000,100x1000000]
        [--repeat 2] [--flower-python PYTHON]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

#: fednode rule -> the Flower call that computes the same thing (None: Flower has none)
FLOWER = {
    "fedavg": "aggregate",
    "median": "aggregate_median",
    "trimmed:0.2": "aggregate_trimmed_avg:0.2",
    "krum:{f}": "aggregate_krum:{f}:0",
    "multikrum:{f}:{m}": "aggregate_krum:{f}:{m}",
    "bulyan:{f}": "aggregate_bulyan:{f}",
    "geomed": None,
    "centered_clip:1.0:3": None,
    "nnm+krum:{f}": None,
    "norm_bound:1.0+median": None,
}


#: Flower's Bulyan is run only up to this many updates (its cost is O(n^3 d))
BULYAN_MAX_N = 40


def updates(n: int, d: int, f: int, seed: int = 0) -> list[np.ndarray]:
    """n float32 rows: a shared direction plus noise; the first ``f`` scaled x100."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(d, dtype=np.float32)
    rows = []
    for i in range(n):
        row = base + rng.standard_normal(d, dtype=np.float32)
        if i < f:
            row *= np.float32(100.0)
        rows.append(row)
    return rows


def measure(call: Callable[[], Any], repeat: int) -> tuple[float, int, Any]:
    """(best wall seconds of ``repeat`` plain runs, peak extra bytes of one more run under
    tracemalloc — which slows allocation, so it is not timed —, result of the last call)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        out = None
        gc.collect()
        t0 = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - t0)
    out = None
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    out = call()
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, top - base, out


# --- Flower worker (runs in the Flower interpreter: numpy + flwr only) -------------------
def flower_worker(n: int, d: int, f: int, m: int, repeat: int) -> None:
    from flwr.server.strategy import aggregate as fl

    rows = updates(n, d, f)
    results = [([row], 1) for row in rows]
    for rule, call in FLOWER.items():
        if call is None:
            continue
        name, *args = call.format(f=f, m=m).split(":")
        fn = getattr(fl, name, None)
        if fn is None:
            print(json.dumps({"rule": rule.format(f=f, m=m), "error": f"no {name}"}), flush=True)
            continue
        if name == "aggregate_trimmed_avg":
            run = lambda fn=fn, a=args: fn(results, float(a[0]))  # noqa: E731
        elif name == "aggregate_krum":
            run = lambda fn=fn, a=args: fn(results, int(a[0]), int(a[1]))  # noqa: E731
        elif name == "aggregate_bulyan":
            if n > BULYAN_MAX_N:
                msg = "skipped: Flower recomputes all n^2 distances for each of n - 2f picks"
                print(json.dumps({"rule": rule.format(f=f, m=m), "error": msg}), flush=True)
                continue
            run = lambda fn=fn, a=args: fn(  # noqa: E731
                results, int(a[0]), fl.aggregate_krum, to_keep=0
            )
        else:
            run = lambda fn=fn: fn(results)  # noqa: E731
        try:
            seconds, peak, out = measure(run, repeat)
        except Exception as exc:  # report and go on: one rule's failure is a result
            print(json.dumps({"rule": rule.format(f=f, m=m), "error": repr(exc)}), flush=True)
            continue
        vec = np.asarray(out[0], dtype=np.float32)
        np.save(f"/tmp/fednode-bench-flower-{rule.format(f=f, m=m).replace(':', '_')}.npy", vec)
        print(json.dumps({"rule": rule.format(f=f, m=m), "s": seconds, "peak": peak}), flush=True)


def run_flower(python: str, n: int, d: int, f: int, m: int, repeat: int) -> dict[str, Any]:
    if not os.path.exists(python):
        return {"_error": f"no Flower interpreter at {python}"}
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return {"_error": "Flower runs only in a loopback-only netns: needs root and unshare"}
    cmd = [
        "unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "_",
        python, os.path.abspath(__file__), "--flower-worker",
        f"{n}x{d}", str(f), str(m), str(repeat),
    ]  # fmt: skip
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": ""}  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    out: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            out[row.pop("rule")] = row
    if proc.returncode != 0:
        out["_error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return out


# --- fednode ------------------------------------------------------------------------------
def run_fednode(rows: list[np.ndarray], spec: str, repeat: int) -> tuple[float, int, np.ndarray]:
    from fednode.training.buffered import make_aggregator

    def call() -> np.ndarray:
        agg = make_aggregator(spec)
        agg.start(rows[0].shape[0], capacity=len(rows))
        for i, row in enumerate(rows):
            agg.add(row, 1.0, str(i))
        return agg.finish()[0]

    return measure(call, repeat)


def default_flower_python() -> str:
    """This interpreter when it has flwr (``pip install -e '.[bench]'``), else the old venv."""
    import importlib.util

    if importlib.util.find_spec("flwr") is not None:
        return sys.executable
    return "/work/venv-flwr/bin/python"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--flower-worker":
        shape, f, m, repeat = sys.argv[2:6]
        n, d = (int(v) for v in shape.split("x"))
        flower_worker(n, d, int(f), int(m), int(repeat))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", default="20x5000000,100x1000000")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--flower-python", default=default_flower_python())
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"numpy {np.__version__}; load {os.getloadavg()[0]:.2f}")  # fmt: skip
    for shape in args.shapes.split(","):
        n, d = (int(v) for v in shape.split("x"))
        f = n // 5  # 20% scaled updates
        f = min(f, (n - 3) // 4)  # Bulyan needs n >= 4f + 3
        m = n - f
        block = n * d * 4
        print(f"\n== {n} x {d:,} float32 (one block {block / 1e6:.0f} MB), f = {f}, m = {m}")
        flower = run_flower(args.flower_python, n, d, f, m, args.repeat)
        if "_error" in flower:
            print(f"   Flower: {flower['_error']}")
        rows = updates(n, d, f)
        print(f"   {'rule':<24}{'fednode s':>10}{'extra MB':>10}{'x block':>8}"
              f"{'Flower s':>10}{'extra MB':>10}{'ratio':>8}{'max |diff|':>12}")  # fmt: skip
        for template in FLOWER:
            spec = template.format(f=f, m=m)
            seconds, peak, out = run_fednode(rows, spec, args.repeat)
            line = f"   {spec:<24}{seconds:>10.3f}{peak / 1e6:>10.0f}{peak / block:>8.2f}"
            theirs = flower.get(spec)
            if theirs and "s" in theirs:
                path = f"/tmp/fednode-bench-flower-{spec.replace(':', '_')}.npy"
                diff = float(np.max(np.abs(np.load(path) - out))) if os.path.exists(path) else -1
                line += (
                    f"{theirs['s']:>10.3f}{theirs['peak'] / 1e6:>10.0f}"
                    f"{theirs['s'] / seconds:>8.1f}{diff:>12.2e}"
                )
            elif theirs:
                line += f"   Flower: {theirs.get('error')}"
            else:
                line += f"{'-':>10}{'-':>10}{'-':>8}"
            print(line, flush=True)
            del out
            gc.collect()
        del rows
        gc.collect()


if __name__ == "__main__":
    main()
