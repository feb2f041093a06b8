"""``fednode keygen``: a new node key (Ed25519, the same key as the libp2p PeerID)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import console


def add_parser(sub: Any) -> None:
    keygen = sub.add_parser(
        "keygen",
        help="create a node key (Ed25519 = libp2p PeerID)",
        description="Write a new Ed25519 node key (mode 0600).",
    )
    keygen.add_argument("--out", type=Path, default=Path("fednode.key"), help="key file path")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing file")


def cmd_keygen(args: argparse.Namespace) -> int:
    from ..crypto.identity import Identity, save_key
    from ..errors import ConfigError

    if args.out.exists() and not args.force:  # before any work, naming the flag
        raise ConfigError("--out", str(args.out), "a path with no key yet (--force overwrites)")
    identity = Identity.generate()
    save_key(identity, args.out, force=args.force)
    console.print(f"wrote {args.out} (mode 0600); peer id {identity.peer_id}")
    return 0
