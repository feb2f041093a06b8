"""Multiaddr helpers of the libp2p transport (pure: parsing and local interfaces only)."""

from __future__ import annotations

import multiaddr


def check_listen(addr: str) -> multiaddr.Multiaddr:
    """A listen address: ``/ip4/<a>/tcp/<port>`` or ``/ip6/<a>/tcp/<port>``.

    Errors: :class:`ValueError` saying what is wrong (multiaddr's parse errors are
    ValueErrors too).
    """
    maddr = multiaddr.Multiaddr(addr)
    names = [p.name for p in maddr.protocols()]
    if names[:1] not in (["ip4"], ["ip6"]) or names[1:2] != ["tcp"] or len(names) != 2:
        raise ValueError(f"{addr!r} is not /ip4|ip6/<address>/tcp/<port>")
    return maddr


def p2p_suffix_stripped(addr: str, peer: str | None) -> multiaddr.Multiaddr:
    """Parse ``addr``; drop a trailing ``/p2p/<id>`` (must match ``peer`` if given)."""
    maddr = multiaddr.Multiaddr(addr)
    try:
        p2p = maddr.value_for_protocol("p2p")
    except LookupError:  # multiaddr's ProtocolLookupError: no /p2p component
        p2p = None
    if p2p:
        if peer is not None and p2p != peer:
            raise ValueError(f"address {addr} names peer {p2p}, expected {peer}")
        maddr = maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{p2p}"))
    return maddr


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
