"""The adapter half of the Role protocol (fednode.role): what the node, the control socket
and the simulator ask a role instead of looking at its type or attributes."""

from __future__ import annotations

import numpy as np
import pytest

from fednode.actions import Send
from fednode.config import load_config
from fednode.control import handle_request
from fednode.factory import make_role
from fednode.gossip import GossipParams, GossipPeer
from fednode.hierarchy.aggregator import RegionalAggregator
from fednode.hierarchy.client import Client
from fednode.role import Role, byes
from fednode.wire import messages as m
from fednode.wire import schema

SIZE = 4
ADDRS = ("/ip4/127.0.0.1/tcp/4001/p2p/me",)


def roles() -> dict[str, Role]:
    cfg = load_config(None, {"role": "coordinator"})
    params = np.zeros(SIZE, np.float32)
    out: dict[str, Role] = {
        "coordinator": make_role(cfg, SIZE, params),
        "async": make_role(
            load_config(None, {"role": "coordinator", "server.mode": "async"}), SIZE, params
        ),
        "aggregator": make_role(load_config(None, {"role": "aggregator"}), SIZE),
        "client": make_role(load_config(None, {"role": "client"}), SIZE),
        "peer": make_role(load_config(None, {"role": "peer"}), SIZE, params, me="p"),
    }
    return out


@pytest.mark.parametrize("kind", ["coordinator", "async", "aggregator", "client", "peer"])
def test_every_role_answers_the_adapter_methods(kind):
    role = roles()[kind]
    status = role.status()
    assert status["role"] == role.role
    byes_ = role.goodbye(["x", "y"], "SIGTERM")
    assert [b.to for b in byes_] == ["x", "y"]
    assert all(isinstance(b.msg, m.Bye) and b.msg.reason == "SIGTERM" for b in byes_)
    role.set_listen_addrs(ADDRS)
    role.rejoin()
    assert handle_request(role, {"op": "status"}) == {"ok": True, **role.status()}


def test_byes_cut_the_reason_and_default_the_epoch_to_zero():
    out = byes(["a", "b"], "x" * (schema.MAX_STR_LEN + 5), {"b": 7})
    assert [(s.to, s.msg.round) for s in out] == [("a", 0), ("b", 7)]
    assert len(out[0].msg.reason) == schema.MAX_STR_LEN


def test_listen_addresses_go_into_the_adverts_of_clients_and_aggregators():
    client = Client(model_size=SIZE)
    agg = RegionalAggregator()
    for role in (client, agg):
        role.set_listen_addrs(ADDRS)
        assert role.advert().addrs == ADDRS


def test_a_promoted_client_advertises_its_addresses_and_reports_its_new_status():
    client = Client(model_size=SIZE, parent="coord")
    client.set_listen_addrs(ADDRS)
    coordinator = m.Advert(role="coordinator", sender="coord", recipient="me")
    client.handle(coordinator, 0.0)
    assign = m.Assign(role="aggregator", parent="coord", sender="coord", recipient="me")
    client.handle(assign, 0.0)
    assert client.role == "aggregator"
    assert client.status() == {"role": "aggregator", "round": 0, "parent": "coord"}
    sends = [a for a in client.on_peer("new", True, 0.0) if isinstance(a, Send)]
    assert sends[0].msg.addrs == ADDRS


def test_only_a_coordinator_takes_a_promote_request():
    for kind, role in roles().items():
        reply = role.control({"op": "promote", "peer": "12D3KooWsomebody"})
        assert reply["ok"] is False
        if kind in ("coordinator", "async"):
            assert "not a direct client" in reply["error"]
        else:
            assert reply["error"] == f"only a coordinator promotes; this node is a {role.role}"


def test_coordinator_status_names_round_version_and_tree():
    coordinator = roles()["coordinator"]
    assert coordinator.status() == {
        "role": "coordinator",
        "round": 1,
        "model_version": 0,
        "tree": coordinator.hierarchy(),  # type: ignore[attr-defined]
        "direct_clients": [],
    }


def test_gossip_goodbye_names_each_links_epoch():
    peer = GossipPeer(me="a", params=np.zeros(SIZE, np.float32), gossip=GossipParams(degree=1))
    (hello,) = [a for a in peer.on_peer("b", True, 0.0) if isinstance(a, Send)]
    out = {s.to: s.msg.round for s in peer.goodbye(["b", "c"], "bye")}
    assert out == {"b": hello.msg.link, "c": 0}


def test_gossip_status_reports_phase_round_and_neighbours():
    peer = GossipPeer(me="a", params=np.zeros(SIZE, np.float32))
    assert peer.status() == {
        "role": "peer",
        "round": 0,
        "model_version": 0,
        "phase": "joining",
        "neighbours": 0,
    }


def test_a_rejoining_gossip_peer_adopts_its_first_welcome():
    params = np.zeros(SIZE, np.float32)
    a = GossipPeer(me="a", params=params, neighbours=["b"], gossip=GossipParams(train=False))
    a.rejoin()
    a.start(0.0)
    (hello,) = [x for x in a.on_peer("b", True, 0.0) if isinstance(x, Send)]
    welcome = m.Gossip(
        round=5,
        model_version=9,
        codec="none",
        payload=b"",
        vector=np.full(SIZE, 2.0, np.float32),
        reply=True,
        consortium="fednode",
        mode="welcome",
        link=hello.msg.link,
        degree=1,
        sender="b",
        recipient="a",
    )
    actions = a.handle(welcome, 0.1)
    assert any(getattr(x, "event", "") == "gossip_bootstrap" for x in actions)
    np.testing.assert_array_equal(a.params, np.full(SIZE, 2.0, np.float32))
    assert a.status()["round"] == 4 and a.model_version == 9
