"""Listen addresses made dialable (local interfaces); parsing lives in :mod:`fednode.addresses`."""

from __future__ import annotations

import multiaddr


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
