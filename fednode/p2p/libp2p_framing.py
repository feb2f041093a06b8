"""How one fednode frame travels on one libp2p stream: framing, stream I/O, foreign errors.

One stream per frame, protocol ``/fednode/1.0.0/msg``. The stream framing is internal
to this transport::

    sender -> receiver   select       multistream-select header + protocol id
                                      (pipelined; the receiver's libp2p echoes both)
                         payload_len  u64 BE        (8 B)
                         head         prefix "!2sBBI" (8 B) + CBOR header + signature;
                                      its length comes from wire.messages.head_length()
                         payload      payload_len raw bytes
    receiver -> sender   select echo  (libp2p's multistream-select answer)
                         status       1 B: 0 = delivered (queued on ``incoming``),
                                      1 = too large, 2 = bad prefix, 3 = not taken in
                                      time, 4 = sender not accepted (``accept_from``)

The receiver checks ``head_len + payload_len <= max_frame_bytes`` *before* allocating.
It then reads the payload with ``read(n)`` into one preallocated ``bytearray`` and hands
it on as a read-only ``memoryview`` (no further copy). The transport treats frames as
opaque. It does not check that the header's announced payload length matches
``payload_len``; the envelope does that, in its fixed order.

:data:`FOREIGN` lists what libp2p, trio or the OS may raise from stream operations; the
transport (:mod:`.libp2p_host`) converts those to fednode errors, once, at its boundary.
"""

from __future__ import annotations

import struct

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.utils import encode_delim

from ..errors import FrameTooLarge, RemoteProtocolError
from ..wire.frames import Frame
from ..wire.messages import PREFIX, head_length

PROTOCOL_ID = TProtocol("/fednode/1.0.0/msg")
#: multistream-select 1.0 header + our protocol, pipelined ahead of the frame; a
#: listener that speaks the protocol echoes exactly these bytes
SELECT = encode_delim(b"/multistream/1.0.0") + encode_delim(PROTOCOL_ID.encode())
MiB = 1 << 20
#: transport preamble: u64 payload length, then the 8-byte frame prefix
PREAMBLE = struct.Struct("!Q")
STATUS_OK, STATUS_TOO_LARGE, STATUS_BAD_PREFIX, STATUS_BUSY, STATUS_NOT_ACCEPTED = range(5)
STATUS_TEXT = {
    STATUS_TOO_LARGE: "frame larger than the receiver's limit",
    STATUS_BAD_PREFIX: "bad frame prefix",
    STATUS_BUSY: "receiver did not take the frame in time",
    STATUS_NOT_ACCEPTED: "receiver does not accept frames from this peer",
}
#: payload bytes per stream.write (Yamux cuts it into 1 MiB frames)
WRITE_CHUNK = 4 * MiB
#: max bytes per stream.read(n) into the frame buffer
READ_CHUNK = 4 * MiB
#: frames up to this size go out in a single write (preamble + head + payload)
SMALL_FRAME = 64 * 1024

# Everything libp2p, trio or the OS may raise from stream and dial operations.
FOREIGN: tuple[type[BaseException], ...] = (
    BaseLibp2pError,
    OSError,
    EOFError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


async def read_exactly(stream: INetStream, n: int) -> bytes:
    """Read exactly ``n`` (small) bytes; EOF before that is a remote protocol error."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = await stream.read(n - got)
        if not chunk:
            raise RemoteProtocolError(f"stream ended after {got} of {n} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


async def send_on(stream: INetStream, head: bytes, parts: tuple[memoryview, ...]) -> int:
    """Select the protocol, write the frame, and wait for the status byte.

    Protocol selection is pipelined ("lazy" multistream-select, as go-libp2p does
    for a single protocol): the header, the protocol id and the frame go out in
    one write instead of two round trips first. The listener's echo is checked
    before the status. A listener that does not speak the protocol answers "na" and
    resets the stream, and that is reported as :class:`PeerGone`.

    The receiver answers early when it refuses a frame (too large, bad prefix);
    the writer is then cancelled at once instead of pushing the rest of the payload.
    """
    written = False

    async def write_frame() -> None:
        nonlocal written
        size = sum(len(part) for part in parts)
        start = SELECT + PREAMBLE.pack(size)
        if size <= SMALL_FRAME:
            await stream.write(b"".join((start, head, *parts)))
        else:
            await stream.write(start + head)
            for payload in parts:  # the parts in order: the payload bytes, never joined
                for off in range(0, len(payload), WRITE_CHUNK):
                    await stream.write(payload[off : off + WRITE_CHUNK])  # type: ignore[arg-type]
        written = True

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_frame)
            answer = await read_exactly(stream, len(SELECT) + 1)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    if answer[: len(SELECT)] != SELECT:
        raise RemoteProtocolError(f"peer does not speak {PROTOCOL_ID}: {answer!r}")
    status = answer[-1]
    if status == STATUS_OK and not written:
        raise RemoteProtocolError("acknowledged before the whole frame was sent")
    return status


async def read_frame(stream: INetStream, *, max_header: int, max_frame: int) -> Frame:
    """Read one frame: sizes checked (``FrameTooLarge``, ``SchemaError``) before allocating."""
    first = await read_exactly(stream, PREAMBLE.size + PREFIX.size)
    (payload_len,) = PREAMBLE.unpack_from(first)
    head_len = head_length(first[PREAMBLE.size :], max_header=max_header)
    if head_len + payload_len > max_frame:
        raise FrameTooLarge(
            f"frame of {head_len} + {payload_len} bytes exceeds the limit of {max_frame}"
        )
    head = first[PREAMBLE.size :] + await read_exactly(stream, head_len - PREFIX.size)
    buf = bytearray(payload_len)
    view = memoryview(buf)
    got = 0
    while got < payload_len:
        chunk = await stream.read(min(payload_len - got, READ_CHUNK))
        if not chunk:
            raise RemoteProtocolError(f"stream ended after {got} of {payload_len} payload B")
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    return Frame(head, view.toreadonly())


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error in ``group`` that is not a :class:`trio.Cancelled` (else the group)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = first_error(exc)
            if inner is not exc:
                return inner
        elif not isinstance(exc, trio.Cancelled):
            return exc
    return group
