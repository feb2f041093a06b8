"""Secure aggregation (fednode.crypto.secagg) beside plain aggregation, in one run.

For each ``n`` (members) x ``d`` (vector length) and each mode, SecAgg+ (``k`` =
2 ceil(log2 n) / 2 rounded to even neighbours, threshold ``t = k/2 + 1``) and classic
SecAgg (``k = n - 1``, ``t = n/2 + 1``), one whole round runs in memory
(``fednode.testing.secagg_round.run_round``, no dropouts; the sum is checked against the
plain sum of the quantised inputs). Printed per row:

* client compute: mean seconds per member of advertise + share + mask + unmask;
* server compute: seconds of all the server's work for the round;
* bytes per client: the CBOR size of every message a member sends and receives;
* the baseline measured in the same run, plain aggregation: each member sends its update
  as CBOR bytes of float32 (``d`` x 4 bytes; its cost: ``astype`` + ``tobytes``), the
  server decodes and sums them in float64; and the ratios secagg / plain.

Rows whose mask work (``n`` x holders x ``d``) exceeds ``--budget`` are skipped and
listed as such (classic at large ``n`` x ``d``; n=500 x d=1M always, as the issue
allows). Times are wall seconds of one run on this machine, single-threaded.

    .venv/bin/python scripts/bench/secagg.py [--quick] [--ns 10,50,100,500]
        [--ds 4810,1000000] [--frac-bits 20] [--budget 2e9]
"""

from __future__ import annotations

import argparse
import math
import time

import cbor2
import numpy as np

from fednode.testing.secagg_round import RoundStats, identities, make_params, run_round


def plus_k(n: int) -> int:
    return min(n - 1, 2 * math.ceil(math.log2(n)))


def plain_round(inputs: dict[str, np.ndarray]) -> tuple[float, float, int]:
    """(mean client seconds, server seconds, bytes per client) of plain aggregation."""
    t0 = time.perf_counter()
    msgs = [cbor2.dumps([1, m, x.astype(np.float32).tobytes()]) for m, x in inputs.items()]
    client = (time.perf_counter() - t0) / len(inputs)
    t0 = time.perf_counter()
    total = np.zeros(next(iter(inputs.values())).size, dtype=np.float64)
    for raw in msgs:
        total += np.frombuffer(cbor2.loads(raw)[2], dtype=np.float32)
    server = time.perf_counter() - t0
    return client, server, len(msgs[0]) + len(msgs[0])  # up, and the sum back down


def secagg_round(n: int, d: int, k: int, t: int, frac_bits: int, inputs, members):
    params = make_params(members, threshold=t, neighbours=k, dim=d, frac_bits=frac_bits)
    stats = RoundStats(keep_sent=False)
    result = run_round(params, members, inputs, {}, stats)
    want = sum(params.encoding.quantise(x)[0] for x in inputs.values())
    assert np.array_equal(result.total_int, want), "secagg sum differs from the plain sum"
    per = [stats.bytes_up[m] + stats.bytes_down[m] for m in params.members]
    sum_back = len(cbor2.dumps([1, result.total.astype(np.float32).tobytes()]))
    client = sum(stats.client_seconds.values()) / n
    return client, stats.server_seconds, sum(per) / n + sum_back, params.encoding.width


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 10, 50 and d = 4810 only")
    parser.add_argument("--ns", default="10,50,100,500", help="member counts")
    parser.add_argument("--ds", default="4810,1000000", help="vector lengths")
    parser.add_argument("--frac-bits", type=int, default=20, help="fixed-point precision")
    parser.add_argument(
        "--budget", type=float, default=2e9, help="skip rows above n x holders x d mask values"
    )
    args = parser.parse_args()
    ns = [10, 50] if args.quick else [int(v) for v in args.ns.split(",")]
    ds = [4810] if args.quick else [int(v) for v in args.ds.split(",")]

    head = (
        f"{'n':>4} {'d':>8} {'mode':>7} {'k':>4} {'t':>4} {'w':>2} | {'client s':>9} "
        f"{'plain':>8} {'ratio':>7} | {'server s':>9} {'plain':>8} {'ratio':>7} | "
        f"{'bytes/client':>12} {'plain':>10} {'expand':>7}"
    )
    print(head)
    print("-" * len(head))
    skipped = []
    for d in ds:
        for n in ns:
            members = identities(n, b"bench")
            rng = np.random.default_rng(n + d)
            inputs = {m: rng.normal(0, 0.3, d).astype(np.float32) for m in sorted(members)}
            p_client, p_server, p_bytes = plain_round(inputs)
            for mode, k in (("secagg+", plus_k(n)), ("classic", n - 1)):
                if mode == "secagg+" and k >= n - 1:
                    continue  # same graph as classic at this n
                t = min(k + 1, (k + 1) // 2 + 1)
                if n * (k + 1) * d > args.budget:
                    skipped.append(f"n={n} d={d} {mode} (k={k})")
                    continue
                c, s, b, w = secagg_round(n, d, k, t, args.frac_bits, inputs, members)
                print(
                    f"{n:>4} {d:>8} {mode:>7} {k:>4} {t:>4} {w:>2} | {c:>9.4f} {p_client:>8.5f} "
                    f"{c / p_client:>7.0f} | {s:>9.3f} {p_server:>8.4f} {s / p_server:>7.0f} | "
                    f"{b:>12,.0f} {p_bytes:>10,} {b / p_bytes:>7.3f}",
                    flush=True,
                )
    if skipped:
        print(f"skipped (over --budget {args.budget:.0e} mask values): " + "; ".join(skipped))


if __name__ == "__main__":
    main()
