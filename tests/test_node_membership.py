"""A real Node on 127.0.0.1: messages from outside the federation never reach the role.

Two gates, both checked with real libp2p and a spy on the role's ``handle``:

* closed membership (``--allow``): the transport refuses a non-member's frame before
  reading it (``accept_from``); the sender gets "not accepted", the runner never sees
  the frame, and the node counts ``NotMember``;
* a network key (pnet): a node without the key cannot finish the handshake at all; the
  node counts ``HandshakeFailed``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from fednode.config import load_config
from fednode.crypto.envelope import Sealer
from fednode.crypto.identity import Identity
from fednode.errors import PeerGone, TransportError
from fednode.node import Node
from fednode.p2p.libp2p_host import Libp2pTransport
from fednode.training.task import load_task
from fednode.wire import messages as m

pytestmark = pytest.mark.net

DEADLINE = 20.0


class Spy:
    """Wraps a role's ``handle`` and ``on_peer``: records who reached it and which peers
    it heard of (the role can only send to a peer it heard of)."""

    def __init__(self, role: Any) -> None:
        self.senders: list[str] = []
        self.peers_heard: list[str] = []
        inner_handle, inner_on_peer = role.handle, role.on_peer

        def handle(msg: m.Message, now: float) -> Any:
            self.senders.append(msg.sender)
            return inner_handle(msg, now)

        def on_peer(peer: str, up: bool, now: float) -> Any:
            self.peers_heard.append(peer)
            return inner_on_peer(peer, up, now)

        role.handle = handle
        role.on_peer = on_peer


def _node(tmp_path: Path, **net: Any) -> tuple[Node, Spy, list[tuple[str, dict[str, Any]]]]:
    overrides: dict[str, Any] = {
        "role": "coordinator",
        "data.task": "synthetic:64",
        "net.listen": "/ip4/127.0.0.1/tcp/0",
        "net.mdns": False,
        "net.key_file": str(tmp_path / "node.key"),
    }
    overrides.update({f"net.{k}": v for k, v in net.items()})
    config = load_config(None, overrides)
    events: list[tuple[str, dict[str, Any]]] = []
    node = Node(
        config,
        identity=Identity.generate(),
        task=load_task("synthetic:64"),
        on_event=lambda peer, event, data: events.append((event, data)),
    )
    return node, Spy(node.role), events


@asynccontextmanager
async def running(node: Node) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(DEADLINE):
            await nursery.start(node.run)
        yield
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def sender(identity: Identity, network_key: bytes | None = None) -> AsyncIterator[Any]:
    transport = Libp2pTransport(
        identity.to_libp2p_keypair(), network_key=network_key, dial_timeout=2.0
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        yield transport
        nursery.cancel_scope.cancel()


def _advert(identity: Identity, to: str) -> Any:
    return Sealer(identity).seal(m.Advert(role="client", recipient=to))


async def _until(predicate: Any) -> None:
    with trio.fail_after(DEADLINE):
        while not predicate():
            await trio.sleep(0.02)


async def test_a_non_member_frame_is_refused_unread_and_never_reaches_the_role(
    tmp_path: Path,
) -> None:
    member, outsider = Identity.generate(), Identity.generate()
    node, spy, events = _node(tmp_path, allow=(member.peer_id,), open_membership=False)
    outsider_up = {"peer": outsider.peer_id, "member": False}
    async with running(node), sender(member) as good, sender(outsider) as bad:
        with trio.fail_after(DEADLINE):
            await good.connect(node.peer_id, node.listen_addrs)
            await good.send(node.peer_id, _advert(member, node.peer_id))
            await bad.connect(node.peer_id, node.listen_addrs)
            for _ in range(3):
                with pytest.raises(TransportError, match="does not accept"):
                    await bad.send(node.peer_id, _advert(outsider, node.peer_id))
        await _until(lambda: member.peer_id in spy.senders)
        with trio.fail_after(DEADLINE):
            hello = await good.incoming.receive()  # the coordinator introduced itself
        # the node has seen the outsider connect and kept it from the role: past this
        # point the role cannot address the outsider, so nothing can be on its way to it
        await _until(lambda: any(e == "peer_up" and d == outsider_up for e, d in events))
        told_outsider = bad.incoming.statistics().current_buffer_used

    assert hello.peer == node.peer_id
    assert member.peer_id in spy.peers_heard
    assert outsider.peer_id not in spy.peers_heard
    assert told_outsider == 0  # a non-member is not even sent the node's advert
    assert outsider.peer_id not in spy.senders
    assert node.stats.received_frames == 1  # the outsider's frames never reached the runner
    assert node.stats.rejected["NotMember"] == 3
    refused = [d for e, d in events if e == "rejected" and d["error"] == "NotMember"]
    assert [d["peer"] for d in refused] == [outsider.peer_id] * 3
    assert all(d["stage"] == "transport" for d in refused)
    assert node.transport is not None and node.transport.refused_frames == 3  # type: ignore[attr-defined]


async def test_a_node_without_the_network_key_never_reaches_the_role(tmp_path: Path) -> None:
    key = os.urandom(32)
    key_file = tmp_path / "swarm.key"
    key_file.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{key.hex()}\n")
    member, no_key, wrong_key = Identity.generate(), Identity.generate(), Identity.generate()
    node, spy, events = _node(tmp_path, network_key_file=str(key_file))
    async with (
        running(node),
        sender(member, key) as good,
        sender(no_key) as bad,
        sender(wrong_key, os.urandom(32)) as worse,
    ):
        with trio.fail_after(DEADLINE):
            await good.connect(node.peer_id, node.listen_addrs)
            await good.send(node.peer_id, _advert(member, node.peer_id))
            for intruder, identity in ((bad, no_key), (worse, wrong_key)):
                with pytest.raises(PeerGone):
                    await intruder.connect(node.peer_id, node.listen_addrs)
                with pytest.raises(PeerGone):
                    await intruder.send(node.peer_id, _advert(identity, node.peer_id))
        await _until(lambda: member.peer_id in spy.senders)
        await _until(lambda: node.stats.rejected["HandshakeFailed"] >= 2)

    assert spy.senders == [member.peer_id]
    assert node.stats.received_frames == 1
    assert no_key.peer_id not in (node.transport.peers() if node.transport else ())
    handshakes = [d for e, d in events if e == "rejected" and d["error"] == "HandshakeFailed"]
    assert handshakes and all(d["peer"].startswith("127.0.0.1:") for d in handshakes)
