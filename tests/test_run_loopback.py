"""`fednode run` end to end over real libp2p on 127.0.0.1: a coordinator and two clients."""

import subprocess
import sys
import time

import pytest

from fednode.crypto.identity import Identity, save_key

pytestmark = pytest.mark.net


def test_star_federation_over_libp2p_loopback(tmp_path):
    coord_key = tmp_path / "c.key"
    identity = Identity.generate()
    save_key(identity, coord_key)
    port = 40000 + (int(time.time() * 1000) % 20000)
    fednode = [sys.executable, "-m", "fednode.cli", "run", "--no-mdns", "--local-epochs", "1"]
    coord = subprocess.Popen(
        [
            *fednode,
            "--role",
            "coordinator",
            "--rounds",
            "2",
            "--min-available-clients",
            "2",
            "--listen",
            f"/ip4/127.0.0.1/tcp/{port}",
            "--key-file",
            str(coord_key),
            "--log",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    boot = f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"
    clients = [
        subprocess.Popen(
            [
                *fednode,
                "--role",
                "client",
                "--client-index",
                str(i),
                "--num-clients",
                "2",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--key-file",
                str(tmp_path / f"k{i}.key"),
                "--bootstrap",
                boot,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    try:
        out, _ = coord.communicate(timeout=120)
    finally:
        for p in [coord, *clients]:
            p.terminate()
        for p in [coord, *clients]:
            p.wait(timeout=20)
    import json

    rounds = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    rounds = [r for r in rounds if r.get("event") == "round"]
    assert coord.returncode == 0, out
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["completed"] == 2 for r in rounds)
    assert rounds[1]["accuracy"] > 0.5
