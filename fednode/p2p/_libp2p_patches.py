"""Throughput patches for py-libp2p 0.8.1 (Noise + Yamux over TCP), wire-compatible.

Stock py-libp2p 0.8.1 moves bulk data at roughly 5 % of a raw TCP socket and sleeps
250 ms on every connect. The causes and the measurements are in
``research/libp2p-throughput.md``. The fixes below are that research's recommended
set, plus ``malloc``. Each was checked again against the 0.8.1 source and measured with
``scripts/bench/transport.py --stacks fednode:<patches>``. The figures, and two patches
that were tried and dropped, are in ``docs/BENCHMARKS.md``. None of them changes the
wire format, and a stock peer and a patched peer interoperate (tested both ways).
``noise_batch`` and ``rx2`` put exactly the same bytes on the wire; ``frame_1mib`` and
``release_on_read`` change only how big Yamux frames are and when window credit is sent.

==================  ==========================================================  =========
name                upstream problem it works around                            kind
==================  ==========================================================  =========
connect_config      ``Swarm.dial_peer`` waits the 250 ms happy-eyeballs delay   setting
                    (``_HAPPY_EYEBALLS_DELAY``) for a *failure* event; success
                    only ends the wait once ``max_connections_per_peer``
                    (default 3) connections exist, so every connect to a
                    one-address peer sleeps 250 ms. We pass
                    ``ConnectionConfig(max_connections_per_peer=1)``
                    (:func:`connection_config`).
release_on_read     ``PY_YAMUX_RELEASE_ON_READ`` defaults on: one WINDOW_UPDATE  function
                    per 64 KiB read (17 per MiB, each one its own Noise
                    message). Off = go-yamux hysteresis (update at half a
                    window). Patched as the module function instead of the
                    env var so it does not leak into child processes.
frame_1mib          ``yamux.MAX_MESSAGE_SIZE`` = 64 KiB + header is larger than  constant
                    Noise's 65,519 B plaintext, so every Yamux frame costs 2
                    Noise messages, and per-frame lock/copy overhead
                    dominates. 1 MiB frames: receivers accept <= 16 MiB
                    (py-libp2p) or check only the window (go-yamux); frames
                    never exceed the send window.
noise_batch         ``BaseNoiseMsgReadWriter.write_msg`` sends each <=65,519 B   method
                    Noise message with its own ``send_all``. Patched: encrypt
                    all messages of one write, then one ``send_all``, shielded
                    from cancellation (see below).
rx2                 The Noise reader makes 2 ``recv`` calls per message and     methods
                    ``SecureSession``/``read_exactly`` copy every byte ~11
                    times. Patched: 256 KiB ``recv``, decrypt straight from a
                    memoryview, ``SecureSession.read`` keeps a (bytes, offset)
                    leftover and joins once, ``read_exactly`` returns the first
                    read when it is complete.
malloc              Not libp2p: glibc hands the MiB-sized buffers of this path   process
                    back to the kernel and faults them in again; a page fault
                    costs ~4.5 us in this VM, 3 ms per MiB moved. Pins the
                    mmap/trim thresholds (:func:`tune_malloc`).
==================  ==========================================================  =========

**Cancellation.** In stock 0.8.1, cancelling a writer at the wrong checkpoint (after
``encrypt`` consumed a nonce, before or during ``send_all``) leaves the Noise stream out
of step, and the peer then fails to decrypt and tears the connection down. That breaks
every stream to that peer. ``noise_batch`` encrypts and sends inside a shielded scope,
with a stall limit (:data:`WRITE_STALL_S`). A cancelled sender therefore finishes its
current Noise batch (at most one Yamux frame, 1 MiB) and then sees the cancellation at
the next checkpoint. If the socket does not drain within the stall limit, the connection
is closed, because it is dead anyway. Measured: cancelling a 64 MiB send after 5-95 ms
broke the connection in 7 of 10 trials on stock and in 0 of 10 with ``noise_batch``.

Everything here is process-global (module attributes of libp2p, malloc). :func:`apply` is
idempotent. It applies the code patches only on the pinned version
(:data:`PINNED_VERSION`). On another version it logs a warning and applies nothing but
the settings. ``tests/test_libp2p_transport.py`` asserts that the pinned version and
every patched attribute still exist, so an upgrade fails loudly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import trio

log = logging.getLogger(__name__)

PINNED_VERSION = "0.8.1"
#: Yamux frame (header + body) the patched sender emits: 1 MiB body + 12 B header.
FRAME_BYTES = (1 << 20) + 12
#: bytes per ``recv`` in the patched Noise reader (4 maximal Noise messages).
RX_CHUNK = 4 * 65537
#: glibc malloc: allocations below this come from the heap (``malloc``)
MALLOC_MMAP_THRESHOLD = 4 << 20
#: glibc malloc: free heap kept before it is returned to the kernel (``malloc``)
MALLOC_TRIM_THRESHOLD = 64 << 20
#: seconds a shielded Noise batch may take to drain into the socket before the
#: connection is declared dead (only reached when the peer stops reading).
WRITE_STALL_S = 10.0

_MARK = "__fednode_patch__"


def connection_config() -> Any:
    """The ``ConnectionConfig`` fednode hosts use (``connect_config``: no 250 ms wait)."""
    from libp2p.network.config import ConnectionConfig

    return ConnectionConfig(max_connections_per_peer=1)


def _mark(fn: Callable[..., Any]) -> Callable[..., Any]:
    setattr(fn, _MARK, True)
    return fn


def _install(owner: object, name: str, fn: Callable[..., Any]) -> None:
    """Replace ``owner.name`` (a libp2p class or module attribute) with ``fn``, marked."""
    setattr(owner, name, _mark(fn))


def _is_patched(fn: object) -> bool:
    return bool(getattr(fn, _MARK, False))


# --------------------------------------------------------------------------- settings
def _release_on_read_off() -> bool:
    return False


def _patch_release_on_read() -> None:
    import libp2p.stream_muxer.yamux.yamux as yx

    if not _is_patched(yx._yamux_release_on_read):
        _install(yx, "_yamux_release_on_read", _release_on_read_off)


def _patch_frame_size() -> None:
    import libp2p.stream_muxer.yamux.yamux as yx

    yx.MAX_MESSAGE_SIZE = FRAME_BYTES


# --------------------------------------------------------------------------- noise tx
def _patch_noise_batch() -> None:
    import libp2p.security.noise.io as nio
    from libp2p.io.exceptions import ConnectionClosedError

    cls = nio.BaseNoiseMsgReadWriter
    if _is_patched(cls.write_msg):
        return
    stock = cls.write_msg
    maxp = nio.MAX_PLAINTEXT_LENGTH

    async def write_msg(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
        if prefix_encoded or not isinstance(self, nio.NoiseTransportReadWriter):
            return await stock(self, msg, prefix_encoded)  # handshake: unchanged
        raw = self.read_writer.read_write_closer
        with trio.CancelScope(shield=True):
            cipher = self.noise_state.noise_protocol.cipher_state_encrypt
            view = memoryview(msg)
            parts: list[bytes] = []
            for off in range(0, max(len(msg), 1), maxp):
                ct = cipher.encrypt_with_ad(None, view[off : off + maxp])
                parts.append(len(ct).to_bytes(2, "big"))
                parts.append(ct)
            with trio.move_on_after(WRITE_STALL_S) as stall:
                await raw.write(b"".join(parts))
            if stall.cancelled_caught:
                await raw.close()
                raise ConnectionClosedError(
                    f"noise write stalled for {WRITE_STALL_S}s; connection closed"
                )

    _install(cls, "write_msg", write_msg)


# --------------------------------------------------------------------------- noise rx
async def _read_exactly(reader: Any, n: int, retry_count: int = 100) -> bytes:
    """``libp2p.io.utils.read_exactly`` without the double copy in the common case."""
    from libp2p.io.exceptions import IncompleteReadError

    data = await reader.read(n)
    if len(data) == n:
        return bytes(data)
    buf = bytearray(data)
    for _ in range(retry_count):
        if len(buf) >= n:
            return bytes(buf)
        buf += await reader.read(n - len(buf))
    if len(buf) >= n:
        return bytes(buf)
    raise IncompleteReadError(
        f"Connection closed during read operation: expected {n} bytes but "
        f"received {len(buf)} bytes",
        expected_bytes=n,
        received_bytes=len(buf),
    )


def _patch_read_exactly() -> None:
    import libp2p.io.msgio as msgio
    import libp2p.io.utils as io_utils
    import libp2p.stream_muxer.yamux.yamux as yx

    for mod in (io_utils, msgio, yx):
        _install(mod, "read_exactly", _read_exactly)


def _patch_noise_rx() -> None:
    import libp2p.security.noise.io as nio
    from cryptography.exceptions import InvalidTag
    from libp2p.io.exceptions import IncompleteReadError
    from noise.exceptions import NoiseInvalidMessage

    cls = nio.BaseNoiseMsgReadWriter
    if _is_patched(cls.read_msg):
        return
    stock = cls.read_msg

    async def read_msg(self: Any, prefix_encoded: bool = False) -> bytes:
        if prefix_encoded or not isinstance(self, nio.NoiseTransportReadWriter):
            return await stock(self, prefix_encoded)  # handshake: unchanged
        state = self.__dict__.get("_fn_rx")
        if state is None:
            state = self.__dict__["_fn_rx"] = [b"", 0]
        buf, off = state
        raw = self.read_writer.read_write_closer
        while True:
            avail = len(buf) - off
            if avail >= 2:
                end = off + 2 + ((buf[off] << 8) | buf[off + 1])
                if len(buf) >= end:
                    state[1] = end
                    cipher = self.noise_state.noise_protocol.cipher_state_decrypt
                    try:
                        return bytes(cipher.decrypt_with_ad(None, memoryview(buf)[off + 2 : end]))
                    except InvalidTag as exc:
                        raise NoiseInvalidMessage("Failed authentication of message") from exc
                need = end - len(buf)
            else:
                need = 2 - avail
            # complete a straddling message with an exact read; otherwise read big
            data = await raw.read(need if avail else RX_CHUNK)
            if not data:
                raise IncompleteReadError(
                    f"Connection closed during read operation: buffered {avail} bytes",
                    expected_bytes=avail + need,
                    received_bytes=avail,
                )
            buf = buf[off:] + data if avail else bytes(data)
            off = 0
            state[0], state[1] = buf, 0

    _install(cls, "read_msg", read_msg)


def _patch_secure_session_rx() -> None:
    import libp2p.security.secure_session as ss
    from libp2p.io.exceptions import ConnectionClosedError

    cls = ss.SecureSession
    if _is_patched(cls.read):
        return

    async def read(self: Any, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        if self.low_watermark != self.high_watermark:  # data left by the stock reader
            return bytes(self._drain(n))
        lo = self.__dict__.get("_fn_lo")
        if lo is None:
            lo = self.__dict__["_fn_lo"] = [b"", 0]
        buf, off = lo
        have = len(buf) - off
        if n is None:
            if have:
                lo[0], lo[1] = b"", 0
                return buf[off:] if off else buf
            msg = await self.conn.read_msg()
            if msg == b"":
                raise ConnectionClosedError("Connection closed")
            return bytes(msg)
        if have >= n:
            lo[1] = off + n
            if off == 0 and n == len(buf):
                lo[0], lo[1] = b"", 0
                return buf
            return buf[off : off + n]
        parts: list[bytes | memoryview] = [memoryview(buf)[off:]] if have else []
        got = have
        lo[0], lo[1] = b"", 0
        while got < n:
            msg = await self.conn.read_msg()
            if msg == b"":
                if parts:
                    return b"".join(parts)
                raise ConnectionClosedError("Connection closed")
            take = n - got
            if len(msg) <= take:
                parts.append(msg)
                got += len(msg)
            else:
                parts.append(memoryview(msg)[:take])
                lo[0], lo[1] = msg, take
                got = n
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)

    _install(cls, "read", read)


def _patch_rx2() -> None:
    _patch_read_exactly()
    _patch_noise_rx()
    _patch_secure_session_rx()


def tune_malloc() -> bool:
    """Pin glibc's malloc thresholds (process-wide); True if applied.

    glibc starts with a 128 KiB mmap threshold and adapts it (and the trim threshold,
    2x) as big blocks are freed. The MiB-sized buffers of the Noise and Yamux path keep
    going back to the kernel and faulting back in. In this Firecracker VM a fresh page
    costs ~4.5 us, and one 1 MiB allocate/copy/free cycle takes 3.1 ms instead of
    0.16 ms. Allocations below 4 MiB now stay on the heap, and up to 64 MiB of freed
    heap is kept. Both values lie inside the range glibc's own adaptation reaches
    (32 MiB / 64 MiB). No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)
    ok &= libc.mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
    return bool(ok)


def _patch_malloc() -> None:
    if not tune_malloc():
        log.info("malloc thresholds not tuned (not glibc)")


#: every code patch by name, in the order :func:`apply` runs them
PATCHES: dict[str, Callable[[], None]] = {
    "release_on_read": _patch_release_on_read,
    "frame_1mib": _patch_frame_size,
    "noise_batch": _patch_noise_batch,
    "rx2": _patch_rx2,
    "malloc": _patch_malloc,
}

#: (module, dotted attribute) the patches replace or rely on; a test checks they exist
PATCHED_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("libp2p.network.config", "ConnectionConfig"),
    ("libp2p.network.swarm", "_HAPPY_EYEBALLS_DELAY"),
    ("libp2p.network.swarm", "Swarm.dial_peer"),
    ("libp2p.network.auto_connector", "AutoConnector.stop"),
    ("libp2p.stream_muxer.yamux.yamux", "_yamux_release_on_read"),
    ("libp2p.stream_muxer.yamux.yamux", "MAX_MESSAGE_SIZE"),
    ("libp2p.stream_muxer.yamux.yamux", "MAX_WINDOW_SIZE"),
    ("libp2p.stream_muxer.yamux.yamux", "read_exactly"),
    ("libp2p.security.noise.io", "BaseNoiseMsgReadWriter.write_msg"),
    ("libp2p.security.noise.io", "BaseNoiseMsgReadWriter.read_msg"),
    ("libp2p.security.noise.io", "NoiseTransportReadWriter"),
    ("libp2p.security.noise.io", "MAX_PLAINTEXT_LENGTH"),
    ("libp2p.security.secure_session", "SecureSession.read"),
    ("libp2p.security.secure_session", "SecureSession._drain"),
    ("libp2p.io.utils", "read_exactly"),
    ("libp2p.io.msgio", "read_exactly"),
)


def is_pinned_version() -> bool:
    return metadata.version("libp2p") == PINNED_VERSION


def apply(names: Iterable[str] | None = None) -> tuple[str, ...]:
    """Apply the patches (all by default; ``names`` picks some, for ablation benches).

    Idempotent: patched functions carry a marker and are never wrapped twice. Returns
    the names applied. On a libp2p other than :data:`PINNED_VERSION` nothing is
    patched (a warning is logged); :func:`connection_config` still applies.
    """
    wanted = tuple(PATCHES) if names is None else tuple(names)
    unknown = [n for n in wanted if n not in PATCHES]
    if unknown:
        raise ValueError(f"unknown libp2p patch(es) {unknown}; known: {sorted(PATCHES)}")
    if not is_pinned_version():
        log.warning(
            "libp2p %s is not the pinned %s: throughput patches NOT applied",
            metadata.version("libp2p"),
            PINNED_VERSION,
        )
        return ()
    for name in wanted:
        PATCHES[name]()
    return wanted
