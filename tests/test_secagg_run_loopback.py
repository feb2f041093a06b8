"""`fednode run --secagg` end to end over real libp2p on 127.0.0.1 (bootstrap, no mDNS): a
star of a coordinator and 4 client processes completes 3 secure-aggregation rounds; a
two-tier tree runs its region's rounds securely at the regional aggregator.

Every node listens on 127.0.0.1 only; every wait has a deadline; every process is
terminated (then killed) in ``finally``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fednode.crypto.identity import Identity, save_key

pytestmark = pytest.mark.net

CLIENTS = 4
FEDNODE = [sys.executable, "-m", "fednode.cli", "run", "--no-mdns", "--log", "json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)


def _events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


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


def test_star_with_secagg_completes_three_rounds_over_libp2p_loopback(tmp_path: Path) -> None:
    identity = Identity.generate()
    coord_key, coord_id = tmp_path / "coordinator.key", identity.peer_id
    save_key(identity, coord_key)
    port = _free_port()
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{coord_id}"
    procs = []
    try:
        for i in range(CLIENTS):
            args = [*FEDNODE, "--role", "client", "--client-index", str(i)]
            args += ["--num-clients", str(CLIENTS), "--local-epochs", "1", "--secagg"]
            args += ["--listen", "/ip4/127.0.0.1/tcp/0", "--key-file", str(tmp_path / f"k{i}.key")]
            args += ["--bootstrap", boot]
            procs.append(_spawn(args, tmp_path / f"client{i}.log"))
        args = [*FEDNODE, "--role", "coordinator", "--rounds", "3", "--local-epochs", "1"]
        args += ["--listen", f"/ip4/127.0.0.1/tcp/{port}", "--key-file", str(coord_key)]
        args += ["--min-available-clients", str(CLIENTS), "--secagg", "--secagg-threshold", "3"]
        coord = _spawn(args, tmp_path / "coordinator.log")
        procs.append(coord)
        assert coord.wait(timeout=240) == 0, (tmp_path / "coordinator.log").read_text()
    finally:
        _stop_all(procs)
    events = _events(tmp_path / "coordinator.log")
    rounds = [e for e in events if e["event"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["completed"] == CLIENTS for r in rounds)
    secure = [e for e in events if e["event"] == "secagg_round"]
    assert [(e["survivors"], e["dropped"]) for e in secure] == [(CLIENTS, 0)] * 3
    assert not [e for e in events if e["event"] == "rejected"]
    assert rounds[-1]["accuracy"] > 0.5
    assert "stopped: finished 3 rounds" in (tmp_path / "coordinator.log").read_text()


def _wait_for_event(path: Path, event: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _events(path)
        if any(e["event"] == event for e in events):
            return events
        time.sleep(0.2)
    raise AssertionError(f"no {event} in {path.name} after {timeout}s:\n{path.read_text()}")


def test_two_tier_with_secagg_runs_each_region_securely_over_libp2p_loopback(
    tmp_path: Path,
) -> None:
    """Coordinator (topology two-tier), one regional aggregator and 3 clients, all with
    --secagg: the region's aggregator unmasks its region's sum, the coordinator gets one
    Update from it per round."""
    identity = Identity.generate()
    coord_key, coord_id = tmp_path / "coordinator.key", identity.peer_id
    save_key(identity, coord_key)
    config = tmp_path / "two_tier.toml"
    config.write_text('topology = "two-tier"\n')
    port = _free_port()
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{coord_id}"
    local = ["--local-epochs", "1", "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", boot]
    local += ["--secagg", "--config", str(config)]
    procs = []
    try:
        args = [*FEDNODE, "--role", "coordinator", "--rounds", "2", "--local-epochs", "1"]
        args += ["--listen", f"/ip4/127.0.0.1/tcp/{port}", "--key-file", str(coord_key)]
        args += ["--min-available-clients", "3", "--min-fit-clients", "1"]
        args += ["--secagg", "--config", str(config)]
        coord = _spawn(args, tmp_path / "coordinator.log")
        procs.append(coord)
        agg = ["--role", "aggregator", "--region", "r0", "--key-file", str(tmp_path / "a.key")]
        procs.append(_spawn([*FEDNODE, *agg, *local], tmp_path / "aggregator.log"))
        _wait_for_event(tmp_path / "aggregator.log", "listening", 60)
        for i in range(3):
            args = ["--role", "client", "--region", "r0", "--client-index", str(i)]
            args += ["--num-clients", "3", "--key-file", str(tmp_path / f"k{i}.key"), *local]
            procs.append(_spawn([*FEDNODE, *args], tmp_path / f"client{i}.log"))
        assert coord.wait(timeout=240) == 0, (tmp_path / "coordinator.log").read_text()
    finally:
        _stop_all(procs)
    rounds = [e for e in _events(tmp_path / "coordinator.log") if e["event"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["aggregators"] == 1 and r["clients_completed"] == 3 for r in rounds)
    region = [e for e in _events(tmp_path / "aggregator.log") if e["event"] == "secagg_round"]
    assert [(e["survivors"], e["dropped"]) for e in region] == [(3, 0), (3, 0)]
