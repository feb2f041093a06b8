"""The small HTTP/1.1 server parts the node's read-only endpoints share (h11 on trio).

Used by the Prometheus endpoint (:mod:`fednode.prometheus`) and the dashboard
(:mod:`fednode.dashboard.server`): bind a ``host:port`` (a bad or busy address is a
:class:`~fednode.errors.ConfigError` naming the field), read one request bounded by
:data:`MAX_REQUEST_BYTES`, write one response, and linger after an error reply so the
client reads it before the connection closes. Parsing is h11's; nothing here keeps
state between requests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import h11
import trio

from .addresses import parse_host_port
from .errors import ConfigError

MAX_REQUEST_BYTES = 16 * 1024
LINGER_S = 1.0
TEXT = "text/plain; charset=utf-8"
_REASONS = {
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


async def open_listeners(field: str, listen: str) -> tuple[Sequence[trio.SocketListener], str]:
    """Bind ``listen`` (``host:port``; port 0 picks one): the listeners and the bound
    address as ``host:port`` (``[v6]:port``). Errors: ConfigError naming ``field``."""
    host, port = parse_host_port(field, listen)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(field, listen, f"an address this node can bind ({exc})") from exc
    name = listeners[0].socket.getsockname()
    bound = f"[{name[0]}]:{name[1]}" if ":" in name[0] else f"{name[0]}:{name[1]}"
    return listeners, bound


async def next_request(conn: h11.Connection, stream: trio.abc.Stream) -> h11.Request | None:
    """The next request on ``stream`` (None: the client closed without asking).

    Errors: :class:`h11.RemoteProtocolError` for a malformed or oversized request."""
    received = 0
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if isinstance(event, h11.ConnectionClosed):
            return None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            received += len(data)
            if received > MAX_REQUEST_BYTES:
                raise h11.RemoteProtocolError("request too large", error_status_hint=431)
            conn.receive_data(data)


async def respond(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    status: int,
    body: bytes,
    content_type: str = TEXT,
    length: int | None = None,
    *,
    headers: Sequence[tuple[str, str]] = (),
    h11_error: bool = False,
) -> None:
    """Write one complete response and ask the client to close (``Connection: close``).

    ``length`` overrides the body's (a HEAD reply); ``h11_error``: the request broke the
    protocol, so h11 will not send: the response is written raw."""
    all_headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body) if length is None else length)),
        ("Connection", "close"),
        *headers,
    ]
    if h11_error:
        reason = _REASONS.get(status, "Bad Request")
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(head.encode() + b"\r\n" + body)
        return
    parts = [conn.send(h11.Response(status_code=status, headers=all_headers))]
    if body:
        parts.append(conn.send(h11.Data(data=body)))
    parts.append(conn.send(h11.EndOfMessage()))
    data = b"".join(p for p in parts if p)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


async def refuse_malformed(stream: trio.abc.Stream, exc: h11.RemoteProtocolError) -> None:
    """Answer a request h11 could not parse (400, or 431 when too large), then linger."""
    status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
    conn = h11.Connection(h11.SERVER)
    await respond(conn, stream, status, f"bad request: {exc}\n".encode(), h11_error=True)
    await linger(stream)


async def linger(stream: trio.abc.Stream) -> None:
    """After an error reply to a request not read to its end: stop sending, then read and
    drop (briefly, boundedly) what the client still sends, so that closing does not reset
    the connection before the client has read the reply."""
    with trio.move_on_after(LINGER_S), contextlib.suppress(trio.BrokenResourceError):
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        for _ in range(64):  # at most 64 x 4 KiB
            if not await stream.receive_some(4096):
                return
