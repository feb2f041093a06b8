"""Operator control: `fednode status` / `fednode promote` over the node's Unix socket, and
`fednode run --resume` choosing the checkpoint a coordinator continues from."""

import dataclasses
import json
import os
import stat

import numpy as np
import pytest
import trio

from fednode.cli import main
from fednode.config import load_config
from fednode.control import ControlError, handle_request, request, serve_control
from fednode.errors import ConfigError
from fednode.hierarchy.checkpoint import load_checkpoint
from fednode.hierarchy.root import resolve_peer
from fednode.node import build_role, resume_source
from fednode.sim.scenarios import build_star, run_star
from fednode.training.task import load_task


def star(n=6, rounds=3, **overrides):
    cfg = load_config(
        None,
        {
            "rounds.rounds": rounds,
            "rounds.min_available_clients": n,
            "rounds.min_fit_clients": 1,
            "train.local_epochs": 1,
            **overrides,
        },
    )
    return cfg, *build_star(cfg, n)


def test_resolve_peer_exact_unique_part_and_refusals():
    peers = ["12D3KooWAAAAbcdef", "12D3KooWBBBBxyz12"]
    assert resolve_peer("12D3KooWAAAAbcdef", peers) == peers[0]
    assert resolve_peer("BBBBxyz", peers) == peers[1]
    with pytest.raises(ControlError, match="matches 2"):
        resolve_peer("12D3KooW", peers)
    with pytest.raises(ControlError, match="not a direct client"):
        resolve_peer("abc", peers)  # too short to be a part


def test_promote_through_the_control_path_changes_the_next_round():
    """The request an operator sends is what promotes: the next round runs on the new tree."""
    _cfg, sim, root = star(n=8, rounds=3)
    chosen = sim.nodes[3]
    replies = []

    def operator(s, peer, event, data):
        if peer == root.peer and event == "round_start" and data["round"] == 2:
            replies.append(handle_request(root.role, {"op": "status"}))
            replies.append(handle_request(root.role, {"op": "promote", "peer": chosen.peer[-10:]}))

    sim.fault_hooks.append(operator)
    result = sim.run(root)
    assert result.stop.error is None, result.stop
    status, promoted = replies
    assert status["ok"] and status["role"] == "coordinator" and status["round"] == 2
    assert sorted(status["direct_clients"]) == sorted(n.peer for n in sim.nodes[1:])
    assert promoted == {"ok": True, "peer": chosen.peer, "share": 0.5, "effective": "next round"}
    r2, r3 = result.rounds[1], result.rounds[2]
    assert r2["aggregators"] == 0 and r3["aggregators"] == 1
    assert chosen.role.role == "aggregator"
    assert r3["clients_completed"] == 8  # everyone still trains, now partly through it


def test_control_refusals_change_nothing():
    _cfg, sim, root = star(n=3, rounds=1)
    result = sim.run(root)
    assert result.stop.error is None
    coordinator, client = root.role, sim.nodes[1].role
    before = coordinator.hierarchy()
    bad = [
        (coordinator, {"op": "reboot"}, "expected"),
        (coordinator, ["status"], "expected"),
        (coordinator, {"op": "promote"}, "needs 'peer'"),
        (coordinator, {"op": "promote", "peer": sim.nodes[1].peer, "share": 2}, "share"),
        (coordinator, {"op": "promote", "peer": "12D3KooWnobodyhere"}, "not a direct client"),
        (client, {"op": "promote", "peer": sim.nodes[2].peer}, "only a coordinator"),
    ]
    for role, req, words in bad:
        reply = handle_request(role, req)
        assert reply["ok"] is False and words in reply["error"], (req, reply)
    assert coordinator.hierarchy() == before and not coordinator._promotions
    status = handle_request(client, {"op": "status"})
    assert status["ok"] and status["role"] == "client" and status["parent"] == root.peer


async def test_control_socket_serves_status_and_promote_and_cleans_up(tmp_path):
    _cfg, sim, root = star(n=3, rounds=1)
    await trio.to_thread.run_sync(sim.run, root)
    path = str(tmp_path / "ctl.sock")
    target = sim.nodes[2].peer
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve_control, root.role, path) == path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        status = await trio.to_thread.run_sync(request, path, {"op": "status"})
        assert status["ok"] and status["role"] == "coordinator"
        code = await trio.to_thread.run_sync(
            main, ["promote", target, "--to", "aggregator", "--control-socket", path]
        )
        assert code == 0 and root.role._promotions == [(target, 0.5)]
        code = await trio.to_thread.run_sync(
            main, ["promote", "12D3KooWnobodyhere", "--control-socket", path]
        )
        assert code == 1 and len(root.role._promotions) == 1
        assert await trio.to_thread.run_sync(main, ["status", "--control-socket", path]) == 0
        # a malformed request gets an error reply and the server keeps serving
        with trio.fail_after(5):
            stream = await trio.open_unix_socket(path)
            async with stream:
                await stream.send_all(b"{not json\n")
                reply = json.loads(await stream.receive_some(4096))
        assert reply["ok"] is False
        assert (await trio.to_thread.run_sync(request, path, {"op": "status"}))["ok"]
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path)


async def test_control_socket_refuses_a_path_that_is_a_file(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match=r"net\.control_socket"):
        await serve_control(object(), str(path))
    assert path.read_text() == "keep me"


def test_status_and_promote_without_a_node_say_so(tmp_path, capsys):
    assert main(["status", "--control-socket", str(tmp_path / "none.sock")]) == 1
    assert "no node is listening" in capsys.readouterr().out


def test_resume_latest_continues_from_the_newest_checkpoint(tmp_path):
    cfg = load_config(
        None,
        {
            "rounds.rounds": 2,
            "rounds.min_available_clients": 4,
            "rounds.min_fit_clients": 1,
            "train.local_epochs": 1,
            "role": "coordinator",
            "server.checkpoint_dir": str(tmp_path),
            "server.resume_from": "latest",
        },
    )
    task = load_task("digits")
    fresh = build_role(cfg, task)  # nothing saved yet: a first start
    assert fresh.round_number == 1 and fresh.resumed_from is None
    result = run_star(dataclasses.replace(cfg, role="client"), 4, checkpoint_dir=tmp_path)
    assert result.stop.error is None
    resumed = build_role(cfg, task)
    snap = load_checkpoint(tmp_path)
    assert snap.round == 2 and resumed.resumed_from is not None
    assert resumed.round_number == 3 and resumed.model_version == 2  # round 3 is next
    np.testing.assert_array_equal(resumed.params, snap.params)
    # an explicit path must hold a checkpoint
    missing = dataclasses.replace(
        cfg, server=dataclasses.replace(cfg.server, resume_from=str(tmp_path / "nope"))
    )
    with pytest.raises(ConfigError, match="resume_from"):
        build_role(missing, task)
    assert resume_source(dataclasses.replace(cfg, role="client")) is None


def test_resume_latest_needs_a_checkpoint_dir():
    with pytest.raises(ConfigError, match=r"server\.resume_from"):
        load_config(None, {"server.resume_from": "latest"})


def test_run_help_lists_resume_and_control_flags(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for flag in ("--resume", "--resume-from", "--checkpoint-dir", "--control-socket"):
        assert flag in out


class _ResetStream(trio.abc.Stream):
    """A client that resets the connection: every read fails, nothing is sent back."""

    def __init__(self) -> None:
        self.sent = b""

    async def receive_some(self, max_bytes=None):
        raise trio.BrokenResourceError("socket connection broken: [Errno 104] reset by peer")

    async def send_all(self, data):
        self.sent += bytes(data)

    async def wait_send_all_might_not_block(self):
        pass

    async def send_eof(self):
        pass

    async def aclose(self):
        pass


async def test_a_client_that_resets_the_connection_gets_no_reply_and_stops_nothing(caplog):
    from fednode.control import _serve_one

    _cfg, _sim, root = star(n=3, rounds=1)
    stream = _ResetStream()
    with caplog.at_level("INFO", logger="fednode.control"):
        await _serve_one(root.role, stream)  # returns: no exception reaches the node
    assert stream.sent == b""
    assert "control client went away" in caplog.text
