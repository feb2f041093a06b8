"""The dashboard's HTTP server: one page, its two assets, a JSON snapshot, a live stream.

Runs as a task in the caller's trio nursery (the node's, or ``fednode sim``'s), on the
h11 parts the metrics endpoint uses (:mod:`fednode.http11`). Routes, ``GET``/``HEAD``
only (anything else is 405; the server changes nothing it serves):

* ``/`` — the page; ``/static/dashboard.js``, ``/static/dashboard.css`` — package data;
* ``/api/state`` — everything the page shows, as JSON, the graph laid out;
* ``/api/events`` — server-sent events: ``event: state`` with what changed since the
  stream's previous message (rounds, log entries, the node table; the graph when it
  changed), at most every :data:`PUSH_EVERY_S`, and a comment every
  :data:`KEEPALIVE_S` while nothing changes.

Bounds: at most ``dashboard.max_connections`` connections at once (the next gets 503 and
is closed), a request must arrive within :data:`REQUEST_TIMEOUT_S` and fit in
:data:`~fednode.http11.MAX_REQUEST_BYTES`, a live stream whose client does not take a
message within :data:`SEND_TIMEOUT_S` is dropped. With a token (``dashboard.token_file``,
required for a non-loopback address) every request must carry it, as
``Authorization: Bearer <token>`` or ``?token=<token>`` (the page passes its own on);
compared in constant time; a request without it gets 401.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import h11
import trio

from ..config import DashboardParams
from ..errors import ConfigError
from ..http11 import (
    MAX_REQUEST_BYTES,
    linger,
    next_request,
    open_listeners,
    refuse_malformed,
    respond,
)
from .layout import layout
from .state import Board, Cursor

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 10.0
PUSH_EVERY_S = 0.25
KEEPALIVE_S = 15.0
MIN_TOKEN_CHARS = 16
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
SAFETY = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:"),
)
ALLOW = ("Allow", "GET, HEAD")


def read_token(path: str) -> str | None:
    """The token in ``dashboard.token_file`` (its first line), or None without a file.

    Errors: ConfigError naming the field for an unreadable file or a short token."""
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("dashboard.token_file", path, f"a readable text file ({exc})") from exc
    token = text.splitlines()[0].strip() if text.strip() else ""
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise ConfigError(
            "dashboard.token_file",
            path,
            f"a first line of at least {MIN_TOKEN_CHARS} printable characters, no spaces",
        )
    return token


class _Hub:
    """Wakes the live streams when the board changes (from any thread)."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.changed = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._pending = False
        board.on_change = self._schedule

    def _schedule(self) -> None:
        if self._pending:
            return
        self._pending = True
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:
        self._pending = False
        self.changed.set()
        self.changed = trio.Event()


async def serve_dashboard(
    board: Board,
    params: DashboardParams,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``board`` on ``params.listen`` until cancelled; ``task_status.started`` gets
    the bound ``host:port``. Errors (at start): ConfigError naming the field."""
    token = read_token(params.token_file)
    listeners, bound = await open_listeners("dashboard.listen", params.listen)
    if token is not None:
        log.warning(
            "dashboard at http://%s/ (read-only): every request must carry the token in %s "
            "(open http://%s/?token=...)",
            bound,
            params.token_file,
            bound,
        )
    else:
        log.info("dashboard at http://%s/ (read-only, no token)", bound)
    hub = _Hub(board)
    server = _Server(board, hub, token, params.max_connections)
    try:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(server.accept, listener, nursery)
            task_status.started(bound)
    finally:
        board.on_change = None


class _Server:
    def __init__(self, board: Board, hub: _Hub, token: str | None, limit: int) -> None:
        self.board, self.hub, self.token, self.limit = board, hub, token, limit
        self.active = 0
        #: connections refused (over the bound) and requests without the token
        self.refused = 0
        self.unauthorized = 0

    async def accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                if self.active >= self.limit:
                    self.refused += 1
                    log.warning("dashboard: %d connections open, refusing one more", self.active)
                    with trio.move_on_after(REQUEST_TIMEOUT_S):
                        async with stream:
                            await _busy(stream)
                    continue
                self.active += 1
                nursery.start_soon(self.connection, stream)

    async def connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            log.info("dashboard client went away: %r", exc)
        finally:
            self.active -= 1

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        with trio.move_on_after(REQUEST_TIMEOUT_S) as scope:
            try:
                request = await next_request(conn, stream)
            except h11.RemoteProtocolError as exc:
                await refuse_malformed(stream, exc)
                return
        if scope.cancelled_caught or request is None:
            return  # said nothing in time, or closed without asking
        url = urlsplit(request.target.decode("latin-1"))
        if request.method not in (b"GET", b"HEAD"):
            await respond(conn, stream, 405, b"read-only: GET and HEAD\n", headers=[ALLOW])
            return
        if not self._authorized(request, url.query):
            self.unauthorized += 1
            log.warning("dashboard: request for %s without the token refused", url.path)
            await respond(conn, stream, 401, b"token required\n", headers=SAFETY)
            return
        head = request.method == b"HEAD"
        if url.path == "/api/events":
            await self._stream(conn, stream, head)
        elif url.path == "/api/state":
            body = json.dumps(self.snapshot(Cursor())).encode()
            await _ok(conn, stream, body, "application/json", head)
        elif url.path in ASSETS:
            name, content_type = ASSETS[url.path]
            body = resources.files(__package__).joinpath("static", name).read_bytes()
            if name == "index.html":  # the page asks for its assets with the same token
                body = body.replace(b"__QUERY__", self._query().encode())
            await _ok(conn, stream, body, content_type, head)
        else:
            await respond(conn, stream, 404, b"not found\n", headers=SAFETY)

    def _query(self) -> str:
        return "" if self.token is None else "?" + urlencode({"token": self.token})

    def _authorized(self, request: h11.Request, query: str) -> bool:
        if self.token is None:
            return True
        given = ""
        for name, value in request.headers:
            if name == b"authorization" and value.startswith(b"Bearer "):
                given = value[7:].decode("latin-1").strip()
        if not given:
            given = (parse_qs(query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def snapshot(self, cursor: Cursor) -> dict[str, Any]:
        """What changed since ``cursor`` (all of it for a new cursor), graph laid out."""
        out, graph_changed = self.board.delta(cursor)
        if graph_changed:
            version, roles, edges = self.board.graph_copy()
            positions = self.board.cached_layout(version)
            if positions is None:
                positions = layout(roles, edges)
                self.board.keep_layout(version, positions)
            out["graph"] = {
                "nodes": [{"id": n, "x": x, "y": y} for n, (x, y) in positions.items()],
                "edges": edges,
            }
        return out

    async def _stream(self, conn: h11.Connection, stream: trio.SocketStream, head: bool) -> None:
        headers = [("Content-Type", "text/event-stream"), *SAFETY]
        await _send(stream, conn.send(h11.Response(status_code=200, headers=headers)))
        if head:
            await _send(stream, conn.send(h11.EndOfMessage()))
            return
        await _send(stream, conn.send(h11.Data(data=b"retry: 2000\n\n")))
        cursor = Cursor()
        while True:
            changed = self.hub.changed
            message = json.dumps(self.snapshot(cursor), separators=(",", ":"))
            data = f"event: state\ndata: {message}\n\n".encode()
            await _send(stream, conn.send(h11.Data(data=data)))
            while True:
                with trio.move_on_after(KEEPALIVE_S):
                    await changed.wait()
                    break
                await _send(stream, conn.send(h11.Data(data=b": keepalive\n\n")))
            await trio.sleep(PUSH_EVERY_S)  # coalesce a burst of events into one message


async def _send(stream: trio.abc.Stream, data: bytes | None) -> None:
    if data:
        with trio.fail_after(SEND_TIMEOUT_S):
            await stream.send_all(data)


async def _ok(
    conn: h11.Connection, stream: trio.abc.Stream, body: bytes, content_type: str, head: bool
) -> None:
    await respond(conn, stream, 200, b"" if head else body, content_type, len(body), headers=SAFETY)


async def _busy(stream: trio.abc.Stream) -> None:
    """Over the connection bound: read the request (bounded), answer 503, close."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    with contextlib.suppress(h11.RemoteProtocolError, trio.BrokenResourceError):
        await next_request(conn, stream)
    body = b"too many dashboard connections\n"
    await respond(conn, stream, 503, body, headers=[("Retry-After", "5")], h11_error=True)
    await linger(stream)
