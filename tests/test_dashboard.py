"""The live dashboard over HTTP: JSON and server-sent events while a simulation runs, the
token, the connection bound, bad config. Real sockets on 127.0.0.1 only; every wait has a
deadline (``trio.fail_after`` / ``threading.Event.wait(timeout)``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from fednode.config import DashboardParams, load_config
from fednode.dashboard import Board, read_token, serve_dashboard
from fednode.dashboard.nodeview import NodeView
from fednode.errors import ConfigError
from fednode.sim import build_topology, load_topology, run_experiment
from fednode.sim.live import Feed

pytestmark = pytest.mark.net
WAIT_S = 60
TOKEN = "s3cret-token-0123456789"


async def _request(addr: str, path: str, method: str = "GET", headers: str = "") -> bytes:
    host, port = addr.rsplit(":", 1)
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n"
            await stream.send_all(head.encode() + b"\r\n")
            out = b""
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


def _json(response: bytes) -> Any:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


class _Events:
    """An SSE client (h11 parses the response): ``next()`` is the next ``state`` message."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self.stream, self.conn, self.buf = stream, conn, b""

    @classmethod
    async def open(cls, addr: str, query: str = "") -> _Events:
        host, port = addr.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target=f"/api/events{query}", headers=[("Host", "x")])
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        return cls(stream, conn)

    async def next(self) -> dict[str, Any]:
        marker = b"event: state\ndata: "
        while True:
            start = self.buf.find(marker)
            end = self.buf.find(b"\n\n", start) if start >= 0 else -1
            if end >= 0:
                line = self.buf[start + len(marker) : end]
                self.buf = self.buf[end + 2 :]
                return json.loads(line)
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
                assert dict(event.headers)[b"content-type"] == b"text/event-stream"
            elif isinstance(event, h11.Data):
                self.buf += bytes(event.data)
            else:
                raise AssertionError(f"the stream ended: {event}")


def _gate(feed: Feed, hold_at: int, held: threading.Event, release: threading.Event) -> Any:
    """The feed's watch, with the run held (in its thread) after round ``hold_at``."""

    def watch(topo: Any, built: Any, driver: Any) -> Any:
        listen = feed.watch(topo, built, driver)

        def gated(index: int, event: str, data: dict[str, Any], now: float) -> None:
            listen(index, event, data, now)
            if event == "round" and data.get("round") == hold_at:
                held.set()
                assert release.wait(WAIT_S), "the test never released the run"

        return gated

    return watch


async def _release_on_exit(release: threading.Event) -> None:
    """If the test fails (its nursery is cancelled), let the held run end at once."""
    try:
        await trio.sleep_forever()
    finally:
        release.set()


async def test_state_and_events_follow_a_running_simulation() -> None:
    board = Board(title="star", kind="star", clock="virtual")
    feed = Feed(board)
    held, release = threading.Event(), threading.Event()
    topo = build_topology("star", "star", 4, name="star")  # coordinator + 3 clients
    overrides = {"data.task": "synthetic", "rounds.rounds": 4, "train.local_epochs": 1}
    result: list[Any] = []

    def run() -> None:
        result.append(
            run_experiment(topo, overrides=overrides, watch=_gate(feed, 2, held, release))
        )

    done = trio.Event()

    async def run_then_finish() -> None:
        result.append(await trio.to_thread.run_sync(run))
        board.finish()  # what run_live does once the run returned
        done.set()

    params = DashboardParams(listen="127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_dashboard, board, params)
        events = await _Events.open(addr)
        nursery.start_soon(run_then_finish)
        nursery.start_soon(_release_on_exit, release)
        seen: dict[int, dict[str, Any]] = {}
        with trio.fail_after(WAIT_S):
            first = await events.next()
            assert first["clock"] == "virtual"
            graph = first.get("graph")
            seen.update({r["round"]: r for r in first["rounds"]})
            while len(seen) < 2:
                msg = await events.next()
                seen.update({r["round"]: r for r in msg["rounds"]})
                graph = msg.get("graph") or graph
            await trio.to_thread.run_sync(held.wait, WAIT_S)
        # the run is held after round 2: the page sees it running, with two rounds
        state = _json(await _request(addr, "/api/state"))
        assert state["status"] == "running" and first["status"] == "running"
        assert [r["round"] for r in state["rounds"]] == [1, 2]
        assert len(state["graph"]["nodes"]) == 4 and len(state["graph"]["edges"]) == 3
        roles = sorted(n["role"] for n in state["nodes"])
        assert roles == ["client", "client", "client", "coordinator"]
        assert all(0 <= n["x"] <= 1 and 0 <= n["y"] <= 1 for n in state["graph"]["nodes"])
        assert any(e["event"] == "round" for e in state["events"])
        release.set()
        with trio.fail_after(WAIT_S):
            await done.wait()
            while True:
                msg = await events.next()
                seen.update({r["round"]: r for r in msg["rounds"]})
                if msg["status"] == "finished":
                    break
        res = result[0]
        assert res.error is None and sorted(seen) == [1, 2, 3, 4]
        # the page's numbers are the run's
        assert [seen[r]["accuracy"] for r in sorted(seen)] == pytest.approx(list(res.accuracy))
        assert all(seen[r]["bytes_up"] > 0 and seen[r]["bytes_down"] > 0 for r in seen)
        assert board.nodes["n0"].round == 4  # the coordinator's own round, from its status
        assert graph is not None and len(graph["nodes"]) == 4  # sent with the first rounds
        await events.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_gossip_run_draws_its_graph_and_rounds() -> None:
    board = Board(title="ring", kind="gossip", clock="virtual")
    feed = Feed(board)
    topo = load_topology("ring16", n=6)
    params = DashboardParams(listen="127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_dashboard, board, params)
        res = await trio.to_thread.run_sync(
            lambda: run_experiment(
                topo, overrides={"data.task": "synthetic", "rounds.rounds": 3}, watch=feed.watch
            )
        )
        state = _json(await _request(addr, "/api/state"))
        nursery.cancel_scope.cancel()
    assert res.error is None
    assert board.kind == "gossip"
    assert len(state["graph"]["nodes"]) == 6 and len(state["graph"]["edges"]) == 6
    assert {n["role"] for n in state["nodes"]} == {"peer"}
    rows = {r["round"]: r for r in state["rounds"]}
    assert sorted(rows) == [1, 2, 3]
    assert all(
        r["peers"] == 6 and r["loss"] is not None and r["bytes_up"] > 0 for r in rows.values()
    )


async def test_the_token_is_required_on_every_request(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    board = Board(title="t", kind="star")
    params = DashboardParams(listen="127.0.0.1:0", token_file=str(token_file))
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_dashboard, board, params)
        for path in ("/", "/api/state", "/api/events", "/static/dashboard.js", "/nope"):
            assert (await _request(addr, path)).startswith(b"HTTP/1.1 401"), path
            wrong = await _request(addr, path + "?token=" + TOKEN[:-1] + "X")
            assert wrong.startswith(b"HTTP/1.1 401"), path
        bearer = f"Authorization: Bearer {TOKEN}\r\n"
        assert _json(await _request(addr, "/api/state", headers=bearer))["title"] == "t"
        page = await _request(addr, f"/?token={TOKEN}")
        assert page.startswith(b"HTTP/1.1 200")
        assert f'src="/static/dashboard.js?token={TOKEN}"'.encode() in page  # assets too
        js = await _request(addr, f"/static/dashboard.js?token={TOKEN}")
        assert js.startswith(b"HTTP/1.1 200") and b"EventSource" in js
        post = await _request(addr, f"/api/state?token={TOKEN}", method="POST")
        assert post.startswith(b"HTTP/1.1 405")  # read-only
        nursery.cancel_scope.cancel()


async def test_connections_are_bounded() -> None:
    board = Board(title="b", kind="star")
    params = DashboardParams(listen="127.0.0.1:0", max_connections=2)
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_dashboard, board, params)
        with trio.fail_after(WAIT_S):
            streams = [await _Events.open(addr) for _ in range(2)]
            for s in streams:
                await s.next()  # both served and held open
            busy = await _request(addr, "/api/state")
            assert busy.startswith(b"HTTP/1.1 503")
            await streams[0].stream.aclose()
            while True:  # the server notices the closed stream when it next writes
                board.finish("poke")
                reply = await _request(addr, "/api/state")
                if reply.startswith(b"HTTP/1.1 200"):
                    break
                await trio.sleep(0.05)
        await streams[1].stream.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"dashboard.listen": "0.0.0.0:8080"}, "dashboard.listen"),  # no token file
        ({"dashboard.listen": "localhost:8080"}, "dashboard.listen"),
        ({"dashboard.listen": "127.0.0.1"}, "dashboard.listen"),
        ({"dashboard.max_connections": 0}, "dashboard.max_connections"),
        ({"dashboard.event_log": 0}, "dashboard.event_log"),
        ({"dashboard.round_pause_s": -1}, "dashboard.round_pause_s"),
        ({"dashboard.linger_s": float("inf")}, "dashboard.linger_s"),
    ],
)
def test_bad_dashboard_config_fails_at_start_naming_the_field(
    fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(overrides=fields)


def test_a_non_loopback_address_with_a_token_file_is_accepted(tmp_path: Path) -> None:
    config = load_config(
        overrides={"dashboard.listen": "0.0.0.0:8080", "dashboard.token_file": "tok"}
    )
    assert config.dashboard.listen == "0.0.0.0:8080"


@pytest.mark.parametrize("content", [None, "", "short\n", "has a space in it 12345\n"])
def test_a_bad_token_file_fails_naming_the_field(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=r"dashboard\.token_file"):
        read_token(str(path))
    path.write_text(TOKEN + "\nignored\n")
    assert read_token(str(path)) == TOKEN


async def test_a_busy_port_fails_naming_the_field() -> None:
    board = Board(title="b", kind="star")
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_dashboard, board, DashboardParams(listen="127.0.0.1:0"))
        with pytest.raises(ConfigError, match=r"dashboard\.listen"):
            await serve_dashboard(Board(title="c", kind="star"), DashboardParams(listen=addr))
        nursery.cancel_scope.cancel()


def test_sim_refuses_a_dashboard_it_cannot_follow() -> None:
    import argparse

    from fednode.cli.sim import add_sim_arguments, run_sim

    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    for argv in (
        ["--dashboard", "127.0.0.1:0", "--workers", "2"],
        ["--dashboard", "127.0.0.1:0", "--compare", "ring16", "torus4x4"],
        ["--dashboard", "10.1.2.3:8080"],  # not loopback, no token
    ):
        with pytest.raises(ConfigError, match=r"dashboard\.listen"):
            run_sim(parser.parse_args(argv))


def test_node_view_draws_the_coordinators_tree_and_marks_peers() -> None:
    board = Board(title="c", kind="coordinator")
    tree: dict[str, list[str]] = {"": ["agg"], "agg": ["c1", "c2"]}
    view = NodeView(
        board, "me", "coordinator", lambda: {"round": 3, "tree": tree}, clock=lambda: 7.0
    )
    assert {n: r.role for n, r in board.nodes.items()} == {
        "me": "coordinator",
        "agg": "aggregator",
        "c1": "client",
        "c2": "client",
    }
    assert board.edges == {("me", "agg"), ("agg", "c1"), ("agg", "c2")}
    view.on_event("me", "peer_up", {"peer": "c3"})
    assert board.nodes["c3"].role == "client" and ("me", "c3") in board.edges
    view.on_event("me", "rejected", {"peer": "c1", "error": "AuthError"})
    view.on_event("me", "peer_down", {"peer": "c2"})
    view.on_event("me", "round", {"round": 3, "accuracy": 0.5, "loss": 1.0, "bytes_up": 9})
    assert board.nodes["c1"].rejections == 1
    assert board.nodes["c2"].state == "down" and board.nodes["c2"].last_seen == 7.0
    assert board.nodes["me"].round == 3
    out, _ = board.delta(board_cursor())
    assert out["rounds"] == [
        {"round": 3, "accuracy": 0.5, "loss": 1.0, "bytes_up": 9, "bytes_down": 0, "t": 7.0}
    ]


def board_cursor() -> Any:
    from fednode.dashboard.state import Cursor

    return Cursor()
