#!/usr/bin/env python3
"""Transport benchmark: fednode Libp2pTransport vs stock py-libp2p vs raw trio TCP.

Every stack sends the same payload (default 64 MiB) over 127.0.0.1 in the same run:

1. ``fednode``: :class:`fednode.p2p.libp2p_host.Libp2pTransport` (Noise + Yamux +
   the patches in ``fednode/p2p/_libp2p_patches.py``); one ``send`` of a frame
   whose payload is the test data. Timed from ``send`` until it returns (the
   receiver acknowledged the whole frame).
2. ``stock``: py-libp2p 0.8.1 with default settings (``new_host`` with Noise,
   ``muxer_preference="YAMUX"``, no patches). The patches are process-global, so
   this stack runs in processes that never import them. The app protocol has the
   same shape: new stream, 8-byte length, payload in 1 MiB writes, ``read(n)`` on
   the receiver, 2-byte ack.
3. ``tcp``: a raw trio TCP socket, same framing, 1 MiB ``send_all``.

Every receiver keeps the payload in one preallocated buffer, as the fednode transport
must: stock copies each ``read`` into it, tcp uses ``recv_into``. ``--discard`` makes
the stock and tcp receivers drop the bytes instead, as in ``research/libp2p-perf``.
On the Firecracker VM this was measured on, touching a fresh 64 MiB buffer costs
~75 ms of page faults (256 faults per MiB).

Each stack has its own sender and receiver processes. ``--procs 2``: the receivers are
pinned to core 0 and the senders to core 1 (two nodes). ``--procs 1``: one process per
stack holds both ends on one trio loop, on core 0. The parent process drives all the
stacks in rounds (fednode, stock, tcp, fednode, ...), so a burst of load from elsewhere
on the machine hits every stack alike. Bulk: ``--repeat`` transfers per stack; the best
and the median are reported (MB = 1e6 bytes). Connect latency: ``--probes`` fresh hosts
each dial the receiver and send a 1-byte message. The time from starting the dial until
the message is acknowledged is an upper bound on connect-to-first-byte. Small message:
the median of 20 sends of 200 bytes over an open connection, each until acknowledged.

Network safety: everything listens on and dials 127.0.0.1 only; every phase runs under
a trio deadline; ``--isolate`` re-runs the benchmark inside ``unshare -n``, a private
network namespace with only loopback.

Usage::

    .venv/bin/python scripts/bench/transport.py                  # 2-proc, 64 MiB, best of 3
    .venv/bin/python scripts/bench/transport.py --procs 1
    .venv/bin/python scripts/bench/transport.py --stacks fednode --patches rx2,frame_1mib
    .venv/bin/python scripts/bench/transport.py --stacks fednode,fednode:none,fednode:rx2+frame_1mib

A ``fednode:<patch>+<patch>`` stack is the fednode transport with only those patches
(``none``: stock py-libp2p under the fednode transport). ``fednode:frame_bytes=262156``
keeps every patch but overrides a constant of ``_libp2p_patches`` or ``libp2p_host``.
``stock:malloc`` and ``tcp:malloc`` get only the allocator setting (``tune_malloc``).
Such stacks are measured interleaved with the others, which makes ablations comparable
on a busy machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

MiB = 1 << 20
HOST = "127.0.0.1"
BULK = "/fedbench/bulk/1.0.0"
LEN = struct.Struct("!Q")
PHASE_S = 120.0  # deadline for any single command
TOTAL_S = 1800.0  # deadline for a whole child process
SMALL_N = 20

Commands = dict[str, Callable[[], Awaitable[float]]]


# --------------------------------------------------------------------------- helpers
def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def _lines(fd: int) -> AsyncIterator[str]:
    """Lines from a file descriptor (stdin of a child), until EOF."""
    stream = trio.lowlevel.FdStream(os.dup(fd))
    buf = b""
    try:
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode().strip()
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            buf += chunk
    finally:
        await stream.aclose()


async def _timed(fn: Callable[[], Awaitable[None]]) -> float:
    with trio.fail_after(PHASE_S):
        t0 = time.perf_counter()
        await fn()
        return time.perf_counter() - t0


async def _median_small(send: Callable[[], Awaitable[None]]) -> float:
    return statistics.median([await _timed(send) for _ in range(SMALL_N)])


# --------------------------------------------------------------------------- fednode
def _fednode_patch_selection(names: str | None) -> None:
    """Ablation: restrict the patch layer to ``names`` (None = everything)."""
    if names is None:
        return
    from libp2p.network.config import ConnectionConfig

    from fednode.p2p import _libp2p_patches as patches

    tokens = [n for n in names.split(",") if n]
    from fednode.p2p import libp2p_host

    for token in [t for t in tokens if "=" in t]:  # e.g. frame_bytes=262156
        key, value = token.split("=", 1)
        owner = next((m for m in (patches, libp2p_host) if hasattr(m, key.upper())), None)
        if owner is None:
            raise SystemExit(f"no constant {key.upper()} in _libp2p_patches or libp2p_host")
        setattr(owner, key.upper(), int(value))
    chosen = [t for t in tokens if "=" not in t and t != "none"]
    if not chosen and "none" not in tokens:  # only overrides: keep every patch
        chosen = [*patches.PATCHES, "connect_config"]
    code = [n for n in chosen if n != "connect_config"]
    real_apply = patches.apply
    patches.apply = lambda _names=None: real_apply(code)  # type: ignore[assignment]
    if "connect_config" not in chosen:
        patches.connection_config = ConnectionConfig  # type: ignore[assignment]


def _fednode_frame(payload: bytes) -> Any:
    from fednode.wire.frames import Frame
    from fednode.wire.messages import frame_head

    return Frame(frame_head(b"\xa1\x61x\x00", bytes(64)), payload)


def _fednode_transport(seed: int, args: argparse.Namespace) -> Any:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from fednode.p2p.libp2p_host import Libp2pTransport

    return Libp2pTransport(
        create_new_key_pair(seed.to_bytes(32, "big")),
        listen=(f"/ip4/{HOST}/tcp/0",),
        max_frame_bytes=max(args.size_mib * MiB + MiB, 512 * MiB),
        muxer=args.muxer,
    )


@asynccontextmanager
async def fednode_receiver(args: argparse.Namespace) -> AsyncIterator[dict[str, Any]]:
    t = _fednode_transport(1, args)
    async with trio.open_nursery() as nursery:
        await nursery.start(t.run)

        async def consume() -> None:
            async for _ in t.incoming:
                pass

        nursery.start_soon(consume)
        yield {"peer": t.local_peer, "addrs": list(t.addresses())}
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def fednode_sender(
    args: argparse.Namespace, target: dict[str, Any]
) -> AsyncIterator[Commands]:
    peer, addrs = target["peer"], tuple(target["addrs"])
    payload = b"\x5a" * (args.size_mib * MiB)
    seeds = itertools.count(100)
    t = _fednode_transport(2, args)
    async with trio.open_nursery() as nursery:
        await nursery.start(t.run)
        with trio.fail_after(PHASE_S):
            await t.connect(peer, addrs)

        async def bulk() -> float:
            return await _timed(lambda: t.send(peer, _fednode_frame(payload)))

        async def small() -> float:
            return await _median_small(lambda: t.send(peer, _fednode_frame(b"y" * 200)))

        async def probe() -> float:
            fresh = _fednode_transport(next(seeds), args)
            async with trio.open_nursery() as inner:
                await inner.start(fresh.run)

                async def dial_and_send() -> None:
                    await fresh.connect(peer, addrs)
                    await fresh.send(peer, _fednode_frame(b"x"))

                took = await _timed(dial_and_send)
                inner.cancel_scope.cancel()
            return took

        yield {"bulk": bulk, "small": small, "probe": probe}
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- stock
def _stock_host(seed: int) -> Any:
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.security.noise.transport import PROTOCOL_ID, Transport

    kp = create_new_key_pair(seed.to_bytes(32, "big"))
    return new_host(
        key_pair=kp,
        sec_opt={PROTOCOL_ID: Transport(kp, noise_privkey=x25519().private_key)},
        muxer_preference="YAMUX",
        listen_addrs=[multiaddr.Multiaddr(f"/ip4/{HOST}/tcp/0")],
    )


def _stock_bulk_handler(keep: bool) -> Callable[[Any], Awaitable[None]]:
    async def handler(stream: Any) -> None:
        try:
            hdr = b""
            while len(hdr) < LEN.size:
                hdr += await stream.read(LEN.size - len(hdr))
            (total,) = LEN.unpack(hdr)
            view = memoryview(bytearray(total)) if keep else None
            got = 0
            while got < total:
                chunk = await stream.read(min(total - got, MiB))
                if view is not None:
                    view[got : got + len(chunk)] = chunk
                got += len(chunk)
            await stream.write(b"ok")
            await stream.close()
        except Exception:  # the bench receiver must outlive a broken probe
            await stream.reset()

    return handler


@asynccontextmanager
async def stock_receiver(args: argparse.Namespace) -> AsyncIterator[dict[str, Any]]:
    import multiaddr
    from libp2p.custom_types import TProtocol

    host = _stock_host(1)
    host.set_stream_handler(TProtocol(BULK), _stock_bulk_handler(keep=not args.discard))
    async with host.run(listen_addrs=[multiaddr.Multiaddr(f"/ip4/{HOST}/tcp/0")]):
        addrs = [str(a) for a in host.get_transport_addrs()]
        yield {"peer": host.get_id().to_base58(), "addrs": addrs}


async def _stock_send(host: Any, pid: Any, payload: bytes) -> None:
    from libp2p.custom_types import TProtocol

    stream = await host.new_stream(pid, [TProtocol(BULK)])
    await stream.write(LEN.pack(len(payload)))
    for off in range(0, len(payload), MiB):
        await stream.write(payload[off : off + MiB])
    ack = b""
    while len(ack) < 2:
        ack += await stream.read(2 - len(ack))
    await stream.close()


@asynccontextmanager
async def stock_sender(args: argparse.Namespace, target: dict[str, Any]) -> AsyncIterator[Commands]:
    import multiaddr
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo

    pid = ID.from_base58(target["peer"])
    info = PeerInfo(pid, [multiaddr.Multiaddr(a) for a in target["addrs"]])
    listen = [multiaddr.Multiaddr(f"/ip4/{HOST}/tcp/0")]
    payload = b"\x5a" * (args.size_mib * MiB)
    seeds = itertools.count(100)
    host = _stock_host(2)
    async with host.run(listen_addrs=listen):
        with trio.fail_after(PHASE_S):
            await host.connect(info)

        async def bulk() -> float:
            return await _timed(lambda: _stock_send(host, pid, payload))

        async def small() -> float:
            return await _median_small(lambda: _stock_send(host, pid, b"y" * 200))

        async def probe() -> float:
            fresh = _stock_host(next(seeds))
            async with fresh.run(listen_addrs=listen):

                async def dial_and_send() -> None:
                    await fresh.connect(info)
                    await _stock_send(fresh, pid, b"x")

                return await _timed(dial_and_send)

        yield {"bulk": bulk, "small": small, "probe": probe}


# --------------------------------------------------------------------------- raw tcp
def _tcp_serve(keep: bool) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def serve(stream: trio.SocketStream) -> None:
        try:
            hdr = b""
            while len(hdr) < LEN.size:
                hdr += await stream.receive_some(LEN.size - len(hdr))
            (total,) = LEN.unpack(hdr)
            got = 0
            if keep:  # straight into the buffer: the fastest a Python receiver can be
                view = memoryview(bytearray(total))
                while got < total:
                    n = await stream.socket.recv_into(view[got:], min(total - got, MiB))
                    if not n:
                        break
                    got += n
            else:
                while got < total:
                    got += len(await stream.receive_some(min(total - got, MiB)))
            await stream.send_all(b"ok")
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()

    return serve


@asynccontextmanager
async def tcp_receiver(args: argparse.Namespace) -> AsyncIterator[dict[str, Any]]:
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, _tcp_serve(not args.discard), listeners)
        yield {"port": port}
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def tcp_sender(args: argparse.Namespace, target: dict[str, Any]) -> AsyncIterator[Commands]:
    payload = b"\x5a" * (args.size_mib * MiB)
    view = memoryview(payload)

    async def transfer(data: memoryview) -> None:
        s = await trio.open_tcp_stream(HOST, target["port"])
        try:
            await s.send_all(LEN.pack(len(data)))
            for off in range(0, len(data), MiB):
                await s.send_all(data[off : off + MiB])
            ack = b""
            while len(ack) < 2:
                ack += await s.receive_some(2 - len(ack))
        finally:
            await s.aclose()

    async def bulk() -> float:
        return await _timed(lambda: transfer(view))

    async def probe() -> float:
        return await _timed(lambda: transfer(memoryview(b"x")))

    yield {"bulk": bulk, "probe": probe}


STACKS = {
    "fednode": (fednode_receiver, fednode_sender),
    "stock": (stock_receiver, stock_sender),
    "tcp": (tcp_receiver, tcp_sender),
}


# --------------------------------------------------------------------------- children
async def _obey(commands: Commands) -> None:
    """Run one command per stdin line ("bulk", "small", "probe"), print its seconds."""
    _emit({"ready": sorted(commands)})
    async for line in _lines(0):
        if line == "quit":
            return
        if line in commands:
            _emit({"cmd": line, "s": await commands[line]()})
        else:
            _emit({"cmd": line, "error": "unknown command"})


async def child_main(args: argparse.Namespace) -> None:
    if args.stack == "fednode":
        _fednode_patch_selection(args.patches)
    elif args.patches and "malloc" in args.patches.split(","):
        # stock:malloc / tcp:malloc: only the allocator setting, no libp2p patches
        from fednode.p2p._libp2p_patches import tune_malloc

        tune_malloc()
    receiver, sender = STACKS[args.stack]
    with trio.fail_after(TOTAL_S):
        if args.role == "recv":
            async with receiver(args) as target:
                _emit(target)
                async for _ in _lines(0):  # serve until the parent closes stdin
                    pass
        elif args.role == "send":
            async with sender(args, json.loads(args.target)) as commands:
                await _obey(commands)
        else:  # both ends in this process, one trio loop
            async with receiver(args) as target, sender(args, target) as commands:
                await _obey(commands)


class Child:
    """A child process driven line by line (stdin commands, JSON lines on stdout)."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read()[-3000:] if self.proc.stderr else ""
                raise RuntimeError(f"child exited: {err}")
            try:
                parsed: dict[str, Any] = json.loads(line)
                return parsed
            except json.JSONDecodeError:
                continue  # stray output from a library

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _child_cmd(args: argparse.Namespace, stack: str, role: str, cpu: int) -> list[str]:
    """``stack`` is a name from STACKS, or ``fednode:<patch>+<patch>`` (an ablation)."""
    name, _, variant = stack.partition(":")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--stack", name, "--role", role]
    cmd += ["--size-mib", str(args.size_mib), "--muxer", args.muxer, "--cpu", str(cpu)]
    if args.discard:
        cmd += ["--discard"]
    patches = (
        variant.replace("+", ",") if variant else (args.patches if name == "fednode" else None)
    )
    if patches is not None:
        cmd += ["--patches", patches]
    return cmd


def run_all(args: argparse.Namespace, stacks: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=_repo_root() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    children: list[Child] = []
    senders: dict[str, Child] = {}
    results: dict[str, dict[str, Any]] = {s: {} for s in stacks}
    try:
        for stack in stacks:
            if args.procs == 1:
                child = Child(_child_cmd(args, stack, "both", 0), env)
                children.append(child)
            else:
                recv = Child(_child_cmd(args, stack, "recv", 0), env)
                children.append(recv)
                target = recv.read()
                cmd = [*_child_cmd(args, stack, "send", 1), "--target", json.dumps(target)]
                child = Child(cmd, env)
                children.append(child)
            ready = child.read()
            senders[stack] = child
            results[stack]["commands"] = ready["ready"]
        samples: dict[tuple[str, str], list[float]] = {}
        plan = [("bulk", args.repeat), ("probe", args.probes), ("small", 1)]
        for command, rounds in plan:
            for _ in range(rounds):
                for stack in stacks:  # interleaved: fednode, stock, tcp, fednode, ...
                    if command in results[stack]["commands"]:
                        samples.setdefault((stack, command), []).append(
                            senders[stack].ask(command)["s"]
                        )
        total = args.size_mib * MiB
        for (stack, command), secs in samples.items():
            r = results[stack]
            if command == "bulk":
                r["bulk_mbps"] = {
                    "best": round(total / min(secs) / 1e6, 1),
                    "median": round(total / statistics.median(secs) / 1e6, 1),
                    "all": [round(total / s / 1e6, 1) for s in secs],
                }
            else:
                key = {"probe": "connect_first_byte_ms", "small": "small_200B_ms"}[command]
                r[key] = {
                    "best": round(min(secs) * 1e3, 2),
                    "median": round(statistics.median(secs) * 1e3, 2),
                }
        for r in results.values():
            r.pop("commands", None)
    finally:
        for child in children:
            child.close()
    return results


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _print_table(results: dict[str, Any], stacks: list[str]) -> None:
    print(
        f"transport bench  {results['date']}  {results['cpu']} ({results['cores']} cores)  "
        f"py {results['python']}  {results['procs']}-proc  {results['size_mib']} MiB  "
        f"best of {results['repeat']}  load {results['loadavg_1m']}"
    )
    width = max(8, *(len(s) for s in stacks))
    for stack in stacks:
        r = results[stack]
        mbps = r["bulk_mbps"]
        line = f"  {stack:{width}s} {mbps['best']:8.1f} MB/s (median {mbps['median']})"
        if stack != "tcp" and "connect_first_byte_ms" in r:
            c = r["connect_first_byte_ms"]
            line += f"   connect->first byte acked {c['median']} ms (best {c['best']})"
        if "small_200B_ms" in r:
            line += f"   200 B message {r['small_200B_ms']['median']} ms"
        print(line)
    for key in ("fednode_vs_stock", "fednode_vs_tcp"):
        if key in results:
            print(f"  {key}: {results[key]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--probes", type=int, default=5, help="fresh-connection latency probes")
    ap.add_argument("--procs", type=int, choices=(1, 2), default=2)
    ap.add_argument("--stacks", default="fednode,stock,tcp")
    ap.add_argument("--muxer", choices=("yamux", "mplex"), default="yamux", help="fednode only")
    ap.add_argument(
        "--patches", default=None, help="fednode ablation: comma list or 'none' (default: all)"
    )
    ap.add_argument(
        "--discard",
        action="store_true",
        help="stock/tcp receivers drop the payload instead of keeping it in one buffer",
    )
    ap.add_argument("--isolate", action="store_true", help="re-run inside unshare -n (root)")
    ap.add_argument("--json", action="store_true", help="print the raw JSON result only")
    # child-process arguments
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stack", help=argparse.SUPPRESS)
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        _pin(args.cpu)
        trio.run(child_main, args)
        return
    if args.isolate:
        argv = [a for a in sys.argv[1:] if a != "--isolate"]
        inner = " ".join([sys.executable, os.path.abspath(__file__), *argv])
        os.execvp("unshare", ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"])

    stacks = [s for s in args.stacks.split(",") if s]
    unknown = [s for s in stacks if s.partition(":")[0] not in STACKS]
    if unknown:
        ap.error(f"unknown stacks {unknown}; known: {sorted(STACKS)}")
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "procs": args.procs,
        "size_mib": args.size_mib,
        "repeat": args.repeat,
        "muxer": args.muxer,
        "patches": args.patches if args.patches is not None else "all",
        "receivers": "discard" if args.discard else "keep",
    }
    results.update(run_all(args, stacks))
    best = {s: results[s]["bulk_mbps"]["best"] for s in stacks}
    if "fednode" in best and "stock" in best:
        results["fednode_vs_stock"] = round(best["fednode"] / best["stock"], 2)
    if "fednode" in best and "tcp" in best:
        results["fednode_vs_tcp"] = round(best["fednode"] / best["tcp"], 3)
    if not args.json:
        _print_table(results, stacks)
    _emit(results)


if __name__ == "__main__":
    main()
