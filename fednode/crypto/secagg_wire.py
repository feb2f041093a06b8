"""Secure-aggregation stage messages <-> the payload of a ``SecAgg`` frame (kind 9).

A ``SecAgg`` frame (:class:`fednode.wire.kinds.SecAgg`) carries ``stage`` in its signed
header and, as its payload, the stage's message as one CBOR array: the dataclass of
:mod:`.secagg_messages` field by field (:func:`~.secagg_messages.to_cbor`), nested
messages as nested arrays. :func:`encode` builds it; :func:`decode` is the one entry point
for untrusted payloads: the bytes are first walked by the header scanner
(:func:`fednode.wire.schema.scan_header`: no tags, definite lengths, depth <= 3, bounded
item count, nothing trailing), only then parsed, and every field is type-checked before a
message is built. Nothing is pickled.

Stages (``docs/PROTOCOL.md``, "Secure aggregation")::

    params          coordinator -> member   SecAggParams
    advertise       member -> coordinator   AdvertiseKeys
    keys            coordinator -> member   KeysForYou
    share           member -> coordinator   ShareKeys
    shares          coordinator -> member   SharesForYou
    masked          member -> coordinator   MaskedInput
    unmask_request  coordinator -> member   UnmaskRequest
    unmask          member -> coordinator   UnmaskResponse

Errors: :class:`~fednode.errors.SchemaError` for a payload that is not the stage's CBOR
array (wrong stage name, shape or field type); :class:`~fednode.errors.ConfigError` from
:class:`SecAggParams` validation is mapped to ``SchemaError`` too (blame: the sender).
"""

from __future__ import annotations

from typing import Any

import cbor2

from fednode.crypto.fixedpoint import FixedPoint
from fednode.crypto.secagg_messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeysForYou,
    MaskedInput,
    SecAggParams,
    ShareKeys,
    SharesForYou,
    UnmaskRequest,
    UnmaskResponse,
    to_cbor,
)
from fednode.errors import ConfigError, SchemaError
from fednode.wire.schema import scan_header

__all__ = ["FROM_COORDINATOR", "FROM_MEMBER", "STAGE_OF", "decode", "encode"]

StageMessage = (
    SecAggParams
    | AdvertiseKeys
    | KeysForYou
    | ShareKeys
    | SharesForYou
    | MaskedInput
    | UnmaskRequest
    | UnmaskResponse
)

STAGE_OF: dict[type, str] = {
    SecAggParams: "params",
    AdvertiseKeys: "advertise",
    KeysForYou: "keys",
    ShareKeys: "share",
    SharesForYou: "shares",
    MaskedInput: "masked",
    UnmaskRequest: "unmask_request",
    UnmaskResponse: "unmask",
}
#: stages a member sends (the coordinator accepts only these) and the coordinator sends
FROM_MEMBER = frozenset({"advertise", "share", "masked", "unmask"})
FROM_COORDINATOR = frozenset({"params", "keys", "shares", "unmask_request"})


def encode(msg: StageMessage) -> tuple[str, bytes]:
    """``(stage, payload)`` of a stage message."""
    if isinstance(msg, SecAggParams):
        enc = msg.encoding
        fields: list[Any] = [
            msg.round,
            msg.round_seed,
            list(msg.members),
            msg.threshold,
            msg.neighbours,
            [enc.n, float(enc.clip), enc.frac_bits],
            msg.dim,
        ]
    else:
        fields = _plain(to_cbor(msg))
    return STAGE_OF[type(msg)], cbor2.dumps(fields)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------- decoding (untrusted)
def _bad(stage: str, what: str) -> SchemaError:
    return SchemaError(f"secagg {stage}: {what}")


def _int(v: Any, stage: str, name: str) -> int:
    if type(v) is not int or not 0 <= v < 2**63:
        raise _bad(stage, f"{name}: expected an integer in [0, 2**63), got {type(v).__name__}")
    return v


def _bytes(v: Any, stage: str, name: str) -> bytes:
    if type(v) is not bytes:
        raise _bad(stage, f"{name}: expected bytes, got {type(v).__name__}")
    return v


def _str(v: Any, stage: str, name: str) -> str:
    if type(v) is not str or len(v) > 128:
        raise _bad(stage, f"{name}: expected a peer id (str of at most 128 characters)")
    return v


def _list(v: Any, stage: str, name: str, n: int | None = None) -> list[Any]:
    if type(v) is not list or (n is not None and len(v) != n):
        want = f"an array of {n}" if n is not None else "an array"
        raise _bad(stage, f"{name}: expected {want}, got {type(v).__name__}")
    return v


def _adv(v: Any, stage: str) -> AdvertiseKeys:
    r, s, e, k, sig = _list(v, stage, "advertise", 5)
    return AdvertiseKeys(
        _int(r, stage, "round"),
        _str(s, stage, "sender"),
        _bytes(e, stage, "enc_pk"),
        _bytes(k, stage, "mask_pk"),
        _bytes(sig, stage, "signature"),
    )


def _share(v: Any, stage: str) -> EncryptedShare:
    r, s, rcv, ct, sig = _list(v, stage, "share", 5)
    return EncryptedShare(
        _int(r, stage, "round"),
        _str(s, stage, "sender"),
        _str(rcv, stage, "receiver"),
        _bytes(ct, stage, "ciphertext"),
        _bytes(sig, stage, "signature"),
    )


def _pairs(v: Any, stage: str, name: str) -> tuple[tuple[str, bytes], ...]:
    out = []
    for pair in _list(v, stage, name):
        owner, data = _list(pair, stage, name, 2)
        out.append((_str(owner, stage, "owner"), _bytes(data, stage, "share")))
    return tuple(out)


def _params(f: list[Any], stage: str) -> SecAggParams:
    r, seed, members, t, k, enc, dim = _list(f, stage, "params", 7)
    n, clip, frac = _list(enc, stage, "encoding", 3)
    if type(clip) not in (int, float):
        raise _bad(stage, "encoding clip: expected a number")
    try:
        return SecAggParams(
            round=_int(r, stage, "round"),
            round_seed=_bytes(seed, stage, "round_seed"),
            members=tuple(_str(p, stage, "member") for p in _list(members, stage, "members")),
            threshold=_int(t, stage, "threshold"),
            neighbours=_int(k, stage, "neighbours"),
            encoding=FixedPoint(_int(n, stage, "n"), float(clip), _int(frac, stage, "frac")),
            dim=_int(dim, stage, "dim"),
        )
    except ConfigError as exc:
        raise _bad(stage, f"parameters refused: {exc}") from None


def _build(stage: str, f: Any) -> StageMessage:
    if stage == "params":
        return _params(f, stage)
    if stage == "advertise":
        return _adv(f, stage)
    if stage == "keys":
        r, rcv, keys = _list(f, stage, "keys", 3)
        return KeysForYou(
            _int(r, stage, "round"),
            _str(rcv, stage, "receiver"),
            tuple(_adv(a, stage) for a in _list(keys, stage, "keys")),
        )
    if stage in ("share", "shares"):
        r, who, shares = _list(f, stage, stage, 3)
        cls = ShareKeys if stage == "share" else SharesForYou
        return cls(
            _int(r, stage, "round"),
            _str(who, stage, "member"),
            tuple(_share(s, stage) for s in _list(shares, stage, "shares")),
        )
    if stage == "masked":
        r, s, data, sig = _list(f, stage, "masked", 4)
        return MaskedInput(
            _int(r, stage, "round"),
            _str(s, stage, "sender"),
            _bytes(data, stage, "data"),
            _bytes(sig, stage, "signature"),
        )
    if stage == "unmask_request":
        r, surv, drop = _list(f, stage, "unmask_request", 3)
        return UnmaskRequest(
            _int(r, stage, "round"),
            tuple(_str(p, stage, "survivor") for p in _list(surv, stage, "survivors")),
            tuple(_str(p, stage, "dropped") for p in _list(drop, stage, "dropped")),
        )
    if stage == "unmask":
        r, s, seeds, keys, sig = _list(f, stage, "unmask", 5)
        return UnmaskResponse(
            _int(r, stage, "round"),
            _str(s, stage, "sender"),
            _pairs(seeds, stage, "seed_shares"),
            _pairs(keys, stage, "key_shares"),
            _bytes(sig, stage, "signature"),
        )
    raise SchemaError(f"secagg: unknown stage {stage[:32]!r}")


def decode(stage: str, payload: bytes | memoryview) -> StageMessage:
    """The stage message of an untrusted ``SecAgg`` payload (see the module docstring)."""
    if stage not in FROM_MEMBER | FROM_COORDINATOR:
        raise SchemaError(f"secagg: unknown stage {stage[:32]!r}")
    raw = bytes(payload)
    scan_header(raw)  # SchemaError: not one CBOR item of the bounded profile
    try:
        fields = cbor2.loads(raw)
    except Exception as exc:  # cbor2 raises several types; the scan makes this rare
        raise SchemaError(f"secagg {stage}: payload is not CBOR ({type(exc).__name__})") from None
    return _build(stage, fields)
