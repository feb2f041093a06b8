"""Signed envelopes: each verification step, their order, the replay window, no side effects.

The fixed order (``fednode/crypto/envelope.py``): size -> schema -> membership ->
signature -> replay -> recipient -> payload digest -> shape -> finite. A rejected message
changes no state; only a fully verified message's nonce is remembered.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.crypto.envelope import (
    DOMAIN,
    Membership,
    Receiver,
    ReplayWindow,
    Sealer,
    byte_view,
    digest,
)
from fednode.crypto.identity import Identity
from fednode.errors import (
    AuthError,
    FednodeError,
    FrameTooLarge,
    LocalProtocolError,
    PayloadError,
    ReplayError,
    SchemaError,
    WireError,
)
from fednode.wire import messages as m
from fednode.wire.codecs import RawCodec, parse_codec
from fednode.wire.frames import Frame, Inbound

N = 64  # model size (float32 values)
T0 = 1_800_000_000.0


def ident(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(name.encode()).digest())


ALICE, BOB, CAROL, MALLORY = (ident(n) for n in ("alice", "bob", "carol", "mallory"))
MEMBERS = frozenset({ALICE.peer_id, BOB.peer_id, CAROL.peer_id})


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def counter_nonces() -> Any:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def vector(seed: int = 0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rx(clock: Clock) -> Receiver:
    return Receiver(BOB.peer_id, Membership(MEMBERS), model_size=N, clock=clock)


def sealer(identity: Identity, clock: Clock) -> Sealer:
    return Sealer(identity, clock=clock, nonce=counter_nonces())


def update(seed: int = 0, **kw: Any) -> m.Update:
    fields: dict[str, Any] = {"recipient": BOB.peer_id, "round": 1, "num_examples": 10}
    fields.update(kw)
    if "payload" not in fields:
        fields["payload"] = RawCodec().encode(vector(seed))
    return m.Update(**fields)


def header_fields(
    sender: Identity = ALICE, payload: bytes = b"", kind: m.Kind = m.Kind.UPDATE, **over: Any
) -> dict[str, Any]:
    """A valid CBOR header map (before signing) that tests then spoil one field of."""
    cls = m.MESSAGE_TYPES[kind]
    body = {k: list(v) if isinstance(v, tuple) else v for k, v in cls().body().items()}
    fields: dict[str, Any] = {
        "v": 1,
        "k": int(kind),
        "s": sender.peer_id,
        "r": BOB.peer_id,
        "rd": 1,
        "mv": 0,
        "t": T0,
        "n": bytes(16),
        "c": "none",
        "pl": len(payload),
        "pd": digest(payload),
        "b": body,
    }
    fields.update(over)
    return fields


def forge(
    fields: Any,
    payload: bytes = b"",
    signer: Identity = ALICE,
    *,
    raw: bytes | None = None,
    prefix: tuple[bytes, int, int] = (m.MAGIC, 1, 0),
) -> Frame:
    """A frame with any header (object or raw bytes), signed by ``signer``."""
    header = raw if raw is not None else cbor2.dumps(fields)
    sig = signer.sign(DOMAIN + header)
    return Frame(m.PREFIX.pack(*prefix, len(header)) + header + sig, payload)


def state(rx: Receiver) -> tuple[Any, ...]:
    w = rx.replay
    return (rx.accepted, len(w), w.floor_all, dict(w._floors), tuple(sorted(w._seen)))


def rejects(
    rx: Receiver, frame: Frame, error: type[FednodeError], peer: str = "", match: str | None = None
):
    """Assert ``frame`` is rejected with exactly ``error``, counted, and nothing changed."""
    before, counted = state(rx), rx.rejected[error.__name__]
    with pytest.raises(FednodeError, match=match) as info:
        rx.open(Inbound(peer or ALICE.peer_id, frame))
    assert type(info.value) is error, info.value
    assert rx.rejected[error.__name__] == counted + 1
    assert state(rx) == before
    return info.value


# ------------------------------------------------------------------------ happy path


def test_valid_update_is_accepted_with_a_readonly_vector(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(update(3))
    msg = rx.open(Inbound(ALICE.peer_id, frame))
    assert isinstance(msg, m.Update)
    assert (msg.sender, msg.recipient, msg.num_examples) == (ALICE.peer_id, BOB.peer_id, 10)
    np.testing.assert_array_equal(msg.vector, vector(3))
    assert msg.vector is not None and not msg.vector.flags.writeable
    assert rx.accepted == 1 and not rx.rejected and len(rx.replay) == 1


def test_every_kind_round_trips_with_default_body(rx: Receiver, clock: Clock):
    s = sealer(ALICE, clock)
    for kind, cls in m.MESSAGE_TYPES.items():
        payload = RawCodec().encode(vector()) if kind in m.TENSOR_KINDS else b""
        msg = rx.open(Inbound(ALICE.peer_id, s.seal(cls(recipient=BOB.peer_id, payload=payload))))
        assert type(msg) is cls and msg.body() == cls().body()


def test_sealer_encodes_the_vector_with_the_codec(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(m.Update(recipient=BOB.peer_id, vector=vector(1)))
    msg = rx.open(Inbound(ALICE.peer_id, frame))
    np.testing.assert_array_equal(msg.vector, vector(1))


def test_payload_given_as_a_float32_view_is_counted_in_bytes(rx: Receiver, clock: Clock):
    encoded = RawCodec().encode(vector(2))  # 8 + 4n bytes: a multiple of 4
    as_floats = memoryview(np.frombuffer(encoded, dtype=np.float32))
    frame = sealer(ALICE, clock).seal(update(payload=as_floats))
    assert frame.nbytes == len(frame.head) + len(encoded)
    np.testing.assert_array_equal(rx.open(Inbound(ALICE.peer_id, frame)).vector, vector(2))


def test_byte_view_does_not_copy():
    arr = np.arange(4, dtype=np.float32)
    view = byte_view(memoryview(arr))
    assert len(view) == 16 and np.shares_memory(np.frombuffer(view, np.uint8), arr)


@pytest.mark.parametrize(
    "msg",
    [
        m.Update(metrics={"loss": math.nan}),
        m.Gossip(weight=math.inf),
        m.Update(round=-1),
        m.Advert(payload=b"x"),
        m.Assign(children=("a" * 300,)),
        m.Update(metrics={"nested": [1]}),  # type: ignore[dict-item]
    ],
    ids=["nan-metric", "inf-weight", "negative-round", "advert-payload", "long-id", "nested"],
)
def test_sealer_refuses_what_a_receiver_would_reject(msg: m.Message, clock: Clock):
    with pytest.raises(LocalProtocolError):
        sealer(ALICE, clock).seal(msg)


# --------------------------------------------------------------------- step by step


def test_step1_frame_over_the_limit(clock: Clock):
    rx = Receiver(BOB.peer_id, Membership(MEMBERS), model_size=N, clock=clock, max_frame_bytes=1024)
    frame = sealer(ALICE, clock).seal(update())  # 8 + 256 B payload + head: fits
    assert rx.open(Inbound(ALICE.peer_id, frame))
    big = sealer(ALICE, clock).seal(update(payload=RawCodec().encode(vector(n=300))))
    rejects(rx, big, FrameTooLarge, match="exceeds the limit")


def test_step1_header_over_the_limit_is_refused_before_parsing(clock: Clock):
    rx = Receiver(BOB.peer_id, Membership(MEMBERS), clock=clock, max_header_bytes=100)
    head = m.PREFIX.pack(m.MAGIC, 1, 0, 101) + b"\xff" * 101 + bytes(64)  # not even CBOR
    rejects(rx, Frame(head), FrameTooLarge, match="header of 101 bytes")


BAD_HEADERS: dict[str, Any] = {
    "tag": cbor2.CBORTag(1, 0),
    "undefined": cbor2.undefined,
    "simple": cbor2.CBORSimpleValue(99),
    "list": [1, 2],
    "missing-key": {k: v for k, v in header_fields().items() if k != "t"},
    "extra-key": {**header_fields(), "x": 1},
    "bool-round": header_fields(rd=True),
    "float-round": header_fields(rd=1.0),
    "negative-round": header_fields(rd=-1),
    "huge-round": header_fields(rd=2**64 - 1),
    "nan-time": header_fields(t=math.nan),
    "inf-time": header_fields(t=-math.inf),
    "str-time": header_fields(t="now"),
    "short-nonce": header_fields(n=b"123"),
    "short-digest": header_fields(pd=b"123"),
    "schema-2": header_fields(v=2),
    "unknown-kind": header_fields(k=99),
    "long-sender": header_fields(s="x" * 129),
    "advert-with-payload": header_fields(kind=m.Kind.ADVERT, pl=4),
    "body-not-map": header_fields(b=[]),
    "body-missing-field": header_fields(b={"num_examples": 1}),
    "body-extra-field": header_fields(b={"num_examples": 1, "metrics": {}, "x": 1}),
    "body-wrong-type": header_fields(b={"num_examples": "1", "metrics": {}}),
    "metric-nan": header_fields(b={"num_examples": 1, "metrics": {"loss": math.nan}}),
    "metric-nested": header_fields(b={"num_examples": 1, "metrics": {"a": {"b": 1}}}),
    "metric-bigint": header_fields(b={"num_examples": 1, "metrics": {"a": 2**70}}),
    "metric-u64": header_fields(b={"num_examples": 1, "metrics": {"a": 2**64 - 1}}),
    "metric-tag": header_fields(b={"num_examples": 1, "metrics": {"a": cbor2.CBORTag(2, b"")}}),
    "bytes-key": {**header_fields(), b"v": 1},
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_step2_schema_violations_signed_by_a_member(rx: Receiver, name: str):
    rejects(rx, forge(BAD_HEADERS[name]), SchemaError)


BAD_RAW = {
    "trailing-bytes": cbor2.dumps(header_fields()) + b"\x00",
    "truncated": cbor2.dumps(header_fields())[:-3],
    "indefinite-map": b"\xbf" + cbor2.dumps(header_fields())[1:] + b"\xff",
    "deep-nesting": b"\x81" * 10_000 + b"\x00",
    "huge-declared-string": b"\x5b" + (2**63).to_bytes(8, "big"),
    "huge-declared-map": b"\xbb" + (2**63).to_bytes(8, "big"),
    "shared-reference-cycle": b"\xd8\x1c\x81\xd8\x1d\x00",
    "regex-tag": b"\xd8\x23\x63a*b",
    "invalid-utf8": b"\xa1\x62\xff\xfe\x00",
    "duplicate-keys": b"\xa2\x61v\x01\x61v\x01",
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(BAD_RAW))
def test_step2_hostile_cbor(rx: Receiver, name: str):
    rejects(rx, forge(None, raw=BAD_RAW[name]), SchemaError)


@pytest.mark.parametrize(
    ("prefix", "match"),
    [((b"XX", 1, 0), "magic"), ((m.MAGIC, 2, 0), "version"), ((m.MAGIC, 1, 1), "flags")],
)
def test_step2_bad_prefix(rx: Receiver, prefix, match):
    rejects(rx, forge(header_fields(), prefix=prefix), SchemaError, match=match)


def test_step2_head_length_disagrees_with_prefix(rx: Receiver):
    frame = forge(header_fields())
    rejects(rx, Frame(frame.head + b"x"), SchemaError, match="implies")
    rejects(rx, Frame(frame.head[:20]), SchemaError, match="implies")
    rejects(rx, Frame(frame.head[:5]), SchemaError, match="shorter")


def test_step3_non_member_is_refused(rx: Receiver, clock: Clock):
    frame = sealer(MALLORY, clock).seal(update())
    rejects(rx, frame, AuthError, MALLORY.peer_id, match="not a member")


def test_step3_sender_must_be_the_transport_peer(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(update())
    rejects(rx, frame, AuthError, CAROL.peer_id, match="connection is from")


def test_step3_open_membership_admits_anyone_with_a_valid_signature(clock: Clock):
    rx = Receiver(BOB.peer_id, Membership(open=True), model_size=N, clock=clock)
    assert rx.open(Inbound(MALLORY.peer_id, sealer(MALLORY, clock).seal(update())))
    rejects(rx, forge(header_fields(MALLORY), signer=CAROL), AuthError, MALLORY.peer_id)


def test_step4_signature_by_another_member_is_refused(rx: Receiver):
    payload = RawCodec().encode(vector())
    frame = forge(header_fields(payload=payload), payload, signer=CAROL)
    rejects(rx, frame, AuthError, match="signature")


def test_step4_flipped_signature_bit(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(update())
    head = bytearray(frame.head)
    head[-1] ^= 0x01
    rejects(rx, Frame(bytes(head), frame.payload), AuthError, match="signature")


def test_step5_replay_is_refused(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(update())
    rx.open(Inbound(ALICE.peer_id, frame))
    rejects(rx, frame, ReplayError, match="already seen")


@pytest.mark.parametrize("offset", [-301.0, 301.0, -1e9])
def test_step5_timestamp_outside_the_skew_window(rx: Receiver, clock: Clock, offset: float):
    frame = Sealer(ALICE, clock=lambda: T0 + offset).seal(update())
    rejects(rx, frame, ReplayError, match="allowed skew")


def test_step6_wrong_recipient(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(update(recipient=CAROL.peer_id))
    rejects(rx, frame, AuthError, match="addressed to")


def test_step7_payload_length_and_digest(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(update())
    rejects(rx, Frame(frame.head, bytes(frame.payload)[:-1]), PayloadError, match="announced")
    tampered = bytearray(frame.payload)
    tampered[-1] ^= 0x80
    rejects(rx, Frame(frame.head, bytes(tampered)), PayloadError, match="digest")


@pytest.mark.parametrize(
    ("codec", "n"), [("none", N + 1), ("none", N - 1), ("fp16", 2 * N), ("topk:0.1+int8", 1)]
)
def test_step8_payload_for_another_model_size(rx: Receiver, clock: Clock, codec: str, n: int):
    payload = parse_codec(codec).encode(vector(n=n))
    frame = sealer(ALICE, clock).seal(update(payload=payload, codec=codec))
    rejects(rx, frame, PayloadError, match=f"{n}")


def test_step8_unknown_codec_and_codec_mismatch(rx: Receiver, clock: Clock):
    p = RawCodec().encode(vector())
    rejects(rx, forge(header_fields(payload=p, c="gzip"), p), PayloadError, match="unknown codec")
    rejects(rx, forge(header_fields(payload=p, c=" none"), p), PayloadError, match="canonical")
    s = sealer(ALICE, clock)
    rejects(rx, s.seal(update(codec="fp16")), PayloadError, match="encoded as none")


def test_sealer_writes_the_canonical_codec_spec(rx: Receiver, clock: Clock):
    msg = rx.open(Inbound(ALICE.peer_id, sealer(ALICE, clock).seal(update(codec=" none "))))
    assert msg.codec == "none"


def test_step8_tensor_before_the_layout_is_known(clock: Clock):
    rx = Receiver(BOB.peer_id, Membership(MEMBERS), clock=clock)
    rejects(rx, sealer(ALICE, clock).seal(update()), PayloadError, match="layout")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_step9_non_finite_values_signed_by_a_member(rx: Receiver, clock: Clock, bad: float):
    vec = vector()
    vec[7] = bad
    payload = RawCodec().encode(vector())[:8] + vec.tobytes()  # encode() refuses NaN
    frame = sealer(ALICE, clock).seal(update(payload=payload))
    rejects(rx, frame, PayloadError, match="finite")


def test_step9_fp16_overflow_is_caught_after_decoding(rx: Receiver, clock: Clock):
    payload = parse_codec("fp16").encode(vector())[:8] + np.full(N, np.inf, "<f2").tobytes()
    rejects(rx, sealer(ALICE, clock).seal(update(payload=payload, codec="fp16")), PayloadError)


# ------------------------------------------------------------------------ the order


def test_order_non_member_with_bad_signature_reports_membership(rx: Receiver):
    frame = forge(header_fields(MALLORY), signer=CAROL)
    rejects(rx, frame, AuthError, MALLORY.peer_id, match="not a member")


def test_order_oversized_non_member_reports_size(clock: Clock):
    rx = Receiver(BOB.peer_id, Membership(MEMBERS), clock=clock, max_frame_bytes=1024)
    frame = forge(header_fields(MALLORY), b"x" * 2000, signer=MALLORY)
    rejects(rx, frame, FrameTooLarge, MALLORY.peer_id)


def test_order_schema_error_before_membership_and_signature(rx: Receiver):
    rejects(rx, forge(header_fields(MALLORY, rd=-1), signer=CAROL), SchemaError, MALLORY.peer_id)


def test_order_bad_signature_before_replay_window(rx: Receiver):
    rejects(rx, forge(header_fields(t=T0 - 10_000), signer=CAROL), AuthError, match="signature")


def test_order_replay_window_before_recipient(rx: Receiver):
    rejects(rx, forge(header_fields(t=T0 - 10_000, r="someone")), ReplayError)


def test_order_recipient_before_payload(rx: Receiver):
    frame = forge(header_fields(r=CAROL.peer_id, pl=3), b"")
    rejects(rx, frame, AuthError, match="addressed to")


def test_order_digest_before_shape(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(update(payload=RawCodec().encode(vector(n=N + 1))))
    rejects(rx, Frame(frame.head, bytes(len(frame.payload))), PayloadError, match="digest")


# -------------------------------------------------------------- no state corrupted


def test_payload_rejection_does_not_burn_the_nonce(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(update())
    rejects(rx, Frame(frame.head, bytes(len(frame.payload))), PayloadError)
    assert rx.open(Inbound(ALICE.peer_id, frame))  # the genuine frame still goes through


def test_unexpected_failures_become_wire_errors(rx: Receiver):
    inbound = Inbound(ALICE.peer_id, Frame(head=None))  # type: ignore[arg-type]
    with pytest.raises(WireError, match="unexpected TypeError") as info:
        rx.open(inbound)
    assert type(info.value) is WireError and rx.rejected["WireError"] == 1


def test_non_contiguous_payload_is_a_payload_error(rx: Receiver, clock: Clock):
    frame = sealer(ALICE, clock).seal(update())
    strided = memoryview(np.zeros(2 * len(frame.payload), np.uint8))[::2]
    rejects(rx, Frame(frame.head, strided), PayloadError)


# -------------------------------------------------------------------- replay window


def accept_many(rx: Receiver, clock: Clock, identity: Identity, count: int) -> list[Frame]:
    s = sealer(identity, clock)
    frames = []
    for _ in range(count):
        clock.t += 0.01
        frame = s.seal(m.Ack(recipient=BOB.peer_id))
        rx.open(Inbound(identity.peer_id, frame))
        frames.append(frame)
    return frames


def test_evicted_nonces_are_never_replayable(clock: Clock):
    rx = Receiver(BOB.peer_id, Membership(MEMBERS), clock=clock, nonce_capacity=4)
    frames = accept_many(rx, clock, ALICE, 20)
    assert len(rx.replay) == 4
    for frame in frames:
        rejects(rx, frame, ReplayError)


def test_expired_nonces_stay_refused_even_if_the_clock_steps_back(clock: Clock):
    rx = Receiver(BOB.peer_id, Membership(MEMBERS), clock=clock, max_clock_skew_s=10)
    frames = accept_many(rx, clock, ALICE, 3)
    clock.t += 20
    accept_many(rx, clock, CAROL, 1)  # remembering expires the old entries
    assert len(rx.replay) == 1
    clock.t -= 20  # wall clock stepped back: the old frames are inside the skew again
    for frame in frames:
        rejects(rx, frame, ReplayError, match="not after")


def test_a_flooding_member_only_raises_its_own_floor(clock: Clock):
    rx = Receiver(BOB.peer_id, Membership(MEMBERS), clock=clock, nonce_capacity=8)
    carol = sealer(CAROL, clock)
    early = carol.seal(m.Ack(recipient=BOB.peer_id))  # sealed now, delivered late
    accept_many(rx, clock, ALICE, 100)
    assert rx.replay.floor_all == -math.inf
    assert rx.open(Inbound(CAROL.peer_id, early))


def test_replay_memory_is_bounded_with_many_senders(clock: Clock):
    rx = Receiver(BOB.peer_id, Membership(open=True), clock=clock, nonce_capacity=16)
    for i in range(200):
        accept_many(rx, clock, ident(f"sybil{i}"), 1)
        assert len(rx.replay) <= 16 and len(rx.replay._floors) <= 16


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 3), st.floats(-20, 20), st.floats(0, 15)), min_size=1, max_size=60
    ),
    capacity=st.integers(1, 6),
)
def test_replay_window_invariant(ops: list[tuple[int, float, float]], capacity: int):
    """Whatever is evicted, a message accepted once is refused forever after."""
    window = ReplayWindow(max_clock_skew_s=10.0, capacity=capacity)
    now, accepted = 0.0, []
    for i, (sender, offset, advance) in enumerate(ops):
        now += advance
        entry = (f"p{sender}", i.to_bytes(16, "big"), now + offset)
        try:
            window.check(*entry, now)
        except ReplayError:
            continue
        window.remember(*entry, now)
        accepted.append(entry)
        assert len(window) <= capacity and len(window._floors) <= capacity
        for old in accepted:
            for when in (now, now - 15.0):  # also if the clock steps back
                with pytest.raises(ReplayError):
                    window.check(*old, when)
