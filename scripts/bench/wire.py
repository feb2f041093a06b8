"""Wire throughput: encode + sign + verify + decode of a 20 MB update vs Flower's serializer.

Run: .venv/bin/python scripts/bench/wire.py [--n 5000000] [--repeat 5]

Both paths move the same float32 vector (default 5M values = 20 MB), in the same run:

* ``fednode``: ``Sealer.seal(Update(vector=x, codec="none"))`` then ``Receiver.open`` of
  the frame, the full path a real node runs: codec encode (NaN/Inf check, 8-byte codec
  header; the payload is scatter-gather, header + a view of ``x``, not copied), BLAKE3
  of the payload, canonical CBOR header, Ed25519 signature; then size limits, header
  profile scan and schema, membership, Ed25519 verification, replay window, BLAKE3 of the
  payload, codec decode (a zero-copy view) and the NaN/Inf check.
* ``flower``: Flower's ``ndarray_to_bytes`` / ``bytes_to_ndarray`` (flwr.common.parameter)
  reimplemented in four lines: ``np.save`` into a ``BytesIO`` / ``np.load(...,
  allow_pickle=False)``. No integrity, no authentication, no value checks.

Between send and receive each path hands over what a network receiver would hold, and
that handover is not timed for either: Flower's ``bytes`` object as is; fednode's frame
with its payload parts written into one buffer (what a transport's ``recv_into`` makes;
``Libp2pTransport.send`` writes the parts without joining them). A second fednode row,
"in-process", opens the sender's parts directly, as the memory transport delivers them;
``Receiver.open`` then joins them into one buffer for the message, which is timed.

The table also shows the minor page faults of the timed steps: Flower's ``np.save`` into
a growing ``BytesIO`` makes glibc hand out fresh pages (~40 MB) on every call with
default malloc settings, which costs more than the copying itself. To compare pure CPU
work, run with a warm allocator::

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967295 \
        .venv/bin/python scripts/bench/wire.py

A last row, ``codec only``, is fednode's codec ``none`` encode + decode + NaN/Inf
check without the envelope: it separates the cost of serialization from the cost of
signing and verifying (two BLAKE3 passes over the payload).

MB = 1e6 bytes of float32 data; each way and the round trip are the best of ``--repeat``
(the round trip is the best single seal+open, not the sum of two bests; one
warm-up run first; each path runs back to back). A breakdown of
the fednode steps and the BLAKE3 single- vs multi-thread crossover (which sets
``envelope.THREADED_DIGEST_BYTES``) follow.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import time
from collections.abc import Callable
from datetime import date

import blake3
import numpy as np
from rich.console import Console
from rich.table import Table

from fednode.crypto.envelope import DOMAIN, Membership, Receiver, Sealer, digest
from fednode.crypto.identity import Identity, verify
from fednode.wire import messages as m
from fednode.wire.codecs import RawCodec
from fednode.wire.frames import Frame, Inbound
from fednode.wire.tensors import check_finite


def ndarray_to_bytes(ndarray: np.ndarray) -> bytes:
    """Flower's serializer (flwr.common.parameter.ndarray_to_bytes)."""
    bytes_io = io.BytesIO()
    np.save(bytes_io, ndarray, allow_pickle=False)
    return bytes_io.getvalue()


def bytes_to_ndarray(tensor: bytes) -> np.ndarray:
    """Flower's deserializer (flwr.common.parameter.bytes_to_ndarray)."""
    return np.load(io.BytesIO(tensor), allow_pickle=False)


def best(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5_000_000, help="float32 values")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs")
    args = parser.parse_args()
    n, repeat = args.n, args.repeat
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    mb = x.nbytes / 1e6

    alice, bob = Identity.generate(), Identity.generate()
    sealer = Sealer(alice)
    receiver = Receiver(bob.peer_id, Membership(frozenset({alice.peer_id})), model_size=n)

    # --- round trips, best of `repeat`, measured the same way for both ---------------
    codec = RawCodec()

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def received(frame: Frame) -> Frame:
        """What a network receiver holds: the head and the payload in one fresh buffer."""
        return Frame(frame.head, b"".join(frame.parts))

    def fednode_rt(network: bool) -> tuple[float, float, int]:
        f0, t0 = faults(), time.perf_counter()
        frame = sealer.seal(m.Update(recipient=bob.peer_id, vector=x, codec="none"))
        t1, f1 = time.perf_counter(), faults()
        if network:
            frame = received(frame)  # the transport's work: not timed
        f2, t2 = faults(), time.perf_counter()
        msg = receiver.open(Inbound(alice.peer_id, frame))
        t3, f3 = time.perf_counter(), faults()
        assert msg.vector is not None and msg.vector[-1] == x[-1]
        return t1 - t0, t3 - t2, f1 - f0 + f3 - f2

    def flower_rt() -> tuple[float, float, int]:
        f0, t0 = faults(), time.perf_counter()
        blob = ndarray_to_bytes(x)
        t1 = time.perf_counter()
        y = bytes_to_ndarray(blob)
        t2, f2 = time.perf_counter(), faults()
        assert y[-1] == x[-1]
        return t1 - t0, t2 - t1, f2 - f0

    def codec_rt() -> tuple[float, float, int]:
        f0, t0 = faults(), time.perf_counter()
        parts = codec.encode_parts(x)
        t1, f1 = time.perf_counter(), faults()
        blob = b"".join(parts)  # the transport's work: not timed
        f2, t2 = faults(), time.perf_counter()
        check_finite(codec.decode(blob, n))
        t3, f3 = time.perf_counter(), faults()
        return t1 - t0, t3 - t2, f1 - f0 + f3 - f2

    def best_rt(fn: Callable[[], tuple[float, float, int]]) -> tuple[float, float, float, int]:
        """Best send, receive and round trip of ``repeat`` runs (after one warm-up run),
        and the fewest minor page faults of a round trip's timed steps.

        Each path runs back to back so that each sees its own steady-state allocator
        behaviour (interleaving them makes whoever allocates next pay page faults).
        """
        fn()
        runs = [fn() for _ in range(repeat)]
        return (
            min(a for a, _, _ in runs),
            min(b for _, b, _ in runs),
            min(a + b for a, b, _ in runs),
            min(f for _, _, f in runs),
        )

    fed_seal, fed_open, fed_rt, fed_faults = best_rt(lambda: fednode_rt(network=True))
    fl_enc, fl_dec, fl_rt, fl_faults = best_rt(flower_rt)
    mem_seal, mem_open, mem_rt, mem_faults = best_rt(lambda: fednode_rt(network=False))
    raw_enc, raw_dec, raw_rt, raw_faults = best_rt(codec_rt)
    sent = sealer.seal(m.Update(recipient=bob.peer_id, vector=x))
    wire_bytes = sent.head + b"".join(sent.parts)
    legacy = sealer.seal(m.Update(recipient=bob.peer_id, payload=codec.encode(x)))
    assert b"".join(sent.parts) == bytes(legacy.payload)  # the same payload bytes on the wire
    assert len(wire_bytes) == sent.nbytes
    assert np.array_equal(receiver.open(Inbound(alice.peer_id, received(sent))).vector, x)
    assert np.array_equal(bytes_to_ndarray(ndarray_to_bytes(x)), x)

    table = Table(title=f"wire round trip, {n:,} float32 = {mb:.0f} MB, best of {repeat}")
    cols = ("path", "send ms", "send MB/s", "receive ms", "receive MB/s", "rt ms", "rt MB/s")
    for col in (*cols, "page faults"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, a, b, rt, nfaults in (
        ("fednode: seal / open (codec none, signed)", fed_seal, fed_open, fed_rt, fed_faults),
        ("Flower: ndarray_to_bytes / bytes_to_ndarray", fl_enc, fl_dec, fl_rt, fl_faults),
        ("fednode in-process (open joins the parts)", mem_seal, mem_open, mem_rt, mem_faults),
        ("fednode codec only (no signing)", raw_enc, raw_dec, raw_rt, raw_faults),
    ):
        table.add_row(
            name,
            f"{a * 1e3:.2f}",
            f"{mb / a:,.0f}",
            f"{b * 1e3:.2f}",
            f"{mb / b:,.0f}",
            f"{rt * 1e3:.2f}",
            f"{mb / rt:,.0f}",
            f"{nfaults:,}",
        )
    console = Console(width=150)
    console.print(table)
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    allocator = "warm allocator (GLIBC_TUNABLES set)" if "malloc" in tunables else "default malloc"
    print(
        f"ratio fednode / Flower (throughput), {allocator}: send {fl_enc / fed_seal:.2f}x, "
        f"receive {fl_dec / fed_open:.2f}x, round trip {fl_rt / fed_rt:.2f}x "
        f"(target >= 2x: {'met' if fl_rt / fed_rt >= 2 else 'NOT met'}); in-process "
        f"{fl_rt / mem_rt:.2f}x; codec only (no signing) round trip {fl_rt / raw_rt:.2f}x"
    )

    # --- where the fednode time goes --------------------------------------------------
    parts = codec.encode_parts(x)
    payload = b"".join(parts)
    frame = sealer.seal(m.Update(recipient=bob.peer_id, payload=payload))
    raw_header, signature = m.split_head(frame.head, max_header=m.MAX_HEADER_BYTES)
    pk, header_bytes, sig = alice.public_key, DOMAIN + bytes(raw_header), bytes(signature)
    view = codec.decode(payload, n)
    steps = [
        (
            "send: codec none encode_parts (NaN check + 8 B header, no copy)",
            lambda: codec.encode_parts(x),
        ),
        ("send: BLAKE3 of the payload parts", lambda: digest(parts)),
        ("send: header + Ed25519 sign", lambda: alice.sign(header_bytes)),
        ("receive: header scan + schema", lambda: m.decode_header(raw_header)),
        ("receive: Ed25519 verify", lambda: verify(pk, header_bytes, sig)),
        ("receive: BLAKE3 of the payload", lambda: digest(payload)),
        ("receive: codec none decode (zero-copy view)", lambda: codec.decode(payload, n)),
        ("receive: NaN/Inf check (sum-of-squares fast path)", lambda: check_finite(view)),
        ("(for comparison) np.isfinite(x).all()", lambda: np.isfinite(view).all()),
        ("(for comparison) one copy of the payload", lambda: b"".join(parts)),
    ]
    breakdown = Table(title="fednode steps (best of each)")
    breakdown.add_column("step")
    breakdown.add_column("ms", justify="right")
    breakdown.add_column("MB/s", justify="right")
    for name, fn in steps:
        t = best(max(repeat, 5), fn)
        breakdown.add_row(name, f"{t * 1e3:.3f}", f"{mb / t:,.0f}" if t > 1e-4 else "-")
    console.print(breakdown)

    # --- BLAKE3 threading crossover -----------------------------------------------------
    cross = Table(title="BLAKE3 MB/s by payload size (best of 15)")
    cross.add_column("bytes", justify="right")
    for label in ("1 thread", "2 threads", "AUTO"):
        cross.add_column(label, justify="right")
    rng = np.random.default_rng(1)
    for size in (1 << 18, 1 << 20, 1 << 21, 1 << 22, 1 << 23, x.nbytes):
        data = rng.bytes(size)
        speeds = [
            size / best(15, lambda t=t, d=data: blake3.blake3(d, max_threads=t).digest()) / 1e6
            for t in (1, 2, blake3.blake3.AUTO)
        ]
        cross.add_row(f"{size:,}", *(f"{s:,.0f}" for s in speeds))
    console.print(cross)
    print(f"machine: {machine()}; {date.today().isoformat()}")


if __name__ == "__main__":
    main()
