"""Building the py-libp2p host of :class:`~.libp2p_host.Libp2pTransport`, and its addresses.

Security and muxer choice, the notifee that marks peers whose connection changed, the
count of failed inbound handshakes, and listen addresses made dialable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import RetryConfig
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from . import _libp2p_patches
from .libp2p_framing import PROTOCOL_ID


def make_host(
    key_pair: KeyPair,
    *,
    listen: list[multiaddr.Multiaddr],
    psk: str | None,
    muxer: str,
    handler: Callable[[INetStream], Awaitable[None]],
    mark_peer: Callable[[ID], None],
    on_handshake_failed: Callable[[str], None],
) -> IHost:
    """A py-libp2p host: Noise only, Yamux (or Mplex, for the benchmark), ``psk`` as the
    private-network key; ``handler`` serves our protocol, ``mark_peer`` hears of
    connection changes, ``on_handshake_failed(ip:port)`` of failed inbound handshakes."""
    sec = {NOISE_PROTOCOL_ID: NoiseTransport(key_pair, new_x25519_key_pair().private_key)}
    muxers: Any = (
        {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
        if muxer == "yamux"
        else {TProtocol(MPLEX_PROTOCOL_ID): Mplex}
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt=sec,
        muxer_opt=muxers,
        listen_addrs=listen,
        connection_config=_libp2p_patches.connection_config(),
        psk=psk,
        disable_identify_address_discovery=True,
    )
    network: Any = host.get_network()
    # one retry instead of three: a refused dial is answered within ~0.1 s
    network.retry_config = RetryConfig(max_retries=1, initial_delay=0.1)
    host.set_stream_handler(PROTOCOL_ID, handler)
    network.register_notifee(_Notifee(mark_peer))
    _count_failed_handshakes(network, on_handshake_failed)
    return host


def _count_failed_handshakes(network: Any, failed: Callable[[str], None]) -> None:
    """Wrap this host's upgrader so a failed inbound handshake is counted and reported.

    A dialer with a wrong or missing network key sends bytes that the private-network
    layer decrypts to garbage, so multistream/Noise fail; libp2p only logs that at
    debug level. Only this host's upgrader instance is wrapped (no global patch).
    """
    upgrader: Any = getattr(network, "upgrader", None)
    inner = getattr(upgrader, "upgrade_security", None)
    if inner is None:  # pragma: no cover - libp2p layout changed; counting is optional
        return

    async def upgrade_security(raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> Any:
        try:
            return await inner(raw_conn, is_initiator, peer_id)
        except Exception:
            if not is_initiator:
                failed(_remote_address(raw_conn))
            raise

    upgrader.upgrade_security = upgrade_security


def _remote_address(raw_conn: Any) -> str:
    """``ip:port`` of an inbound raw connection, or "?" (the peer is not authenticated yet)."""
    try:
        addr = raw_conn.get_remote_address()
    except Exception:  # libp2p boundary: the socket may already be gone
        return "?"
    return f"{addr[0]}:{addr[1]}" if addr else "?"


class _Notifee(INotifee):
    """libp2p network notifee: marks peers whose connection state may have changed.

    Runs inside libp2p's connection tasks, so it never blocks: it only records the
    peer and wakes the transport's event pump.
    """

    def __init__(self, mark: Callable[[ID], None]) -> None:
        self._mark = mark

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._mark(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._mark(conn.muxed_conn.peer_id)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


def expand_unspecified(maddr: multiaddr.Multiaddr) -> list[multiaddr.Multiaddr]:
    """``/ip4/0.0.0.0/tcp/P`` -> one address per local IPv4 interface (dialable)."""
    text = str(maddr)
    if not text.startswith("/ip4/0.0.0.0/"):
        return [maddr]
    import ifaddr  # a zeroconf dependency; only reads local interface addresses

    rest = text[len("/ip4/0.0.0.0") :]
    ips = sorted(
        {
            str(ip.ip)
            for adapter in ifaddr.get_adapters()
            for ip in adapter.ips
            if isinstance(ip.ip, str)
        }
    )
    return [multiaddr.Multiaddr(f"/ip4/{ip}{rest}") for ip in ips] or [maddr]
