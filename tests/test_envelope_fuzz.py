"""Property tests: hostile frames into ``Receiver.open``.

Generated malformed, truncated, oversized, bit-flipped, re-signed, replayed,
misaddressed, wrong-shape and non-finite messages: one hypothesis test per kind
(derandomized, each with its own receiver, so every test is self-contained), plus
``test_ten_thousand_seeded_hostile_frames_...``, which draws 10,000 hostile frames of ten
kinds from a seeded RNG and counts them itself. For every one: no crash, not accepted, a
typed error (a specific :class:`WireError` subclass or :class:`AuthError`, never the
catch-all plain ``WireError``), counted, and the receiver's state unchanged — and a
genuine message sealed right after still passes.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import Counter
from typing import Any

import cbor2
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fednode.crypto.envelope import DOMAIN, Membership, Receiver, Sealer
from fednode.crypto.identity import Identity
from fednode.errors import (
    AuthError,
    FednodeError,
    FrameTooLarge,
    PayloadError,
    ReplayError,
    SchemaError,
    WireError,
)
from fednode.wire import messages as m
from fednode.wire.codecs import parse_codec
from fednode.wire.frames import Frame, Inbound

N = 48
T0 = 1_800_000_000.0
MAX_FRAME = 64 * 1024
MAX_HEADER = 8 * 1024
TYPED = (FrameTooLarge, SchemaError, AuthError, ReplayError, PayloadError)
CODECS = ["none", "fp16", "int8", "topk:0.1", "topk:0.1+int8", "int8+zstd", "none+zstd"]


def ident(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"fuzz/{name}".encode()).digest())


ALICE, BOB, CAROL = ident("alice"), ident("bob"), ident("carol")
OUTSIDERS = [ident(f"outsider{i}") for i in range(4)]
MEMBERS = frozenset({ALICE.peer_id, BOB.peer_id, CAROL.peer_id})


class Harness:
    """One receiver (Bob) that lives through every example of a test, and honest senders.

    The clock ticks 1 ms per reading, so timestamps increase like a real clock's.
    """

    def __init__(self, **limits: Any) -> None:
        self._ticks = itertools.count()
        self.rx = Receiver(
            BOB.peer_id,
            Membership(MEMBERS),
            model_size=N,
            clock=self.clock,
            max_frame_bytes=MAX_FRAME,
            max_header_bytes=MAX_HEADER,
            **limits,
        )
        self.sealers = {i.peer_id: Sealer(i, clock=self.clock) for i in (ALICE, CAROL)}
        self.sealers.update({i.peer_id: Sealer(i, clock=self.clock) for i in OUTSIDERS})

    def clock(self) -> float:
        return T0 + next(self._ticks) * 0.001

    def seal(self, msg: m.Message, by: Identity = ALICE) -> Frame:
        return self.sealers[by.peer_id].seal(msg)

    def genuine(self, seed: int = 0) -> Frame:
        return self.seal(update(seed))

    def state(self) -> tuple[Any, ...]:
        w = self.rx.replay
        return (self.rx.accepted, len(w), w.floor_all, len(w._floors))

    def reject(self, frame: Frame, peer: str = ALICE.peer_id) -> FednodeError:
        """Open a hostile frame: must raise a typed error and change nothing."""
        before, rejected = self.state(), sum(self.rx.rejected.values())
        try:
            msg = self.rx.open(Inbound(peer, frame))
        except FednodeError as exc:
            error = exc
        else:
            pytest.fail(f"hostile frame accepted: {msg!r}")
        assert isinstance(error, TYPED), f"untyped rejection {type(error).__name__}: {error}"
        assert type(error) is not WireError  # the catch-all never fired
        assert sum(self.rx.rejected.values()) == rejected + 1
        assert self.state() == before
        # no state corrupted: a genuine message still passes
        assert self.rx.open(Inbound(ALICE.peer_id, self.genuine())).sender == ALICE.peer_id
        return error


def update(seed: int = 0, n: int = N, codec: str = "none", **kw: Any) -> m.Update:
    vec = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    fields: dict[str, Any] = {"recipient": BOB.peer_id, "round": 1, "num_examples": 5}
    fields.update(kw)
    return m.Update(payload=parse_codec(codec).encode(vec), codec=codec, **fields)


def signed(header: bytes, signer: Identity = ALICE, flags: int = 0) -> bytes:
    prefix = m.PREFIX.pack(m.MAGIC, m.SCHEMA_VERSION, flags, len(header))
    return prefix + header + signer.sign(DOMAIN + header)


def header_of(frame: Frame) -> dict[str, Any]:
    raw, _sig = m.split_head(frame.head, max_header=MAX_HEADER)
    return dict(cbor2.loads(bytes(raw)))


#: a position drawn independently of the frame's length (which varies with the
#: harness clock: the CBOR timestamp is shorter when it fits a float32), taken modulo
#: that length; a strategy bounded by the length would draw differently on replay
ANYWHERE = st.integers(0, 2**32)


def harness(test: str, **limits: Any) -> Harness:
    """The receiver of ``test``, created on its first example: tests share no receiver, so
    each gives the same result alone, in the file, or in any order."""
    if test not in _HARNESSES:
        _HARNESSES[test] = Harness(**limits)
    return _HARNESSES[test]


_HARNESSES: dict[str, Harness] = {}


def fuzz(n: int):
    """``n`` examples, derandomized: the same inputs on every run (no example database)."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------- garbage and truncation


@fuzz(1500)
@given(head=st.binary(max_size=400), payload=st.binary(max_size=64))
def test_random_bytes(head: bytes, payload: bytes):
    h = harness("test_random_bytes")
    h.reject(Frame(head, payload))


@fuzz(1500)
@given(header=st.binary(max_size=600), sig=st.binary(min_size=64, max_size=64))
def test_random_header_behind_a_valid_prefix(header: bytes, sig: bytes):
    h = harness("test_random_header_behind_a_valid_prefix")
    head = m.PREFIX.pack(m.MAGIC, 1, 0, len(header)) + header + sig
    h.reject(Frame(head, b""))


@fuzz(1000)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_truncated(data: st.DataObject, seed: int):
    h = harness("test_truncated")
    frame = h.seal(update(seed))
    if data.draw(st.booleans()):
        head = frame.head[: data.draw(ANYWHERE) % len(frame.head)]
        payload = frame.payload
    else:
        head = frame.head
        payload = bytes(frame.payload)[: data.draw(ANYWHERE) % len(frame.payload)]
    h.reject(Frame(head, payload))


@fuzz(500)
@given(
    header_len=st.integers(MAX_HEADER + 1, 2**32 - 1),
    rest=st.binary(max_size=100),
    extra=st.integers(1, 3 * MAX_FRAME),
    which=st.booleans(),
)
def test_oversized(header_len: int, rest: bytes, extra: int, which: bool):
    h = harness("test_oversized")
    if which:  # announced header beyond the limit
        head = m.PREFIX.pack(m.MAGIC, 1, 0, header_len) + rest
        frame = Frame(head, b"")
    else:  # frame beyond the limit: a member's genuine head with a huge payload
        frame = Frame(h.genuine().head, bytes(MAX_FRAME + extra))
    assert isinstance(h.reject(frame), FrameTooLarge)


# ----------------------------------------------------------------------- bit flips


@fuzz(2000)
@given(data=st.data(), seed=st.integers(0, 2**16), codec=st.sampled_from(CODECS))
def test_bit_flips(data: st.DataObject, seed: int, codec: str):
    h = harness("test_bit_flips")
    frame = h.seal(update(seed, codec=codec))
    blob = bytearray(frame.head + bytes(frame.payload))
    bits = {at % (8 * len(blob)) for at in data.draw(st.lists(ANYWHERE, min_size=1, max_size=8))}
    for bit in bits:
        blob[bit // 8] ^= 1 << (bit % 8)
    cut = len(frame.head)
    h.reject(Frame(bytes(blob[:cut]), bytes(blob[cut:])))


# ------------------------------------------------- CBOR that a member signed anyway

scalars = (
    st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.booleans()
    | st.none()
    | st.just(cbor2.undefined)
    | st.builds(cbor2.CBORSimpleValue, st.sampled_from([0, 16, 19, 32, 255]))
)
cbor_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=5) | st.integers(0, 9), inner, max_size=5)
        | st.builds(cbor2.CBORTag, st.integers(0, 2**16), inner)
    ),
    max_leaves=30,
)


@fuzz(1500)
@given(obj=cbor_values)
def test_arbitrary_cbor_signed_by_a_member(obj: Any):
    h = harness("test_arbitrary_cbor_signed_by_a_member")
    try:
        header = cbor2.dumps(obj)
    except (cbor2.CBOREncodeError, ValueError):
        header = cbor2.dumps([1, 2, 3])  # an undumpable value: any non-header will do
    if len(header) > MAX_HEADER:
        header = header[:MAX_HEADER]
    h.reject(Frame(signed(header), b""))


def spoil(key: str, original: Any) -> st.SearchStrategy[Any]:
    """Values that are wrong for header field ``key`` (never a valid alternative)."""
    wrong_type = st.text(max_size=5) | st.binary(max_size=5) | st.lists(st.integers(), max_size=2)
    ints_bad = st.integers(-(2**64), -1) | st.booleans() | st.floats() | wrong_type
    return {
        "v": st.integers(-(2**64), 2**64 - 1).filter(lambda v: v != 1) | st.none(),
        "k": st.integers(100, 2**64 - 1) | st.integers(-(2**64), 0) | wrong_type,
        "s": st.integers() | st.binary() | st.text().filter(lambda s: s != original),
        "r": st.integers() | st.binary() | st.text().filter(lambda s: s != original),
        "rd": ints_bad | st.integers(2**63, 2**64 - 1),
        "mv": ints_bad | st.integers(2**63, 2**64 - 1),
        "t": st.sampled_from([math.nan, math.inf, -math.inf])
        | st.floats(T0 + 1000, 1e300)
        | st.floats(-1e300, T0 - 1000)
        | wrong_type,
        "n": st.binary(max_size=40).filter(lambda b: len(b) != 16) | st.text(max_size=16),
        "c": st.text(max_size=30).filter(lambda c: c != original) | st.integers(),
        "pl": st.integers(-(2**64), 2**64 - 1).filter(lambda v: v != original) | wrong_type,
        "pd": st.binary(max_size=40).filter(lambda b: b != original) | st.text(max_size=32),
        "b": st.dictionaries(st.text(max_size=12), cbor_values, max_size=4)
        | st.lists(st.integers(), max_size=3)
        | st.just({"num_examples": 1, "metrics": {"loss": math.nan}})
        | st.just({"num_examples": -1.5, "metrics": {}})
        | st.just({"num_examples": 1, "metrics": {"x": [1]}}),
    }[key]


@fuzz(1500)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_one_header_field_spoiled_and_re_signed_by_the_sender(data: st.DataObject, seed: int):
    h = harness("test_one_header_field_spoiled_and_re_signed_by_the_sender")
    frame = h.seal(update(seed))
    fields = header_of(frame)
    action = data.draw(st.sampled_from(["replace", "drop", "add"]))
    key = data.draw(st.sampled_from(sorted(fields)))
    if action == "replace":
        fields[key] = data.draw(spoil(key, fields[key]))
    elif action == "drop":
        del fields[key]
    else:
        fields[data.draw(st.text(min_size=1, max_size=4).filter(lambda k: k not in fields))] = 0
    try:
        header = cbor2.dumps(fields)
    except (cbor2.CBOREncodeError, ValueError):
        header = cbor2.dumps({**fields, key: None})
    h.reject(Frame(signed(header), frame.payload))


# ------------------------------------------------------------- auth, replay, address


@fuzz(600)
@given(
    seed=st.integers(0, 2**16),
    outsider=st.sampled_from(OUTSIDERS),
    how=st.sampled_from(["own-name", "claims-alice", "alice-header-outsider-sig", "via-carol"]),
)
def test_non_members_and_forged_signatures(seed: int, outsider: Identity, how: str):
    h = harness("test_non_members_and_forged_signatures")
    if how == "own-name":  # an outsider's genuine message
        frame, peer = h.seal(update(seed), by=outsider), outsider.peer_id
    elif how == "claims-alice":  # an outsider's message claiming to be from Alice
        frame = h.seal(update(seed), by=outsider)
        fields = {**header_of(frame), "s": ALICE.peer_id}
        frame, peer = Frame(signed(cbor2.dumps(fields), outsider), frame.payload), ALICE.peer_id
    elif how == "alice-header-outsider-sig":
        frame = h.seal(update(seed))
        raw, _ = m.split_head(frame.head, max_header=MAX_HEADER)
        frame, peer = Frame(signed(bytes(raw), outsider), frame.payload), ALICE.peer_id
    else:  # Alice's genuine frame relayed over Carol's connection
        frame, peer = h.seal(update(seed)), CAROL.peer_id
    assert isinstance(h.reject(frame, peer), AuthError)


@fuzz(600)
@given(seed=st.integers(0, 2**16), copies=st.integers(1, 3), by=st.sampled_from([ALICE, CAROL]))
def test_replayed(seed: int, copies: int, by: Identity):
    h = harness("test_replayed")
    frame = h.seal(update(seed), by=by)
    h.rx.open(Inbound(by.peer_id, frame))  # delivered once, legitimately
    for _ in range(copies):
        assert isinstance(h.reject(frame, by.peer_id), ReplayError)


@fuzz(400)
@given(seed=st.integers(0, 2**16), later=st.integers(1, 40))
def test_replayed_after_eviction(seed: int, later: int):
    h = harness("test_replayed_after_eviction", nonce_capacity=8)
    frame = h.seal(update(seed))
    h.rx.open(Inbound(ALICE.peer_id, frame))
    for i in range(later):  # push it out of the 8-entry cache (or not)
        h.rx.open(Inbound(CAROL.peer_id, h.seal(update(seed + i), by=CAROL)))
    assert isinstance(h.reject(frame), ReplayError)


@fuzz(400)
@given(seed=st.integers(0, 2**16), offset=st.floats(301, 1e12) | st.floats(-1e12, -301))
def test_outside_the_skew_window(seed: int, offset: float):
    h = harness("test_outside_the_skew_window")
    now = h.clock()
    frame = Sealer(ALICE, clock=lambda: now + offset).seal(update(seed))
    assert isinstance(h.reject(frame), ReplayError)


@fuzz(500)
@given(
    seed=st.integers(0, 2**16),
    to=st.sampled_from([ALICE.peer_id, CAROL.peer_id, "", OUTSIDERS[0].peer_id])
    | st.text(max_size=m.MAX_ID_LEN).filter(lambda s: s != BOB.peer_id),
)
def test_wrong_recipient(seed: int, to: str):
    h = harness("test_wrong_recipient")
    assert isinstance(h.reject(h.seal(update(seed, recipient=to))), AuthError)


# ------------------------------------------------------------------------- payloads


@fuzz(600)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(0, 4 * N).filter(lambda n: n != N),
    codec=st.sampled_from(CODECS),
    kind=st.sampled_from([m.Update, m.Fit, m.Gossip]),
)
def test_payload_for_another_model_size(seed: int, n: int, codec: str, kind: type[m.Message]):
    h = harness("test_payload_for_another_model_size")
    vec = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    msg = kind(recipient=BOB.peer_id, codec=codec, payload=parse_codec(codec).encode(vec))
    assert isinstance(h.reject(h.seal(msg)), PayloadError)


@fuzz(300)
@given(seed=st.integers(0, 2**16), codec=st.sampled_from(CODECS), other=st.sampled_from(CODECS))
def test_payload_labelled_with_another_codec(seed: int, codec: str, other: str):
    h = harness("test_payload_labelled_with_another_codec")
    vec = np.random.default_rng(seed).standard_normal(N).astype(np.float32)
    msg = m.Update(recipient=BOB.peer_id, codec=codec, payload=parse_codec(other).encode(vec))
    if codec == other:
        msg = m.Update(recipient=BOB.peer_id, codec=codec, payload=b"\x00" * 7)
    assert isinstance(h.reject(h.seal(msg)), PayloadError)


@fuzz(600)
@given(
    seed=st.integers(0, 2**16),
    bad=st.lists(
        st.tuples(st.integers(0, N - 1), st.sampled_from([math.nan, math.inf, -math.inf])),
        min_size=1,
        max_size=5,
    ),
    codec=st.sampled_from(["none", "fp16", "none+zstd"]),
)
def test_non_finite_values_signed_by_a_member(seed: int, bad: list[tuple[int, float]], codec: str):
    """A member bypasses encode()'s NaN guard and signs NaN/Inf values."""
    h = harness("test_non_finite_values_signed_by_a_member")
    vec = np.random.default_rng(seed).standard_normal(N).astype(np.float32)
    for i, value in bad:
        vec[i] = value
    prefix = parse_codec(codec).encode(np.zeros(N, np.float32))[:8]  # the codec's header
    if codec == "none":
        body = vec.tobytes()
    elif codec == "fp16":
        body = vec.astype("<f2").tobytes()
    else:
        body = zstandard.ZstdCompressor().compress(vec.tobytes())
    payload = prefix + body
    msg = m.Update(recipient=BOB.peer_id, codec=codec, payload=payload)
    assert isinstance(h.reject(h.seal(msg)), PayloadError)


@fuzz(400)
@given(
    seed=st.integers(0, 2**16), codec=st.sampled_from(CODECS), data=st.data(), kind=st.booleans()
)
def test_corrupted_codec_body_re_signed_by_a_member(
    seed: int, codec: str, data: st.DataObject, kind: bool
):
    """A member signs a payload with a broken codec body: the signature cannot save it."""
    h = harness("test_corrupted_codec_body_re_signed_by_a_member")
    payload = bytearray(bytes(update(seed, codec=codec).payload))
    if kind:  # garbage after the codec header
        payload[8:] = data.draw(st.binary(max_size=2 * len(payload)))
    else:  # a spoiled codec header field
        i = data.draw(st.integers(0, min(len(payload), 17) - 1))
        payload[i] ^= data.draw(st.integers(1, 255))
    frame = h.seal(m.Update(recipient=BOB.peer_id, codec=codec, payload=bytes(payload)))
    accepted = h.rx.accepted
    try:
        msg = h.rx.open(Inbound(ALICE.peer_id, frame))
    except PayloadError:
        assert h.rx.accepted == accepted
        return
    # A flipped byte can still be a valid encoding (e.g. an int8 code or a value):
    # then it is a well-formed update whose numbers changed, which the signature allows.
    assert msg.sender == ALICE.peer_id and h.rx.accepted == accepted + 1


# ------------------------------------------------------- 10,000, counted in one test

KINDS = (
    "random_bytes", "random_header", "truncated", "oversized", "bit_flips",
    "outsider", "relayed", "replayed", "skew", "wrong_recipient",
)  # fmt: skip


def hostile(h: Harness, kind: str, rng: random.Random) -> tuple[Frame, str, type[FednodeError]]:
    """One hostile frame of ``kind`` drawn from ``rng``: (frame, connection peer, error).

    The error is the class the kind must raise; ``FednodeError`` where several typed
    errors fit (``Harness.reject`` checks that it is one of them, never the catch-all)."""
    alice = ALICE.peer_id
    if kind == "random_bytes":
        return (
            Frame(rng.randbytes(rng.randrange(400)), rng.randbytes(rng.randrange(64))),
            alice,
            FednodeError,
        )
    if kind == "random_header":
        header = rng.randbytes(rng.randrange(600))
        head = m.PREFIX.pack(m.MAGIC, 1, 0, len(header)) + header + rng.randbytes(64)
        return Frame(head, b""), alice, FednodeError
    frame = h.seal(update(rng.randrange(2**16)))
    if kind == "truncated":
        if rng.random() < 0.5:
            return (
                Frame(frame.head[: rng.randrange(len(frame.head))], frame.payload),
                alice,
                FednodeError,
            )
        cut = bytes(frame.payload)[: rng.randrange(len(frame.payload))]
        return Frame(frame.head, cut), alice, FednodeError
    if kind == "oversized":
        if rng.random() < 0.5:
            header_len = rng.randrange(MAX_HEADER + 1, 2**32)
            return Frame(m.PREFIX.pack(m.MAGIC, 1, 0, header_len), b""), alice, FrameTooLarge
        return (
            Frame(frame.head, bytes(MAX_FRAME + rng.randrange(1, MAX_FRAME))),
            alice,
            FrameTooLarge,
        )
    if kind == "bit_flips":
        blob = bytearray(frame.head + bytes(frame.payload))
        for bit in rng.sample(range(8 * len(blob)), rng.randrange(1, 9)):
            blob[bit // 8] ^= 1 << (bit % 8)
        cut = len(frame.head)
        return Frame(bytes(blob[:cut]), bytes(blob[cut:])), alice, FednodeError
    if kind == "outsider":
        outsider = rng.choice(OUTSIDERS)
        return h.seal(update(rng.randrange(2**16)), by=outsider), outsider.peer_id, AuthError
    if kind == "relayed":  # Alice's genuine frame over Carol's connection
        return frame, CAROL.peer_id, AuthError
    if kind == "replayed":
        h.rx.open(Inbound(alice, frame))  # delivered once, legitimately
        return frame, alice, ReplayError
    if kind == "skew":
        offset = rng.choice((1, -1)) * rng.uniform(301, 1e9)
        now = h.clock()
        return Sealer(ALICE, clock=lambda: now + offset).seal(update(0)), alice, ReplayError
    assert kind == "wrong_recipient"
    to = rng.choice([alice, CAROL.peer_id, "", OUTSIDERS[0].peer_id])
    return h.seal(update(rng.randrange(2**16), recipient=to)), alice, AuthError


def test_ten_thousand_seeded_hostile_frames_are_each_rejected_typed_and_counted():
    """10,000 hostile frames from a seeded RNG, 1,000 of each kind, through one receiver:
    each is rejected with a typed error of its kind and counted, and nothing else is."""
    h = Harness()
    rng = random.Random(20261205)
    seen: Counter[str] = Counter()
    for i in range(10_000):
        kind = KINDS[i % len(KINDS)]
        frame, peer, expected = hostile(h, kind, rng)
        assert isinstance(h.reject(frame, peer), expected), kind
        seen[kind] += 1
    assert seen == dict.fromkeys(KINDS, 1_000)
    assert sum(h.rx.rejected.values()) == 10_000
    assert h.rx.rejected["WireError"] == 0  # the catch-all never fired
