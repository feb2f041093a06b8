"""Benchmark the update codecs on a 5M-parameter float32 delta.

Run: .venv/bin/python scripts/bench/codec_sizes.py [--n N] [--repeat R]

For each codec: payload bytes, compression ratio against raw float32 (``none``,
the baseline measured in the same run), best-of-R encode and decode time, the
time ratio against ``none``, and the max / relative-L2 reconstruction error.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from fednode.wire.codecs import Codec, parse_codec

SPECS = [
    "none",
    "fp16",
    "int8",
    "int8:stochastic",
    "topk:0.01",
    "topk:0.01+int8",
    "none+zstd",
    "fp16+zstd",
    "int8+zstd",
    "topk:0.01+zstd",
    "topk:0.01+int8+zstd",
    "topk:0.1+int8+zstd",
]


def best_of(repeat: int, codec: Codec, x: np.ndarray) -> tuple[float, float, bytes, np.ndarray]:
    enc = dec = float("inf")
    payload, out = b"", x
    for _ in range(repeat):
        t0 = time.perf_counter()
        payload = codec.encode(x)
        t1 = time.perf_counter()
        out = codec.decode(payload, x.size)
        t2 = time.perf_counter()
        enc, dec = min(enc, t1 - t0), min(dec, t2 - t1)
    return enc, dec, payload, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5_000_000, help="vector length")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()

    # A model delta: mostly small values with some heavier tails, like real updates.
    rng = np.random.default_rng(0)
    x = (rng.standard_t(df=4, size=args.n) * 1e-3).astype(np.float32)

    rows = []
    for spec in SPECS:
        codec = parse_codec(spec, seed=0)
        enc, dec, payload, out = best_of(args.repeat, codec, x)
        err = out - x
        rows.append(
            (
                codec.spec,
                len(payload),
                enc,
                dec,
                float(np.abs(err).max()),
                float(np.linalg.norm(err) / np.linalg.norm(x)),
            )
        )
    base_bytes, base_time = rows[0][1], rows[0][2] + rows[0][3]

    table = Table(title=f"update codecs, n={args.n:,} float32, best of {args.repeat}")
    for col in ("codec", "bytes", "x smaller", "encode ms", "decode ms", "total ms", "x time"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    table.add_column("max |err|", justify="right")
    table.add_column("rel L2 err", justify="right")
    for spec, size, enc, dec, max_err, rel in rows:
        table.add_row(
            spec,
            f"{size:,}",
            f"{base_bytes / size:.1f}",
            f"{enc * 1e3:.1f}",
            f"{dec * 1e3:.1f}",
            f"{(enc + dec) * 1e3:.1f}",
            f"{(enc + dec) / base_time:.1f}",
            f"{max_err:.2e}",
            f"{rel:.2e}",
        )
    Console().print(table)
    print(f"baseline 'none': {base_bytes:,} bytes, {base_time * 1e3:.1f} ms encode+decode")


if __name__ == "__main__":
    main()
