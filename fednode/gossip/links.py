"""Links between gossip peers and the model copies they keep (pure: no I/O, no trio).

A *link* is the agreement of two peers to average with each other. It opens with a
``hello`` / ``welcome`` handshake that carries full models both ways and a random
*epoch* naming the link; every later message on it carries the epoch and a per-link
sequence number, so a message from an older incarnation of the link is recognised and a
synchronous step pairs "my n-th model to you" with "your n-th model to me" without any
global round clock.

Transfer form. Each side of a link keeps two vectors: ``mine`` — its own model as the
other side knows it — and ``theirs`` — the other side's model as it knows it. Averaging
moves ``gamma * w * (theirs - mine)`` into the local model. The two sides compute the
same difference with opposite signs, so whatever one side gains the other loses and the
network sum is conserved exactly (to float rounding), whenever and in whatever order the
two transfers happen, as long as neither message is lost.

Compression (CHOCO-gossip, Koloskova, Stich & Jaggi, ICML 2019). With a lossless codec
(``none``, ``none+zstd``) every message carries the full model and the copies are simply
the last models exchanged. With a lossy codec a message carries ``Q(x - mine)``; sender
and receiver add the same decoded difference to ``mine`` / ``theirs``, so the copies stay
identical on both sides, and what ``Q`` dropped is still in ``x - mine`` and goes out next
time: CHOCO's public copies are error feedback in state form (cf. EF-SGD, Karimireddy et
al. 2019), which is why the gossip peer needs no separate residual. Memory: two model
copies per lossy link.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import RemoteProtocolError
from ..wire import messages as m
from ..wire.codecs import Codec, TopKCodec, parse_codec

F64 = np.float64
F32 = np.float32
#: messages a link holds for a later step (a neighbour is at most one step ahead)
MAX_AHEAD = 4


def mh_weight(d_i: int, d_j: int) -> float:
    """Metropolis-Hastings weight ``1 / (1 + max(d_i, d_j))`` of a link (Xiao & Boyd 2004).

    Both ends compute it from the two degrees carried by the step's messages, so the
    weight matrix is symmetric and doubly stochastic without any global knowledge.
    """
    return 1.0 / (1.0 + max(d_i, d_j))


@dataclass(eq=False)
class Link:
    """One side of a link to ``peer`` (see the module docstring)."""

    peer: str
    epoch: int
    opened: float
    #: False while our hello waits for its welcome
    up: bool = False
    #: the neighbour's degree in its latest step
    degree: int = 0
    #: sequence number of our next message on this link
    send_seq: int = 0
    #: sequence number of the next message we expect on this link
    recv_seq: int = 0
    mine: np.ndarray | None = field(default=None, repr=False)
    theirs: np.ndarray | None = field(default=None, repr=False)
    #: messages that arrived before their step (sync) or before the welcome
    ahead: dict[int, m.Gossip] = field(default_factory=dict, repr=False)
    early: list[m.Gossip] = field(default_factory=list, repr=False)
    #: consecutive steps / exchanges the neighbour missed
    misses: int = 0
    #: async: seq of our push that still waits for its pull
    awaiting: int | None = None

    def delta(self) -> np.ndarray:
        """``theirs - mine`` in float64: what averaging over this link moves in."""
        if self.theirs is None or self.mine is None:
            raise RemoteProtocolError(f"link to {self.peer} has no model yet", peer=self.peer)
        return np.subtract(self.theirs, self.mine, dtype=F64)

    def distance(self, x: np.ndarray) -> float | None:
        """Relative distance ``||x - theirs|| / ||x||`` (None before any model arrived)."""
        if self.theirs is None:
            return None
        return _norm(np.subtract(x, self.theirs, dtype=F64)) / (_norm(x) or 1.0)


class LinkCodec:
    """Encodes models for a link and applies received ones (full or CHOCO difference).

    Errors: :meth:`receive` raises :class:`RemoteProtocolError` for a difference that
    arrives before the full model it applies to.
    """

    def __init__(self, spec: str, size: int, *, seed: int = 0) -> None:
        self.codec: Codec = parse_codec(spec, seed=seed)
        self.full: Codec = parse_codec("none")
        self.lossless = self.codec.spec.split("+")[0] == "none"
        self.size = size
        self.bytes_sent = 0
        #: (model, payload) of the last full model encoded: models are immutable, so a step
        #: that sends the same model to every neighbour encodes it once
        self._last: tuple[np.ndarray, bytes] | None = None

    def default_step(self) -> float:
        """CHOCO's consensus step gamma when none is configured (measured, docs/GOSSIP.md).

        1 for lossless and dense quantisers (fp16, int8: their error shrinks with the
        differences they encode); ``min(1, 2F)`` for top-k with fraction F, which diverges
        with large steps (Koloskova et al. 2019 tie gamma to the compression quality).
        """
        if isinstance(self.codec, TopKCodec):
            return min(1.0, 2.0 * self.codec.fraction)
        return 1.0

    def encode_full(self, link: Link, x: np.ndarray) -> tuple[bytes, str]:
        """A full model (hello / welcome): both copies restart from it exactly.

        A read-only ``x`` (the peer's model: replaced, never modified) is encoded once
        however many links it goes to; the payload is shared, as bytes are immutable.
        """
        codec = self.codec if self.lossless else self.full
        last = self._last
        if last is not None and last[0] is x:
            payload = last[1]
        else:
            payload = codec.encode(x)
            if not x.flags.writeable:
                self._last = (x, payload)
        link.mine = x if self.lossless else np.array(x, dtype=F32, copy=True)
        self.bytes_sent += len(payload)
        return payload, codec.spec

    def encode(self, link: Link, x: np.ndarray) -> tuple[bytes, bool, str]:
        """(payload, is_diff, codec spec) carrying ``x`` over ``link``; updates ``mine``.

        ``x`` must not be modified in place afterwards (lossless links keep a reference).
        """
        if self.lossless or link.mine is None:
            payload, spec = self.encode_full(link, x)
            return payload, False, spec
        payload = self.codec.encode(np.subtract(x, link.mine, dtype=F32))
        link.mine += self.codec.decode(payload, self.size)
        self.bytes_sent += len(payload)
        return payload, True, self.codec.spec

    @staticmethod
    def receive(link: Link, msg: m.Gossip) -> None:
        """Apply ``msg``'s model to ``theirs``: replace (full) or add (difference)."""
        vec = msg.vector
        if vec is None:
            raise RemoteProtocolError("gossip message without a decoded model", peer=msg.sender)
        if not msg.diff:
            link.theirs = vec  # read-only view of the payload; replaced, never written
            return
        if link.theirs is None:
            raise RemoteProtocolError(
                "compressed difference before the full model it applies to", peer=msg.sender
            )
        if not link.theirs.flags.writeable:
            link.theirs = np.array(link.theirs, dtype=F32, copy=True)
        link.theirs += vec


def mix(x: np.ndarray, links: list[Link], coefs: list[float]) -> tuple[np.ndarray, list[float]]:
    """One averaging step over ``links``: the new model ``x + sum_k coefs[k] * delta_k``
    (:func:`combine`) and each link's relative distance ``||x - theirs_k|| / ||x||`` before
    it (:meth:`Link.distance`).

    Where every link's ``mine`` *is* ``x`` (lossless links right after this step's send)
    the distances come from the same differences, ``x - theirs_k = -delta_k``: one stacked
    subtraction and one sum of squares for the step instead of three passes per link.
    """
    for link in links:
        if link.theirs is None or link.mine is None:
            raise RemoteProtocolError(f"link to {link.peer} has no model yet", peer=link.peer)
    k = len(links)
    rows = np.array([*(link.theirs for link in links), x], dtype=F64)
    d = rows[:k]
    if all(link.mine is x for link in links):
        d -= rows[k]
        # k deltas, then x itself; numpy's vecdot: no Python-level wrapper, unlike einsum
        sq = np.vecdot(rows, rows).tolist()
        scale = math.sqrt(sq[k]) or 1.0
        dist = [math.sqrt(s) / scale for s in sq[:k]]
    else:  # a lossy link's public copy lags x
        dist = [link.distance(x) or 0.0 for link in links]
        d -= np.array([link.mine for link in links], dtype=F64)
    return combine(x, coefs, d), dist


def combine(x: np.ndarray, coefs: list[float], d: np.ndarray) -> np.ndarray:
    """``x + sum_k coefs[k] * d[k]`` accumulated in float64, as a new float32 vector.

    ``d`` is a ``k x n`` float64 array of differences (:meth:`Link.delta`). This is the
    transfer step of the module docstring — a move along differences, not a weighted mean
    of models, so it is not ``StreamingMean`` (``docs/GOSSIP.md``, "Why gossip does not use
    StreamingMean"). numpy's own loops, not BLAS: the sum order does not depend on the
    machine's thread count.
    """
    acc = np.einsum("i,ij->j", np.asarray(coefs, dtype=F64), d)
    acc += x
    return acc.astype(F32)


def _norm(v: np.ndarray) -> float:
    """Euclidean norm accumulated in float64."""
    if v.dtype != F64:
        v = v.astype(F64)
    return math.sqrt(float(v @ v))
