"""Drive one secure-aggregation round in memory: every member and the server of
:mod:`fednode.crypto.secagg`, the messages passed by direct calls, members dropping out
at a chosen stage. Used by the tests and by ``scripts/bench/secagg.py`` (which reads the
per-party compute time and the CBOR size of every message from :class:`RoundStats`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from fednode.crypto.fixedpoint import FixedPoint
from fednode.crypto.identity import Identity
from fednode.crypto.secagg import SecAggClient
from fednode.crypto.secagg_messages import SecAggParams, wire_size
from fednode.crypto.secagg_server import SecAggResult, SecAggServer

__all__ = ["STAGES", "RoundStats", "identities", "make_params", "run_round"]

#: the stage at which a member goes silent: it never sends that stage's message
STAGES = ("advertise", "share", "mask", "unmask")
T = TypeVar("T")


def identities(n: int, tag: bytes = b"secagg") -> dict[str, Identity]:
    """``n`` deterministic node identities, by PeerID."""
    out = {}
    for i in range(n):
        ident = Identity.from_seed(hashlib.sha256(tag + i.to_bytes(4, "big")).digest())
        out[ident.peer_id] = ident
    return out


def make_params(
    members: Mapping[str, Identity],
    *,
    threshold: int,
    neighbours: int,
    dim: int,
    round_no: int = 1,
    clip: float = 1.0,
    frac_bits: int = 16,
) -> SecAggParams:
    return SecAggParams(
        round=round_no,
        round_seed=hashlib.sha256(b"round seed" + round_no.to_bytes(8, "big")).digest(),
        members=tuple(sorted(members)),
        threshold=threshold,
        neighbours=neighbours,
        encoding=FixedPoint(len(members), clip, frac_bits),
        dim=dim,
    )


@dataclass
class RoundStats:
    """Seconds of compute and CBOR bytes sent/received, per member and for the server."""

    client_seconds: dict[str, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    bytes_up: dict[str, int] = field(default_factory=dict)
    bytes_down: dict[str, int] = field(default_factory=dict)
    #: member -> stage -> the message it sent in that stage
    sent: dict[str, dict[str, object]] = field(default_factory=dict)
    clients: dict[str, SecAggClient] = field(default_factory=dict)
    server: SecAggServer | None = None
    #: False: do not keep ``sent`` (a benchmark's masked vectors would fill memory)
    keep_sent: bool = True


def run_round(
    params: SecAggParams,
    members: Mapping[str, Identity],
    inputs: Mapping[str, np.ndarray],
    drops: Mapping[str, str] | None = None,
    stats: RoundStats | None = None,
) -> SecAggResult:
    """One round; ``drops`` maps a member to the stage (:data:`STAGES`) at which it stops
    sending. Errors: whatever the protocol raises (``SecAggAborted`` below threshold)."""
    drops = dict(drops or {})
    st = stats if stats is not None else RoundStats()
    clients = {m: SecAggClient(params, members[m]) for m in params.members}
    server = SecAggServer(params)
    st.clients, st.server = clients, server
    for m in clients:
        st.client_seconds[m], st.bytes_up[m], st.bytes_down[m] = 0.0, 0, 0

    def on_client(m: str, stage: str, fn: Callable[..., T], *args: Any) -> T:
        t0 = time.perf_counter()
        out = fn(*args)
        st.client_seconds[m] += time.perf_counter() - t0
        st.bytes_up[m] += wire_size(out)
        if st.keep_sent:
            st.sent.setdefault(m, {})[stage] = out
        return out

    def on_server(fn: Callable[..., T], *args: Any) -> T:
        t0 = time.perf_counter()
        out = fn(*args)
        st.server_seconds += time.perf_counter() - t0
        return out

    def alive(m: str, stage: str) -> bool:
        return m not in drops or STAGES.index(drops[m]) > STAGES.index(stage)

    for m, c in clients.items():
        if alive(m, "advertise"):
            on_server(server.receive_advertise, on_client(m, "advertise", c.advertise))
    keys = on_server(server.close_advertise)
    for m, msg in keys.items():
        st.bytes_down[m] += wire_size(msg)
        if alive(m, "share"):
            on_server(server.receive_shares, on_client(m, "share", clients[m].share_keys, msg))
    shares = on_server(server.close_shares)
    for m, sfy in shares.items():
        st.bytes_down[m] += wire_size(sfy)
        if alive(m, "mask"):
            masked = on_client(m, "mask", clients[m].masked_input, sfy, inputs[m])
            on_server(server.receive_masked, masked)
    request = on_server(server.close_masked)
    for m in request.survivors:
        st.bytes_down[m] += wire_size(request)
        if alive(m, "unmask"):
            on_server(server.receive_unmask, on_client(m, "unmask", clients[m].unmask, request))
    return on_server(server.finish)
