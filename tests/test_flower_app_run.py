"""A real loopback star (``fednode run``: a coordinator and 2 clients, libp2p on 127.0.0.1,
no mDNS) running the Flower example app, against fednode's digits task with the same
model and settings. Needs flwr (``pip install fednode[flower]``); skips without it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before anything imports flwr
pytest.importorskip("flwr", reason="flwr is not installed: pip install fednode[flower]")

from fednode.crypto.identity import Identity, save_key
from fednode.sim.experiment import run_experiment
from fednode.sim.topology import build_topology

pytestmark = pytest.mark.net

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower-quickstart"
FEDNODE = [sys.executable, "-m", "fednode.cli", "run", "--no-mdns", "--log", "json"]
APP = ["--flower-app", str(EXAMPLE), "--run-config", "num-server-rounds=2 local-epochs=1"]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}


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
                continue
    return out


def _spawn(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=ENV)


def test_a_loopback_star_runs_the_flower_example_as_well_as_digits(tmp_path: Path) -> None:
    identity = Identity.generate()
    key = tmp_path / "coordinator.key"
    save_key(identity, key)
    port = _free_port()
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            args = [*FEDNODE, *APP, "--role", "client", "--client-index", str(i)]
            args += ["--num-clients", "2", "--listen", "/ip4/127.0.0.1/tcp/0"]
            args += ["--key-file", str(tmp_path / f"k{i}.key"), "--bootstrap", boot]
            procs.append(_spawn(args, tmp_path / f"client{i}.log"))
        args = [*FEDNODE, *APP, "--role", "coordinator", "--min-available-clients", "2"]
        args += ["--listen", f"/ip4/127.0.0.1/tcp/{port}", "--key-file", str(key)]
        coord = _spawn(args, tmp_path / "coordinator.log")
        procs.append(coord)
        assert coord.wait(timeout=180) == 0, (tmp_path / "coordinator.log").read_text()
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
    log = (tmp_path / "coordinator.log").read_text()
    assert "mapped: num_rounds=2 -> rounds.rounds" in log  # the report, on stderr
    rounds = [e for e in _events(tmp_path / "coordinator.log") if e["event"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["completed"] == 2 for r in rounds)
    builtin = run_experiment(
        build_topology("star", "star", 3, name="star"),
        overrides={"rounds.rounds": 2, "train.local_epochs": 1, "data.task": "digits"},
    )
    assert builtin.error is None
    assert rounds[-1]["accuracy"] > 0.5
    assert abs(rounds[-1]["accuracy"] - builtin.final_accuracy) <= 0.01, (
        rounds[-1]["accuracy"],
        builtin.final_accuracy,
    )
