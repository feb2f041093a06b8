"""The operator's control socket: ``fednode status`` and ``fednode promote`` for a running node.

A node started with ``--control-socket PATH`` (``net.control_socket``) listens on a Unix
domain socket at ``PATH``, created with mode 0600: only its owner (and root) may connect,
and it is never reachable from the network. A connection carries one request and gets
one reply, each a single JSON object on one line:

    {"op": "status"}
    {"op": "promote", "peer": "<peer id or a unique part of it>", "share": 0.5}

Replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. ``promote`` is
accepted only by a coordinator and only for one of its direct clients; it is queued on
the role (:meth:`~fednode.hierarchy.root.RootRole.request_promotion`) and takes effect
between rounds, so the next round uses the new tree.

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

from .errors import ConfigError, FednodeError

log = logging.getLogger("fednode.control")

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT_S = 5.0
OPS = ("status", "promote")


class ControlError(FednodeError):
    """A control request failed (bad request, or the node cannot do what was asked)."""


def handle_request(role: Any, request: Any) -> dict[str, Any]:
    """Answer one decoded request against ``role`` (pure: no I/O; tested directly)."""
    if not isinstance(request, dict) or request.get("op") not in OPS:
        return {"ok": False, "error": f"expected {{'op': one of {', '.join(OPS)}}}"}
    if request["op"] == "status":
        return {"ok": True, **status_of(role)}
    peer = request.get("peer")
    share = request.get("share", 0.5)
    if not isinstance(peer, str) or not peer:
        return {"ok": False, "error": "promote needs 'peer': a peer id"}
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
        return {"ok": False, "error": f"'share' must be a number in [0, 1], got {share!r}"}
    if not hasattr(role, "request_promotion"):
        return {"ok": False, "error": f"only a coordinator promotes; this node is a {_kind(role)}"}
    try:
        target = resolve_peer(peer, direct_clients(role))
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}
    role.request_promotion(target, float(share))
    log.warning("operator asked to promote %s to aggregator (share %.2f)", target, share)
    return {"ok": True, "peer": target, "share": float(share), "effective": "next round"}


def direct_clients(role: Any) -> list[str]:
    tree = role.tree
    return sorted(p for p, a in tree.direct.items() if a.role == "client")


def resolve_peer(query: str, candidates: list[str]) -> str:
    """``query`` exactly, or the one candidate containing it (at least 6 characters)."""
    if query in candidates:
        return query
    if len(query) >= 6:
        hits = [c for c in candidates if query in c]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ControlError(f"{query!r} matches {len(hits)} direct clients; give more of it")
    raise ControlError(
        f"{query!r} is not a direct client of this coordinator "
        f"({len(candidates)} direct clients; see `fednode status`)"
    )


def status_of(role: Any) -> dict[str, Any]:
    """What ``fednode status`` shows: role, round, model version, the tree if it has one."""
    out: dict[str, Any] = {"role": _kind(role)}
    for attr in ("round_number", "model_version"):
        if hasattr(role, attr):
            out[attr.replace("_number", "")] = int(getattr(role, attr))
    if hasattr(role, "hierarchy"):
        out["tree"] = role.hierarchy()
        out["direct_clients"] = direct_clients(role)
    elif getattr(role, "parent", None) is not None:
        out["parent"] = role.parent
    return out


def _kind(role: Any) -> str:
    inner = getattr(role, "promoted", None) or role
    return str(getattr(inner, "role", "") or type(inner).__name__.lower())


async def serve_control(role: Any, path: str, *, task_status: Any = trio.TASK_STATUS_IGNORED):
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


async def _serve_one(role: Any, stream: trio.abc.Stream) -> None:
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
