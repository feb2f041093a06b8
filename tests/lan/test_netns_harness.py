"""The namespace harness itself: a LAN is reachable inside and gone afterwards, even on error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fednode.testing.netns import PREFIX, Lan, cleanup_leftovers, list_namespaces

pytestmark = pytest.mark.netns

ECHO = (
    "import socket, sys; s = socket.create_connection((sys.argv[1], 5000), timeout=5); "
    "s.sendall(b'hello'); s.close()"
)
SERVE = (
    "import socket; s = socket.socket(); s.bind(('0.0.0.0', 5000)); s.listen(); "
    "s.settimeout(10); c, _ = s.accept(); print(c.recv(16).decode())"
)


def test_nodes_reach_each_other_over_the_bridge_and_everything_is_removed_on_error(
    lan_dir: Path,
) -> None:
    run_ns: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), Lan(2, lan_dir) as lan:
        run_ns = [lan.hub, *lan.namespaces]
        assert set(run_ns) <= set(list_namespaces())
        server = subprocess.Popen(
            ["ip", "netns", "exec", lan.namespaces[0], sys.executable, "-c", SERVE],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            for _ in range(50):  # bounded: until the server listens
                res = subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        lan.namespaces[1],
                        sys.executable,
                        "-c",
                        ECHO,
                        lan.address(0),
                    ],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
                if res.returncode == 0:
                    break
            out, _ = server.communicate(timeout=10)
        finally:
            server.kill()
            server.wait(timeout=5)
        assert out.strip() == "hello"
        raise RuntimeError("boom")
    assert not set(run_ns) & set(list_namespaces())


def test_leftovers_of_a_dead_run_are_removed_and_live_ones_kept(lan_dir: Path) -> None:
    dead = f"{PREFIX}-999999999-dead-n0"  # no such pid
    subprocess.run(["ip", "netns", "add", dead], check=True, timeout=10)
    try:
        with Lan(1, lan_dir) as lan:  # building a LAN cleans up first
            assert dead not in list_namespaces()
            assert lan.namespaces[0] in list_namespaces()
            assert cleanup_leftovers() == []  # our own run is alive: kept
            assert lan.namespaces[0] in list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", dead], check=False, timeout=10)
