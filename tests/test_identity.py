"""Node identity: PeerID derivation matches libp2p, signatures, key files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.exceptions
import nacl.signing
import pytest
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.peer.id import ID

from fednode.crypto.identity import (
    Identity,
    load_key,
    load_or_create,
    peer_id_from_public_key,
    public_key_from_peer_id,
    save_key,
    verify,
)
from fednode.errors import AuthError, ConfigError

SEED = bytes(range(32))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------- peer ids


@pytest.mark.parametrize("seed", [SEED, b"\x01" * 32, b"\xff" * 32])
def test_peer_id_equals_libp2ps_own_derivation(seed: bytes) -> None:
    ident = Identity.from_seed(seed)
    keypair = create_new_key_pair(seed)
    assert ident.public_key == keypair.public_key.to_bytes()
    assert ident.peer_id == ID.from_pubkey(keypair.public_key).to_base58()
    assert ident.peer_id.startswith("12D3KooW")


def test_generated_identities_match_libp2p_and_differ() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a.peer_id != b.peer_id
    assert a.peer_id == ID.from_pubkey(Ed25519PublicKey.from_bytes(a.public_key)).to_base58()


def test_libp2p_keypair_is_the_same_key() -> None:
    ident = Identity.from_seed(SEED)
    keypair = ident.to_libp2p_keypair()
    assert keypair.public_key.to_bytes() == ident.public_key
    assert keypair.private_key.sign(b"msg") == ident.sign(b"msg")  # Ed25519 is deterministic


def test_public_key_round_trips_through_the_peer_id() -> None:
    ident = Identity.generate()
    assert public_key_from_peer_id(ident.peer_id) == ident.public_key
    assert peer_id_from_public_key(ident.public_key) == ident.peer_id
    libp2p_key = ID.from_base58(ident.peer_id).extract_public_key()
    assert libp2p_key is not None and libp2p_key.to_bytes() == ident.public_key


@pytest.mark.parametrize(
    "peer_id",
    [
        "",
        "not base58 0OIl",
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # sha256 multihash (RSA-style)
        "12D3KooW",  # too short
        "1" * 200,
    ],
)
def test_public_key_from_non_ed25519_peer_id_raises_auth_error(peer_id: str) -> None:
    with pytest.raises(AuthError):
        public_key_from_peer_id(peer_id)


def test_peer_id_of_a_wrong_length_key_raises_auth_error() -> None:
    with pytest.raises(AuthError, match="32-byte"):
        peer_id_from_public_key(b"\x00" * 31)


def test_repr_shows_the_peer_id_and_not_the_seed() -> None:
    ident = Identity.from_seed(SEED)
    assert ident.peer_id in repr(ident)
    assert SEED.hex() not in repr(ident) and str(SEED) not in repr(ident)


# ----------------------------------------------------------------------- signatures


def test_signature_verifies_with_the_public_key() -> None:
    ident = Identity.generate()
    data = b"header" + bytes(100)
    sig = ident.sign(memoryview(data))
    assert len(sig) == 64
    assert verify(ident.public_key, data, sig)
    assert verify(ident.public_key, memoryview(data), sig)


def test_tampered_data_signature_or_key_fails_without_raising() -> None:
    ident, other = Identity.generate(), Identity.generate()
    data = b"update round 7"
    sig = ident.sign(data)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify(ident.public_key, b"update round 8", sig)
    assert not verify(ident.public_key, data, flipped)
    assert not verify(other.public_key, data, sig)
    assert not verify(ident.public_key, data, sig[:63])
    assert not verify(b"\x00" * 31, data, sig)
    assert not verify(b"\x00" * 32, data, sig)


def test_signature_is_pynacls_and_verifies_with_pynacl() -> None:
    ident = Identity.from_seed(SEED)
    data = b"fednode/v1\0" + bytes(range(200))
    sig = ident.sign(data)
    assert sig == ident.signing_key.sign(data).signature  # deterministic Ed25519 (RFC 8032)
    nacl.signing.VerifyKey(ident.public_key).verify(data, sig)  # raises if invalid


def test_verify_refuses_a_signature_pynacl_refuses() -> None:
    ident = Identity.from_seed(SEED)
    data = b"header"
    sig = ident.sign(data)
    small_order = bytes(32)  # the identity point: libsodium rejects it as a key
    with pytest.raises(nacl.exceptions.BadSignatureError):
        nacl.signing.VerifyKey(small_order).verify(data, sig)
    assert not verify(small_order, data, sig)
    assert not verify(ident.public_key, data, bytes(64))


# ------------------------------------------------------------------------ key files


def test_saved_key_loads_back_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    ident = Identity.generate()
    save_key(ident, path)
    assert mode_of(path) == 0o600
    assert load_key(path).peer_id == ident.peer_id
    assert path.read_text().startswith("fednode-ed25519-v1 ")


def test_save_key_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_key(Identity.generate(), tmp_path / "k")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "k") == 0o600


def test_save_key_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = Identity.generate()
    save_key(first, path)
    with pytest.raises(ConfigError) as info:
        save_key(Identity.generate(), path)
    assert str(path) in str(info.value)
    assert load_key(path).peer_id == first.peer_id


def test_save_key_with_force_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_key(Identity.generate(), path)
    second = Identity.generate()
    save_key(second, path, force=True)
    assert load_key(path).peer_id == second.peer_id
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]  # no temp file left


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n",
        b"fednode-ed25519-v1\n",
        b"fednode-ed25519-v1 not!base64\n",
        b"fednode-ed25519-v1 AAAA\n",  # 3-byte seed
        b"fednode-ed25519-v2 " + b"A" * 43 + b"=\n",
        b"fednode-ed25519-v1 " + b"A" * 43 + b"= extra\n",
        b"\xff\xfe binary",
        b"x" * 10_000,
    ],
)
def test_load_garbled_key_file_raises_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_key(path)
    assert info.value.field == "key_file"
    assert str(path) in str(info.value)


def test_load_missing_key_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="existing key file"):
        load_key(tmp_path / "absent.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o666])
def test_load_refuses_a_key_file_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    save_key(Identity.generate(), path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(path)


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    created, was_created = load_or_create(path)
    loaded, was_created_again = load_or_create(path)
    assert was_created and not was_created_again
    assert loaded.peer_id == created.peer_id
    assert mode_of(path) == 0o600


def test_load_or_create_does_not_replace_a_garbled_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"garbage\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError):
        load_or_create(path)
    assert path.read_bytes() == b"garbage\n"
