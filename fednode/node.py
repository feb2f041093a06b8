"""A deployed node: identity, libp2p host, discovery and the configured role, in one nursery.

``Node(config).run()`` is what ``fednode run`` executes. The node owns every task it
starts. Shutdown — the role finishing, SIGINT/SIGTERM, or the caller cancelling — is
cancellation of the role, then a short shielded goodbye (a signed ``Bye`` to every
connected member, all at once, bounded by :data:`GOODBYE_S`), then cancellation of the
transport and discovery. A second signal during the goodbye cuts it short.

Membership is enforced twice: with closed membership the transport refuses frames from
peers off the allow-list before reading them (``accept_from``), and the envelope checks
the signed sender again. Transport-level refusals (non-members, failed handshakes such
as a missing network key) are counted in :attr:`Node.stats` and logged as ``rejected``
events with ``"stage": "transport"``.

Events the node adds to the role's (JSON lines with ``--log json``): ``listening``
(peer id, role, addresses), ``metrics`` (the URL of the Prometheus metrics, with
``net.metrics_listen``), ``dashboard`` (the live page's URL, with ``dashboard.listen``;
:mod:`fednode.dashboard.nodeview` draws it from these events), ``peer_up`` /
``peer_down``, ``goodbye`` and ``stopped`` (reason, signal). A gossip peer built here
(:func:`build_role`) waits for its consortium (``peers_ready``) and tests its model after
every round (``gossip_eval``) by default: both are the role's doing, so the simulator
runs the same code.

The node asks the role only what :class:`~fednode.role.Role` offers (listen addresses,
goodbye messages); it never looks at the role's type or attributes.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import trio

from .actions import Send, Stop
from .config import NodeConfig, replace
from .crypto.envelope import Membership, Receiver, Sealer
from .crypto.identity import Identity, load_or_create, public_key_from_peer_id
from .errors import ConfigError, FednodeError
from .loop import EventSink, NodeLoop, RunStats
from .p2p.transport import PeerEvent, Transport
from .role import Role
from .runner import ThreadExecutor, run_role
from .training.task import Task, load_task
from .wire.frames import Frame, Inbound

log = logging.getLogger("fednode.node")

if TYPE_CHECKING:
    from .dashboard.nodeview import NodeView
    from .prometheus import NodeMetrics


#: bound on the whole goodbye (all Byes sent concurrently), shielded from cancellation
GOODBYE_S = 2.0
#: how often a send to a not yet discovered peer checks whether it is connected (x 2)
PEER_POLL_S = 0.25
#: how long a send to a peer with no known address waits for discovery to connect it
UNDISCOVERED_WAIT_S = 5.0
#: transport refusal reason -> (error counted in RunStats.rejected, what the log says)
_TRANSPORT_REJECTS = {
    "not_accepted": ("NotMember", "not a member: frame refused before it was read"),
    "handshake": (
        "HandshakeFailed",
        "inbound security handshake failed (wrong or missing network key?)",
    ),
    "busy": ("Busy", "frame not taken within net.send_timeout_s (inbound limits or a full queue)"),
}


def build_role(
    config: NodeConfig, task: Task, peer_id: str = "", identity: Identity | None = None
) -> Role:
    """The role object for ``config.role``, from the factory the simulator uses too."""
    from .factory import make_attacker, make_role
    from .gossip.core import WaitFor

    attacker = make_attacker(config)  # None unless [attack] (fednode run refuses it)

    params = task.init_params(config.seed) if config.role in ("coordinator", "peer") else None
    if config.role != "peer":
        return make_role(
            config,
            task.layout().size,
            params,
            resume_from=resume_source(config),
            attacker=attacker,
            identity=identity,  # signs [secagg] messages
        )
    # a node holds its first round until its consortium is up and, unless told
    # otherwise, tests its own model after every round (gossip_eval)
    if config.gossip.eval_every < 0:
        config = replace(config, gossip=replace(config.gossip, eval_every=1))
    rounds = config.rounds
    wait_for = WaitFor(rounds.min_available_clients - 1, rounds.wait_for_clients_s)
    return make_role(
        config, task.layout().size, params, me=peer_id, wait_for=wait_for, attacker=attacker
    )


def resume_source(config: NodeConfig) -> Path | None:
    """The checkpoint a coordinator resumes from (``server.resume_from``), or None.

    ``"latest"`` is the newest complete version in ``server.checkpoint_dir``, and a fresh
    start (logged) when there is none yet, so one command line serves first start and
    restart alike. An explicit path must hold a checkpoint (ConfigError otherwise).
    """
    source = config.server.resume_from
    if config.role != "coordinator" or not source:
        return None
    if source != "latest":
        return Path(source)
    from .hierarchy.checkpoint import DirectoryCheckpoints

    found = DirectoryCheckpoints(config.server.checkpoint_dir).latest()
    if found is None:
        log.warning("no checkpoint in %s yet: starting from round 1", config.server.checkpoint_dir)
    return found


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
    from .p2p.network_key import read_network_key as parse

    try:
        return parse(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError("net.network_key_file", path, f"a readable key file ({exc})") from exc
    except ValueError as exc:
        raise ConfigError("net.network_key_file", path, f"a valid network key ({exc})") from exc


def json_lines(stream: TextIO = sys.stdout) -> EventSink:
    """Event sink writing one JSON object per line (the node's structured log): ``t`` is
    this process's monotonic clock (differences within one node), ``utc`` the wall-clock
    time in UTC, ISO 8601 with milliseconds (to line up the events of several nodes)."""

    def sink(peer: str, event: str, data: dict[str, Any]) -> None:
        utc = datetime.now(UTC).isoformat(timespec="milliseconds")
        record = {"t": round(trio.current_time(), 3), "utc": utc, "event": event, **data}
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
    #: the running transport (for tests and diagnostics); set by :meth:`run`
    transport: Transport | None = field(default=None, init=False)
    #: the signal that stopped the node ("SIGTERM", "SIGINT"), if one did
    stopped_by: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        net = self.config.net
        self.allow = read_allow_list(net.allow)
        if not net.open_membership and not self.allow:
            raise ConfigError(
                "net.allow", net.allow, "at least one peer id when open_membership is false"
            )
        self.membership = Membership(self.allow, open=net.open_membership)
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
            from .training.personal import personalise  # [personal]: itself when off

            self.task = personalise(self.task, self.config.personal)
            if self.config.attack.kind == "labelflip":  # an attacker trains on flipped labels
                from .training.attacks import label_flipped

                label_flipped(self.task)
        self.role = build_role(self.config, self.task, self.identity.peer_id, self.identity)
        self.stats = RunStats()
        self.stop: Stop | None = None
        #: Prometheus metrics (net.metrics_listen), once the node runs
        self.metrics: NodeMetrics | None = None
        #: the live dashboard's view of this node (dashboard.listen), once the node runs
        self.view: NodeView | None = None
        if self.config.dashboard.listen:  # a bad token file fails here, before any I/O
            from .dashboard import read_token

            read_token(self.config.dashboard.token_file)
        self._goodbye_scope: trio.CancelScope | None = None

    @property
    def peer_id(self) -> str:
        assert self.identity is not None
        return self.identity.peer_id

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        self._observe(self.peer_id, event, data)

    def _observe(self, peer: str, event: str, data: dict[str, Any]) -> None:
        """Every event of this node (its own and its role's): metrics, then the sink."""
        if event == "peers_ready" and data["peers"] < data["wanted"]:
            log.warning(
                "only %d of %d peers after %gs; starting anyway",
                data["peers"],
                data["wanted"],
                data["waited_s"],
            )
        if self.metrics is not None:
            self.metrics.on_event(event, data)
        if self.view is not None:
            self.view.on_event(peer, event, data)
        if self.on_event is not None:
            self.on_event(peer, event, data)

    def _on_reject(self, who: str, reason: str) -> None:
        """The transport refused a frame or a connection: count it and log it."""
        error, detail = _TRANSPORT_REJECTS.get(reason, (reason, reason))
        self.stats.rejected[error] += 1
        self._emit(
            "rejected", {"peer": who, "error": error, "stage": "transport", "detail": detail}
        )

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> Stop | None:
        """Run until the role stops, SIGINT/SIGTERM arrives, or the caller cancels.

        Returns the role's :class:`Stop`; after a signal, ``Stop(reason="SIGTERM")`` (or
        ``"SIGINT"``) with no error. Returns None only if the caller cancelled.
        Cancellation: the goodbye still runs (shielded, at most :data:`GOODBYE_S`).
        """
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
            max_inbound=cfg.wire.max_inbound_frames,
            max_inbound_per_peer=cfg.wire.max_inbound_frames_per_peer,
            dial_timeout=cfg.net.dial_timeout_s,
            send_timeout=cfg.net.send_timeout_s,
            # closed membership: a non-member's frame is refused before its payload is read
            accept_from=None if self.membership.open else self.membership.admits,
            on_reject=self._on_reject,
        )
        self.transport = transport
        receiver = Receiver(
            self.peer_id,
            self.membership,
            model_size=self.task.layout().size,
            max_frame_bytes=cfg.wire.max_frame_bytes,
            max_header_bytes=cfg.wire.max_header_bytes,
            max_clock_skew_s=cfg.wire.max_clock_skew_s,
        )
        sealer = Sealer(self.identity)
        executor = ThreadExecutor(self.task)
        role_scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals, role_scope, nursery.cancel_scope)
            await nursery.start(transport.run)
            self.listen_addrs = transport.addresses()
            # advertised by clients and aggregators: the coordinator tells the clients it
            # places under this node where to dial it, so two tiers work without mDNS
            self.role.set_listen_addrs(self.listen_addrs)
            log.info(
                "node %s (%s) listening on %s", self.peer_id, cfg.role, ", ".join(self.listen_addrs)
            )
            self._emit(
                "listening",
                {"peer": self.peer_id, "role": cfg.role, "addrs": list(self.listen_addrs)},
            )
            await nursery.start(
                lambda task_status: run_discovery(
                    transport,
                    mdns=cfg.net.mdns,
                    bootstrap=cfg.net.bootstrap,
                    service_name=cfg.net.federation,
                    dial_timeout=cfg.net.dial_timeout_s,
                    first_redial=1.0,
                    task_status=task_status,
                )
            )
            if cfg.net.control_socket:  # `fednode status` / `fednode promote` (local only)
                from .control import serve_control

                await nursery.start(serve_control, self.role, cfg.net.control_socket)
            if cfg.net.metrics_listen:  # Prometheus text metrics
                from .prometheus import NodeMetrics, serve_metrics

                self.metrics = NodeMetrics(
                    role=cfg.role,
                    peer_id=self.peer_id,
                    federation=cfg.net.federation,
                    stats=self.stats,
                    peers=lambda: sum(1 for p in transport.peers() if self.membership.admits(p)),
                )
                bound = await nursery.start(serve_metrics, self.metrics, cfg.net.metrics_listen)
                self._emit("metrics", {"url": f"http://{bound}/metrics"})
            if cfg.dashboard.listen:  # the live, read-only web page (fednode.dashboard)
                from .dashboard import serve_dashboard
                from .dashboard.nodeview import NodeView

                self.view = NodeView.of(cfg, self.peer_id, self.role.status)
                bound = await nursery.start(serve_dashboard, self.view.board, cfg.dashboard)
                token = bool(cfg.dashboard.token_file)
                self._emit("dashboard", {"url": f"http://{bound}/", "token": token})
            if cfg.role in ("client", "peer"):
                nursery.start_soon(_warm_up_training)
            logged = _PeerLog(transport, self._emit, self.membership.admits)
            nursery.start_soon(logged.pump)
            task_status.started()
            try:
                with role_scope:
                    loop = NodeLoop(
                        self.role,
                        sealer,
                        receiver,
                        peer=self.peer_id,
                        emit=self._observe,
                        stats=self.stats,
                    )
                    self.stop = await run_role(
                        loop, logged, executor, send_timeout_s=cfg.net.send_timeout_s
                    )
            finally:
                reason = self.stopped_by or (self.stop.reason if self.stop else "cancelled")
                await self._goodbye(transport, sealer, reason)
            if self.stop is None and self.stopped_by is not None:
                self.stop = Stop(self.stopped_by)
            stop = self.stop
            self._emit(
                "stopped",
                {
                    "reason": stop.reason if stop else "cancelled",
                    "signal": self.stopped_by,
                    "error": type(stop.error).__name__ if stop and stop.error else None,
                    "rejected": dict(self.stats.rejected),
                },
            )
            nursery.cancel_scope.cancel()
        return self.stop

    async def _watch_signals(self, role_scope: trio.CancelScope, root: trio.CancelScope) -> None:
        """First SIGINT/SIGTERM: stop the role (the goodbye follows). Second: stop now."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stopped_by is None:
                    self.stopped_by = name
                    log.warning("received %s: saying goodbye to peers, then stopping", name)
                    role_scope.cancel()
                    continue
                log.warning("received %s again: stopping without goodbye", name)
                if self._goodbye_scope is not None:
                    self._goodbye_scope.cancel()
                root.cancel()
                return

    async def _goodbye(self, transport: Transport, sealer: Sealer, reason: str) -> None:
        """Send a signed Bye to every connected member at once; shielded, bounded."""
        peers = sorted(p for p in transport.peers() if self.membership.admits(p))
        if not peers:
            return
        delivered = 0

        async def bye(send: Send) -> None:
            nonlocal delivered
            try:
                await transport.send(send.to, sealer.seal(send.msg, send.to))
                delivered += 1
            except FednodeError as exc:
                log.debug("goodbye to %s failed: %s", send.to, exc)

        with trio.CancelScope(shield=True) as scope:
            self._goodbye_scope = scope
            scope.deadline = trio.current_time() + GOODBYE_S
            async with trio.open_nursery() as nursery:
                for send in self.role.goodbye(peers, reason):
                    nursery.start_soon(bye, send)
        self._goodbye_scope = None
        self._emit("goodbye", {"peers": len(peers), "delivered": delivered, "reason": reason})


async def _warm_up_training() -> None:
    """Import what a torch task's first training step imports lazily, while the node
    waits for peers: ``torch.optim`` pulls in ``torch._dynamo`` on first use (~4 s of
    CPU on a small machine), which would otherwise delay the first round. Side-effect
    free; skipped when the task does not use torch."""
    if "torch" not in sys.modules:
        return
    try:
        await trio.to_thread.run_sync(_import_dynamo, abandon_on_cancel=True)  # type: ignore[call-arg]
    except ImportError as exc:  # a torch build without dynamo: nothing to warm up
        log.debug("warm-up skipped: %s", exc)


def _import_dynamo() -> None:
    import torch._dynamo  # noqa: F401


class _PeerLog(Transport):
    """The node's transport as the runner sees it, with peer up/down logged as events.

    Everything but :attr:`events` is the wrapped transport's; events pass through one
    bounded channel (back-pressure as before) after being logged. Peers that ``admits``
    refuses (non-members, with closed membership) are logged but never reported to the
    role, so it sends them nothing — not even an advert saying who this node is. A send
    to a peer the transport has no address for waits up to :data:`UNDISCOVERED_WAIT_S`
    for discovery to connect it (a coordinator may name a parent before mDNS found it).
    """

    def __init__(
        self,
        inner: Transport,
        emit: Callable[[str, dict[str, Any]], None],
        admits: Callable[[str], bool] = lambda peer: True,
    ) -> None:
        self.inner = inner
        self.emit = emit
        self.admits = admits
        self.local_peer = inner.local_peer
        self.incoming: trio.MemoryReceiveChannel[Inbound] = inner.incoming
        self._send, self.events = trio.open_memory_channel[PeerEvent](16)

    async def pump(self) -> None:
        async with self._send:
            async for event in self.inner.events:
                member = self.admits(event.peer)
                data: dict[str, Any] = {"peer": event.peer}
                if not member:
                    data["member"] = False
                self.emit("peer_up" if event.up else "peer_down", data)
                if member:
                    await self._send.send(event)

    async def send(self, peer: str, frame: Frame) -> None:
        if peer not in self.inner.peers() and not self._known(peer):
            # a peer we were told about (an Assign naming a new parent) before discovery
            # found it: give mDNS a moment to find and dial it instead of failing at once
            with trio.move_on_after(UNDISCOVERED_WAIT_S):
                while peer not in self.inner.peers():
                    await trio.sleep(PEER_POLL_S / 2)
        await self.inner.send(peer, frame)

    def _known(self, peer: str) -> bool:
        known = getattr(self.inner, "known_addresses", None)
        return True if known is None else bool(known(peer))

    def peers(self) -> frozenset[str]:
        return self.inner.peers()

    def addresses(self) -> tuple[str, ...]:
        return self.inner.addresses()

    async def connect(self, peer: str, addrs: tuple[str, ...] = ()) -> None:
        await self.inner.connect(peer, addrs)

    async def aclose(self) -> None:
        await self.inner.aclose()
