"""Typed fednode messages and their frame format (pure: no I/O, no crypto).

A frame on the wire::

    +-------+-----+-------+------------+----------------+-----------+------------------+
    | "FN"  | ver | flags | header_len | header (CBOR)  | signature | payload (raw)    |
    | 2 B   | 1 B | 1 B   | u32 BE     | header_len B   | 64 B      | payload_len B    |
    +-------+-----+-------+------------+----------------+-----------+------------------+

The CBOR header is a map with short keys (see :data:`HEADER_KEYS`); it carries the
payload's length and BLAKE3 digest, so the Ed25519 signature over the header covers the
payload too. The payload (tensor bytes) is never put inside CBOR and never pickled; the
receiver decodes it from a view of the received buffer. ``docs/PROTOCOL.md`` is the
specification; this module is its one implementation.

Every message is a frozen dataclass: a common header plus per-kind body fields whose
types are checked on decode (:func:`decode_header`) and on encode
(:func:`encode_header`) by the same :func:`schema.checker` functions, so a node never
sends what a peer would refuse. Body field annotations are limited to the types the
checkers know; an unsupported annotation fails at import time, not on the wire.
``vector`` is not on the wire: on the send side it is the dense update to encode with
``codec`` (unless ``payload`` is already encoded, e.g. with error feedback); on the
receive side it is the decoded, validated payload. The classes' ``__init__`` is the
generated one of :mod:`fednode.wire._fast` (same signature, ~2x faster).

The header is untrusted input parsed *before* the signature is checked, so it is first
scanned by :func:`scan_header` (``schema.py``), a small iterative CBOR walker that
enforces the header profile (definite lengths, no tags, no simple values but
false/true/null, bounded depth and item count, declared lengths within the buffer,
nothing trailing) in time linear in the header size and O(depth) memory. Only a header
that passes is handed to ``cbor2``, so none of cbor2's tag decoders (shared references,
regexes, bignums, dates, ...) can run on wire input. Headers are written as
``cbor2.dumps(fields, canonical=True)`` writes them (:mod:`fednode.wire._fast`).

Errors: decoding raises :class:`SchemaError` / :class:`FrameTooLarge` (blame: the peer);
encoding a message that breaks the schema raises :class:`LocalProtocolError` (blame: us).
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from typing import Any

import cbor2
import numpy as np

from ..errors import FednodeError, FrameTooLarge, LocalProtocolError, SchemaError
from ._fast import header_writer, install
from .kinds import BODY_TYPES as _BODY_TYPES
from .kinds import (
    MESSAGE_TYPES,
    RAW_PAYLOAD_KINDS,
    TENSOR_KINDS,
    Ack,
    Advert,
    Assign,
    Bye,
    Fit,
    Gossip,
    Kind,
    Message,
    Reject,
    SecAgg,
    Update,
)
from .schema import MAX_HEADER_DEPTH, Mismatch, checker, describe, names, scan_header, short

# the kinds are re-exported: callers write ``messages.Advert``
__all__ = [
    "MESSAGE_TYPES",
    "RAW_PAYLOAD_KINDS",
    "TENSOR_KINDS",
    "Ack",
    "Advert",
    "Assign",
    "Bye",
    "Fit",
    "Gossip",
    "Header",
    "Kind",
    "Message",
    "Reject",
    "SecAgg",
    "Update",
    "build_message",
    "decode_header",
    "encode_header",
]

SCHEMA_VERSION = 1
MAGIC = b"FN"
PREFIX = struct.Struct("!2sBBI")
FLAGS = 0  # the flags byte is reserved in v1 and must be zero
SIG_LEN = 64
NONCE_LEN = 16
DIGEST_LEN = 32
MAX_ID_LEN = 128
MAX_HEADER_BYTES = 64 * 1024  # default receiver limit (config ``wire.max_header_bytes``)


# Common header fields: CBOR key -> (attribute, python type)
HEADER_KEYS: dict[str, tuple[str, type]] = {
    "v": ("schema", int),
    "k": ("kind", int),
    "s": ("sender", str),
    "r": ("recipient", str),
    "rd": ("round", int),
    "mv": ("model_version", int),
    "t": ("timestamp", float),
    "n": ("nonce", bytes),
    "c": ("codec", str),
    "pl": ("payload_len", int),
    "pd": ("payload_digest", bytes),
    "b": ("body", dict),
}


_COMMON = {f.name for f in dataclasses.fields(Message)}
_BODY_TYPES.update(
    {
        cls: {
            f.name: typing.get_type_hints(cls)[f.name]
            for f in dataclasses.fields(cls)
            if f.name not in _COMMON
        }
        for cls in MESSAGE_TYPES.values()
    }
)


class Header(typing.NamedTuple):
    """The decoded, type-checked CBOR header (before signature and payload checks).

    A named tuple: immutable, and built in one C call from the checked values.
    """

    schema: int
    kind: Kind
    sender: str
    recipient: str
    round: int
    model_version: int
    timestamp: float
    nonce: bytes
    codec: str
    payload_len: int
    payload_digest: bytes
    body: dict[str, Any]


def encode_header(
    msg: Message,
    payload_len: int,
    payload_digest: bytes,
    *,
    sender: str | None = None,
    recipient: str | None = None,
    timestamp: float | None = None,
    nonce: bytes | None = None,
    codec: str | None = None,
) -> bytes:
    """CBOR bytes of ``msg``'s header: those of ``cbor2.dumps(fields, canonical=True)``
    (written faster by :func:`_fast.header_writer`), so one message has one encoding.

    A keyword given overrides the message's field of that name, as if the header were
    encoded from ``dataclasses.replace(msg, ...)`` (the sealer stamps sender, recipient,
    time, nonce and codec this way without copying the message). Values are written as
    the checks normalise them (an int timestamp or float field as a float, a tuple as an
    array).

    Errors: :class:`LocalProtocolError` if the message breaks the schema (the same checks
    a receiver applies), naming the field.
    """
    fields = {
        "v": SCHEMA_VERSION,
        "k": int(msg.KIND),
        "s": msg.sender if sender is None else sender,
        "r": msg.recipient if recipient is None else recipient,
        "rd": msg.round,
        "mv": msg.model_version,
        "t": msg.timestamp if timestamp is None else timestamp,
        "n": bytes(msg.nonce if nonce is None else nonce),
        "c": msg.codec if codec is None else codec,
        "pl": payload_len,
        "pd": payload_digest,
        "b": msg.body(),
    }
    checked = _check_header(fields, LocalProtocolError)
    fields["t"] = checked[6]  # the timestamp, as a float
    fields["b"] = checked[11]  # the body, normalised
    return _WRITERS[type(msg)](fields)


def decode_header(raw: bytes | memoryview) -> Header:
    """Scan, parse and type-check the CBOR header. Raises :class:`SchemaError`."""
    data = bytes(raw)
    scan_header(data)
    try:
        obj = cbor2.loads(
            data,
            max_depth=MAX_HEADER_DEPTH + 1,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        )
    except Exception as exc:  # cbor2 raises several types; map them once, here
        raise SchemaError(f"header is not valid CBOR: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a CBOR map header, got {type(obj).__name__}")
    if obj.keys() != HEADER_KEYS.keys():
        missing = sorted(HEADER_KEYS.keys() - obj.keys())
        extra = names(obj.keys() - HEADER_KEYS.keys())
        raise SchemaError(f"header keys wrong: missing {missing}, unexpected {extra}")
    return Header._make(_check_header(obj, SchemaError))


def _check_header(fields: dict[str, Any], error: type[FednodeError]) -> tuple[Any, ...]:
    """Type- and range-check header ``fields`` (keyed by CBOR key): the values of a
    :class:`Header`, in its field order, normalised.

    Shared by decode (``error`` = SchemaError) and encode (LocalProtocolError): types
    field by field in :data:`HEADER_KEYS` order, then the values, then the body, each
    failure naming the first field that does not fit.
    """
    values = []
    for key, attr, hint, check in _HEADER_CHECKS:
        try:
            values.append(check(fields[key]))
        except Mismatch:
            raise error(
                f"header field {attr!r}: expected {describe(hint)}, got {short(fields[key])}"
            ) from None
    v, k, s, r, rd, mv, t, n, c, pl, pd = values
    if v != SCHEMA_VERSION:
        raise error(f"schema version {v} not supported (this node speaks {SCHEMA_VERSION})")
    kind = _KINDS.get(k)
    if kind is None:
        raise error(f"unknown message kind {fields['k']}")
    if len(n) != NONCE_LEN:
        raise error(f"nonce: expected {NONCE_LEN} bytes, got {len(n)}")
    if len(pd) != DIGEST_LEN:
        raise error(f"payload digest: expected {DIGEST_LEN} bytes, got {len(pd)}")
    if len(s) > MAX_ID_LEN:
        raise error(f"sender: peer id longer than {MAX_ID_LEN} characters")
    if len(r) > MAX_ID_LEN:
        raise error(f"recipient: peer id longer than {MAX_ID_LEN} characters")
    if pl < 0:
        raise error(f"payload_len must be >= 0, got {pl}")
    if rd < 0:
        raise error(f"round must be >= 0, got {rd}")
    if mv < 0:
        raise error(f"model_version must be >= 0, got {mv}")
    if kind in RAW_PAYLOAD_KINDS:
        if c != "none":
            raise error(f"{kind.name} payload: expected codec 'none', got {short(c)}")
    elif kind not in TENSOR_KINDS and (pl or c != "none"):
        raise error(
            f"{kind.name} carries no payload: expected codec 'none' and payload_len 0, got "
            f"{short(c)} and {pl}"
        )
    cls = MESSAGE_TYPES[kind]
    body = fields["b"]
    if not isinstance(body, dict):
        raise error(f"header field 'body': expected a map, got {short(body)}")
    checks = _BODY_CHECKS[cls]
    if body.keys() != checks.keys():
        raise error(f"{cls.__name__} body keys: expected {sorted(checks)}, got {names(body)}")
    checked = {}
    for name, (hint, check) in checks.items():
        try:
            checked[name] = check(body[name])
        except Mismatch:
            raise error(
                f"{cls.__name__}.{name}: expected {describe(hint)}, got {short(body[name])}"
            ) from None
    return v, kind, s, r, rd, mv, t, n, c, pl, pd, checked


# ------------------------------------------------------------------------- framing


def split_head(head: bytes | memoryview, *, max_header: int) -> tuple[memoryview, memoryview]:
    """Cut a frame head (prefix + header + signature) into (header, signature) views.

    Checks the fixed prefix and the header size before anything is parsed or allocated.
    Raises :class:`FrameTooLarge` or :class:`SchemaError`.
    """
    view = memoryview(head)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    header_len = head_length(view, max_header=max_header) - PREFIX.size - SIG_LEN
    if len(view) != PREFIX.size + header_len + SIG_LEN:
        raise SchemaError(
            f"frame head is {len(view)} bytes, header_len {header_len} implies "
            f"{PREFIX.size + header_len + SIG_LEN}"
        )
    body_start = PREFIX.size + header_len
    return view[PREFIX.size : body_start], view[body_start:]


def head_length(prefix: bytes | memoryview, *, max_header: int) -> int:
    """Total head length announced by the first ``PREFIX.size`` bytes (stream readers)."""
    if len(prefix) < PREFIX.size:
        raise SchemaError(f"frame of {len(prefix)} bytes is shorter than the fixed prefix")
    return PREFIX.size + _check_prefix(prefix, max_header) + SIG_LEN


def _check_prefix(prefix: bytes | memoryview, max_header: int) -> int:
    magic, version, flags, header_len = PREFIX.unpack_from(prefix)
    if magic != MAGIC:
        raise SchemaError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"frame version {version} not supported (expected {SCHEMA_VERSION})")
    if flags != FLAGS:
        raise SchemaError(f"frame flags 0x{flags:02x}: reserved, must be 0x{FLAGS:02x}")
    if header_len > max_header:
        raise FrameTooLarge(f"header of {header_len} bytes exceeds the limit of {max_header}")
    return int(header_len)


def frame_head(header: bytes, signature: bytes) -> bytes:
    """Prefix + header + signature: everything before the payload."""
    return PREFIX.pack(MAGIC, SCHEMA_VERSION, FLAGS, len(header)) + header + signature


def build_message(
    header: Header, payload: bytes | memoryview, vector: np.ndarray | None = None
) -> Message:
    """The typed message for a verified header, its payload and its decoded vector."""
    return MESSAGE_TYPES[header.kind](
        sender=header.sender,
        recipient=header.recipient,
        round=header.round,
        model_version=header.model_version,
        timestamp=header.timestamp,
        nonce=header.nonce,
        codec=header.codec,
        payload=payload,
        vector=vector,
        **header.body,
    )


def _body_checks(cls: type[Message]) -> dict[str, tuple[Any, Any]]:
    """name -> (annotation, checker) of ``cls``'s body; TypeError (at import) naming an
    unsupported field."""
    checks = {}
    for name, hint in _BODY_TYPES[cls].items():
        try:
            checks[name] = (hint, checker(hint))
        except TypeError as exc:
            raise TypeError(
                f"{cls.__name__}.{name}: body field type {hint} is not supported on the "
                f"wire ({exc}; see schema.checker)"
            ) from None
    return checks


_CLASSES: tuple[type, ...] = (Message, *MESSAGE_TYPES.values())
for _cls in _CLASSES:
    install(_cls)
del _cls
_KINDS: dict[Any, Kind] = {int(k): k for k in Kind}
_HEADER_CHECKS = [
    (key, attr, hint, checker(hint))
    for key, (attr, hint) in HEADER_KEYS.items()
    if hint is not dict
]
_BODY_CHECKS = {cls: _body_checks(cls) for cls in MESSAGE_TYPES.values()}
_WRITERS = {cls: header_writer(list(HEADER_KEYS), body) for cls, body in _BODY_TYPES.items()}
