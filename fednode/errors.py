"""The one exception tree of fednode.

::

    FednodeError
    ├── ConfigError            bad configuration; raised at start, names field, value, expectation
    ├── TaskError              a task plug-in failed to load or misbehaved
    ├── WireError              bytes from a peer are not a valid fednode message (blame: remote)
    │   ├── FrameTooLarge      size limit exceeded before anything was allocated
    │   ├── SchemaError        CBOR header missing fields / wrong types / unknown kind
    │   ├── PayloadError       payload length, digest, codec body, shape or finiteness wrong
    │   └── ReplayError        timestamp outside the skew window or nonce already seen
    ├── AuthError              sender not a member, or signature invalid (blame: remote)
    ├── ProtocolError          a well-formed message that makes no sense now
    │   ├── RemoteProtocolError   the peer broke the protocol
    │   └── LocalProtocolError    we tried to do something the protocol forbids
    ├── TransportError         the network failed under us
    │   └── PeerGone           the peer is not reachable (crashed, left, partitioned)
    ├── RoundFailed            a round could not complete (too few results, deadline)
    │   └── SecAggAborted      a secure-aggregation round lost too many members; no sum released
    ├── JobCancelled           a compute job stopped at a cancel point: its node is stopping
    ├── ControlError           an operator's control request cannot be done (blame: operator)
    └── SimWorkerError         a simulator worker process failed or died (``--workers``)

Every error raised for remote input carries the offending ``peer`` when known, so the
log line and the rejection counter can name it. Foreign exceptions (libp2p, OS, cbor2,
nacl) are converted to these types once, at the boundary that caught them.
"""

from __future__ import annotations


class FednodeError(Exception):
    """Base of every error fednode raises on purpose."""

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        super().__init__(message)
        self.peer = peer

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (peer {self.peer})" if self.peer else base


class ConfigError(FednodeError):
    """Configuration is invalid. Raised before the node starts doing anything."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        super().__init__(f"config field {field!r}: got {value!r}, expected {expected}")
        self.field = field
        self.value = value
        self.expected = expected


class TaskError(FednodeError):
    """A training task could not be loaded or behaved outside its contract."""


class WireError(FednodeError):
    """Bytes received from a peer are not a valid fednode message."""


class FrameTooLarge(WireError):
    """A frame or header is larger than the configured limit."""


class SchemaError(WireError):
    """The CBOR header does not match the message schema."""


class PayloadError(WireError):
    """The payload does not match its header (length, digest, codec, shape, finiteness)."""


class ReplayError(WireError):
    """The message is outside the replay window or its nonce was already seen."""


class AuthError(FednodeError):
    """The sender is not a member or the signature does not verify."""


class ProtocolError(FednodeError):
    """A well-formed message arrived that the protocol does not allow here."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol."""


class DeltaError(RemoteProtocolError):
    """A delta broadcast does not apply: the receiver lacks the base version its header
    names, or the model it rebuilt is not the sender's (``docs/PROTOCOL.md``)."""


class LocalProtocolError(ProtocolError):
    """This node attempted something the protocol forbids (a bug on our side)."""


class TransportError(FednodeError):
    """The network failed under us."""


class PeerGone(TransportError):
    """The peer cannot be reached: crashed, left, or partitioned away."""


class RoundFailed(FednodeError):
    """A round could not complete: too few results before the deadline, too many failures."""


class SecAggAborted(RoundFailed):
    """A secure-aggregation round (:mod:`fednode.crypto.secagg`) has fewer than the
    threshold ``t`` members left at some stage, or a member's secret cannot be
    reconstructed from ``t`` shares: the round stops and no partial sum is released."""


class JobCancelled(FednodeError):
    """A training or evaluation job stopped early at a :func:`~fednode.training.cancel_point`
    because the node running it is stopping. Raised inside the job's worker thread and
    caught by the executor; never reaches a role."""


class ControlError(FednodeError):
    """An operator's control request (``fednode status`` / ``fednode promote``) is malformed
    or cannot be done by this node (e.g. promoting a peer that is not a direct client)."""


class SimWorkerError(FednodeError):
    """A worker process of a sharded simulation (``fednode sim --workers K``) raised, or
    died without a word (e.g. killed by the kernel's out-of-memory killer). The run
    stops; the other workers are stopped with it."""
