"""Prometheus metrics of a node: the exposition, the HTTP endpoint on 127.0.0.1, bad input.

Real sockets on 127.0.0.1 only, every wait bounded.
"""

from __future__ import annotations

import math

import pytest
import trio

from fednode.addresses import parse_metrics_listen
from fednode.config import load_config
from fednode.errors import ConfigError
from fednode.loop import RunStats
from fednode.prometheus import NodeMetrics, serve_metrics


def _metrics() -> NodeMetrics:
    stats = RunStats(sent_frames=7, sent_bytes=7000, received_frames=5, send_failures=1)
    stats.rejected["AuthError"] += 2
    stats.refused["LocalProtocolError"] += 1
    return NodeMetrics(
        role="coordinator", peer_id="12D3KooWtest", federation="fed", stats=stats, peers=lambda: 3
    )


def _value(text: str, name: str) -> float:
    line = next(
        ln for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{")
    )
    return float(line.rsplit(" ", 1)[1])


def test_exposition_reads_the_run_stats_and_the_events() -> None:
    metrics = _metrics()
    text = metrics.exposition().decode()
    assert 'fednode_info{federation="fed",peer="12D3KooWtest",role="coordinator"} 1.0' in text
    assert _value(text, "fednode_frames_sent_total") == 7
    assert _value(text, "fednode_sent_bytes_total") == 7000
    assert 'fednode_frames_rejected_total{error="AuthError"} 2.0' in text
    assert 'fednode_sends_refused_total{error="LocalProtocolError"} 1.0' in text
    assert _value(text, "fednode_peers_connected") == 3
    assert math.isnan(_value(text, "fednode_accuracy"))
    metrics.stats.sent_frames += 1  # read at scrape time: nothing to keep in step
    metrics.on_event("round", {"round": 4, "accuracy": 0.91, "model_version": 4})
    metrics.on_event("peer_up", {"peer": "x"})
    text = metrics.exposition().decode()
    assert _value(text, "fednode_frames_sent_total") == 8
    assert _value(text, "fednode_round") == 4 and _value(text, "fednode_rounds_total") == 1
    assert _value(text, "fednode_accuracy") == pytest.approx(0.91)
    assert _value(text, "fednode_model_version") == 4


@pytest.mark.parametrize("value", ["9464", "localhost:9464", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_bad_metrics_address_fails_at_start_naming_the_field(value: str) -> None:
    with pytest.raises(ConfigError, match=r"net\.metrics_listen"):
        load_config(overrides={"net.metrics_listen": value})
    assert parse_metrics_listen("[::1]:0") == ("::1", 0)


async def _get(addr: str, request: bytes) -> bytes:
    host, port = addr.rsplit(":", 1)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        async with stream:
            await stream.send_all(request)
            out = b""
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


async def test_the_endpoint_serves_metrics_and_refuses_what_is_not_a_scrape() -> None:
    metrics = _metrics()
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_metrics, metrics, "127.0.0.1:0")
        assert addr.startswith("127.0.0.1:")
        ok = await _get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200") and b"text/plain; version=0.0.4" in ok
        assert b"fednode_frames_sent_total 7.0" in ok
        head = await _get(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"fednode_" not in head
        assert (await _get(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404")
        post = await _get(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405")
        assert (await _get(addr, b"\x00\x01 garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n"
        assert (await _get(addr, huge)).startswith(b"HTTP/1.1 4")
        # after all that, still serving
        again = await _get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert again.startswith(b"HTTP/1.1 200")
        nursery.cancel_scope.cancel()


async def test_a_client_that_says_nothing_is_dropped_after_the_timeout() -> None:
    metrics = _metrics()
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(lambda task_status: serve_metrics(
            metrics, "127.0.0.1:0", timeout_s=0.3, task_status=task_status
        ))  # fmt: skip
        host, port = addr.rsplit(":", 1)
        with trio.fail_after(10):
            silent = await trio.open_tcp_stream(host, int(port))
            assert await silent.receive_some(100) == b""  # closed by the server, no reply
            await silent.aclose()
        ok = await _get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        nursery.cancel_scope.cancel()


async def test_a_client_that_resets_the_connection_does_not_stop_the_endpoint() -> None:
    import socket
    import struct

    metrics = _metrics()
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(serve_metrics, metrics, "127.0.0.1:0")
        host, port = addr.rsplit(":", 1)
        for partial in (b"GET /metr", b""):  # reset mid-request, and before any byte
            with trio.fail_after(10):
                sock = trio.socket.socket()
                await sock.connect((host, int(port)))
                if partial:
                    await sock.send(partial)
                await trio.sleep(0.05)  # the server is reading
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # linger 0: RST, not FIN
            await trio.sleep(0.05)
        ok = await _get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        nursery.cancel_scope.cancel()


def test_aggregation_counters_follow_the_round_records_and_warnings() -> None:
    metrics = _metrics()
    metrics.on_event("round", {"round": 1, "agg_discarded": ["a", "b"], "agg_clipped": 3})
    metrics.on_event("edge_round", {"round": 1, "agg_discarded": ["c"], "agg_clipped": 0})
    metrics.on_event("update_flagged", {"round": 1, "peer": "a"})
    metrics.on_event("claim_capped", {"round": 1, "peer": "b"})
    metrics.on_event("round_failed", {"round": 2, "reason": "krum", "rule": True})
    metrics.on_event("round_failed", {"round": 3, "reason": "too few"})  # not the rule's
    text = metrics.exposition().decode()
    assert 'fednode_aggregation_updates_total{action="discarded"} 3.0' in text
    assert 'fednode_aggregation_updates_total{action="clipped"} 3.0' in text
    assert 'fednode_aggregation_updates_total{action="flagged"} 1.0' in text
    assert 'fednode_aggregation_updates_total{action="capped"} 1.0' in text
    assert _value(text, "fednode_aggregation_rule_failures_total") == 1
