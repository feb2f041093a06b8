"""Addresses in config and on the wire: multiaddrs and ``host:port``, parsed and checked.

Pure: the ``multiaddr`` package and :mod:`ipaddress` only, no sockets, no trio, no
libp2p. Config validation, discovery, the libp2p transport and the metrics endpoint all
parse addresses here, so a bad address fails at start with the same message wherever it
is used.

Errors: :class:`ValueError` for addresses that come from peers (the caller skips or
refuses them); :class:`~fednode.errors.ConfigError` naming the field for config values.
"""

from __future__ import annotations

import ipaddress

import multiaddr

from .errors import ConfigError


def check_listen(addr: str) -> multiaddr.Multiaddr:
    """``net.listen``: ``/ip4/<a>/tcp/<port>`` or ``/ip6/<a>/tcp/<port>``.

    Errors: :class:`ConfigError` (field ``net.listen``) saying what is wrong.
    """
    try:
        maddr = multiaddr.Multiaddr(addr)  # multiaddr's parse errors are ValueErrors
        names = [p.name for p in maddr.protocols()]
        if names[:1] not in (["ip4"], ["ip6"]) or names[1:2] != ["tcp"] or len(names) != 2:
            raise ValueError(f"{addr!r} is not /ip4|ip6/<address>/tcp/<port>")
    except ValueError as exc:
        raise ConfigError(
            "net.listen", addr, f"a multiaddr such as /ip4/0.0.0.0/tcp/0 ({exc})"
        ) from exc
    return maddr


def _peer_of(maddr: multiaddr.Multiaddr) -> str | None:
    try:
        return maddr.value_for_protocol("p2p") or None
    except LookupError:  # multiaddr's ProtocolLookupError: no /p2p component
        return None


def split_peer_addr(addr: str) -> tuple[str, str]:
    """``/ip4/../tcp/../p2p/<id>`` -> (peer id, address without ``/p2p``).

    Errors: :class:`ValueError` when ``addr`` is not a multiaddr with a peer id.
    """
    maddr = multiaddr.Multiaddr(addr)
    peer = _peer_of(maddr)
    if peer is None:
        raise ValueError(f"{addr!r} has no /p2p/<peer id>")
    return str(peer), str(maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}")))


def p2p_suffix_stripped(addr: str, peer: str | None) -> multiaddr.Multiaddr:
    """Parse ``addr``; drop a trailing ``/p2p/<id>`` (must match ``peer`` if given)."""
    maddr = multiaddr.Multiaddr(addr)
    p2p = _peer_of(maddr)
    if p2p is None:
        return maddr
    if peer is not None and p2p != peer:
        raise ValueError(f"address {addr} names peer {p2p}, expected {peer}")
    return maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{p2p}"))


def bootstrap_peers(addrs: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """``net.bootstrap`` multiaddrs -> {peer id: its addresses without ``/p2p``}.

    Errors: :class:`ConfigError` (field ``net.bootstrap``) naming the bad address.
    """
    by_peer: dict[str, list[str]] = {}
    for addr in addrs:
        try:
            peer, base = split_peer_addr(addr)
        except ValueError as exc:
            raise ConfigError(
                "net.bootstrap", addr, "a multiaddr like /ip4/10.0.0.2/tcp/4001/p2p/<peer id>"
            ) from exc
        by_peer.setdefault(peer, []).append(base)
    return {peer: tuple(bases) for peer, bases in by_peer.items()}


def parse_metrics_listen(value: str) -> tuple[str, int]:
    """``net.metrics_listen``: ``"127.0.0.1:9464"`` / ``"[::1]:9464"`` -> (host, port).

    Errors: :class:`ConfigError` naming the field.
    """
    return parse_host_port("net.metrics_listen", value)


def parse_host_port(field: str, value: str) -> tuple[str, int]:
    """A ``host:port`` config value (an IP address, ``[v6]`` bracketed) -> (host, port).

    Errors: :class:`ConfigError` naming ``field``.
    """
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 <= number <= 65535:
        raise ConfigError(field, value, "'' (off) or an IP address and port, e.g. 127.0.0.1:9464")
    return host, number


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, as :func:`parse_host_port` returns) is loopback."""
    return ipaddress.ip_address(host).is_loopback
