"""Typed fednode messages and their frame format (pure: no I/O, no crypto).

A frame on the wire::

    +-------+-----+-------+------------+----------------+-----------+------------------+
    | "FN"  | ver | flags | header_len | header (CBOR)  | signature | payload (raw)    |
    | 2 B   | 1 B | 1 B   | u32 BE     | header_len B   | 64 B      | payload_len B    |
    +-------+-----+-------+------------+----------------+-----------+------------------+

The CBOR header is a map with short keys (see :data:`HEADER_KEYS`); it carries the
payload's length and BLAKE3 digest, so the Ed25519 signature over the header covers the
payload too. The payload (tensor bytes) is never put inside CBOR and never pickled; the
receiver decodes it from a view of the received buffer.

Every message is a frozen dataclass: a common header plus per-kind body fields whose
types are checked on decode (:func:`decode_header`). ``vector`` is not on the wire: on
the send side it is the dense update to encode with ``codec`` (unless ``payload`` is
already encoded, e.g. with error feedback); on the receive side it is the decoded,
validated payload.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cbor2
import numpy as np

from ..errors import FrameTooLarge, SchemaError

SCHEMA_VERSION = 1
MAGIC = b"FN"
PREFIX = struct.Struct("!2sBBI")
SIG_LEN = 64
NONCE_LEN = 16
DIGEST_LEN = 32
MAX_ID_LEN = 128
MAX_STR_LEN = 256
MAX_BODY_ITEMS = 64


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
    """Gossip exchange between peers. Payload: the sender's model (or compressed diff)."""

    KIND: ClassVar[Kind] = Kind.GOSSIP
    weight: float = 1.0
    reply: bool = False
    consortium: str = ""


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
    """CBOR bytes of ``msg``'s header. Deterministic (canonical CBOR)."""
    body = {k: list(v) if isinstance(v, tuple) else v for k, v in msg.body().items()}
    fields = {
        "v": SCHEMA_VERSION,
        "k": int(msg.KIND),
        "s": msg.sender,
        "r": msg.recipient,
        "rd": msg.round,
        "mv": msg.model_version,
        "t": float(msg.timestamp),
        "n": bytes(msg.nonce),
        "c": msg.codec,
        "pl": payload_len,
        "pd": payload_digest,
        "b": body,
    }
    return cbor2.dumps(fields, canonical=True)


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    if hint is float:
        return isinstance(value, float | int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str) and len(value) <= MAX_STR_LEN
    if hint is bytes:
        return isinstance(value, bytes) and len(value) <= MAX_STR_LEN
    origin = typing.get_origin(hint)
    if origin is tuple:
        return (
            isinstance(value, list)
            and len(value) <= 4096
            and all(isinstance(v, str) and len(v) <= MAX_ID_LEN for v in value)
        )
    if origin is dict:
        return (
            isinstance(value, dict)
            and len(value) <= MAX_BODY_ITEMS
            and all(
                isinstance(k, str)
                and len(k) <= MAX_STR_LEN
                and (
                    isinstance(v, bool | int | float)
                    or (isinstance(v, str) and len(v) <= MAX_STR_LEN)
                )
                for k, v in value.items()
            )
        )
    return False  # pragma: no cover - every body annotation is handled above


def decode_header(raw: bytes | memoryview) -> Header:
    """Parse and type-check the CBOR header. Raises :class:`SchemaError`."""
    try:
        obj = cbor2.loads(bytes(raw))
    except Exception as exc:  # cbor2 raises several types; map them once, here
        raise SchemaError(f"header is not valid CBOR: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a CBOR map header, got {type(obj).__name__}")
    if set(obj) != set(HEADER_KEYS):
        missing = sorted(set(HEADER_KEYS) - set(obj))
        extra = sorted(str(k) for k in set(obj) - set(HEADER_KEYS))
        raise SchemaError(f"header keys wrong: missing {missing}, unexpected {extra}")
    values: dict[str, Any] = {}
    for key, (attr, typ) in HEADER_KEYS.items():
        value = obj[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if typ is dict:
            if not isinstance(value, dict):
                raise SchemaError(f"header field {attr!r}: expected a map, got {value!r:.60}")
        elif not _type_ok(value, typ):
            raise SchemaError(f"header field {attr!r}: expected {typ.__name__}, got {value!r:.60}")
        values[attr] = value
    if values["schema"] != SCHEMA_VERSION:
        raise SchemaError(
            f"schema version {values['schema']} not supported (this node speaks {SCHEMA_VERSION})"
        )
    try:
        values["kind"] = Kind(values["kind"])
    except ValueError as exc:
        raise SchemaError(f"unknown message kind {values['kind']}") from exc
    if len(values["nonce"]) != NONCE_LEN:
        raise SchemaError(f"nonce: expected {NONCE_LEN} bytes, got {len(values['nonce'])}")
    if len(values["payload_digest"]) != DIGEST_LEN:
        raise SchemaError(
            f"payload digest: expected {DIGEST_LEN} bytes, got {len(values['payload_digest'])}"
        )
    for name in ("sender", "recipient"):
        if len(values[name]) > MAX_ID_LEN:
            raise SchemaError(f"{name}: peer id longer than {MAX_ID_LEN} characters")
    if values["payload_len"] < 0 or values["round"] < 0 or values["model_version"] < 0:
        raise SchemaError("payload_len, round and model_version must be >= 0")
    cls = MESSAGE_TYPES[values["kind"]]
    expected = _BODY_TYPES[cls]
    body = values["body"]
    if set(body) != set(expected):
        raise SchemaError(
            f"{cls.__name__} body keys: expected {sorted(expected)}, got {sorted(map(str, body))}"
        )
    for name, hint in expected.items():
        if not _type_ok(body[name], hint):
            raise SchemaError(f"{cls.__name__}.{name}: expected {hint}, got {body[name]!r:.60}")
        if hint is float:
            body[name] = float(body[name])
        elif typing.get_origin(hint) is tuple:
            body[name] = tuple(body[name])
    return Header(**values)


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
    if len(view) < PREFIX.size + SIG_LEN:
        raise SchemaError(f"frame head of {len(view)} bytes is shorter than the fixed prefix")
    magic, version, _flags, header_len = PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise SchemaError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"frame version {version} not supported (expected {SCHEMA_VERSION})")
    if header_len > max_header:
        raise FrameTooLarge(f"header of {header_len} bytes exceeds the limit of {max_header}")
    if len(view) != PREFIX.size + header_len + SIG_LEN:
        raise SchemaError(
            f"frame head is {len(view)} bytes, header_len {header_len} implies "
            f"{PREFIX.size + header_len + SIG_LEN}"
        )
    body_start = PREFIX.size + header_len
    return view[PREFIX.size : body_start], view[body_start:]


def head_length(prefix: bytes | memoryview, *, max_header: int) -> int:
    """Total head length announced by the first ``PREFIX.size`` bytes (stream readers)."""
    magic, version, _flags, header_len = PREFIX.unpack_from(prefix)
    if magic != MAGIC or version != SCHEMA_VERSION:
        raise SchemaError(f"bad frame prefix {bytes(prefix[:4])!r}")
    if header_len > max_header:
        raise FrameTooLarge(f"header of {header_len} bytes exceeds the limit of {max_header}")
    return int(PREFIX.size + header_len + SIG_LEN)


def frame_head(header: bytes, signature: bytes) -> bytes:
    """Prefix + header + signature: everything before the payload."""
    return PREFIX.pack(MAGIC, SCHEMA_VERSION, 0, len(header)) + header + signature
