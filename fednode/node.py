"""A deployed node: identity, libp2p host, discovery and the configured role, in one nursery.

``Node(config).run()`` is what ``fednode run`` executes. The node owns every task it
starts; shutdown (Ctrl-C, SIGTERM, or the role finishing) is cancellation of that one
nursery, after a short shielded goodbye to connected peers.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import trio

from .actions import Stop
from .config import NodeConfig
from .crypto.envelope import Membership, Receiver, Sealer
from .crypto.identity import Identity, load_or_create, public_key_from_peer_id
from .errors import ConfigError
from .runner import Role, RunStats, ThreadExecutor, run_role
from .training.task import Task, load_task

log = logging.getLogger("fednode.node")

EventSink = Callable[[str, str, dict[str, Any]], None]


def build_role(config: NodeConfig, task: Task, peer_id: str = "") -> Role:
    """The role object for ``config.role`` — the same constructors the simulator uses."""
    size = task.layout().size
    if config.role == "peer":
        from .gossip.peer import GossipPeer

        return GossipPeer.from_config(config, me=peer_id, params=task.init_params(config.seed))
    from .hierarchy.factory import make_role

    params = task.init_params(config.seed) if config.role == "coordinator" else None
    return make_role(config, size, params)


def read_allow_list(entries: tuple[str, ...]) -> frozenset[str]:
    """Peer ids allowed in; each must be a valid Ed25519 peer id (checked at start)."""
    for entry in entries:
        try:
            public_key_from_peer_id(entry)
        except Exception as exc:
            raise ConfigError("net.allow", entry, "libp2p Ed25519 peer ids (12D3KooW...)") from exc
    return frozenset(entries)


def read_network_key(path: str) -> bytes | None:
    if not path:
        return None
    from .p2p.libp2p_host import read_network_key as parse

    try:
        return parse(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError("net.network_key_file", path, f"a readable key file ({exc})") from exc
    except ValueError as exc:
        raise ConfigError("net.network_key_file", path, f"a valid network key ({exc})") from exc


def json_lines(stream: TextIO = sys.stdout) -> EventSink:
    """Event sink writing one JSON object per line (the node's structured log)."""

    def sink(peer: str, event: str, data: dict[str, Any]) -> None:
        record = {"t": round(trio.current_time(), 3), "event": event, **data}
        stream.write(json.dumps(record, default=str, sort_keys=True) + "\n")
        stream.flush()

    return sink


@dataclass
class Node:
    """One fednode process. ``identity`` and ``task`` default to what ``config`` names."""

    config: NodeConfig
    identity: Identity | None = None
    task: Task | None = None
    on_event: EventSink | None = None
    listen_addrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        net = self.config.net
        self.allow = read_allow_list(net.allow)
        if not net.open_membership and not self.allow:
            raise ConfigError(
                "net.allow", net.allow, "at least one peer id when open_membership is false"
            )
        self.network_key = read_network_key(net.network_key_file)
        if self.identity is None:
            self.identity, created = load_or_create(net.key_file)
            if created:
                log.warning(
                    "created a new node key at %s (peer id %s)", net.key_file, self.identity.peer_id
                )
        if self.task is None:
            d = self.config.data
            self.task = load_task(
                d.task,
                client_index=d.client_index,
                num_clients=d.num_clients,
                partition=d.partition,
                seed=self.config.seed,
            )
        self.role = build_role(self.config, self.task, self.identity.peer_id)
        self.stats = RunStats()
        self.stop: Stop | None = None

    @property
    def peer_id(self) -> str:
        assert self.identity is not None
        return self.identity.peer_id

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> Stop | None:
        """Run until the role stops, SIGINT/SIGTERM arrives, or the caller cancels."""
        from .p2p.discovery import run_discovery
        from .p2p.libp2p_host import Libp2pTransport

        assert self.identity is not None and self.task is not None
        cfg = self.config
        transport = Libp2pTransport(
            self.identity.to_libp2p_keypair(),
            listen=(cfg.net.listen,),
            network_key=self.network_key,
            max_frame_bytes=cfg.wire.max_frame_bytes,
            max_header_bytes=cfg.wire.max_header_bytes,
            dial_timeout=cfg.net.dial_timeout_s,
            send_timeout=cfg.net.send_timeout_s,
        )
        receiver = Receiver(
            self.peer_id,
            Membership(self.allow, open=cfg.net.open_membership),
            model_size=self.task.layout().size,
            max_frame_bytes=cfg.wire.max_frame_bytes,
            max_header_bytes=cfg.wire.max_header_bytes,
            max_clock_skew_s=cfg.wire.max_clock_skew_s,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, nursery.cancel_scope)
            await nursery.start(transport.run)
            self.listen_addrs = transport.addresses()
            log.info(
                "node %s (%s) listening on %s", self.peer_id, cfg.role, ", ".join(self.listen_addrs)
            )
            await nursery.start(
                lambda task_status: run_discovery(
                    transport,
                    mdns=cfg.net.mdns,
                    bootstrap=cfg.net.bootstrap,
                    service_name=cfg.net.federation,
                    task_status=task_status,
                )
            )
            task_status.started()
            self.stop = await run_role(
                self.role,
                transport,
                Sealer(self.identity),
                receiver,
                ThreadExecutor(self.task),
                on_event=self.on_event,
                send_timeout_s=cfg.net.send_timeout_s,
                stats=self.stats,
            )
            nursery.cancel_scope.cancel()
        return self.stop


async def _cancel_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("received %s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return
