"""fednode beside Flower 1.40, in the same run, interleaved, best of N: a table of ratios.

Cases (``--case``, default ``all``):

* ``sim`` — time to accuracy on the built-in digits task, 10 clients, IID and
  Dirichlet(0.5), full participation, FedAvg, E=5. fednode: ``fednode sim`` (the DES
  driver, signed frames: its defaults), via ``_fednode_sim.py``; Flower:
  ``flwr.simulation.run_simulation`` (Ray backend, one CPU per client) via
  ``_flower_sim.py``, whose ``NumPyClient`` wraps fednode's own ``DigitsTask`` — the same
  data, split, partition, model, optimiser, E and shuffling seeds — so only the framework
  differs (both reach the same accuracy in the same round). Measured per run: whole-process
  wall from the command's start to the first round whose global test accuracy is >= the
  target (0.95), rounds to it, total wall of all ``--rounds`` rounds, bytes per round
  (fednode: frame bytes on all links, its own counter; Flower: the serialised
  ``Parameters`` its strategy sent and received), peak RSS of the whole process tree
  (summed over every process, sampled every 20 ms with psutil; Flower + Ray is ~13
  processes; a sum of RSS counts shared pages once per process, alike on both sides).
* ``scale`` — 100 and 1,000 clients, fraction 0.1, 10 rounds (same task): total wall and
  peak tree RSS.
* ``aggregate`` — FedAvg, median, trimmed mean and Krum on 20 x 5M and 100 x 1M float32:
  fednode's streaming rules (``scripts/bench/aggregate.py``'s ``run_fednode``: add every
  update, finish) against ``flwr.server.strategy.aggregate`` (``aggregate.py``'s
  ``flower_worker``) and a read-only floor (one float32 sum over every update, the least
  any rule must do): seconds (best of N), GB/s of update bytes, peak extra memory
  (tracemalloc) as a multiple of one model.

Every process of either side runs in a loopback-only network namespace (``unshare -n``,
loopback up, ``FLWR_TELEMETRY_ENABLED=0``, ``RAY_USAGE_STATS_ENABLED=0``); this parent
never imports flwr or ray. Without root or ``unshare`` (or without flwr) the case says so
and stops. Each figure carries the load average when it was taken; the machine is read
from ``lscpu``. ``--json PATH`` writes every run and the summary.

    .venv/bin/python scripts/bench/vs_flower.py [--case sim|scale|aggregate|all]
        [--repeats 3] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PY = sys.executable
TARGET = 0.95


# --- running one side ----------------------------------------------------------------------
def netns_problem() -> str | None:
    """Why the loopback-only namespace cannot be made here (None: it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root for a loopback-only network namespace (unshare -n)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    if importlib.util.find_spec("flwr") is None:
        return "flwr is not installed (pip install -e '.[bench]')"
    return None


def in_netns(cmd: list[str]) -> list[str]:
    """``cmd`` inside a new network namespace that has only loopback, telemetry off."""
    return [
        "unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "_",
        "env", "FLWR_TELEMETRY_ENABLED=0", "RAY_USAGE_STATS_ENABLED=0",
        f"PYTHONPATH={ROOT}", *cmd,
    ]  # fmt: skip


def tree_rss(proc: Any) -> tuple[int, int]:
    """(summed RSS bytes, process count) of ``proc`` and all its descendants."""
    import psutil

    total, count = 0, 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            total += p.memory_info().rss
            count += 1
        except psutil.Error:
            continue
    return total, count


def run_tree(cmd: list[str], timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``cmd``; wall from just before the start, peak summed RSS of its process tree."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        load = os.getloadavg()[0]
        t0 = time.time()
        popen = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        proc = psutil.Process(popen.pid)
        peak, procs = 0, 0
        deadline = t0 + timeout
        while popen.poll() is None and time.time() < deadline:
            rss, count = tree_rss(proc)
            peak, procs = max(peak, rss), max(procs, count)
            time.sleep(0.02)
        if popen.poll() is None:
            popen.kill()
        popen.wait()
        wall = time.time() - t0
        out.seek(0)
        err.seek(0)
        return {
            "t0": t0, "wall": wall, "peak_rss": peak, "procs": procs, "rc": popen.returncode,
            "stdout": out.read(), "stderr": err.read(), "load": load,
        }  # fmt: skip


def stamps(text: str) -> list[dict[str, Any]]:
    """The ``{"round": r, "accuracy": a, "t": ...}`` lines of a side's output."""
    rows = []
    for line in text.splitlines():
        if line.startswith('{"round"'):
            rows.append(json.loads(line))
    return rows


def to_target(rows: list[dict[str, Any]], t0: float) -> tuple[int | None, float | None]:
    for row in rows:
        if row["round"] >= 1 and row["accuracy"] >= TARGET:
            return int(row["round"]), row["t"] - t0
    return None, None


def fednode_sim(clients: int, partition: str, rounds: int, fraction: float) -> dict[str, Any]:
    fit = max(1, round(clients * fraction))
    cmd = [
        PY, str(HERE / "_fednode_sim.py"), "sim", "--task", "digits", "--nodes", str(clients),
        "--partition", partition, "--rounds", str(rounds), "--local-epochs", "5",
        "--fraction-fit", str(fraction), "--min-fit-clients", str(fit),
        "--min-available-clients", str(clients), "--json",
    ]  # fmt: skip
    res = run_tree(in_netns(cmd))
    rows = stamps(res["stderr"])
    res["curve"] = [(r["t"] - res["t0"], r["accuracy"]) for r in rows]
    res["rounds_to"], res["wall_to"] = to_target(rows, res["t0"])
    try:
        summary = json.loads(res["stdout"].strip().splitlines()[-1])
        res["bytes_per_round"] = summary["total_bytes"] / max(summary["rounds"], 1)
        res["rounds_run"] = summary["rounds"]
    except (ValueError, IndexError, KeyError):
        res["error"] = (res["stderr"].strip().splitlines() or ["no output"])[-1]
    return res


def flower_sim(clients: int, partition: str, rounds: int, fraction: float) -> dict[str, Any]:
    cmd = [
        PY, str(HERE / "_flower_sim.py"), "--clients", str(clients), "--partition", partition,
        "--rounds", str(rounds), "--fraction", str(fraction), "--epochs", "5",
    ]  # fmt: skip
    res = run_tree(in_netns(cmd))
    rows = stamps(res["stdout"])
    res["curve"] = [(r["t"] - res["t0"], r["accuracy"]) for r in rows if r["round"] >= 1]
    res["rounds_to"], res["wall_to"] = to_target(rows, res["t0"])
    done = [json.loads(x) for x in res["stdout"].splitlines() if x.startswith('{"done"')]
    if done:
        per = done[-1]["bytes"]
        res["bytes_per_round"] = sum(per) / max(len(per), 1)
        res["rounds_run"] = len(per)
    else:
        res["error"] = (res["stderr"].strip().splitlines() or ["no output"])[-1]
    return res


def slim(res: dict[str, Any]) -> dict[str, Any]:
    """A run without its captured output (for the JSON file)."""
    return {k: v for k, v in res.items() if k not in ("stdout", "stderr")}


# --- cases ---------------------------------------------------------------------------------
def interleaved(repeats: int, *sides: Any) -> list[list[dict[str, Any]]]:
    """Run every side ``repeats`` times, alternating which goes first."""
    runs: list[list[dict[str, Any]]] = [[] for _ in sides]
    for rep in range(repeats):
        order = list(range(len(sides)))
        if rep % 2:
            order.reverse()
        for i in order:
            res = sides[i]()
            if res.get("rc"):
                err = (res.get("stderr") or "").strip().splitlines()
                res["error"] = res.get("error") or (err[-1] if err else f"exit {res['rc']}")
            runs[i].append(res)
            error = f"  ERROR {res['error']}" if res.get("error") else ""
            print(f"   . {('fednode', 'Flower')[i]:<8} run {rep + 1}: wall {res['wall']:.2f}s"
                  f" to-target {fmt_s(res.get('wall_to'))} peak {res['peak_rss'] / 1e6:.0f} MB"
                  f" ({res['procs']} procs) load {res['load']:.2f}{error}", flush=True)  # fmt: skip
    return runs


def best(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None and not r.get("error")]
    return min(vals) if vals else None


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def row(measure: str, ours: Any, theirs: Any, target: float | None, unit: str) -> dict[str, Any]:
    """One table row: ratio = fednode / Flower (< 1: fednode faster or lighter)."""
    r = ratio(ours, theirs) if isinstance(ours, float | int) else None
    met = None if target is None or r is None else r <= target
    return {"measure": measure, "fednode": ours, "flower": theirs, "ratio": r,
            "target": target, "met": met, "unit": unit}  # fmt: skip


def case_sim(args: argparse.Namespace) -> list[dict[str, Any]]:
    rounds = 4 if args.quick else args.rounds
    tables = []
    for partition in ("iid",) if args.quick else ("iid", "dirichlet:0.5"):
        print(f"\n== sim: digits, 10 clients, {partition}, E=5, {rounds} rounds", flush=True)
        ours, theirs = interleaved(
            args.repeats,
            lambda p=partition: fednode_sim(10, p, rounds, 1.0),
            lambda p=partition: flower_sim(10, p, rounds, 1.0),
        )
        ok = [r for r in ours if not r.get("error")]
        fl_ok = [r for r in theirs if not r.get("error")]
        r_ours = ok[0]["rounds_to"] if ok else None
        r_theirs = fl_ok[0]["rounds_to"] if fl_ok else None
        target = 0.25 if partition == "iid" else None
        rows = [
            row(f"wall to {TARGET:.0%} (s)", best(ours, "wall_to"), best(theirs, "wall_to"),
                target, "s"),
            row(f"rounds to {TARGET:.0%}", r_ours, r_theirs, None, "rounds"),
            row(f"total wall, {rounds} rounds (s)", best(ours, "wall"), best(theirs, "wall"),
                None, "s"),
            row("bytes per round", best(ours, "bytes_per_round"),
                best(theirs, "bytes_per_round"), None, "B"),
            row("peak tree RSS (MB)", mb(best(ours, "peak_rss")), mb(best(theirs, "peak_rss")),
                target, "MB"),
            row("processes", max((r["procs"] for r in ours), default=None),
                max((r["procs"] for r in theirs), default=None), None, ""),
        ]  # fmt: skip
        tables.append({
            "case": "sim", "partition": partition, "rounds": rounds, "rows": rows,
            "runs": {"fednode": [slim(r) for r in ours], "flower": [slim(r) for r in theirs]},
        })  # fmt: skip
    return tables


def mb(v: float | None) -> float | None:
    return None if v is None else v / 1e6


def case_scale(args: argparse.Namespace) -> list[dict[str, Any]]:
    tables = []
    rounds = 2 if args.quick else 10
    for clients in (20,) if args.quick else (100, 1000):
        print(f"\n== scale: digits, {clients} clients, fraction 0.1, {rounds} rounds", flush=True)
        ours, theirs = interleaved(
            args.repeats,
            lambda c=clients: fednode_sim(c, "iid", rounds, 0.1),
            lambda c=clients: flower_sim(c, "iid", rounds, 0.1),
        )
        target = 0.2 if clients == 1000 else None
        rows = [
            row("total wall (s)", best(ours, "wall"), best(theirs, "wall"), target, "s"),
            row("peak tree RSS (MB)", mb(best(ours, "peak_rss")), mb(best(theirs, "peak_rss")),
                target, "MB"),
            row("processes", max((r["procs"] for r in ours), default=None),
                max((r["procs"] for r in theirs), default=None), None, ""),
        ]  # fmt: skip
        tables.append({
            "case": "scale", "clients": clients, "rounds": rounds, "rows": rows,
            "runs": {"fednode": [slim(r) for r in ours], "flower": [slim(r) for r in theirs]},
        })  # fmt: skip
    return tables


# --- aggregation ---------------------------------------------------------------------------
AGG_RULES = ("fedavg", "median", "trimmed:0.2", "krum:{f}")


def _aggregate_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_aggregate", HERE / "aggregate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def agg_worker(side: str, n: int, d: int, repeat: int) -> None:
    """In the namespace: one side's figures as JSON lines (rule, s, peak)."""
    agg = _aggregate_module()
    f = min(n // 5, (n - 3) // 4)
    if side == "flower":
        keep = {r.format(f=f) for r in AGG_RULES}
        agg.FLOWER = {k: v for k, v in agg.FLOWER.items() if k.format(f=f, m=n - f) in keep}
        agg.flower_worker(n, d, f, n - f, repeat)
        return
    import numpy as np

    rows = agg.updates(n, d, f)

    def floor() -> float:
        return float(sum(np.add.reduce(r) for r in rows))

    s, peak, _ = agg.measure(floor, repeat)
    print(json.dumps({"rule": "read-only floor", "s": s, "peak": peak}), flush=True)
    for template in AGG_RULES:
        spec = template.format(f=f)
        s, peak, _ = agg.run_fednode(rows, spec, repeat)
        print(json.dumps({"rule": spec, "s": s, "peak": peak}), flush=True)


def case_aggregate(args: argparse.Namespace) -> list[dict[str, Any]]:
    shapes = [(20, 50_000)] if args.quick else [(20, 5_000_000), (100, 1_000_000)]
    tables = []
    for n, d in shapes:
        print(f"\n== aggregate: {n} x {d:,} float32", flush=True)
        out: dict[str, dict[str, Any]] = {}
        loads = []
        for side in ("fednode", "flower"):
            cmd = [PY, str(HERE / "vs_flower.py"), "--agg-worker", side, str(n), str(d),
                   str(args.repeats)]  # fmt: skip
            res = run_tree(in_netns(cmd))
            loads.append(res["load"])
            got = {}
            for line in res["stdout"].splitlines():
                if line.startswith("{"):
                    item = json.loads(line)
                    got[item.pop("rule")] = item
            if res["rc"]:
                got["_error"] = (res["stderr"].strip().splitlines() or ["failed"])[-1]
            out[side] = got
            print(f"   . {side}: {len(got)} rules, wall {res['wall']:.1f}s, load {res['load']:.2f}")
        model = d * 4
        gb = n * d * 4 / 1e9
        floor = out["fednode"].get("read-only floor", {})
        f = min(n // 5, (n - 3) // 4)
        rows = []
        if floor:
            rows.append({"rule": "read-only floor", "fednode_s": floor["s"],
                         "fednode_gbs": gb / floor["s"], "fednode_extra_models": 0.0})  # fmt: skip
        for template in AGG_RULES:
            spec = template.format(f=f)
            ours, theirs = out["fednode"].get(spec, {}), out["flower"].get(spec, {})
            item: dict[str, Any] = {"rule": spec}
            if "s" in ours:
                item.update(fednode_s=ours["s"], fednode_gbs=gb / ours["s"],
                            fednode_extra_models=ours["peak"] / model,
                            vs_floor=ours["s"] / floor["s"] if floor else None)  # fmt: skip
            if "s" in theirs:
                item.update(flower_s=theirs["s"], flower_gbs=gb / theirs["s"],
                            flower_extra_models=theirs["peak"] / model)  # fmt: skip
            if "s" in ours and "s" in theirs:
                item["speedup"] = theirs["s"] / ours["s"]
            if theirs.get("error") or out["flower"].get("_error"):
                item["flower_error"] = theirs.get("error") or out["flower"].get("_error")
            rows.append(item)
        tables.append({"case": "aggregate", "n": n, "d": d, "rows": rows, "loads": loads})
    return tables


# --- output --------------------------------------------------------------------------------
def show(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if unit == "B":
            return f"{v:,.0f}"
        return f"{v:.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def print_tables(tables: list[dict[str, Any]]) -> None:
    for t in tables:
        if t["case"] == "aggregate":
            print(f"\n{t['n']} x {t['d']:,} float32 (load {max(t['loads']):.2f})")
            print(f"  {'rule':<18}{'fednode s':>10}{'GB/s':>7}{'x floor':>8}{'extra':>7}"
                  f"{'Flower s':>10}{'GB/s':>7}{'extra':>7}{'speedup':>9}")  # fmt: skip
            for r in t["rows"]:
                error = f"  Flower: {r['flower_error']}" if r.get("flower_error") else ""
                print(f"  {r['rule']:<18}{show(r.get('fednode_s')):>10}"
                      f"{show(r.get('fednode_gbs')):>7}{show(r.get('vs_floor')):>8}"
                      f"{show(r.get('fednode_extra_models')):>7}{show(r.get('flower_s')):>10}"
                      f"{show(r.get('flower_gbs')):>7}{show(r.get('flower_extra_models')):>7}"
                      f"{show(r.get('speedup')):>9}{error}")  # fmt: skip
            continue
        label = t.get("partition") or f"{t.get('clients')} clients"
        loads = [r["load"] for side in t["runs"].values() for r in side]
        print(f"\n{t['case']}: {label} (load {min(loads):.2f}-{max(loads):.2f})")
        print(f"  {'measure':<28}{'fednode':>12}{'Flower':>12}{'ratio':>8}{'target':>8}{'met':>6}")
        for r in t["rows"]:
            met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
            tgt = "-" if r["target"] is None else f"<={r['target']:g}"
            print(
                f"  {r['measure']:<28}{show(r['fednode'], r['unit']):>12}"
                f"{show(r['flower'], r['unit']):>12}{show(r['ratio']):>8}{tgt:>8}{met:>6}"
            )


def render(data: dict[str, Any]) -> str:
    """The tables of a ``--json`` result as Markdown (``run_all --write-docs``)."""
    info = data["machine"]
    out = [
        f"Run of {info['date']} on {info['cpu']}, {info['cores']} cores, "
        f"Python {info['python']}; ratio = fednode / Flower (< 1: fednode faster or lighter).",
        "",
    ]
    for t in data["tables"]:
        if t["case"] == "aggregate":
            out += [
                f"**aggregate, {t['n']} x {t['d']:,} float32** (load {max(t['loads']):.1f}; "
                "extra = peak extra memory in models; speedup = Flower s / fednode s)",
                "",
                "| rule | fednode s | GB/s | x floor | extra | Flower s | GB/s | extra | speedup |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in t["rows"]:
                keys = ("fednode_s", "fednode_gbs", "vs_floor", "fednode_extra_models",
                        "flower_s", "flower_gbs", "flower_extra_models", "speedup")  # fmt: skip
                out.append(f"| {r['rule']} | " + " | ".join(show(r.get(k)) for k in keys) + " |")
            out.append("")
            continue
        loads = [r["load"] for side in t["runs"].values() for r in side]
        label = t.get("partition") or f"{t.get('clients')} clients, fraction 0.1"
        out += [f"**{t['case']}, {label}, {t['rounds']} rounds** (load {min(loads):.1f}-"
                f"{max(loads):.1f})", "", "| measure | fednode | Flower | ratio | target | met? |",
                "|---|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in t["rows"]:
            met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
            tgt = "-" if r["target"] is None else f"<= {r['target']:g}"
            out.append(
                f"| {r['measure']} | {show(r['fednode'], r['unit'])} | "
                f"{show(r['flower'], r['unit'])} | {show(r['ratio'])} | {tgt} | {met} |"
            )
        out.append("")
    return "\n".join(out)


def plot(data: dict[str, Any], path: Path) -> str:
    """Accuracy vs whole-process wall, fednode and Flower, one panel per sim partition
    (each side's run that reached the target first)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    sims = [t for t in data["tables"] if t["case"] == "sim"]
    if not sims:
        return "no sim case in the result: no chart"
    fig, axes = plt.subplots(1, len(sims), figsize=(5.5 * len(sims), 4), squeeze=False)
    for ax, t in zip(axes[0], sims):
        for side, style in (("fednode", "o-"), ("flower", "s--")):
            runs = [r for r in t["runs"][side] if r.get("curve")]
            if not runs:
                continue
            run = min(runs, key=lambda r: r.get("wall_to") or r["wall"])
            xs, ys = zip(*run["curve"])
            ax.plot(xs, ys, style, ms=3, label=f"{'Flower' if side == 'flower' else side}")
        ax.axhline(TARGET, color="grey", lw=0.8, ls=":")
        ax.set(title=f"digits, 10 clients, {t['partition']}", xlabel="whole-process wall (s)",
               ylabel="global test accuracy", ylim=(0.7, 1.0))  # fmt: skip
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"chart in {path}"


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--agg-worker":
        side, n, d, repeat = sys.argv[2:6]
        agg_worker(side, int(n), int(d), int(repeat))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", choices=("sim", "scale", "aggregate", "all"), default="all")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side, best of (3)")
    ap.add_argument("--rounds", type=int, default=20, help="sim: rounds per run (20)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    ap.add_argument("--json", type=Path, help="write every run and the tables here")
    ap.add_argument("--render", type=Path, metavar="JSON", help="print a result as Markdown")
    ap.add_argument("--plot", type=Path, metavar="PNG", help="with --render: draw the chart")
    args = ap.parse_args()
    if args.render:
        data = json.loads(args.render.read_text())
        print(render(data))
        if args.plot:
            print(plot(data, args.plot), file=sys.stderr)
        return 0
    if args.quick:
        args.repeats = 1
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; {info['date']}; "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    problem = netns_problem()
    if problem:
        print(f"Flower side not run: {problem}")
        return 3
    cases = ("sim", "scale", "aggregate") if args.case == "all" else (args.case,)
    tables: list[dict[str, Any]] = []
    for case in cases:
        tables += {"sim": case_sim, "scale": case_scale, "aggregate": case_aggregate}[case](args)
    print_tables(tables)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "tables": tables}, indent=1))
        print(f"\nresults in {args.json}")
        if args.plot:
            print(plot({"machine": info, "tables": tables}, args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
