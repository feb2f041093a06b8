"""`fednode run` end to end over real libp2p on 127.0.0.1: real processes, bootstrap, no mDNS.

Every node listens on 127.0.0.1 only; every wait has a deadline; every process is
terminated (then killed) in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fednode.crypto.identity import Identity, save_key

pytestmark = pytest.mark.net

FEDNODE = [sys.executable, "-m", "fednode.cli", "run", "--no-mdns", "--log", "json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _coordinator_key(tmp_path: Path) -> tuple[Path, str]:
    identity = Identity.generate()
    path = tmp_path / "coordinator.key"
    save_key(identity, path)
    return path, identity.peer_id


def _spawn(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)


def _spawn_coordinator(
    tmp_path: Path, key: Path, port: int, rounds: int, *args: str
) -> subprocess.Popen[bytes]:
    """A coordinator on 127.0.0.1:``port`` with ``key``, E=1, logging to coordinator.log."""
    base = [*FEDNODE, "--role", "coordinator", "--rounds", str(rounds), "--local-epochs", "1"]
    base += ["--listen", f"/ip4/127.0.0.1/tcp/{port}", "--key-file", str(key)]
    return _spawn([*base, *args], tmp_path / "coordinator.log")


def _events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line still being written
    return out


def _wait_for(
    path: Path, found: Callable[[list[dict[str, Any]]], bool], timeout: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _events(path)
        if found(events):
            return events
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s; log of {path.name}:\n{path.read_text()}")


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def test_star_federation_over_libp2p_loopback(tmp_path: Path) -> None:
    coord_key, coord_id = _coordinator_key(tmp_path)
    port = _free_port()
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{coord_id}"
    procs = []
    try:
        # clients first: they must find the coordinator whenever it comes up (redial backoff)
        for i in range(2):
            args = [*FEDNODE, "--role", "client", "--client-index", str(i), "--num-clients", "2"]
            args += ["--local-epochs", "1", "--listen", "/ip4/127.0.0.1/tcp/0"]
            args += ["--key-file", str(tmp_path / f"k{i}.key"), "--bootstrap", boot]
            procs.append(_spawn(args, tmp_path / f"client{i}.log"))
        coord = _spawn_coordinator(tmp_path, coord_key, port, 2, "--min-available-clients", "2")
        procs.append(coord)
        assert coord.wait(timeout=120) == 0, (tmp_path / "coordinator.log").read_text()
    finally:
        _stop_all(procs)
    rounds = [e for e in _events(tmp_path / "coordinator.log") if e["event"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["completed"] == 2 for r in rounds)
    assert rounds[1]["accuracy"] > 0.5
    assert "stopped: finished 2 rounds" in (tmp_path / "coordinator.log").read_text()


def test_two_gossip_peers_wait_for_each_other_and_evaluate_every_round(tmp_path: Path) -> None:
    """The gossip role itself holds its first round for its consortium (``peers_ready``)
    and evaluates its model after each round (``gossip_eval``), the last one included."""
    first_key, first_id = _coordinator_key(tmp_path)
    port = _free_port()
    common = [*FEDNODE, "--role", "peer", "--rounds", "2", "--local-epochs", "1"]
    common += ["--min-available-clients", "2", "--num-clients", "2"]
    procs = []
    try:
        args = [*common, "--client-index", "0", "--key-file", str(first_key)]
        args += ["--listen", f"/ip4/127.0.0.1/tcp/{port}"]
        procs.append(_spawn(args, tmp_path / "peer0.log"))
        args = [*common, "--client-index", "1", "--key-file", str(tmp_path / "k1.key")]
        args += ["--listen", "/ip4/127.0.0.1/tcp/0"]
        args += ["--bootstrap", f"/ip4/127.0.0.1/tcp/{port}/p2p/{first_id}"]
        procs.append(_spawn(args, tmp_path / "peer1.log"))
        for i, proc in enumerate(procs):
            assert proc.wait(timeout=120) == 0, (tmp_path / f"peer{i}.log").read_text()
    finally:
        _stop_all(procs)
    for i in range(2):
        events = _events(tmp_path / f"peer{i}.log")
        (ready,) = [e for e in events if e["event"] == "peers_ready"]
        assert ready["peers"] == ready["wanted"] == 1
        assert [e["round"] for e in events if e["event"] == "gossip_round"] == [1, 2]
        evals = [e for e in events if e["event"] == "gossip_eval"]
        assert [e["round"] for e in evals] == [1, 2] and 0 <= evals[-1]["accuracy"] <= 1
        assert next(e for e in events if e["event"] == "stopped")["error"] is None


def test_sigterm_says_goodbye_prints_why_and_exits_0(tmp_path: Path) -> None:
    coord_key, coord_id = _coordinator_key(tmp_path)
    port = _free_port()
    coord_log, client_log = tmp_path / "coordinator.log", tmp_path / "client.log"
    coord = _spawn_coordinator(
        tmp_path, coord_key, port, 100, "--min-available-clients", "1", "--min-fit-clients", "1"
    )
    client = _spawn(
        [
            *FEDNODE,
            "--role",
            "client",
            "--local-epochs",
            "1",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--key-file",
            str(tmp_path / "client.key"),
            "--bootstrap",
            f"/ip4/127.0.0.1/tcp/{port}/p2p/{coord_id}",
        ],
        client_log,
    )
    try:
        # the federation is working: at least one round done
        _wait_for(coord_log, lambda ev: any(e["event"] == "round" for e in ev), timeout=120)
        client_id = next(e["peer"] for e in _events(client_log) if e["event"] == "listening")

        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=30) == 0, client_log.read_text()

        # the coordinator heard the goodbye (or at least the connection closing)
        _wait_for(
            coord_log,
            lambda ev: any(e["event"] == "peer_down" and e["peer"] == client_id for e in ev),
            timeout=15,
        )
        coord.send_signal(signal.SIGTERM)
        assert coord.wait(timeout=30) == 0, coord_log.read_text()
    finally:
        _stop_all([client, coord])

    text = client_log.read_text()
    assert "stopped: SIGTERM" in text
    events = _events(client_log)
    goodbye = next(e for e in events if e["event"] == "goodbye")
    assert goodbye["delivered"] == goodbye["peers"] == 1 and goodbye["reason"] == "SIGTERM"
    stopped = next(e for e in events if e["event"] == "stopped")
    assert stopped["signal"] == "SIGTERM" and stopped["error"] is None
    assert "stopped: SIGTERM" in coord_log.read_text()


def test_two_tier_without_discovery_clients_dial_the_aggregator_they_are_assigned(
    tmp_path: Path,
) -> None:
    """--no-mdns, everyone bootstraps to the coordinator only: a client learns where its
    aggregator listens from the coordinator's Assign (the aggregator's advertised
    addresses) and dials it; the rounds run through the aggregator."""
    coord_key, coord_id = _coordinator_key(tmp_path)
    port = _free_port()
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{coord_id}"
    local = ["--local-epochs", "1", "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", boot]
    procs = []
    try:
        coord = _spawn_coordinator(
            tmp_path, coord_key, port, 2, "--min-available-clients", "2", "--min-fit-clients", "1"
        )
        procs.append(coord)
        agg_args = ["--role", "aggregator", "--region", "r0", "--key-file"]
        agg_args += [str(tmp_path / "agg.key"), *local]
        procs.append(_spawn([*FEDNODE, *agg_args], tmp_path / "aggregator.log"))
        listening = _wait_for(
            tmp_path / "aggregator.log", lambda ev: any(e["event"] == "listening" for e in ev), 60
        )
        agg_id = next(e["peer"] for e in listening if e["event"] == "listening")
        _wait_for(  # the first round should already run through the aggregator
            tmp_path / "coordinator.log",
            lambda ev: any(e["event"] == "peer_up" and e["peer"] == agg_id for e in ev),
            60,
        )
        for i in range(2):
            args = ["--role", "client", "--region", "r0", "--client-index", str(i)]
            args += ["--num-clients", "2", "--key-file", str(tmp_path / f"k{i}.key"), *local]
            procs.append(_spawn([*FEDNODE, *args], tmp_path / f"client{i}.log"))
        assert coord.wait(timeout=150) == 0, (tmp_path / "coordinator.log").read_text()
    finally:
        _stop_all(procs)
    rounds = [e for e in _events(tmp_path / "coordinator.log") if e["event"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["aggregators"] == 1 and rounds[-1]["clients_completed"] == 2
    for i in range(2):  # only the Assign told them where the aggregator is
        events = _events(tmp_path / f"client{i}.log")
        assert any(e["event"] == "peer_up" and e["peer"] == agg_id for e in events)


def test_sigterm_during_a_long_training_job_stops_the_node_at_once(tmp_path: Path) -> None:
    """A client whose training job takes 30 s (a plug-in task calling cancel_point between
    batches) gets SIGTERM mid-job: the job stops at its next batch and the node says
    goodbye and exits in seconds, not after the job."""
    coord_key, coord_id = _coordinator_key(tmp_path)
    port = _free_port()
    slow = ["--task", "fednode.testing.slow_task:SlowTask"]
    client_log, jobs = tmp_path / "client.log", tmp_path / "jobs"
    env = {**os.environ, "FEDNODE_SLOW_LOG": str(jobs), "FEDNODE_SLOW_BATCHES": "600"}
    coord = _spawn_coordinator(
        tmp_path, coord_key, port, 3, "--min-available-clients", "1", "--min-fit-clients", "1",
        *slow,
    )  # fmt: skip
    args = [*FEDNODE, "--role", "client", *slow, "--listen", "/ip4/127.0.0.1/tcp/0"]
    args += ["--key-file", str(tmp_path / "client.key")]
    args += ["--bootstrap", f"/ip4/127.0.0.1/tcp/{port}/p2p/{coord_id}"]
    with client_log.open("wb") as f:
        client = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (jobs.exists() and "train_start" in jobs.read_text()):
            assert time.monotonic() < deadline, client_log.read_text()
            assert client.poll() is None, client_log.read_text()
            time.sleep(0.2)
        client.send_signal(signal.SIGTERM)  # mid-job: the job is 600 batches (30 s)
        assert client.wait(timeout=25) == 0, client_log.read_text()
    finally:
        _stop_all([client, coord])
    records = [json.loads(line) for line in jobs.read_text().splitlines()]
    end = next(r for r in records if r["event"] == "train_end")
    # the job ended at a cancel point, not by running out of its 600 batches, and the node
    # said goodbye and exited: it did not wait for the job's rest
    assert end["stopped"] is True and end["batches"] < 600
    goodbye = next(e for e in _events(client_log) if e["event"] == "goodbye")
    assert goodbye["reason"] == "SIGTERM"
    assert "stopped: SIGTERM" in client_log.read_text()


def test_a_node_serves_prometheus_metrics_on_loopback(tmp_path: Path) -> None:
    import urllib.request

    coord_key, _coord_id = _coordinator_key(tmp_path)
    log_path = tmp_path / "coordinator.log"
    coord = _spawn_coordinator(
        tmp_path, coord_key, _free_port(), 5, "--metrics-listen", "127.0.0.1:0"
    )
    try:
        events = _wait_for(log_path, lambda ev: any(e["event"] == "metrics" for e in ev), 60)
        url = next(e["url"] for e in events if e["event"] == "metrics")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        with urllib.request.urlopen(url, timeout=10) as reply:  # 127.0.0.1 only
            assert reply.status == 200
            text = reply.read().decode()
        assert 'role="coordinator"' in text and "fednode_frames_received_total" in text
        coord.send_signal(signal.SIGTERM)
        assert coord.wait(timeout=30) == 0, log_path.read_text()
    finally:
        _stop_all([coord])


def _get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as reply:  # 127.0.0.1 only
        assert reply.status == 200
        return json.loads(reply.read())


def test_a_coordinator_dashboard_shows_its_rounds_and_members(tmp_path: Path) -> None:
    """`fednode run --dashboard`: the coordinator's page shows its rounds and members."""
    import urllib.request

    coord_key, coord_id = _coordinator_key(tmp_path)
    port = _free_port()
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{coord_id}"
    log = tmp_path / "coordinator.log"
    extra = ("--min-available-clients", "2", "--task", "digits:numpy")
    extra += ("--dashboard", "127.0.0.1:0")
    procs = [_spawn_coordinator(tmp_path, coord_key, port, 30, *extra)]
    try:
        for i in range(2):
            args = [*FEDNODE, "--role", "client", "--client-index", str(i), "--num-clients", "2"]
            args += ["--local-epochs", "1", "--listen", "/ip4/127.0.0.1/tcp/0"]
            args += ["--key-file", str(tmp_path / f"k{i}.key"), "--bootstrap", boot]
            args += ["--task", "digits:numpy"]
            procs.append(_spawn(args, tmp_path / f"client{i}.log"))
        events = _wait_for(log, lambda ev: any(e["event"] == "dashboard" for e in ev), 120)
        url = next(e["url"] for e in events if e["event"] == "dashboard")
        assert url.startswith("http://127.0.0.1:"), log.read_text()
        deadline = time.monotonic() + 120
        state = _get_json(url + "api/state")
        while len(state["rounds"]) < 2 and time.monotonic() < deadline:
            assert procs[0].poll() is None, log.read_text()
            time.sleep(0.2)
            state = _get_json(url + "api/state")
        assert len(state["rounds"]) >= 2, state
        assert state["clock"] == "wall" and state["kind"] == "coordinator"
        rows = {n["id"]: n for n in state["nodes"]}
        assert rows[coord_id]["role"] == "coordinator"
        clients = [n for n in state["nodes"] if n["role"] == "client"]
        assert len(clients) == 2 and all(c["state"] == "up" for c in clients)
        assert len(state["graph"]["nodes"]) == 3 and len(state["graph"]["edges"]) == 2
        page = urllib.request.urlopen(url, timeout=10).read()
        assert b"/static/dashboard.js" in page
    finally:
        _stop_all(procs)
