"""The private network key file (pnet): go-libp2p's ``swarm.key`` format and plainer ones."""

from __future__ import annotations


def read_network_key(data: bytes) -> bytes:
    """Parse a network key file: go-libp2p ``swarm.key`` (``/key/swarm/psk/1.0.0/``,
    ``/base16/``, 64 hex digits), or just 64 hex digits, or 32 raw bytes.

    Errors: :class:`ValueError` naming what was expected.
    """
    text = data.strip()
    lines = text.splitlines()
    if lines and lines[0].strip() == b"/key/swarm/psk/1.0.0/":
        if len(lines) < 3 or lines[1].strip() != b"/base16/":
            raise ValueError("swarm.key: expected '/base16/' on line 2 and the key on line 3")
        text = lines[2].strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError("network key: expected 64 hex digits") from exc
    if len(data) == 32:
        return data
    raise ValueError(f"network key: expected 32 bytes or 64 hex digits, got {len(text)} bytes")
