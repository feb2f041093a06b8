"""The message kinds of the wire protocol: one frozen dataclass per kind (pure data).

``docs/PROTOCOL.md`` describes each; :mod:`fednode.wire.messages` is the frame format
that encodes and decodes them (callers import them from there, as ``messages as m``).
A new kind is a class here (or in a module of its own built on :class:`Message`), a
member of :class:`Kind`, and an entry in :data:`MESSAGE_TYPES`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "MESSAGE_TYPES",
    "TENSOR_KINDS",
    "Ack",
    "Advert",
    "Assign",
    "Bye",
    "Fit",
    "Gossip",
    "Kind",
    "Message",
    "Reject",
    "SecAgg",
    "Update",
]


class Kind(enum.IntEnum):
    ADVERT = 1
    FIT = 2
    UPDATE = 3
    GOSSIP = 4
    ACK = 5
    REJECT = 6
    ASSIGN = 7
    BYE = 8
    SECAGG = 9


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
        return BODY_TYPES[cls]

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
    #: multiaddrs the sender listens on (``/ip4/.../tcp/.../p2p/<id>``): what the
    #: coordinator hands to the clients it places under this node, so they can dial it
    #: without discovery (``--no-mdns``, other subnets)
    addrs: tuple[str, ...] = ()


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
    #: where to reach ``parent`` (its advertised ``addrs``; empty: rely on discovery)
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Bye(Message):
    KIND: ClassVar[Kind] = Kind.BYE
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAgg(Message):
    """One secure-aggregation stage message (coordinator <-> member, docs/PROTOCOL.md).

    ``stage`` names it (``params``, ``advertise``, ``keys``, ``share``, ``shares``,
    ``masked``, ``unmask_request``, ``unmask``); the payload is that stage's CBOR array
    (:mod:`fednode.crypto.secagg_wire`), codec ``none``, never a float tensor."""

    KIND: ClassVar[Kind] = Kind.SECAGG
    stage: str = ""


MESSAGE_TYPES: dict[Kind, type[Message]] = {
    cls.KIND: cls for cls in (Advert, Fit, Update, Gossip, Ack, Reject, Assign, Bye, SecAgg)
}
TENSOR_KINDS = frozenset({Kind.FIT, Kind.UPDATE, Kind.GOSSIP})
#: kinds with a payload that is not a float tensor (raw bytes the role decodes; codec none)
RAW_PAYLOAD_KINDS = frozenset({Kind.SECAGG})


#: class -> {body field: annotation}; filled by :mod:`fednode.wire.messages` at import
#: (it needs the resolved type hints of every class)
BODY_TYPES: dict[type[Message], dict[str, Any]] = {}
