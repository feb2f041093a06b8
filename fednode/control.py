"""The operator's control socket: ``fednode status`` and ``fednode promote`` for a running node.

A node started with ``--control-socket PATH`` (``net.control_socket``) listens on a Unix
domain socket at ``PATH``, created with mode 0600: only its owner (and root) may connect,
and it is never reachable from the network. A connection carries one request and gets
one reply, each a single JSON object on one line:

    {"op": "status"}
    {"op": "promote", "peer": "<peer id or a unique part of it>", "share": 0.5}

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. ``promote`` is
accepted only by a coordinator and only for one of its direct clients; it is queued on
the role (:meth:`~fednode.hierarchy.root.RootRole.control`) and takes effect between
rounds, so the next round uses the new tree. This module only checks a request's shape
and asks the role (:meth:`~fednode.role.Role.status`, :meth:`~fednode.role.Role.control`):
it never looks at the role's type or attributes.

Bounds: a request is at most :data:`MAX_REQUEST` bytes and must arrive within
:data:`REQUEST_TIMEOUT_S`; connections are served one at a time (operators are few).

The role objects are sans-IO and run on the node's trio thread; this server runs in the
node's nursery on that same thread, so it reads and queues on the role without locks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket as _socket
import stat
from pathlib import Path
from typing import Any

import trio

from .errors import ConfigError, ControlError
from .role import CONTROL_OPS, Role

log = logging.getLogger("fednode.control")

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT_S = 5.0


def handle_request(role: Role, request: Any) -> dict[str, Any]:
    """Answer one decoded request against ``role`` (pure: no I/O; tested directly).

    The shape is checked here; what the request means is the role's
    (:meth:`~fednode.role.Role.status`, :meth:`~fednode.role.Role.control`).
    """
    if not isinstance(request, dict) or request.get("op") not in CONTROL_OPS:
        return {"ok": False, "error": f"expected {{'op': one of {', '.join(CONTROL_OPS)}}}"}
    if request["op"] == "status":
        return {"ok": True, **role.status()}
    reply = role.control(request)
    if reply.get("ok"):
        log.warning("operator request %s done: %s", request["op"], reply)
    return reply


async def serve_control(role: Role, path: str, *, task_status: Any = trio.TASK_STATUS_IGNORED):
    """Listen on ``path`` until cancelled; removes the socket file on the way out."""
    sock_path = Path(path)
    _remove_stale(sock_path)
    sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is born 0600: no window with a wider mode
    try:
        await sock.bind(str(sock_path))
    except OSError as exc:
        sock.close()
        raise ConfigError("net.control_socket", path, f"a path this node can bind ({exc})") from exc
    finally:
        os.umask(old_umask)
    sock.listen(8)
    listener = trio.SocketListener(sock)
    log.info("control socket at %s", sock_path)
    task_status.started(str(sock_path))
    try:
        async with listener:
            while True:
                stream = await listener.accept()
                async with stream:
                    await _serve_one(role, stream)
    finally:
        sock_path.unlink(missing_ok=True)


async def _serve_one(role: Role, stream: trio.abc.Stream) -> None:
    reply: dict[str, Any]
    with trio.move_on_after(REQUEST_TIMEOUT_S) as scope:
        try:
            raw = await _read_line(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("control client went away: %s", exc)
            return
        try:
            reply = handle_request(role, json.loads(raw))
        except ControlError as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, UnicodeDecodeError) as exc:
            reply = {"ok": False, "error": f"a request is one JSON object on one line ({exc})"}
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(json.dumps(reply).encode() + b"\n")
    if scope.cancelled_caught:
        log.warning("control request timed out after %.0fs", REQUEST_TIMEOUT_S)


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ControlError(f"request larger than {MAX_REQUEST} bytes")
    return bytes(buf.split(b"\n", 1)[0])


def _remove_stale(path: Path) -> None:
    """Remove a socket file left by a node that died; refuse to touch anything else."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError("net.control_socket", str(path), "a path that is not an existing file")
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: a leftover
        return
    finally:
        probe.close()
    raise ConfigError("net.control_socket", str(path), "a socket no running node is serving")


def request(path: str, payload: dict[str, Any], *, timeout_s: float = REQUEST_TIMEOUT_S) -> Any:
    """Client side (the CLI): send one request, return the decoded reply (blocking)."""
    with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(f"no node is listening on {path} ({exc.strerror or exc})") from exc
        sock.sendall(json.dumps(payload).encode() + b"\n")
        buf = bytearray()
        while b"\n" not in buf and len(buf) <= MAX_REQUEST:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    try:
        return json.loads(bytes(buf).split(b"\n", 1)[0])
    except ValueError as exc:
        raise ControlError(f"the node sent an unreadable reply ({exc})") from exc
