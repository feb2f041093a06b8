"""The node loop: what a node does with each input, for real nodes and the simulator alike.

A node has four kinds of input — a frame from a peer, a peer going up or down, a finished
compute job, a passed deadline — and one policy for them, which lives here and nowhere
else. :class:`NodeLoop` is sans-IO (it imports neither trio nor a transport): drivers
(:func:`fednode.runner.run_role`, :class:`fednode.sim.des.DesSimulation`; see
``docs/ARCHITECTURE.md``) feed it inputs with the current time and carry out what it asks
through a :class:`Port`.

The policy, per input: hand it to the role (a frame is opened first; what the receiver
rejects never reaches the role), then ``poll`` the role; run the actions in order —
events first, then each message is sealed and handed to the port, then each job — and a
:class:`~fednode.actions.Stop` drops whatever follows it. An input raised while a batch
runs (a send that failed at once) waits in a queue until the batch is done, so the role
sees one input at a time.

Errors: anything a peer causes (a frame the receiver rejects, a message the role refuses
with a :class:`~fednode.errors.FednodeError`) is counted in :attr:`RunStats.rejected`,
emitted as ``rejected`` and dropped. A message this node may not send
(:class:`~fednode.errors.LocalProtocolError`: a NaN update, a frame over the size limit) is
counted in :attr:`RunStats.refused` and emitted as ``send_refused`` (``local_error`` when
the role raised it while building the message). The loop goes on either way.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .actions import Action, Compute, Emit, EvalJob, EvalResult, Send, Stop, TrainJob, TrainResult
from .errors import FednodeError, LocalProtocolError
from .role import Role
from .wire import messages as m
from .wire.frames import Frame, Inbound

EventSink = Callable[[str, str, dict[str, Any]], None]
"""``sink(peer, event, data)``: where a node's structured events go."""


class Sealing(Protocol):
    """Turns an outbound message into a frame (:class:`~fednode.crypto.envelope.Sealer`)."""

    def seal(self, msg: m.Message, recipient: str) -> Any: ...


class Opening(Protocol):
    """Turns an inbound frame into a message (:class:`~fednode.crypto.envelope.Receiver`)."""

    def open(self, inbound: Inbound) -> m.Message: ...


class Port(Protocol):
    """What a driver does for the loop: move frames and run jobs."""

    def transmit(self, to: str, frame: Frame, addrs: tuple[str, ...], kind: str) -> None:
        """Send ``frame`` (a ``kind`` message) to ``to``, dialling ``addrs`` first if needed;
        count it with :meth:`NodeLoop.sent` once handed over, report a failure with
        :meth:`NodeLoop.send_failed` and a refusal with :meth:`NodeLoop.refused`."""

    def run_job(self, job: TrainJob | EvalJob) -> None:
        """Start ``job``; its result comes back through :meth:`NodeLoop.on_result`."""


@dataclass
class RunStats:
    sent_frames: int = 0
    sent_bytes: int = 0
    received_frames: int = 0
    #: inbound frames and messages dropped, by error type (blame: the peer)
    rejected: Counter[str] = field(default_factory=Counter)
    send_failures: int = 0
    #: outbound messages this node refused to send, by error type (blame: us)
    refused: Counter[str] = field(default_factory=Counter)


_MSG, _PEER, _RESULT, _FAILED, _POLL = range(5)


class NodeLoop:
    """One node's policy: inputs in (with the time), frames and jobs out through a port.

    ``peer`` is this node's id (events are emitted in its name). :attr:`stop` is set when
    the role stops; after that every input is ignored. :meth:`kill` is a crash: from then
    on the loop does nothing, not even the rest of the batch it is in.
    """

    __slots__ = (
        "_busy",
        "_queue",
        "emit",
        "killed",
        "peer",
        "port",
        "receiver",
        "role",
        "sealer",
        "stats",
        "stop",
    )

    def __init__(
        self,
        role: Role,
        sealer: Sealing,
        receiver: Opening,
        *,
        peer: str,
        emit: EventSink | None = None,
        stats: RunStats | None = None,
    ) -> None:
        self.role = role
        self.sealer = sealer
        self.receiver = receiver
        self.port: Port | None = None
        self.peer = peer
        self.emit: EventSink = emit or _ignore
        self.stats = stats if stats is not None else RunStats()
        self.stop: Stop | None = None
        self.killed = False
        self._queue: deque[tuple[int, Any]] = deque()
        self._busy = False

    # --- inputs ---------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Start the role (once, before any other input). A send that fails while the
        start batch runs waits in the queue, as it would in any other batch."""
        self._busy = True
        try:
            self._execute(self.role.start(now), now)
        finally:
            self._busy = False
        self._drain(now)

    def on_frame(self, inbound: Inbound, now: float) -> None:
        """A frame arrived: open it (a rejected frame is counted and dropped) and hand the
        message to the role."""
        self.stats.received_frames += 1
        try:
            msg = self.receiver.open(inbound)
        except FednodeError as exc:
            self._rejected(exc, inbound.peer)
            return
        self._input(_MSG, msg, now)

    def on_peer(self, peer: str, up: bool, now: float) -> None:
        self._input(_PEER, (peer, up), now)

    def on_result(self, result: TrainResult | EvalResult, now: float) -> None:
        self._input(_RESULT, result, now)

    def on_timer(self, now: float) -> None:
        """The role's deadline (:meth:`next_deadline`) passed."""
        self._input(_POLL, None, now)

    def send_failed(self, to: str, kind: str, error: BaseException, now: float) -> None:
        """A frame to ``to`` could not be delivered: counted, emitted, and the role learns
        that the peer is gone."""
        self.stats.send_failures += 1
        self.emit(
            self.peer, "send_failed", {"peer": to, "kind": kind, "error": type(error).__name__}
        )
        self._input(_FAILED, to, now)

    def refused(self, to: str, kind: str, error: LocalProtocolError) -> None:
        """This node may not send that frame (the sealer or the transport refused it:
        a NaN vector, a frame over the size limit): counted and emitted, nothing sent."""
        self.stats.refused[type(error).__name__] += 1
        self.emit(
            self.peer,
            "send_refused",
            {"peer": to, "kind": kind, "error": type(error).__name__, "detail": str(error)},
        )

    def kill(self) -> None:
        """A crash: drop the queue; nothing more is done."""
        self.killed = True
        self._queue.clear()

    def next_deadline(self) -> float | None:
        return None if self.stop is not None or self.killed else self.role.next_deadline()

    @property
    def active(self) -> bool:
        return self.stop is None and not self.killed

    # --- the policy -----------------------------------------------------------------------
    def _input(self, kind: int, value: Any, now: float) -> None:
        if self.stop is not None or self.killed:
            return
        self._queue.append((kind, value))
        if not self._busy:
            self._drain(now)

    def _drain(self, now: float) -> None:
        self._busy = True
        try:
            queue = self._queue
            while queue and self.stop is None and not self.killed:
                kind, value = queue.popleft()
                if kind == _POLL:
                    actions = self._poll(now)
                else:
                    actions = self._react(kind, value, now)
                    more = self._poll(now)
                    if more:
                        actions = actions + more
                if actions:
                    self._execute(actions, now)
        finally:
            self._busy = False
        if self.stop is not None:
            self._queue.clear()

    def _react(self, kind: int, value: Any, now: float) -> list[Action]:
        role = self.role
        try:
            if kind == _MSG:
                try:
                    return role.handle(value, now)
                except LocalProtocolError:
                    raise
                except FednodeError as exc:  # blame the peer, keep running
                    self._rejected(exc, value.sender)
                    return []
            if kind == _PEER:
                return role.on_peer(value[0], value[1], now)
            if kind == _FAILED:
                return role.on_peer(value, False, now)
            return role.on_result(value, now)
        except LocalProtocolError as exc:  # the role refused to build a message
            self._local_error(exc)
            return []

    def _poll(self, now: float) -> list[Action]:
        try:
            return self.role.poll(now)
        except LocalProtocolError as exc:  # e.g. a model it may not encode (NaN)
            self._local_error(exc)
            return []

    def _local_error(self, exc: LocalProtocolError) -> None:
        self.stats.refused[type(exc).__name__] += 1
        self.emit(self.peer, "local_error", {"error": type(exc).__name__, "detail": str(exc)})

    def _execute(self, actions: list[Action], now: float) -> None:
        """Emits in order, then sends and jobs; a Stop drops the rest of the batch."""
        later: list[Action] = []
        for action in actions:
            kind = type(action)
            if kind is Send or kind is Compute:
                later.append(action)
            elif kind is Emit:
                self.emit(self.peer, action.event, action.data)  # type: ignore[union-attr]
            elif kind is Stop:
                self.stop = action  # type: ignore[assignment]
                break
        if self.killed or not later:
            return  # an event hook crashed this node (a simulated fault): nothing more
        port = self.port
        assert port is not None, "NodeLoop.port must be set before the first input"
        for action in later:
            if type(action) is Send:
                self._send(action, port)
            else:
                port.run_job(action.job)  # type: ignore[union-attr]

    def _send(self, action: Send, port: Port) -> None:
        to, msg = action.to, action.msg
        try:
            frame = self.sealer.seal(msg, to)
        except LocalProtocolError as exc:
            self.refused(to, msg.KIND.name, exc)
            return
        port.transmit(to, frame, action.addrs, msg.KIND.name)

    def sent(self, nbytes: int) -> None:
        """A driver delivered (or handed off) one frame of ``nbytes``."""
        stats = self.stats
        stats.sent_frames += 1
        stats.sent_bytes += nbytes

    def _rejected(self, exc: FednodeError, sender: str) -> None:
        self.stats.rejected[type(exc).__name__] += 1
        self.emit(
            self.peer,
            "rejected",
            {
                "peer": exc.peer or sender,
                "error": type(exc).__name__,
                "detail": str(exc),
            },
        )


def _ignore(peer: str, event: str, data: dict[str, Any]) -> None:
    pass
