"""Messages: header encode/decode symmetry, the CBOR header profile, framing helpers."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import inspect
import math
import typing
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.errors import FrameTooLarge, LocalProtocolError, SchemaError
from fednode.wire import _fast, schema
from fednode.wire import messages as m

DIGEST = bytes(range(32))
NONCE = bytes(16)


def scalar(hint: Any) -> st.SearchStrategy[Any]:
    return {
        bool: st.booleans(),
        int: st.integers(schema.INT_MIN, schema.INT_MAX),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(max_size=40),
        bytes: st.binary(max_size=40),
        Any: st.booleans()
        | st.integers(schema.INT_MIN, schema.INT_MAX)
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
        round=draw(st.integers(0, schema.INT_MAX)),
        model_version=draw(st.integers(0, schema.INT_MAX)),
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
    assert not schema.supported(hint)


def test_every_declared_body_field_is_supported():
    for cls in m.MESSAGE_TYPES.values():
        for name, hint in cls.body_fields().items():
            assert schema.supported(hint), f"{cls.__name__}.{name}"


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
        schema.scan_header(raw)


def test_header_profile_accepts_what_the_encoder_writes():
    msg = m.Assign(nonce=NONCE, children=tuple(f"p{i}" for i in range(100)))
    schema.scan_header(m.encode_header(msg, 0, DIGEST))
    schema.scan_header(cbor2.dumps([None, True, False, 1.5, math.pi, {"a": [b"x", "y"]}]))


def test_header_profile_refuses_too_many_items_before_walking_them():
    # one array declaring 65,535 items; the bytes after its head would each be refused
    # ("indefinite"), so the item cap is what the scan saw: it decided from the count
    flat = b"\x99\xff\xff" + b"\xff" * 65_535
    with pytest.raises(SchemaError, match="more than 8192 items"):
        schema.scan_header(flat)
    nested = b"\x82" + b"\x99\x10\x00" + b"\x00" * 4096 + b"\x99\x10\x00" + b"\xff" * 4096
    with pytest.raises(SchemaError, match="more than 8192 items"):  # the counts add up
        schema.scan_header(nested)
    schema.scan_header(b"\x99\x1f\xfe" + b"\x00" * 8190)  # 8,191 items: within the cap


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


# --------------------------------------------- header bytes: the hand encoder is cbor2's


GOLDEN = [  # sha256 of headers written by the previous encoder (cbor2.dumps, canonical)
    (
        m.Update(
            sender="12D3KooWsender",
            recipient="12D3KooWrecipient",
            round=7,
            model_version=6,
            timestamp=1_800_000_000.25,
            nonce=bytes(range(16)),
            codec="topk:0.01+int8",
            num_examples=180,
            metrics={"loss": 0.52, "accuracy": 1.0, "n": -3, "ok": True, "tag": "é"},
        ),
        2608,
        "6d6fab375726ac30c768b0e21c14c21b77488396cb7dab0bd3a46bc84940ff98",
    ),
    (
        m.Advert(
            sender="s" * 52,
            recipient="r" * 52,
            timestamp=1_800_000_000.0,
            nonce=bytes(16),
            role="aggregator",
            load=-70000,
            children=tuple(f"peer-{i}" for i in range(300)),
        ),
        0,
        # since Advert gained ``addrs`` (an empty list in the body); still cbor2's bytes
        "7cdb8fc82b4870780a11dc518332317ca33b6187fd98741f809bc4c64b52aafb",
    ),
    (
        m.Gossip(
            nonce=bytes(16),
            timestamp=-1.5e-300,
            weight=65504.0,
            mode="push",
            link=2**40,
            seq=2**63 - 1,
            ack=255,
            degree=24,
        ),
        2608,
        "d7275e987f78996cd6de9452920dbff5d0ad0a3dbce766ca208f9ab0a0ae4015",
    ),
]


@pytest.mark.parametrize(("msg", "payload_len", "sha256"), GOLDEN)
def test_header_bytes_are_those_of_the_previous_encoder(
    msg: m.Message, payload_len: int, sha256: str
):
    raw = m.encode_header(msg, payload_len, bytes(range(32)))
    assert hashlib.sha256(raw).hexdigest() == sha256


def reference_header(msg: m.Message, payload_len: int) -> bytes:
    """cbor2's canonical encoding of the fields as the schema normalises them."""
    fields = {
        "v": m.SCHEMA_VERSION,
        "k": int(msg.KIND),
        "s": msg.sender,
        "r": msg.recipient,
        "rd": msg.round,
        "mv": msg.model_version,
        "t": float(msg.timestamp),
        "n": msg.nonce,
        "c": msg.codec,
        "pl": payload_len,
        "pd": DIGEST,
        "b": m.decode_header(m.encode_header(msg, payload_len, DIGEST)).body,
    }
    return cbor2.dumps(fields, canonical=True)


wide_floats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 65504.0, 65520.0, 5.96e-8, 6.1e-5, 3.4028235e38, 3.4028236e38, 1e-45, 2.5]
)
wide_ints = st.integers(schema.INT_MIN, schema.INT_MAX) | st.sampled_from(
    [23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, -24, -25, -256, -257, schema.INT_MIN]
)
wide_text = st.text(max_size=schema.MAX_STR_LEN) | st.sampled_from(["a" * 23, "b" * 24, "é" * 200])


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    timestamp=wide_floats,
    payload_len=st.integers(0, schema.INT_MAX),
    children=st.lists(st.text(max_size=8), max_size=300).map(tuple),
)
def test_header_is_cbor2_canonical_of_the_normalised_fields(
    data: st.DataObject, timestamp: float, payload_len: int, children: tuple[str, ...]
):
    msg = data.draw(messages())
    body: dict[str, Any] = {}
    for name, hint in msg.body_fields().items():  # wider values than messages() draws
        if hint is float:
            body[name] = data.draw(wide_floats)
        elif hint is int:
            body[name] = data.draw(wide_ints)
        elif hint is str:
            body[name] = data.draw(wide_text)
        elif typing.get_origin(hint) is tuple:
            body[name] = children
        elif typing.get_origin(hint) is dict:
            any_value = st.booleans() | wide_ints | wide_floats | wide_text
            body[name] = data.draw(st.dictionaries(wide_text, any_value, max_size=64))
    msg = dataclasses.replace(msg, timestamp=timestamp, **body)
    payload_len = payload_len if msg.has_tensor else 0
    assert m.encode_header(msg, payload_len, DIGEST) == reference_header(msg, payload_len)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_fast_header_writer_covers_every_supported_annotation(data: st.DataObject):
    hints: dict[str, Any] = {
        "f": float,
        "fo": float | None,
        "ft": tuple[float, ...],
        "d": dict[str, Any],
        "st": tuple[str, ...],
        "io": int | None,
        "by": bytes,
    }
    body = {name: schema.checker(hint)(data.draw(valid(hint))) for name, hint in hints.items()}
    fields = {"v": 1, "t": data.draw(wide_floats), "b": body}
    write = _fast.header_writer(["v", "t", "b"], hints)
    assert write(fields) == cbor2.dumps(fields, canonical=True)


class Small(enum.IntEnum):
    ONE = 1


class Name(str):
    pass


@pytest.mark.parametrize(
    "msg",
    [
        m.Update(nonce=NONCE, num_examples=Small.ONE),
        m.Update(nonce=NONCE, sender=Name("subclassed"), metrics={"k": Small.ONE}),
        m.Update(nonce=NONCE, timestamp=1_800_000_000),  # an int timestamp becomes a float
        m.Gossip(nonce=NONCE, weight=3),  # so does an int for a float field
    ],
)
def test_values_not_of_exactly_a_builtin_type_encode_as_cbor2_does(msg: m.Message):
    assert m.encode_header(msg, 0, DIGEST) == reference_header(msg, 0)


def test_a_string_cbor2_cannot_encode_fails_as_before():
    msg = m.Update(nonce=NONCE, sender="\ud800")  # a lone surrogate: not UTF-8
    with pytest.raises(Exception) as caught:
        m.encode_header(msg, 0, DIGEST)
    with pytest.raises(type(caught.value)):
        cbor2.dumps("\ud800", canonical=True)


# ----------------------------------------------------- header scan against cbor2


def valid_headers() -> st.SearchStrategy[bytes]:
    return messages().map(lambda msg: m.encode_header(msg, 0 if not msg.has_tensor else 9, DIGEST))


def spoiled(raw: bytes, data: st.DataObject) -> bytes:
    """``raw`` with a few bytes changed, cut or added (near-valid CBOR)."""
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if how == "flip" and out:
            out[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del out[at:]
        else:
            out[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    return bytes(out)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for kv in value.items() for v in kv), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


@settings(max_examples=1500, deadline=None)
@given(data=st.data())
def test_what_the_scan_passes_is_one_plain_cbor_item(data: st.DataObject):
    raw = data.draw(st.binary(max_size=64) | valid_headers().map(lambda h: spoiled(h, data)))
    try:
        schema.scan_header(raw)
    except SchemaError:
        return
    try:  # a value cbor2 refuses for its own reasons (bad UTF-8, unhashable key) is fine
        value = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        return
    assert depth(value) <= schema.MAX_HEADER_DEPTH
    # cbor2 decodes an array used as a map key as a tuple: still a plain CBOR array
    plain = (bool, int, float, str, bytes, list, tuple, dict, type(None))
    stack = [value]
    while stack:  # no tag objects, no undefined: only what the profile allows
        item = stack.pop()
        assert isinstance(item, plain), type(item)
        stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else [])
        stack.extend(item if isinstance(item, list | tuple) else [])


@settings(max_examples=300, deadline=None)
@given(raw=valid_headers())
def test_the_scan_passes_every_header_a_node_writes(raw: bytes):
    schema.scan_header(raw)


def test_long_headers_are_scanned_like_short_ones():
    raw = cbor2.dumps(["x" * 100] * 90 + [b"y" * 70_000])  # 4- and 2-byte lengths
    assert len(raw) > schema.MAX_HEADER_ITEMS
    schema.scan_header(raw)
    with pytest.raises(SchemaError, match="string of 70000 bytes, only 69999 left"):
        schema.scan_header(raw[:-1])


# ----------------------------------- message classes: the generated __init__ (_fast)


ALL_CLASSES = [m.Message, *m.MESSAGE_TYPES.values()]


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_generated_init_gives_every_default(cls: type[m.Message]):
    msg = cls()
    for f in dataclasses.fields(cls):
        expected = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        assert getattr(msg, f.name) == expected
    assert msg == cls() and hash(msg.nonce) == hash(b"")


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_generated_init_keeps_the_dataclass_signature(cls: type[m.Message]):
    params = inspect.signature(cls).parameters
    assert list(params) == [f.name for f in dataclasses.fields(cls)]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    with pytest.raises(TypeError):
        cls("positional")  # type: ignore[misc]
    with pytest.raises(TypeError):
        cls(no_such_field=1)  # type: ignore[call-arg]


def test_generated_init_sets_the_fields_given_and_stays_frozen():
    vec = np.zeros(3, np.float32)
    msg = m.Update(sender="a", round=4, num_examples=9, metrics={"loss": 0.5}, vector=vec)
    assert (msg.sender, msg.round, msg.num_examples, msg.metrics) == ("a", 4, 9, {"loss": 0.5})
    assert msg.vector is vec and msg.recipient == "" and msg.codec == "none"
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.round = 5  # type: ignore[misc]
    # no new attributes either (CPython 3.11's frozen-slots __setattr__ raises TypeError
    # for a name that is not a field, as it did with the dataclass __init__)
    with pytest.raises((AttributeError, TypeError)):
        msg.extra = 1  # type: ignore[attr-defined]


def test_default_factory_gives_each_message_its_own_dict():
    a, b = m.Fit(), m.Fit()
    assert a.config == {} and a.config is not b.config
    a.config["lr"] = 0.1
    assert b.config == {} and m.Update().metrics is not m.Update().metrics
    given_ = {"x": 1}
    assert m.Fit(config=given_).config is given_  # a value given is kept, not copied


def test_generated_init_equality_repr_and_replace_are_the_dataclass_ones():
    a = m.Gossip(sender="s", weight=0.5, vector=np.ones(2, np.float32))
    b = m.Gossip(sender="s", weight=0.5)
    assert a == b  # vector is compare=False
    assert a != m.Gossip(sender="s", weight=0.25)
    assert repr(b).startswith("Gossip(sender='s', ") and "vector" not in repr(b)
    c = dataclasses.replace(b, recipient="r")
    assert (c.sender, c.recipient, c.weight) == ("s", "r", 0.5) and type(c) is m.Gossip


def test_build_message_fills_every_field_from_the_header():
    msg = GOLDEN[0][0]
    header = m.decode_header(m.encode_header(msg, 2608, DIGEST))
    vec = np.ones(2, np.float32)
    built = m.build_message(header, b"payload", vec)
    assert built == dataclasses.replace(msg, payload=b"payload") and built.vector is vec
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.sender = "x"  # type: ignore[misc]


def test_the_generated_copier_equals_dataclasses_replace():
    import dataclasses

    from fednode.wire._fast import copier

    msg = m.Gossip(round=3, vector=np.arange(4, dtype=np.float32), codec="none")
    copy = copier(m.Gossip, ("sender", "recipient", "timestamp"))
    got = copy(msg, "a", "b", 7.5)
    want = dataclasses.replace(msg, sender="a", recipient="b", timestamp=7.5)
    assert type(got) is m.Gossip and got.sender == "a" and got.timestamp == 7.5
    for f in dataclasses.fields(m.Gossip):
        assert getattr(got, f.name) is getattr(want, f.name) or getattr(got, f.name) == getattr(
            want, f.name
        ), f.name
    with pytest.raises(TypeError, match="no field"):
        copier(m.Gossip, ("nonsense",))
