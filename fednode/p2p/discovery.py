"""Zero-config discovery: find peers (mDNS on the LAN, a bootstrap list) and dial them.

:func:`run_discovery` is one service, started with ``await nursery.start(...)``:

* **bootstrap**: multiaddrs ending in ``/p2p/<peer id>``. They are dialed at start and
  redialed while they are not connected: after ``first_redial`` seconds, then at doubling
  intervals up to ``redial_interval`` (so nodes started in any order find each other
  within seconds, and a peer that is gone costs one dial per ``redial_interval``).
* **mDNS** (:class:`MdnsService`, zeroconf used directly): it announces this node as
  ``<random>._<service_name>._udp.local.`` and browses the same type. It follows the
  libp2p mDNS spec's record format (one TXT string ``dnsaddr=<multiaddr>/p2p/<id>`` per
  address) but uses its own service type, so it finds fednode nodes and not every
  libp2p node on the LAN. ``service_name="p2p"`` gives the plain libp2p type.
  Peers it finds are dialed, and redialed like bootstrap peers until they withdraw
  their announcement.

Role adverts (role, federation, task) are not sent here. The node sends them once a
connection is up. Discovery only finds peers and connects to them.

Why not ``libp2p.discovery.mdns``: it calls ``time.sleep`` and a blocking
``get_service_info`` on zeroconf's thread, reports through a process-global
``peerDiscovery`` object (which would leak between simulated nodes), starts a
``spawn_system_task``, and finds its own IP by routing a UDP socket toward
``8.8.8.8``. Here, zeroconf's browser thread only hands ``(name, change)`` into trio,
through ``trio.from_thread`` into a bounded channel (it drops when full, and the
browser repeats itself). Blocking zeroconf calls (start, register, resolve, close) run
in ``trio.to_thread``; zeroconf bounds each of them with its own timeout. All the state
lives in the objects of one call, and zeroconf's threads end when the call returns.

Errors: a malformed bootstrap address raises :class:`~fednode.errors.ConfigError` at
start. Failed dials are logged and retried later, and never stop the service. If mDNS
cannot start (no multicast-capable interface), a warning is logged and bootstrap
carries on alone.
Cancellation: unregisters the announcement (mDNS goodbye) and closes zeroconf, in a
worker thread, before returning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..addresses import bootstrap_peers, split_peer_addr
from ..errors import ConfigError, FednodeError
from .transport import Transport

log = logging.getLogger(__name__)

#: DNS-SD service names: 1-15 letters, digits, hyphens (RFC 6335)
SERVICE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,13}[a-z0-9])?$")
#: max concurrent dials
DIAL_CONCURRENCY = 8
#: how long the larger peer id waits before dialing an mDNS-found peer
POLITE_DELAY_S = 1.0
#: bound on one resolve of a discovered service name (zeroconf request, ms)
RESOLVE_MS = 1500


@dataclass(frozen=True, slots=True)
class Found:
    """A peer and the addresses (without ``/p2p``) at which it says it listens."""

    peer: str
    addrs: tuple[str, ...]
    source: str  # "bootstrap" | "mdns"
    mdns_name: str = ""  # the mDNS instance that announced it


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """An mDNS announcement went away (goodbye or expiry)."""

    mdns_name: str


# --------------------------------------------------------------------------- parsing
def parse_bootstrap(addrs: tuple[str, ...]) -> tuple[Found, ...]:
    """Bootstrap multiaddrs -> one :class:`Found` per peer (addresses merged).

    Errors: :class:`ConfigError` (field ``net.bootstrap``) naming the bad address.
    """
    return tuple(Found(p, a, "bootstrap") for p, a in bootstrap_peers(addrs).items())


def txt_record(addresses: tuple[str, ...]) -> bytes:
    """Raw DNS TXT rdata: one ``dnsaddr=<addr>`` string per address (libp2p mDNS spec)."""
    out = bytearray()
    for addr in addresses:
        item = f"dnsaddr={addr}".encode()
        if len(item) > 255:
            continue  # a TXT string holds at most 255 bytes; such an address cannot go
        out.append(len(item))
        out += item
    return bytes(out)


def parse_txt(text: bytes, *, own_peer: str) -> Found | None:
    """The peer announced in raw TXT rdata, or None (own, malformed, no address)."""
    peer: str | None = None
    addrs: list[str] = []
    i = 0
    while i < len(text):
        n = text[i]
        item = text[i + 1 : i + 1 + n]
        i += 1 + n
        if not item.startswith(b"dnsaddr="):
            continue
        try:
            pid, base = split_peer_addr(item[len(b"dnsaddr=") :].decode())
        except ValueError:  # remote input (UnicodeDecodeError is one too): skip it
            continue
        if peer is None:
            peer = pid
        if pid == peer and base not in addrs:
            addrs.append(base)
    if peer is None or peer == own_peer or not addrs:
        return None
    return Found(peer, tuple(addrs), "mdns")


def service_type(name: str) -> str:
    """mDNS service type for a federation name: ``_<name>._udp.local.``.

    DNS-SD allows 1-15 lowercase letters, digits and hyphens. Any other name (for
    example a long federation name) maps to ``fn-`` plus 12 hex digits of its SHA-256,
    so every federation gets its own service type.
    """
    label = name.lower()
    if not SERVICE_NAME.match(label):
        if not name:
            raise ConfigError("net.federation", name, "a non-empty name")
        label = "fn-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"_{label}._udp.local."


def _advertised(addresses: tuple[str, ...]) -> tuple[str, ...]:
    """Addresses worth announcing on a LAN: drop loopback unless there is nothing else."""
    routable = tuple(a for a in addresses if not a.startswith("/ip4/127."))
    return routable or addresses


# --------------------------------------------------------------------------- mDNS
class MdnsService:
    """Announce ``addresses`` and report announced peers as :class:`Found`.

    ``interfaces``: IPv4 addresses of the interfaces to use (``None``: all). Tests use
    ``("127.0.0.1",)`` inside a private network namespace.
    """

    def __init__(
        self,
        *,
        own_peer: str,
        addresses: tuple[str, ...],
        service_name: str = "fednode",
        interfaces: tuple[str, ...] | None = None,
    ) -> None:
        self.service_type = service_type(service_name)
        self.own_peer = own_peer
        self.addresses = _advertised(addresses)
        self.interfaces = interfaces
        self.instance = secrets.token_hex(16)  # libp2p spec: a random name, 32-63 chars

    def _service_info(self) -> Any:
        from zeroconf import ServiceInfo

        ips, port = [], 0
        for addr in self.addresses:
            parts = addr.split("/")
            if len(parts) > 4 and parts[1] == "ip4" and parts[3] == "tcp":
                ips.append(parts[2])
                port = port or int(parts[4])
        return ServiceInfo(
            self.service_type,
            f"{self.instance}.{self.service_type}",
            port=port,
            properties=txt_record(self.addresses),
            server=f"{self.instance}.local.",
            addresses=[socket.inet_aton(ip) for ip in dict.fromkeys(ips)],
        )

    async def run(
        self,
        found: trio.MemorySendChannel[Found | Withdrawn],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Announce and browse until cancelled; found peers go to ``found``."""
        from zeroconf import (
            InterfaceChoice,
            IPVersion,
            ServiceBrowser,
            ServiceStateChange,
            Zeroconf,
        )

        token = trio.lowlevel.current_trio_token()
        names_send, names_recv = trio.open_memory_channel[tuple[str, bool]](64)

        def on_change(
            zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            # zeroconf's browser thread: hand over to trio and return at once
            alive = state_change is not ServiceStateChange.Removed
            # full: dropped (the browser repeats itself); closed/finished: shutting down
            with contextlib.suppress(
                trio.WouldBlock, trio.RunFinishedError, trio.ClosedResourceError
            ):
                trio.from_thread.run_sync(names_send.send_nowait, (name, alive), trio_token=token)

        interfaces: Any = list(self.interfaces) if self.interfaces else InterfaceChoice.All
        info = self._service_info()
        # zeroconf bounds its own blocking calls (register/request/close use timeouts);
        # they run in worker threads so the trio loop stays free for the browser thread
        try:
            zc = await trio.to_thread.run_sync(
                lambda: Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            )
        except OSError as exc:  # no multicast-capable interface: bootstrap still works
            log.warning("mDNS unavailable (%s); discovery continues without it", exc)
            task_status.started()
            return
        browser: Any = None
        try:
            browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, self.service_type, handlers=[on_change])
            )
            async with trio.open_nursery() as nursery:
                # probing + announcing takes ~1.5 s; browse meanwhile
                nursery.start_soon(self._register, zc, info)
                task_status.started()
                async for name, alive in names_recv:
                    if name == info.name:
                        continue
                    if not alive:
                        await found.send(Withdrawn(name))
                        continue
                    peer = await trio.to_thread.run_sync(self._resolve, zc, name)
                    if peer is not None:
                        await found.send(peer)
        finally:
            names_send.close()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close, zc, browser, info)

    async def _register(self, zc: Any, info: Any) -> None:
        try:
            await trio.to_thread.run_sync(lambda: zc.register_service(info, allow_name_change=True))
        except Exception as exc:  # zeroconf boundary: browsing still finds others
            log.warning("mDNS: could not announce this node: %r", exc)
            return
        log.info("mDNS: announcing %s as %s", self.own_peer, info.name)

    def _resolve(self, zc: Any, name: str) -> Found | None:
        """Worker thread: TXT record of ``name`` (from cache, or asked for, bounded)."""
        from zeroconf import ServiceInfo

        info = ServiceInfo(self.service_type, name)
        try:
            answered = info.request(zc, RESOLVE_MS)
        except Exception as exc:  # zeroconf boundary (EventLoopBlocked, closing loop)
            log.debug("mDNS: resolving %s failed: %r", name, exc)
            return None
        if not answered or not info.text:
            log.debug("mDNS: %s did not resolve within %d ms", name, RESOLVE_MS)
            return None
        found = parse_txt(info.text, own_peer=self.own_peer)
        if found is not None:
            return Found(found.peer, found.addrs, "mdns", mdns_name=name)
        return None

    @staticmethod
    def _close(zc: Any, browser: Any, info: Any) -> None:
        """Worker thread: stop browsing, send the goodbye, close sockets and threads."""
        try:
            if browser is not None:
                browser.cancel()
            zc.unregister_service(info)
        except Exception as exc:  # best effort on the way out; zc.close() still runs
            log.debug("mDNS: unregister failed: %r", exc)
        finally:
            zc.close()


# --------------------------------------------------------------------------- dialing
class _Dialer:
    """Dial found peers: at most one dial per peer, bounded concurrency, each bounded."""

    def __init__(self, transport: Transport, dial_timeout: float) -> None:
        self.transport = transport
        self.dial_timeout = dial_timeout
        self.limiter = trio.CapacityLimiter(DIAL_CONCURRENCY)
        self.in_flight: set[str] = set()
        self.known: dict[str, Found] = {}  # peers to keep connected to
        self.by_mdns_name: dict[str, str] = {}  # mDNS instance name -> peer id
        self.dials = 0

    def note(self, item: Found | Withdrawn) -> Found | None:
        """Record what discovery said; returns the peer to dial now, if any."""
        if isinstance(item, Withdrawn):
            peer = self.by_mdns_name.pop(item.mdns_name, None)
            if peer is not None and peer in self.known and self.known[peer].source == "mdns":
                del self.known[peer]
            return None
        if item.peer == self.transport.local_peer:
            return None
        if item.mdns_name:
            self.by_mdns_name[item.mdns_name] = item.peer
        previous = self.known.get(item.peer)
        if previous is None or previous.source != "bootstrap":
            self.known[item.peer] = item
        return item

    def wanted(self, found: Found) -> bool:
        return found.peer not in self.in_flight and found.peer not in self.transport.peers()

    async def dial(self, found: Found) -> None:
        if not self.wanted(found):
            return
        self.in_flight.add(found.peer)
        try:
            if found.source == "mdns" and self.transport.local_peer > found.peer:
                # both ends see each other's announcement at about the same time; the
                # larger peer id holds back so that usually only one connection forms
                await trio.sleep(POLITE_DELAY_S)
                if found.peer in self.transport.peers():
                    return
            async with self.limiter:
                self.dials += 1
                with trio.move_on_after(self.dial_timeout + 1.0):
                    await self.transport.connect(found.peer, found.addrs)
                    log.info("discovery: connected to %s (%s)", found.peer, found.source)
        except FednodeError as exc:
            log.debug("discovery: dial %s failed: %s", found.peer, exc)
        finally:
            self.in_flight.discard(found.peer)


async def run_discovery(
    transport: Transport,
    *,
    mdns: bool = True,
    bootstrap: tuple[str, ...] = (),
    service_name: str = "fednode",
    interfaces: tuple[str, ...] | None = None,
    dial_timeout: float = 10.0,
    redial_interval: float = 30.0,
    first_redial: float | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    mdns_factory: Callable[..., MdnsService] = MdnsService,
) -> None:
    """Find peers and keep them dialed until cancelled. Start with ``nursery.start``.

    ``transport`` must be running (its :meth:`~Transport.addresses` are announced).
    Known peers that are not connected are redialed after ``first_redial`` seconds
    (default: ``redial_interval``), then at doubling intervals up to ``redial_interval``.
    ``mdns_factory`` exists for tests that replace zeroconf.
    """
    boot = parse_bootstrap(bootstrap)
    dialer = _Dialer(transport, dial_timeout)
    found_send, found_recv = trio.open_memory_channel[Found | Withdrawn](64)
    async with trio.open_nursery() as nursery:
        if mdns:
            service = mdns_factory(
                own_peer=transport.local_peer,
                addresses=transport.addresses(),
                service_name=service_name,
                interfaces=interfaces,
            )
            await nursery.start(service.run, found_send.clone())
        for found in boot:
            dialer.note(found)
        first = redial_interval if first_redial is None else min(first_redial, redial_interval)
        nursery.start_soon(_redial_loop, dialer, nursery, redial_interval, first)
        found_send.close()
        task_status.started()
        async for item in found_recv:
            wanted = dialer.note(item)
            if wanted is not None:
                nursery.start_soon(dialer.dial, wanted)


async def _redial_loop(
    dialer: _Dialer, nursery: trio.Nursery, interval: float, first: float
) -> None:
    """Dial known peers that are not connected: at once, after ``first`` seconds, then at
    doubling intervals up to ``interval``."""
    delay = first
    while True:
        for found in list(dialer.known.values()):
            if dialer.wanted(found):
                nursery.start_soon(dialer.dial, found)
        await trio.sleep(delay)
        delay = min(2 * delay, interval)
