"""Node identity: one Ed25519 key is the libp2p PeerID and the message-signing key.

The PeerID is derived exactly as libp2p does for Ed25519 keys (an identity multihash
of the protobuf-encoded public key, base58btc; the ``12D3KooW...`` form)::

    peer id bytes = 0x00 0x24              identity multihash, 36-byte digest
                    0x08 0x01 0x12 0x20    protobuf PublicKey{Type: Ed25519, Data: 32 bytes}
                    <32-byte public key>

so a peer's public key can be read back from its PeerID without any lookup. Signing
uses PyNaCl; libp2p is imported only inside :meth:`Identity.to_libp2p_keypair`, so
this module stays importable by pure code.

Key file format (text, one line, newline-terminated, mode 0600)::

    fednode-ed25519-v1 <standard base64 of the 32-byte seed>

``load_key`` refuses a key file readable or writable by group or others (like ssh
does with private keys) rather than warning: a leaked key is a stolen identity.

Errors:
    ``public_key_from_peer_id`` / ``peer_id_from_public_key`` raise ``AuthError``
    for anything that is not an Ed25519 identity PeerID / 32-byte key.
    ``save_key`` / ``load_key`` raise ``ConfigError`` naming the path.
    ``verify`` never raises; it returns False for any bad key, data or signature.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nacl.bindings
import nacl.exceptions
import nacl.signing

from fednode.errors import AuthError, ConfigError

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

__all__ = [
    "Identity",
    "load_key",
    "load_or_create",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "save_key",
    "verify",
]

KEY_FILE_MAGIC = "fednode-ed25519-v1"
MAX_KEY_FILE_BYTES = 4096
MAX_PEER_ID_CHARS = 128
_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Identity:
    """A node's Ed25519 signing key; ``repr`` shows the PeerID, never the seed."""

    signing_key: nacl.signing.SigningKey = field(repr=False)

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed32: bytes) -> Identity:
        if not isinstance(seed32, bytes) or len(seed32) != 32:
            got = f"{len(seed32)} bytes" if isinstance(seed32, bytes) else type(seed32).__name__
            raise ValueError(f"an Ed25519 seed is 32 bytes, got {got}")
        return cls(nacl.signing.SigningKey(seed32))

    @property
    def seed(self) -> bytes:
        """The 32-byte secret seed (what the key file stores)."""
        return bytes(self.signing_key)

    @property
    def public_key(self) -> bytes:
        """The 32-byte raw Ed25519 public key."""
        return bytes(self.signing_key.verify_key)

    @functools.cached_property
    def peer_id(self) -> str:
        """The libp2p PeerID (base58btc) of this key."""
        return peer_id_from_public_key(self.public_key)

    @functools.cached_property
    def _secret_key(self) -> bytes:
        """libsodium's 64-byte secret key (seed + public key) of this signing key."""
        return nacl.bindings.crypto_sign_seed_keypair(self.seed)[1]

    def sign(self, data: bytes | memoryview) -> bytes:
        """Detached 64-byte Ed25519 signature of ``data``.

        The same signature as ``signing_key.sign(data).signature``, from PyNaCl's public
        bindings directly: no ``SignedMessage`` object, no encoder (a few µs per call).
        """
        return nacl.bindings.crypto_sign(bytes(data), self._secret_key)[
            : nacl.bindings.crypto_sign_BYTES
        ]

    def to_libp2p_keypair(self) -> KeyPair:
        """The same key as a libp2p ``KeyPair`` for the libp2p host."""
        from libp2p.crypto.ed25519 import create_new_key_pair

        return create_new_key_pair(self.seed)

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id!r})"


def verify(public_key: bytes, data: bytes | memoryview, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``."""
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        return False
    if not isinstance(signature, bytes) or len(signature) != 64:
        return False
    try:  # what VerifyKey(public_key).verify(data, signature) does, minus its wrappers
        nacl.bindings.crypto_sign_open(signature + bytes(data), public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def peer_id_from_public_key(pk: bytes) -> str:
    """libp2p PeerID of a raw 32-byte Ed25519 public key. Errors: AuthError."""
    if not isinstance(pk, bytes) or len(pk) != 32:
        got = f"{len(pk)} bytes" if isinstance(pk, bytes) else type(pk).__name__
        raise AuthError(f"expected a 32-byte Ed25519 public key, got {got}")
    return _b58encode(_PEER_ID_PREFIX + pk)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Raw Ed25519 public key inside an identity-multihash PeerID. Errors: AuthError."""
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= MAX_PEER_ID_CHARS:
        raise AuthError(f"expected a base58 Ed25519 PeerID, got {peer_id!r:.140}")
    raw = _b58decode(peer_id)
    if raw is None:
        raise AuthError(f"PeerID {peer_id!r} is not base58btc")
    if len(raw) != len(_PEER_ID_PREFIX) + 32 or not raw.startswith(_PEER_ID_PREFIX):
        raise AuthError(
            f"PeerID {peer_id!r} is not an Ed25519 identity PeerID: expected 38 bytes "
            f"starting {_PEER_ID_PREFIX.hex()}, got {len(raw)} bytes starting {raw[:6].hex()}"
        )
    return raw[len(_PEER_ID_PREFIX) :]


def _b58encode(data: bytes) -> str:
    num = int.from_bytes(data, "big")
    digits = []
    while num:
        num, rem = divmod(num, 58)
        digits.append(_B58[rem])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits))


def _b58decode(text: str) -> bytes | None:
    num = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            return None
        num = num * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + num.to_bytes((num.bit_length() + 7) // 8, "big")


# --------------------------------------------------------------------------- key files


def save_key(identity: Identity, path: PathLike, *, force: bool = False) -> None:
    """Write ``identity`` to a new 0600 key file.

    Without ``force`` the file is created with O_CREAT|O_EXCL, so an existing key is
    never overwritten (ConfigError). With ``force`` a temporary file in the same
    directory is written and renamed over ``path`` atomically.
    """
    path = Path(path)
    data = f"{KEY_FILE_MAGIC} {base64.b64encode(identity.seed).decode('ascii')}\n".encode()
    try:
        if force:  # mkstemp: O_EXCL, mode 0600, unique name beside the target
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            target = Path(tmp)
        else:
            fd, target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path
    except FileExistsError:
        raise ConfigError(
            "key_file", str(path), "a path with no key yet (pass force=True to overwrite)"
        ) from None
    except OSError as exc:
        raise ConfigError("key_file", str(path), f"a writable path ({exc.strerror})") from exc
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may only have removed bits; make it exact
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(target, path)
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise ConfigError("key_file", str(path), f"a writable path ({exc.strerror})") from exc
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable; best effort (not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_key(path: PathLike) -> Identity:
    """Read a key file written by :func:`save_key`. Errors: ConfigError naming the path."""
    try:
        return _read_key(Path(path))
    except FileNotFoundError:
        raise ConfigError(
            "key_file", str(path), "an existing key file (create one with `fednode keygen`)"
        ) from None


def load_or_create(path: PathLike) -> tuple[Identity, bool]:
    """Load the key at ``path``, or create it there; the bool says it was created."""
    try:
        return _read_key(Path(path)), False
    except FileNotFoundError:
        pass
    identity = Identity.generate()
    try:
        save_key(identity, path)
    except ConfigError:
        if not os.path.exists(path):
            raise
        return load_key(path), False  # another process created it first: use theirs
    return identity, True


def _read_key(path: Path) -> Identity:
    """Parse a key file; FileNotFoundError passes through, everything else is ConfigError."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError("key_file", str(path), f"a readable key file ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("key_file", str(path), "a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(
                "key_file",
                str(path),
                f"a file only its owner can access (mode is {mode:04o}; run chmod 600)",
            )
        raw = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError("key_file", str(path), f"a readable key file ({exc.strerror})") from exc
    finally:
        os.close(fd)
    expected = f"one line '{KEY_FILE_MAGIC} <base64 of a 32-byte seed>'"
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise ConfigError("key_file", str(path), f"{expected} (file is too large)")
    try:
        magic, b64 = raw.decode("ascii").removesuffix("\n").split(" ")
        seed = base64.b64decode(b64, validate=True)
    except (UnicodeDecodeError, ValueError, binascii.Error):
        raise ConfigError("key_file", str(path), expected) from None
    if magic != KEY_FILE_MAGIC or len(seed) != 32:
        raise ConfigError("key_file", str(path), expected)
    return Identity.from_seed(seed)
