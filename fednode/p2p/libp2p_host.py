"""The real transport: a py-libp2p host (TCP + Noise + Yamux) moving fednode frames.

Why one stream per frame and not one persistent stream per peer: a new Yamux stream
costs no extra round trip, because multistream-select is pipelined ahead of the frame
(see :func:`.libp2p_framing.send_on`). A 200-byte frame is one round trip. In exchange,
a 500 MB update does not block a 200-byte advert (Yamux interleaves the streams), a
cancelled or failed send only resets its own stream and never leaves a shared stream
half-written, and a receiver can refuse one frame without tearing down anything else.
The status byte makes ``send`` return only after the frame reached the receiver's
``incoming`` channel, so a slow consumer pushes back on senders and a dead peer surfaces
as :class:`~fednode.errors.PeerGone`. Measurements: ``docs/BENCHMARKS.md``.

Security: Noise only. py-libp2p offers TLS, SECIO and *plaintext* by default, and a
plaintext peer could claim any peer id, so they are switched off. Yamux only. The peer
id in :class:`Inbound` is the remote key that Noise authenticated for the connection.
With ``network_key`` set (32 bytes), every connection is wrapped in py-libp2p's private
network layer (``libp2p.security.pnet``: Salsa20 over the raw TCP stream, keyed with
the PSK, below Noise). A node without the key cannot even complete the Noise handshake,
so none of its frames reach the handler. The layer is not wire-compatible with
go-libp2p's pnet: py-libp2p uses Salsa20 with an 8-byte nonce, go uses XSalsa20 with a
24-byte nonce.

Errors: ``send``/``connect`` raise :class:`PeerGone` when the peer cannot be reached or
stops answering, :class:`TransportError` when this transport is not running or the peer
refuses the frame, and :class:`LocalProtocolError` for a malformed frame given to us.
No libp2p or OS exception escapes this module.

Cancellation: a cancelled ``send`` resets its stream, and the receiver then drops the
partial frame. The patched Noise writer (``_libp2p_patches``) finishes the Yamux frame
in flight (at most 1 MiB), so the connection stays usable. Shutdown: cancel
:meth:`Libp2pTransport.run`, or call :meth:`aclose`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any, Literal

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from ..addresses import p2p_suffix_stripped
from ..errors import (
    FednodeError,
    FrameTooLarge,
    LocalProtocolError,
    PeerGone,
    RemoteProtocolError,
    SchemaError,
    TransportError,
)
from ..wire.frames import Frame, Inbound
from ..wire.messages import PREFIX, head_length
from . import _libp2p_patches
from .libp2p_framing import (
    FOREIGN,
    PROTOCOL_ID,
    STATUS_BAD_PREFIX,
    STATUS_BUSY,
    STATUS_NOT_ACCEPTED,
    STATUS_OK,
    STATUS_TEXT,
    STATUS_TOO_LARGE,
    MiB,
    first_error,
    read_frame,
    send_on,
)
from .libp2p_setup import expand_unspecified, make_host
from .transport import PeerEvent, Transport

log = logging.getLogger(__name__)

#: bound on best-effort cleanup (stream reset/close) in shielded scopes
CLEANUP_S = 2.0
#: how long the peer's addresses stay in the peerstore (0 = until replaced)
ADDR_TTL = 0


class Libp2pTransport(Transport):
    """fednode frames over py-libp2p. Start with ``await nursery.start(t.run)``.

    ``key_pair`` is the node's Ed25519 key (``Identity.to_libp2p_keypair()``); its
    libp2p peer id is :attr:`local_peer`. ``network_key`` (32 bytes) turns on the
    private network. Limits: ``max_frame_bytes`` bounds head + payload of one inbound
    frame (checked before allocating), ``max_header_bytes`` the CBOR header;
    ``max_inbound`` frames are read at once (so inbound frames hold at most
    ``max_inbound x max_frame_bytes`` of memory), at most ``max_inbound_per_peer`` of
    them from one peer. A stream beyond either limit waits its turn (first come, first
    served), unread, within its ``send_timeout``; one that is still waiting then is
    answered "busy". ``dial_timeout`` bounds a connect, ``send_timeout`` one whole frame (send until
    acknowledged; receive from first to last byte). ``accept_from(peer)``, if given, is
    asked before anything of an inbound frame is read: a peer it refuses (say, not on
    the allow-list) is answered "not accepted" and costs no allocation.
    ``on_reject(who, reason)``, if given, hears of every refusal this transport makes on
    its own: ``reason="not_accepted"`` with the peer id for a frame ``accept_from``
    refused, ``reason="busy"`` for a frame not taken within ``send_timeout`` (the node
    was at its inbound limits, or its ``incoming`` channel stayed full),
    ``reason="handshake"`` with the remote ``ip:port`` for an inbound
    connection whose security handshake failed (with a network key, a peer without the
    key ends here). :attr:`refused_frames` and :attr:`failed_handshakes` count them.
    It runs inside libp2p's tasks and must not block. ``muxer="mplex"`` exists only for
    the benchmark.
    """

    def __init__(
        self,
        key_pair: KeyPair,
        *,
        listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        network_key: bytes | None = None,
        max_frame_bytes: int = 512 * MiB,
        max_header_bytes: int = 64 * 1024,
        dial_timeout: float = 10.0,
        send_timeout: float = 60.0,
        channel_size: int = 16,
        max_inbound: int = 32,
        max_inbound_per_peer: int = 4,
        accept_from: Callable[[str], bool] | None = None,
        on_reject: Callable[[str, str], None] | None = None,
        muxer: Literal["yamux", "mplex"] = "yamux",
    ) -> None:
        if network_key is not None and len(network_key) != 32:
            raise ValueError(f"network_key must be 32 bytes, got {len(network_key)}")
        if max_frame_bytes < PREFIX.size or max_header_bytes < 0:
            raise ValueError("max_frame_bytes/max_header_bytes out of range")
        if not 1 <= max_inbound_per_peer <= max_inbound:
            raise ValueError("need 1 <= max_inbound_per_peer <= max_inbound")
        self._key_pair = key_pair
        self._pid = ID.from_pubkey(key_pair.public_key)
        self.local_peer = self._pid.to_base58()
        self._listen = [multiaddr.Multiaddr(a) for a in listen]
        self._psk = network_key.hex() if network_key is not None else None
        self._max_frame = max_frame_bytes
        self._max_header = max_header_bytes
        self._dial_timeout = dial_timeout
        self._send_timeout = send_timeout
        self._muxer = muxer
        self._accept_from = accept_from
        self._on_reject = on_reject
        #: frames being read, all peers / per peer (peers with none waiting are dropped)
        self._inbound = trio.CapacityLimiter(max_inbound)
        self._max_per_peer = max_inbound_per_peer
        self._per_peer: dict[str, trio.CapacityLimiter] = {}
        #: inbound frames refused: ``accept_from`` said no, or not taken in time (busy)
        self.refused_frames = 0
        #: inbound connections whose security handshake (pnet + Noise) failed
        self.failed_handshakes = 0
        self._in_send, self.incoming = trio.open_memory_channel[Inbound](channel_size)
        self._ev_send, self.events = trio.open_memory_channel[PeerEvent](channel_size)
        self._host: IHost | None = None
        self._run_scope: trio.CancelScope | None = None
        self._dirty: dict[ID, None] = {}  # peers whose up/down state may have changed
        self._wake = trio.Event()
        self._reported: dict[ID, bool] = {}

    # ------------------------------------------------------------------ lifecycle
    def _reject(self, who: str, reason: str) -> None:
        if reason == "handshake":
            self.failed_handshakes += 1
        else:
            self.refused_frames += 1
        if self._on_reject is not None:
            self._on_reject(who, reason)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled (or :meth:`aclose`).

        Errors: :class:`TransportError` if none of the listen addresses could be bound.
        Cancellation: closes every connection; ``incoming``/``events`` then end.
        """
        _libp2p_patches.apply()
        host = make_host(
            self._key_pair,
            listen=self._listen,
            psk=self._psk,
            muxer=self._muxer,
            handler=self._handle_stream,
            mark_peer=self._mark_peer,
            on_handshake_failed=lambda who: self._reject(who, "handshake"),
        )
        try:
            with trio.CancelScope() as scope:
                self._run_scope = scope
                async with host.run(listen_addrs=self._listen), trio.open_nursery() as nursery:
                    if not host.get_transport_addrs():
                        wanted = [str(a) for a in self._listen]
                        raise TransportError(f"could not listen on {wanted}")
                    # no background re-dialing of every peer in the peerstore (aiming
                    # for 200 connections); fednode dials whom discovery names
                    await host.get_network().auto_connector.stop()  # type: ignore[attr-defined]
                    nursery.start_soon(self._pump_events)
                    self._host = host
                    log.info("libp2p %s listening on %s", self.local_peer, self.addresses())
                    task_status.started()
                    await trio.sleep_forever()
        except OSError as exc:
            raise TransportError(f"libp2p host failed: {exc}") from exc
        except BaseExceptionGroup as group:
            # libp2p's nested nurseries wrap whatever ends the host; unwrap our own
            # error (and OS errors) so callers see one TransportError, not a tree
            first = first_error(group)
            if isinstance(first, TransportError):
                raise first from None
            if isinstance(first, OSError):
                raise TransportError(f"libp2p host failed: {first}") from group
            raise
        finally:
            self._host = None
            self._in_send.close()
            self._ev_send.close()

    async def aclose(self) -> None:
        """Close every connection, then stop :meth:`run`; pending sends fail with
        :class:`PeerGone`.

        The connections are closed first (shielded, bounded): when :meth:`run` is only
        cancelled, py-libp2p closes them inside the cancelled scope and may leave a
        dialed one open, so the peer we dialed would never see us go.
        """
        host = self._host
        if host is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_S):
                try:
                    await host.close()
                except Exception as exc:  # libp2p boundary: closing is best effort
                    log.debug("closing the libp2p host: %r", exc)
        if self._run_scope is not None:
            self._run_scope.cancel()
        await trio.lowlevel.checkpoint()

    def _require_host(self) -> IHost:
        if self._host is None:
            raise TransportError("libp2p transport is not running")
        return self._host

    # ------------------------------------------------------------------ queries
    def peers(self) -> frozenset[str]:
        if self._host is None:
            return frozenset()
        network: Any = self._host.get_network()
        return frozenset(
            pid.to_base58()
            for pid, conns in network.connections.items()
            if any(not c.is_closed for c in conns)
        )

    def addresses(self) -> tuple[str, ...]:
        """Dialable ``/ip4/.../tcp/.../p2p/<id>`` addresses (0.0.0.0 expanded)."""
        if self._host is None:
            return ()
        out: list[str] = []
        for maddr in self._host.get_transport_addrs():
            for concrete in expand_unspecified(maddr):
                out.append(f"{concrete}/p2p/{self.local_peer}")
        return tuple(out)

    def known_addresses(self, peer: str) -> tuple[str, ...]:
        """Addresses this host could dial ``peer`` at (from discovery or a connection)."""
        if self._host is None:
            return ()
        try:
            pid = ID.from_base58(peer)
        except ValueError:
            return ()
        return self._peer_addrs(pid)

    def _parse_peer(self, peer: str) -> ID:
        try:
            pid = ID.from_base58(peer)
        except ValueError as exc:
            raise PeerGone(f"not a peer id: {peer!r}", peer=peer) from exc
        if not peer or pid == self._pid:
            raise LocalProtocolError(f"cannot talk to {peer!r}: empty or own peer id")
        return pid

    def _is_connected(self, pid: ID) -> bool:
        if self._host is None:
            return False
        network: Any = self._host.get_network()
        return any(not c.is_closed for c in network.connections.get(pid, ()))

    # ------------------------------------------------------------------ dialing
    async def connect(self, peer: str, addrs: tuple[str, ...] = ()) -> None:
        """Dial ``peer`` at ``addrs`` (replacing addresses known for it) unless connected.

        Errors: :class:`PeerGone` when no address answers within ``dial_timeout`` or
        the remote key is not ``peer``; :class:`TransportError` for a malformed address.
        """
        host = self._require_host()
        pid = self._parse_peer(peer)
        try:
            maddrs = [p2p_suffix_stripped(a, peer) for a in addrs]
        except ValueError as exc:
            raise TransportError(f"bad address for {peer}: {exc}", peer=peer) from exc
        if self._is_connected(pid):
            return
        if maddrs:
            store = host.get_peerstore()
            store.clear_addrs(pid)
            store.add_addrs(pid, maddrs, ADDR_TTL)
            cache = getattr(host.get_network(), "_negative_peer_cache", None)
            if cache is not None:  # fresh addresses: forget an earlier failed dial
                cache.evict(str(pid))
        await self._dial(host, pid, peer)

    async def _dial(self, host: IHost, pid: ID, peer: str) -> None:
        try:
            with trio.fail_after(self._dial_timeout):
                conns = await host.get_network().dial_peer(pid)
                for conn in conns:
                    started = getattr(conn, "event_started", None)
                    if started is not None:
                        await started.wait()
        except trio.TooSlowError as exc:
            raise PeerGone(f"dial timed out after {self._dial_timeout}s", peer=peer) from exc
        except FOREIGN as exc:
            raise PeerGone(f"dial failed: {exc}", peer=peer) from exc

    # ------------------------------------------------------------------ sending
    async def send(self, peer: str, frame: Frame) -> None:
        host = self._require_host()
        pid = self._parse_peer(peer)
        head = frame.head
        try:
            want = head_length(head[: PREFIX.size], max_header=self._max_header)
            parts = frame.parts  # byte views, whatever the item type (scatter-gather payload)
        except (FednodeError, struct.error, TypeError) as exc:
            raise LocalProtocolError(f"frame is malformed: {exc}", peer=peer) from exc
        if want != len(head):
            raise LocalProtocolError(
                f"frame head is {len(head)} bytes but its prefix announces {want}", peer=peer
            )
        size = sum(len(part) for part in parts)
        if len(head) + size > self._max_frame:
            raise LocalProtocolError(
                f"frame of {len(head) + size} bytes exceeds the limit of {self._max_frame}",
                peer=peer,
            )
        if not self._is_connected(pid):
            await self._dial(host, pid, peer)
        try:
            with trio.fail_after(self._send_timeout):
                # a bare stream: _send_on pipelines the protocol selection
                stream = await host.get_network().new_stream(pid)
                stream.set_protocol(PROTOCOL_ID)
                status = STATUS_BUSY
                try:
                    status = await send_on(stream, head, parts)
                finally:
                    # delivered: close; refused, failed or cancelled: reset, so the
                    # receiver drops whatever part of the frame it has
                    with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_S):
                        try:
                            await (stream.close() if status == STATUS_OK else stream.reset())
                        except FOREIGN as exc:
                            log.debug("closing stream to %s: %r", peer, exc)
        except trio.TooSlowError as exc:
            text = f"frame not acknowledged within {self._send_timeout}s"
            raise PeerGone(text, peer=peer) from exc
        except RemoteProtocolError as exc:
            raise PeerGone(f"peer broke the stream protocol: {exc}", peer=peer) from exc
        except FOREIGN as exc:
            raise PeerGone(f"send failed: {exc}", peer=peer) from exc
        if status != STATUS_OK:
            text = STATUS_TEXT.get(status, f"unknown status {status}")
            raise TransportError(f"peer refused the frame: {text}", peer=peer)

    # ------------------------------------------------------------------ receiving
    async def _handle_stream(self, stream: INetStream) -> None:
        """One inbound frame. Per-peer boundary: nothing a peer sends escapes from here."""
        peer = stream.muxed_conn.peer_id.to_base58()
        try:
            status = STATUS_BUSY
            if self._accept_from is not None and not self._accept_from(peer):
                log.info("refused a frame from %s: peer not accepted", peer)
                self._reject(peer, "not_accepted")
                status = STATUS_NOT_ACCEPTED  # answered before reading anything
            else:
                with trio.move_on_after(self._send_timeout) as deadline:
                    status = await self._receive_in_turn(stream, peer)
                if deadline.cancelled_caught:
                    log.warning("frame from %s not taken within %ss", peer, self._send_timeout)
                    self._reject(peer, "busy")
            with trio.move_on_after(CLEANUP_S):
                await stream.write(bytes((status,)))
                await stream.close()
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("inbound frame from %s dropped: transport closing", peer)
        except RemoteProtocolError as exc:
            log.info("incomplete frame from %s: %s", peer, exc)
        except Exception as exc:  # per-peer boundary: drop this stream, keep serving
            log.info("inbound stream from %s failed: %r", peer, exc)
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_S):
            try:
                await stream.reset()
            except Exception as exc:  # per-peer boundary (cleanup of a dead stream)
                log.debug("resetting stream from %s: %r", peer, exc)

    async def _receive_in_turn(self, stream: INetStream, peer: str) -> int:
        """:meth:`_receive` within the inbound limits: a peer's own limit first, so the
        streams one peer opens beyond it queue behind each other, not ahead of others."""
        limiter = self._per_peer.get(peer)
        if limiter is None:
            limiter = self._per_peer[peer] = trio.CapacityLimiter(self._max_per_peer)
        try:
            async with limiter, self._inbound:
                return await self._receive(stream, peer)
        finally:
            idle = not limiter.borrowed_tokens and not limiter.statistics().tasks_waiting
            if idle and self._per_peer.get(peer) is limiter:
                del self._per_peer[peer]

    async def _receive(self, stream: INetStream, peer: str) -> int:
        """Read one frame and queue it on ``incoming``; the status byte to answer."""
        try:
            frame = await read_frame(stream, max_header=self._max_header, max_frame=self._max_frame)
        except FrameTooLarge as exc:
            log.warning("refused frame from %s: %s", peer, exc)
            return STATUS_TOO_LARGE
        except SchemaError as exc:
            log.warning("refused frame from %s: %s", peer, exc)
            return STATUS_BAD_PREFIX
        await self._in_send.send(Inbound(peer, frame, trio.current_time()))
        return STATUS_OK

    # ------------------------------------------------------------------ peer events
    def _mark_peer(self, pid: ID) -> None:
        self._dirty.pop(pid, None)
        self._dirty[pid] = None
        self._wake.set()

    async def _pump_events(self) -> None:
        """Turn notifee marks into up/down events, in order, from the live swarm state.

        Memory is bounded by the number of peers; only this task blocks when the
        ``events`` consumer is slow (never libp2p's connection tasks). A peer that
        flaps faster than the consumer reads may have the flap coalesced away.
        """
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._dirty:
                pid = next(iter(self._dirty))
                del self._dirty[pid]
                up = self._is_connected(pid)
                if self._reported.get(pid, False) == up:
                    continue
                self._reported[pid] = up
                if not up:
                    self._reported.pop(pid, None)
                addrs = self._peer_addrs(pid) if up else ()
                await self._ev_send.send(PeerEvent(pid.to_base58(), up, addrs))

    def _peer_addrs(self, pid: ID) -> tuple[str, ...]:
        host = self._host
        if host is None:
            return ()
        try:
            addrs = host.get_peerstore().addrs(pid)
        except Exception:  # libp2p PeerStoreError: unknown or expired; nothing to report
            return ()
        return tuple(f"{a}/p2p/{pid.to_base58()}" for a in addrs)


__all__ = [
    "PROTOCOL_ID",
    "Libp2pTransport",
]
