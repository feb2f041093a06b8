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
(:func:`encode_header`), with the same rules, so a node never sends what a peer would
refuse. Body field annotations are limited to the types :func:`_coerce` knows; an
unsupported annotation fails at import time, not on the wire. ``vector`` is not on the
wire: on the send side it is the dense update to encode with ``codec`` (unless
``payload`` is already encoded, e.g. with error feedback); on the receive side it is the
decoded, validated payload.

The header is untrusted input parsed *before* the signature is checked, so it is first
scanned by :func:`scan_header`, a small iterative CBOR walker that enforces the header
profile (definite lengths, no tags, no simple values but false/true/null, bounded depth
and item count, declared lengths within the buffer, nothing trailing) in time linear in
the header size and O(depth) memory. Only a header that passes is handed to ``cbor2``,
so none of cbor2's tag decoders (shared references, regexes, bignums, dates, ...) can
run on wire input.

Errors: decoding raises :class:`SchemaError` / :class:`FrameTooLarge` (blame: the peer);
encoding a message that breaks the schema raises :class:`LocalProtocolError` (blame: us).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import reprlib
import struct
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cbor2
import numpy as np

from ..errors import FednodeError, FrameTooLarge, LocalProtocolError, SchemaError

SCHEMA_VERSION = 1
MAGIC = b"FN"
PREFIX = struct.Struct("!2sBBI")
FLAGS = 0  # the flags byte is reserved in v1 and must be zero
SIG_LEN = 64
NONCE_LEN = 16
DIGEST_LEN = 32
MAX_ID_LEN = 128
MAX_STR_LEN = 256
MAX_BODY_ITEMS = 64
MAX_TUPLE_ITEMS = 4096
MAX_HEADER_BYTES = 64 * 1024  # default receiver limit (config ``wire.max_header_bytes``)
MAX_HEADER_ITEMS = 8192  # CBOR data items in one header, map keys included
MAX_HEADER_DEPTH = 3  # nested containers: header map > body map > dict / list
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class Kind(enum.IntEnum):
    ADVERT = 1
    FIT = 2
    UPDATE = 3
    GOSSIP = 4
    ACK = 5
    REJECT = 6
    ASSIGN = 7
    BYE = 8


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Fields common to every message. Subclasses add the body."""

    KIND: ClassVar[Kind]

    sender: str = ""
    recipient: str = ""
    round: int = 0
    model_version: int = 0
    timestamp: float = 0.0
    nonce: bytes = b""
    codec: str = "none"
    payload: bytes | memoryview = b""
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def body_fields(cls) -> dict[str, Any]:
        return _BODY_TYPES[cls]

    def body(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.body_fields()}

    @property
    def has_tensor(self) -> bool:
        return self.KIND in TENSOR_KINDS


@dataclass(frozen=True, slots=True, kw_only=True)
class Advert(Message):
    """Who I am: sent on connect and periodically. Decides roles and parents."""

    KIND: ClassVar[Kind] = Kind.ADVERT
    role: str = "client"
    federation: str = "fednode"
    task: str = ""
    region: str = ""
    parent: str = ""
    load: int = 0
    accepting: bool = True
    #: an aggregator's current children (how the coordinator learns the tree; the
    #: 64 KiB header limit bounds this to ~1,200 peer ids)
    children: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Fit(Message):
    """Model broadcast + instruction to train (parent -> child). Payload: the model."""

    KIND: ClassVar[Kind] = Kind.FIT
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Update(Message):
    """Training result (child -> parent). Payload: the encoded model delta."""

    KIND: ClassVar[Kind] = Kind.UPDATE
    num_examples: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Gossip(Message):
    """Gossip exchange between peers. Payload: the sender's model (or compressed diff).

    ``mode`` says what the exchange is (``docs/GOSSIP.md``): ``hello`` / ``welcome`` open
    a link (full models: the welcome bootstraps a new peer), ``round`` is a synchronous
    averaging step, ``push`` / ``pull`` a pairwise exchange. ``diff`` marks a payload that
    is a compressed difference to add to the receiver's copy of the sender's model
    (CHOCO-gossip) instead of a full model. ``link`` is the link's epoch, ``seq`` the
    message's number on that link, ``degree`` the sender's neighbour count in this step,
    ``ack`` how many messages the sender had received on the link when it sent this one,
    ``final`` that the sender stops after this step (do not wait for it any more).
    """

    KIND: ClassVar[Kind] = Kind.GOSSIP
    weight: float = 1.0
    reply: bool = False
    consortium: str = ""
    mode: str = "round"
    diff: bool = False
    link: int = 0
    seq: int = 0
    degree: int = 0
    ack: int = 0
    final: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    KIND: ClassVar[Kind] = Kind.ACK
    ref: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject(Message):
    KIND: ClassVar[Kind] = Kind.REJECT
    ref: bytes = b""
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Assign(Message):
    """Parent tells a node its place in the tree: role to take and parent to report to."""

    KIND: ClassVar[Kind] = Kind.ASSIGN
    role: str = "client"
    parent: str = ""
    children: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye(Message):
    KIND: ClassVar[Kind] = Kind.BYE
    reason: str = ""


MESSAGE_TYPES: dict[Kind, type[Message]] = {
    cls.KIND: cls for cls in (Advert, Fit, Update, Gossip, Ack, Reject, Assign, Bye)
}
TENSOR_KINDS = frozenset({Kind.FIT, Kind.UPDATE, Kind.GOSSIP})
_COMMON = {f.name for f in dataclasses.fields(Message)}
_BODY_TYPES: dict[type[Message], dict[str, Any]] = {
    cls: {
        f.name: typing.get_type_hints(cls)[f.name]
        for f in dataclasses.fields(cls)
        if f.name not in _COMMON
    }
    for cls in MESSAGE_TYPES.values()
}


@dataclass(frozen=True, slots=True)
class Header:
    """The decoded, type-checked CBOR header (before signature and payload checks)."""

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


def encode_header(msg: Message, payload_len: int, payload_digest: bytes) -> bytes:
    """CBOR bytes of ``msg``'s header. Deterministic (canonical CBOR).

    Errors: :class:`LocalProtocolError` if the message breaks the schema (the same checks
    a receiver applies), naming the field.
    """
    fields = {
        "v": SCHEMA_VERSION,
        "k": int(msg.KIND),
        "s": msg.sender,
        "r": msg.recipient,
        "rd": msg.round,
        "mv": msg.model_version,
        "t": msg.timestamp,
        "n": bytes(msg.nonce),
        "c": msg.codec,
        "pl": payload_len,
        "pd": payload_digest,
        "b": msg.body(),
    }
    header = _check_header(fields, LocalProtocolError)
    fields["t"] = header.timestamp
    fields["b"] = header.body
    return cbor2.dumps(fields, canonical=True)


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
        extra = _names(obj.keys() - HEADER_KEYS.keys())
        raise SchemaError(f"header keys wrong: missing {missing}, unexpected {extra}")
    return _check_header(obj, SchemaError)


def _check_header(fields: dict[str, Any], error: type[FednodeError]) -> Header:
    """Type- and range-check header ``fields`` (keyed by CBOR key) into a :class:`Header`.

    Shared by decode (``error`` = SchemaError) and encode (LocalProtocolError).
    """
    values: dict[str, Any] = {}
    for key, (attr, hint) in HEADER_KEYS.items():
        if hint is dict:
            continue
        try:
            values[attr] = _coerce(fields[key], hint)
        except _Mismatch:
            raise error(
                f"header field {attr!r}: expected {_describe(hint)}, got {_short(fields[key])}"
            ) from None
    if values["schema"] != SCHEMA_VERSION:
        raise error(
            f"schema version {values['schema']} not supported (this node speaks {SCHEMA_VERSION})"
        )
    try:
        kind = values["kind"] = Kind(values["kind"])
    except ValueError:
        raise error(f"unknown message kind {values['kind']}") from None
    if len(values["nonce"]) != NONCE_LEN:
        raise error(f"nonce: expected {NONCE_LEN} bytes, got {len(values['nonce'])}")
    if len(values["payload_digest"]) != DIGEST_LEN:
        raise error(
            f"payload digest: expected {DIGEST_LEN} bytes, got {len(values['payload_digest'])}"
        )
    for name in ("sender", "recipient"):
        if len(values[name]) > MAX_ID_LEN:
            raise error(f"{name}: peer id longer than {MAX_ID_LEN} characters")
    for name in ("payload_len", "round", "model_version"):
        if values[name] < 0:
            raise error(f"{name} must be >= 0, got {values[name]}")
    if kind not in TENSOR_KINDS and (values["payload_len"] or values["codec"] != "none"):
        raise error(
            f"{kind.name} carries no payload: expected codec 'none' and payload_len 0, got "
            f"{_short(values['codec'])} and {values['payload_len']}"
        )
    cls = MESSAGE_TYPES[kind]
    expected = _BODY_TYPES[cls]
    body = fields["b"]
    if not isinstance(body, dict):
        raise error(f"header field 'body': expected a map, got {_short(body)}")
    if body.keys() != expected.keys():
        raise error(f"{cls.__name__} body keys: expected {sorted(expected)}, got {_names(body)}")
    checked: dict[str, Any] = {}
    for name, hint in expected.items():
        try:
            checked[name] = _coerce(body[name], hint)
        except _Mismatch:
            raise error(
                f"{cls.__name__}.{name}: expected {_describe(hint)}, got {_short(body[name])}"
            ) from None
    values["body"] = checked
    return Header(**values)


# ------------------------------------------------------------------ body field types


class _Mismatch(Exception):
    """A value does not fit its annotation (internal; mapped to the caller's error)."""


_SCALARS: tuple[Any, ...] = (bool, int, float, str, bytes)
_ANY_SCALAR = (bool, int, float, str)  # what ``Any`` means for dict values
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4
_REPR.maxlevel = 2


def _short(value: Any) -> str:
    """Bounded repr for error messages about untrusted values."""
    return _REPR.repr(value)


def _names(keys: typing.Iterable[Any]) -> str:
    """Sorted, bounded listing of untrusted map keys."""
    names = sorted(k if isinstance(k, str) else repr(k) for k in keys)
    more = f", ... {len(names) - 8} more" if len(names) > 8 else ""
    return "[" + ", ".join(_short(n)[1:-1] if n else "''" for n in names[:8]) + more + "]"


def _describe(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _scalar(value: Any, hint: Any) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX:
            return value
    elif hint is float:
        if isinstance(value, float) or (
            isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX
        ):
            number = float(value)
            if math.isfinite(number):
                return number
    elif hint is str:
        if isinstance(value, str) and len(value) <= MAX_STR_LEN:
            return value
    elif hint is bytes:
        if isinstance(value, bytes) and len(value) <= MAX_STR_LEN:
            return value
    elif hint is Any:
        for option in _ANY_SCALAR:  # bool first: True is an int too
            if isinstance(value, option):
                return _scalar(value, option)
    raise _Mismatch


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` checked against a supported annotation and normalised; else _Mismatch.

    Supported: ``bool``, ``int`` (int64), ``float`` (finite; an int is accepted and
    converted), ``str`` / ``bytes`` (at most MAX_STR_LEN), ``X | None`` of those,
    ``tuple[X, ...]`` (a CBOR array of at most MAX_TUPLE_ITEMS scalars) and
    ``dict[str, X]`` (at most MAX_BODY_ITEMS entries; ``X = Any`` means bool, int,
    float or str).
    """
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, inner)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, list | tuple) and len(value) <= MAX_TUPLE_ITEMS:
            return tuple(_scalar(v, item) for v in value)
        raise _Mismatch
    if origin is dict:
        value_hint = typing.get_args(hint)[1]
        if isinstance(value, dict) and len(value) <= MAX_BODY_ITEMS:
            return {_scalar(k, str): _scalar(v, value_hint) for k, v in value.items()}
        raise _Mismatch
    return _scalar(value, hint)


def _supported(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        return len(args) == 2 and len(rest) == 1 and _supported(rest[0])
    if origin is tuple:
        return len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS
    if origin is dict:
        return len(args) == 2 and args[0] is str and (args[1] in _SCALARS or args[1] is Any)
    return hint in _SCALARS


def _check_body_annotations() -> None:
    """Fail at import, naming the field, if a message class uses an unsupported type."""
    for cls, fields_ in _BODY_TYPES.items():
        for name, hint in fields_.items():
            if not _supported(hint):
                raise TypeError(
                    f"{cls.__name__}.{name}: body field type {hint} is not supported on the "
                    "wire (see messages._coerce for the supported types)"
                )


# ------------------------------------------------------------------ CBOR header profile


def scan_header(raw: bytes) -> None:
    """Check that ``raw`` is exactly one CBOR item in the header profile, building nothing.

    Iterative and linear in ``len(raw)``; memory O(MAX_HEADER_DEPTH). Refuses:
    indefinite lengths, reserved additional-info values, tags (major type 6), simple
    values other than false / true / null (so no ``undefined``), more than
    MAX_HEADER_DEPTH nested containers or MAX_HEADER_ITEMS items, any declared length or
    count larger than the bytes left, and bytes after the item. Floats (half, single,
    double) pass here; their values are checked by the schema. Raises SchemaError.
    """
    end = len(raw)
    pos = items = 0
    pending = [1]  # items still expected at each open level (the first is the top level)
    while pending:
        if not pending[-1]:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= end:
            raise SchemaError(f"header CBOR truncated at byte {pos} of {end}")
        start = pos
        major, info = raw[pos] >> 5, raw[pos] & 0x1F
        pos += 1
        items += 1
        if items > MAX_HEADER_ITEMS:
            raise SchemaError(f"header CBOR has more than {MAX_HEADER_ITEMS} items")
        if info < 24:
            arg = info
        elif info <= 27:
            size = 1 << (info - 24)
            if size > end - pos:
                raise SchemaError(f"header CBOR truncated at byte {pos} of {end}")
            arg = int.from_bytes(raw[pos : pos + size], "big")
            pos += size
        else:
            what = "indefinite lengths are" if info == 31 else f"additional info {info} is"
            raise SchemaError(f"header CBOR byte {start}: {what} not allowed")
        if major == 7:
            if info in (20, 21, 22, 25, 26, 27):  # false, true, null, f16, f32, f64
                continue
            raise SchemaError(
                f"header CBOR byte {start}: simple value {arg} not allowed "
                "(only false, true, null and floats)"
            )
        if major == 6:
            raise SchemaError(f"header CBOR byte {start}: tag {arg} not allowed")
        if major in (2, 3):
            if arg > end - pos:
                raise SchemaError(
                    f"header CBOR byte {start}: string of {arg} bytes, only {end - pos} left"
                )
            pos += arg
        elif major in (4, 5):
            if len(pending) > MAX_HEADER_DEPTH:
                raise SchemaError(
                    f"header CBOR byte {start}: containers nested deeper than {MAX_HEADER_DEPTH}"
                )
            count = arg * 2 if major == 5 else arg
            if count > end - pos:  # every item takes at least one byte
                raise SchemaError(
                    f"header CBOR byte {start}: container of {count} items, "
                    f"only {end - pos} bytes left"
                )
            if count:
                pending.append(count)
    if pos != end:
        raise SchemaError(f"header CBOR has {end - pos} bytes after the header map")


# ------------------------------------------------------------------------- framing


def build_message(header: Header, payload: bytes | memoryview) -> Message:
    """The typed message for a verified header and its payload."""
    cls = MESSAGE_TYPES[header.kind]
    return cls(
        sender=header.sender,
        recipient=header.recipient,
        round=header.round,
        model_version=header.model_version,
        timestamp=header.timestamp,
        nonce=header.nonce,
        codec=header.codec,
        payload=payload,
        **header.body,
    )


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


_check_body_annotations()
