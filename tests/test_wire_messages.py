"""Messages: header encode/decode symmetry, the CBOR header profile, framing helpers."""

from __future__ import annotations

import math
import time
import typing
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.errors import FrameTooLarge, LocalProtocolError, SchemaError
from fednode.wire import messages as m

DIGEST = bytes(range(32))
NONCE = bytes(16)


def scalar(hint: Any) -> st.SearchStrategy[Any]:
    return {
        bool: st.booleans(),
        int: st.integers(m.INT_MIN, m.INT_MAX),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(max_size=40),
        bytes: st.binary(max_size=40),
        Any: st.booleans()
        | st.integers(m.INT_MIN, m.INT_MAX)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
    }[hint]


def valid(hint: Any) -> st.SearchStrategy[Any]:
    """Values of a supported body annotation (what a node may send)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return st.lists(scalar(args[0]), max_size=5).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=10), scalar(args[1]), max_size=5)
    if origin is not None:  # X | None
        inner = next(a for a in args if a is not type(None))
        return st.none() | valid(inner)
    return scalar(hint)


@st.composite
def messages(draw: st.DrawFn) -> m.Message:
    cls = draw(st.sampled_from(list(m.MESSAGE_TYPES.values())))
    body = {name: draw(valid(hint)) for name, hint in cls.body_fields().items()}
    tensor = cls.KIND in m.TENSOR_KINDS
    return cls(
        sender=draw(st.text(max_size=m.MAX_ID_LEN)),
        recipient=draw(st.text(max_size=m.MAX_ID_LEN)),
        round=draw(st.integers(0, m.INT_MAX)),
        model_version=draw(st.integers(0, m.INT_MAX)),
        timestamp=draw(st.floats(allow_nan=False, allow_infinity=False)),
        nonce=draw(st.binary(min_size=16, max_size=16)),
        codec=draw(st.sampled_from(["none", "fp16", "topk:0.01+int8"])) if tensor else "none",
        **body,
    )


@settings(max_examples=500, deadline=None)
@given(msg=messages(), payload_len=st.integers(0, 2**40))
def test_every_valid_message_round_trips(msg: m.Message, payload_len: int):
    payload_len = payload_len if msg.has_tensor else 0
    raw = m.encode_header(msg, payload_len, DIGEST)
    header = m.decode_header(raw)
    rebuilt = m.build_message(header, b"")
    assert type(rebuilt) is type(msg)
    assert rebuilt.body() == msg.body()
    assert (header.payload_len, header.payload_digest) == (payload_len, DIGEST)
    for name in ("sender", "recipient", "round", "model_version", "timestamp", "nonce", "codec"):
        assert getattr(rebuilt, name) == getattr(msg, name)
    assert m.encode_header(rebuilt, payload_len, DIGEST) == raw  # canonical: one encoding


def test_header_of_a_typical_update_is_small():
    msg = m.Update(sender="x" * 52, recipient="y" * 52, nonce=NONCE, metrics={"loss": 0.1})
    assert len(m.encode_header(msg, 20_000_000, DIGEST)) < 300


@pytest.mark.parametrize(
    "hint",
    [list[int], dict[int, str], tuple[str, int], float | str, set[str], dict[str, list[int]]],
)
def test_unsupported_body_annotations_are_refused(hint: Any):
    assert not m.supported(hint)


def test_every_declared_body_field_is_supported():
    for cls in m.MESSAGE_TYPES.values():
        for name, hint in cls.body_fields().items():
            assert m.supported(hint), f"{cls.__name__}.{name}"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\xc0\x00", "tag 0"),
        (b"\xd9\xd9\xf7\xa0", "tag 55799"),  # self-described CBOR
        (b"\xf7", "simple value 23"),
        (b"\xf8\xff", "simple value 255"),
        (b"\xff", "additional info 31|indefinite"),
        (b"\x1c", "additional info 28"),
        (b"\x9f\xff", "indefinite"),
        (b"\x81\x19\x01", "truncated"),
        (b"\x83\x01\x02", "container of 3 items, only 2 bytes left"),
        (b"\x5a\xff\xff\xff\xff", "string of 4294967295 bytes"),
        (b"\xba\x00\x01\x00\x00" + b"\x00" * 10, "container of 131072 items"),
        (b"\x81\x81\x81\x81\x00", "nested deeper than 3"),
        (b"\x80\x80", "1 bytes after"),
    ],
)
def test_header_profile_rejections(raw: bytes, match: str):
    with pytest.raises(SchemaError, match=match):
        m.scan_header(raw)


def test_header_profile_accepts_what_the_encoder_writes():
    msg = m.Assign(nonce=NONCE, children=tuple(f"p{i}" for i in range(100)))
    m.scan_header(m.encode_header(msg, 0, DIGEST))
    m.scan_header(cbor2.dumps([None, True, False, 1.5, math.pi, {"a": [b"x", "y"]}]))


def test_header_profile_caps_items_and_time_on_worst_case_input():
    flat = b"\x99\xff\xff" + b"\x00" * 65_535  # one array of 65,535 one-byte items
    t0 = time.perf_counter()
    with pytest.raises(SchemaError, match="more than 8192 items"):
        m.scan_header(flat)
    assert time.perf_counter() - t0 < 0.1


@given(st.binary(max_size=2048))
@settings(max_examples=500, deadline=None)
def test_decode_header_raises_only_schema_errors(raw: bytes):
    with pytest.raises(SchemaError):
        m.decode_header(raw)


@pytest.mark.parametrize(
    ("msg", "payload_len", "match"),
    [
        (m.Update(nonce=b"short"), 0, "nonce"),
        (m.Update(nonce=NONCE, timestamp=math.nan), 0, "timestamp"),
        (m.Update(nonce=NONCE, model_version=-2), 0, "model_version"),
        (m.Update(nonce=NONCE), -1, "payload_len"),
        (m.Bye(nonce=NONCE, codec="fp16"), 0, "carries no payload"),
        (m.Update(nonce=NONCE, sender="s" * 129), 0, "sender"),
        (m.Gossip(nonce=NONCE, reply=1), 0, "Gossip.reply"),  # type: ignore[arg-type]
        (m.Fit(nonce=NONCE, config={"lr": math.inf}), 0, "Fit.config"),
    ],
)
def test_encode_refuses_what_decode_would_refuse(msg: m.Message, payload_len: int, match: str):
    with pytest.raises(LocalProtocolError, match=match):
        m.encode_header(msg, payload_len, DIGEST)


def test_head_length_and_split_head_check_the_prefix():
    head = m.frame_head(b"\xa0", bytes(64))
    assert m.head_length(head[: m.PREFIX.size], max_header=10) == len(head)
    with pytest.raises(SchemaError, match="shorter"):
        m.head_length(head[:3], max_header=10)
    with pytest.raises(FrameTooLarge):
        m.head_length(head, max_header=0)
    with pytest.raises(SchemaError, match="flags"):
        m.split_head(head[:3] + b"\x01" + head[4:], max_header=10)
    header, signature = m.split_head(head, max_header=10)
    assert bytes(header) == b"\xa0" and bytes(signature) == bytes(64)
