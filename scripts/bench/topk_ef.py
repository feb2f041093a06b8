"""Top-k 1% + int8 with error feedback on digits (10 clients, IID): the issue-4 numbers.

Run: .venv/bin/python scripts/bench/topk_ef.py star [--seeds 0 1 2 3 4] [--rounds 15 30]
     .venv/bin/python scripts/bench/topk_ef.py variants [--seeds ...] [--rounds 15] [NAME ...]

``star`` runs the real path (``run_star(config, 10)``: signed frames, the codecs, the
coordinator's ``bytes_up``) for dense float32, top-k + EF and top-k without EF, default
round settings (round 1 starts with the first 2 clients that advertise, E=5), and prints
the accuracy after each requested round count, the gap to dense measured in the same
run, and the bytes ratio.

``variants`` compares client-side error-feedback variants in a standalone FedAvg loop
(no trio: round 1 trains clients 0 and 1, later rounds all 10 in index order, FedAvg by
num_examples, same tasks, codec and local training). It is ~2x faster than ``star`` but
orders the first round differently, so a seed's numbers differ from ``star`` by up to ~1.5
points: compare variants with each other inside one mode only. The variants and what
they do are listed in ``VARIANTS``; docs/BENCHMARKS.md has the measured table.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fednode.config import load_config
from fednode.sim.scenarios import run_star
from fednode.training.task import load_task
from fednode.wire.codecs import parse_codec

CLIENTS = 10
CODEC = "topk:0.01+int8"
TRAIN = {"local_epochs": 5, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "prox_mu": 0.0}


# ------------------------------------------------------------------------- real path


def star(seeds: list[int], rounds: list[int]) -> None:
    last = max(rounds)
    runs = {"dense": ("none", True), "EF": (CODEC, True), "no EF": (CODEC, False)}
    acc: dict[str, dict[int, list[float]]] = {name: {} for name in runs}
    up: dict[str, int] = {}
    for seed in seeds:
        for name, (codec, ef) in runs.items():
            t0 = time.perf_counter()
            config = load_config(
                overrides={
                    "seed": seed,
                    "data.partition": "iid",
                    "rounds.rounds": last,
                    "wire.codec": codec,
                    "wire.error_feedback": ef,
                }
            )
            result = run_star(config, CLIENTS)
            acc[name][seed] = [100 * float(r["accuracy"]) for r in result.rounds]
            up[name] = max(up.get(name, 0), *(int(r["bytes_up"]) for r in result.rounds))
            print(f"seed {seed} {name:6} done in {time.perf_counter() - t0:.0f} s", flush=True)
    head = " | ".join(f"@{r}" for r in rounds)
    print(f"\naccuracy % after {head} rounds (gap to dense in points)")
    for seed in seeds:
        cells = []
        for name in runs:
            a, d = acc[name][seed], acc["dense"][seed]
            cells.append(
                " / ".join(
                    f"{a[r - 1]:.1f}"
                    + ("" if name == "dense" else f" ({d[r - 1] - a[r - 1]:+.1f})")
                    for r in rounds
                )
            )
        print(f"seed {seed}: " + " | ".join(f"{n} {c}" for n, c in zip(runs, cells)))
    for name in ("EF", "no EF"):
        gaps = [
            np.mean([acc["dense"][s][r - 1] - acc[name][s][r - 1] for s in seeds]) for r in rounds
        ]
        within = [
            sum(acc["dense"][s][r - 1] - acc[name][s][r - 1] <= 1.0 + 1e-9 for s in seeds)
            for r in rounds
        ]
        print(
            f"{name:6} mean gap "
            + " / ".join(f"{g:+.2f}" for g in gaps)
            + "; seeds within 1 point "
            + " / ".join(f"{w} of {len(seeds)}" for w in within)
        )
    params = (up["dense"] // CLIENTS - 8) // 4  # codec none: 8-byte header + float32 values
    dense_f32 = CLIENTS * params * 4
    print(
        f"bytes up per round: dense float32 {dense_f32:,}, {CODEC} at most {up['EF']:,} "
        f"({dense_f32 / up['EF']:.0f}x fewer)"
    )


# ------------------------------------------------------------------ standalone loop


class Sender:
    """One client's compression state; ``variant`` picks the error-feedback rule."""

    def __init__(self, n: int, codec: str = CODEC, **variant: Any) -> None:
        self.codec = parse_codec(codec)
        self.v = {"ef": True, "decay": 1.0, "beta": 0.0, "ahead": 0.0, "rule": "ef"} | variant
        self.e = np.zeros(n, np.float32)  # residual
        self.u = np.zeros(n, np.float32)  # velocity (momentum correction)
        self.g = np.zeros(n, np.float32)  # EF21: running sum of what was sent
        self.prev: np.ndarray | None = None

    def start(self, base: np.ndarray) -> np.ndarray:
        """Where local training starts (step-ahead EF starts at base + ahead * residual)."""
        if self.v["rule"] == "global":  # residual = wanted minus what the global really did
            if self.prev is not None:
                self.e -= base - self.prev
            self.prev = base.copy()
        if self.v["ahead"]:
            return (base + self.v["ahead"] * self.e).astype(np.float32)
        return base

    def send(self, delta: np.ndarray) -> tuple[np.ndarray, int]:
        n, v = delta.size, self.v
        if not v["ef"]:
            payload = self.codec.encode(delta)
            return self.codec.decode(payload, n), len(payload)
        if v["rule"] == "ef21":  # Richtarik et al. 2021: compress the change of the update
            corrected = delta - self.g
        elif v["ahead"]:  # the residual is already inside delta
            corrected = delta
        else:
            self.u = (v["beta"] * self.u + delta).astype(np.float32)
            corrected = (v["decay"] * self.e + self.u).astype(np.float32)
        payload = self.codec.encode(self._select(corrected))
        out = self.codec.decode(payload, n)
        if v["rule"] == "ef21":
            self.g += out
        elif v["rule"] == "global":
            self.e = corrected
        else:
            self.e = corrected - out
            if v["beta"] and v.get("mask", True):
                self.u[out != 0] = 0  # momentum factor masking (DGC)
        return out, len(payload)

    def _select(self, x: np.ndarray) -> np.ndarray:
        """Per-layer top-k: zero all but each layer's share of k (the codec keeps the rest)."""
        bounds = self.v.get("layers")
        if not bounds:
            return x
        k = self.codec.k_for(x.size)  # type: ignore[attr-defined]
        sizes = [b - a for a, b in bounds]
        ks = [max(1, int(k * s / x.size)) for s in sizes]
        ks[0] += k - sum(ks)
        keep = np.zeros(x.size, bool)
        for (a, b), kl in zip(bounds, ks):
            seg = np.abs(x[a:b])
            keep[a + np.argpartition(seg, seg.size - kl)[seg.size - kl :]] = True
        out = np.where(keep, x, 0).astype(np.float32)
        out[keep & (out == 0)] = 1e-30  # keep a selected exact zero selected
        return out


def standalone(seed: int, rounds: int, server_beta: float = 0.0, **variant: Any) -> list[float]:
    tasks = [
        load_task("digits", client_index=i, num_clients=CLIENTS, partition="iid", seed=seed)
        for i in range(CLIENTS)
    ]
    params = tasks[0].init_params(seed)
    n = params.size
    if variant.pop("per_layer", False):
        offsets = np.cumsum([0, *tasks[0].layout().sizes])
        variant["layers"] = list(itertools.pairwise(offsets))
    senders = [Sender(n, **variant) for _ in range(CLIENTS)]
    momentum = np.zeros(n)
    accs = []
    for r in range(1, rounds + 1):
        total, weight = np.zeros(n), 0.0
        for i in (0, 1) if r == 1 else range(CLIENTS):
            start = senders[i].start(params)
            new, examples, _ = tasks[i].train(start, {**TRAIN, "round": r})
            out, _ = senders[i].send(np.subtract(new, params, dtype=np.float32))
            total += examples * out
            weight += examples
        momentum = server_beta * momentum + total / weight  # server_beta 0: plain FedAvg
        params = (params + momentum).astype(np.float32)
        accs.append(100 * tasks[0].evaluate(params)[2]["accuracy"])
    return accs


VARIANTS: dict[str, dict[str, Any]] = {
    "dense": {"codec": "none", "ef": False},
    "EF": {},
    "no EF": {"ef": False},
    "partial EF 0.95": {"decay": 0.95},
    "partial EF 0.9": {"decay": 0.9},
    "partial EF 0.85": {"decay": 0.85},
    "partial EF 0.8": {"decay": 0.8},
    "partial EF 0.7": {"decay": 0.7},
    "DGC momentum 0.5": {"beta": 0.5},
    "DGC momentum 0.9": {"beta": 0.9},
    "DGC 0.5, no masking": {"beta": 0.5, "mask": False},
    "DGC 0.5 + partial 0.9": {"beta": 0.5, "decay": 0.9},
    "DGC 0.3 + partial 0.9": {"beta": 0.3, "decay": 0.9},
    "DGC 0.5 + partial 0.85": {"beta": 0.5, "decay": 0.85},
    "per-layer k": {"per_layer": True},
    "per-layer k + partial 0.9": {"per_layer": True, "decay": 0.9},
    "step-ahead 1 (train from x+e)": {"ahead": 1.0},
    "step-ahead 0.5": {"ahead": 0.5},
    "residual vs global move": {"rule": "global"},
    "EF21 + server sum": {"rule": "ef21", "server_beta": 1.0},
    "server momentum 0.5": {"server_beta": 0.5},
    "topk 2% (not 1%)": {"codec": "topk:0.02+int8"},
    "topk 5% (not 1%)": {"codec": "topk:0.05+int8"},
    "topk 10% (not 1%)": {"codec": "topk:0.1+int8"},
}


def variants(seeds: list[int], rounds: int, names: list[str]) -> None:
    dense = {s: standalone(s, rounds, **VARIANTS["dense"])[-1] for s in seeds}
    print(f"standalone loop, {rounds} rounds; dense: " + " ".join(f"{dense[s]:.1f}" for s in seeds))
    for name in names or [v for v in VARIANTS if v != "dense"]:
        t0 = time.perf_counter()
        final = {s: standalone(s, rounds, **dict(VARIANTS[name]))[-1] for s in seeds}
        gaps = [dense[s] - final[s] for s in seeds]
        print(
            f"{name:30} gaps "
            + " ".join(f"{g:+.1f}" for g in gaps)
            + f"  mean {np.mean(gaps):+.2f}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("star", "variants"))
    parser.add_argument("names", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, nargs="+", default=[15, 30])
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny model: one thread is fastest and fair on a shared box
    run: Callable[[], None] = (
        (lambda: star(args.seeds, args.rounds))
        if args.mode == "star"
        else (lambda: variants(args.seeds, args.rounds[0], args.names))
    )
    run()


if __name__ == "__main__":
    main()
