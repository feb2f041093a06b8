"""`fednode run --dashboard` end to end: a coordinator and two clients over libp2p on
127.0.0.1 (real processes, bootstrap, no mDNS); the coordinator's page shows its rounds
and its members. Every wait has a deadline; every process is stopped in ``finally``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fednode.crypto.identity import Identity, save_key

pytestmark = pytest.mark.net

FEDNODE = [sys.executable, "-m", "fednode.cli", "run", "--no-mdns", "--log", "json"]
WAIT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line still being written
    return out


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as reply:  # 127.0.0.1 only
        assert reply.status == 200
        return json.loads(reply.read())


def test_a_coordinator_shows_its_rounds_and_members(tmp_path: Path) -> None:
    identity = Identity.generate()
    key = tmp_path / "coordinator.key"
    save_key(identity, key)
    port = _free_port()
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"
    log = tmp_path / "coordinator.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with log.open("wb") as f:
            args = [*FEDNODE, "--role", "coordinator", "--rounds", "30", "--local-epochs", "1"]
            args += ["--listen", f"/ip4/127.0.0.1/tcp/{port}", "--key-file", str(key)]
            args += ["--min-available-clients", "2", "--task", "digits:numpy"]
            args += ["--dashboard", "127.0.0.1:0"]
            procs.append(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT))
        for i in range(2):
            args = [*FEDNODE, "--role", "client", "--client-index", str(i), "--num-clients", "2"]
            args += ["--local-epochs", "1", "--listen", "/ip4/127.0.0.1/tcp/0"]
            args += ["--key-file", str(tmp_path / f"k{i}.key"), "--bootstrap", boot]
            args += ["--task", "digits:numpy"]
            with (tmp_path / f"client{i}.log").open("wb") as f:
                procs.append(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + WAIT_S
        url = None
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if url is None:
                url = next((e["url"] for e in _events(log) if e["event"] == "dashboard"), None)
            if url is not None:
                state = _get_json(url + "api/state")
                if len(state["rounds"]) >= 2:
                    break
            assert procs[0].poll() is None, log.read_text()
            time.sleep(0.2)
        assert url is not None and url.startswith("http://127.0.0.1:"), log.read_text()
        assert len(state["rounds"]) >= 2, state
        assert state["clock"] == "wall" and state["kind"] == "coordinator"
        rows = {n["id"]: n for n in state["nodes"]}
        assert rows[identity.peer_id]["role"] == "coordinator"
        clients = [n for n in state["nodes"] if n["role"] == "client"]
        assert len(clients) == 2 and all(c["state"] == "up" for c in clients)
        assert len(state["graph"]["nodes"]) == 3 and len(state["graph"]["edges"]) == 2
        page = urllib.request.urlopen(url, timeout=10).read()
        assert b"/static/dashboard.js" in page
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
