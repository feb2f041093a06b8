"""The value rules of the wire header (pure): its CBOR profile and its field types.

Two layers, both applied before the signature is checked (``docs/PROTOCOL.md``, "Header
profile" and "Body value types"):

* :func:`scan_header` walks the raw CBOR once, building nothing, and refuses anything
  outside the header profile, so that only a header that passes reaches ``cbor2``;
* :func:`checker` / :func:`coerce` check a decoded value against a field annotation
  (bool, int64, finite float, bounded str / bytes, ``X | None``, ``tuple[X, ...]``,
  ``dict[str, X]``), and :func:`exact_checker` compiles a fast path for a whole map of
  fields that gives the same result when every value has exactly its built-in type.

On the sending side, :func:`canonical` writes a checked value as
``cbor2.dumps(value, canonical=True)`` would (``messages.encode_header``).

:mod:`fednode.wire.messages` applies them to messages; a value that does not fit raises
:class:`Mismatch`, which the caller turns into its own error (SchemaError when decoding,
LocalProtocolError when encoding).
"""

from __future__ import annotations

import math
import reprlib
import struct
import types
import typing
from collections.abc import Callable
from typing import Any

from ..errors import SchemaError

MAX_STR_LEN = 256
MAX_BODY_ITEMS = 64
MAX_TUPLE_ITEMS = 4096
MAX_HEADER_ITEMS = 8192  # CBOR data items in one header, map keys included
MAX_HEADER_DEPTH = 3  # nested containers: header map > body map > dict / list
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class Mismatch(Exception):
    """A value does not fit its annotation (internal; mapped to the caller's error)."""


_SCALARS: tuple[Any, ...] = (bool, int, float, str, bytes)
_ANY_SCALAR = (bool, int, float, str)  # what ``Any`` means for dict values
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4
_REPR.maxlevel = 2


def short(value: Any) -> str:
    """Bounded repr for error messages about untrusted values."""
    return _REPR.repr(value)


def names(keys: typing.Iterable[Any]) -> str:
    """Sorted, bounded listing of untrusted map keys."""
    listed = sorted(k if isinstance(k, str) else repr(k) for k in keys)
    more = f", ... {len(listed) - 8} more" if len(listed) > 8 else ""
    return "[" + ", ".join(short(n)[1:-1] if n else "''" for n in listed[:8]) + more + "]"


def describe(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _scalar(value: Any, hint: Any) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX:
            return value
    elif hint is float:
        if isinstance(value, float) or (
            isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX
        ):
            number = float(value)
            if math.isfinite(number):
                return number
    elif hint is str:
        if isinstance(value, str) and len(value) <= MAX_STR_LEN:
            return value
    elif hint is bytes:
        if isinstance(value, bytes) and len(value) <= MAX_STR_LEN:
            return value
    elif hint is Any:
        for option in _ANY_SCALAR:  # bool first: True is an int too
            if isinstance(value, option):
                return _scalar(value, option)
    raise Mismatch


def coerce(value: Any, hint: Any) -> Any:
    """``value`` checked against a supported annotation and normalised; else Mismatch.

    Supported: ``bool``, ``int`` (int64), ``float`` (finite; an int is accepted and
    converted), ``str`` / ``bytes`` (at most MAX_STR_LEN), ``X | None`` of those,
    ``tuple[X, ...]`` (a CBOR array of at most MAX_TUPLE_ITEMS scalars) and
    ``dict[str, X]`` (at most MAX_BODY_ITEMS entries; ``X = Any`` means bool, int,
    float or str).
    """
    return checker(hint)(value)


_Check = Callable[[Any], Any]
_CHECKERS: dict[Any, _Check] = {}


def checker(hint: Any) -> _Check:
    """The (cached) function checking values against ``hint``, as :func:`coerce` does.

    Compiled once per annotation, with fast paths for values of the exact built-in type
    (what cbor2 returns and what senders usually hold); anything else falls back to the
    general :func:`_scalar` rules, so the result is the same either way.
    """
    check = _CHECKERS.get(hint)
    if check is None:
        check = _CHECKERS[hint] = _compile(hint)
    return check


def _compile(hint: Any) -> _Check:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        (arg,) = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _compile(arg)

        def optional(value: Any) -> Any:
            return None if value is None else inner(value)

        return optional
    if origin is tuple:
        item = _compile(typing.get_args(hint)[0])

        def array(value: Any) -> Any:
            if isinstance(value, list | tuple) and len(value) <= MAX_TUPLE_ITEMS:
                return tuple([item(v) for v in value])
            raise Mismatch

        return array
    if origin is dict:
        key, val = _compile(str), _compile(typing.get_args(hint)[1])

        def mapping(value: Any) -> Any:
            if isinstance(value, dict) and len(value) <= MAX_BODY_ITEMS:
                return {key(k): val(v) for k, v in value.items()}
            raise Mismatch

        return mapping
    return _scalar_checker(hint)


def _scalar_checker(hint: Any) -> _Check:
    exact = (bool, int, float, str) if hint is Any else (hint,)

    def scalar(value: Any) -> Any:
        kind = type(value)  # fast path: exactly the built-in type, within its limits
        if kind in exact and (
            kind is bool
            or (kind is float and math.isfinite(value))
            or (kind is int and INT_MIN <= value <= INT_MAX)
            or ((kind is str or kind is bytes) and len(value) <= MAX_STR_LEN)
        ):
            return value
        return _scalar(value, hint)

    return scalar


def _exact_expr(v: str, hint: Any) -> str:
    """Python source testing that ``v`` has exactly the built-in type of ``hint`` and fits."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        (arg,) = [a for a in args if a is not type(None)]
        return f"({v} is None or {_exact_expr(v, arg)})"
    if origin is tuple:
        item = _exact_expr("i", args[0])
        limit = MAX_TUPLE_ITEMS
        return f"(type({v}) in (list, tuple) and len({v}) <= {limit} and all({item} for i in {v}))"
    if origin is dict:
        key, val = _exact_expr("k", str), _exact_expr("w", args[1])
        items = f"all({key} and {val} for k, w in {v}.items())"
        return f"(type({v}) is dict and len({v}) <= {MAX_BODY_ITEMS} and {items})"
    if hint is Any:
        return "(" + " or ".join(_exact_expr(v, t) for t in _ANY_SCALAR) + ")"
    if hint is bool:
        return f"({v} is True or {v} is False)"
    if hint is int:
        return f"(type({v}) is int and {INT_MIN} <= {v} <= {INT_MAX})"
    if hint is float:
        return f"(type({v}) is float and isfinite({v}))"
    return f"(type({v}) is {hint.__name__} and len({v}) <= {MAX_STR_LEN})"  # str, bytes


def exact_checker(fields_: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    """A fast path for checking a map of ``fields_`` (name -> supported annotation).

    The returned function gives the checked map (tuples for arrays, copied dicts) if
    every field has exactly its built-in type and fits its limits, else None, and then
    the per-field :func:`checker` rules decide (and name what is wrong). Generated once
    from the annotations: one expression, no call per field.
    """
    local = [f"x{i}" for i in range(len(fields_))]
    lines = ["def exact(b):"]
    lines += [f"    {v} = b[{name!r}]" for v, name in zip(local, fields_)]
    test = " and ".join(_exact_expr(v, hint) for v, hint in zip(local, fields_.values()))
    lines.append(f"    if not ({test or 'True'}):")
    lines.append("        return None")
    wrap = {tuple: "tuple", dict: "dict"}
    values = [
        f"{name!r}: {wrap.get(typing.get_origin(hint), '')}({v})"
        for v, (name, hint) in zip(local, fields_.items())
    ]
    lines.append("    return {" + ", ".join(values) + "}")
    namespace: dict[str, Any] = {"isfinite": math.isfinite}
    exec("\n".join(lines), namespace)  # the source comes from our own annotations only
    return typing.cast(Callable[[dict[str, Any]], dict[str, Any] | None], namespace["exact"])


def supported(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        return len(args) == 2 and len(rest) == 1 and supported(rest[0])
    if origin is tuple:
        return len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS
    if origin is dict:
        return len(args) == 2 and args[0] is str and (args[1] in _SCALARS or args[1] is Any)
    return hint in _SCALARS


# ------------------------------------------------------------- canonical CBOR encoding
#
# canonical CBOR (RFC 8949 4.2.1 / cbor2 canonical=True): shortest argument forms, map keys
# sorted by their encoded bytes (for text keys: by length, then bytewise)
_SMALL_HEADS = [tuple(bytes([major << 5 | n]) for n in range(24)) for major in range(8)]
_ARG1, _ARG2 = struct.Struct("!BB"), struct.Struct("!BH")
_ARG4, _ARG8 = struct.Struct("!BI"), struct.Struct("!BQ")
_F16, _F32, _F64 = struct.Struct("!Be"), struct.Struct("!Bf"), struct.Struct("!Bd")


def cbor_head(major: int, n: int) -> bytes:
    """Initial byte(s) of a CBOR item of ``major`` type with argument ``n``, shortest form."""
    if n < 24:
        return _SMALL_HEADS[major][n]
    if n < 0x100:
        return _ARG1.pack(major << 5 | 24, n)
    if n < 0x10000:
        return _ARG2.pack(major << 5 | 25, n)
    if n < 0x100000000:
        return _ARG4.pack(major << 5 | 26, n)
    return _ARG8.pack(major << 5 | 27, n)


def canonical(value: Any) -> bytes:
    """Canonical CBOR of a checked header value of exactly a built-in type: the bytes of
    ``cbor2.dumps(value, canonical=True)`` (tests compare them), in a fraction of the time
    for the small values of a header.

    Raises TypeError for anything else (the caller then lets cbor2 encode the header).
    """
    kind = type(value)
    if kind is str:
        raw = value.encode("utf-8")
        return cbor_head(3, len(raw)) + raw
    if kind is int:
        return cbor_head(0, value) if value >= 0 else cbor_head(1, -1 - value)
    if kind is bytes:
        return cbor_head(2, len(value)) + value
    if kind is float:
        return _float(value)
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if value is None:
        return b"\xf6"
    if kind is tuple or kind is list:
        return cbor_head(4, len(value)) + b"".join([canonical(item) for item in value])
    if kind is dict:
        pairs = sorted([(canonical(k), canonical(v)) for k, v in value.items()], key=_by_key)
        return cbor_head(5, len(pairs)) + b"".join([k + v for k, v in pairs])
    raise TypeError(f"not encoded by hand: {kind.__name__}")


def _float(value: float) -> bytes:
    """The shortest of half, single and double precision that holds ``value`` exactly
    (cbor2's canonical float; ``value`` is finite, checked before)."""
    try:
        single = _F32.pack(0xFA, value)
    except OverflowError:
        return _F64.pack(0xFB, value)
    if _F32.unpack(single)[1] != value:
        return _F64.pack(0xFB, value)
    try:
        half = _F16.pack(0xF9, value)
    except OverflowError:
        return single
    return half if _F16.unpack(half)[1] == value else single


def _by_key(pair: tuple[bytes, bytes]) -> tuple[int, bytes]:
    return len(pair[0]), pair[0]


# ------------------------------------------------------------------ CBOR header profile


def scan_header(raw: bytes) -> None:
    """Check that ``raw`` is exactly one CBOR item in the header profile, building nothing.

    Iterative and linear in ``len(raw)``; memory O(MAX_HEADER_DEPTH). Refuses:
    indefinite lengths, reserved additional-info values, tags (major type 6), simple
    values other than false / true / null (so no ``undefined``), more than
    MAX_HEADER_DEPTH nested containers or MAX_HEADER_ITEMS items, any declared length or
    count larger than the bytes left, and bytes after the item. Floats (half, single,
    double) pass here; their values are checked by the schema. Raises SchemaError.

    Fast path: :func:`_profile_ok`, a table-driven walk (~2x faster) that only answers
    "certainly in the profile"; when it does not, :func:`_scan_exact` walks again, decides
    and names the first violation. So a header a node writes is walked once.
    """
    if not _profile_ok(raw):
        _scan_exact(raw)


def _skip_table() -> tuple[int, ...]:
    """Per initial byte: bytes the item takes when that is fixed (> 0), else a code < 0.

    Fixed: integers (major 0/1, info < 28), strings with an inline length (info < 24),
    false / true / null and half / single / double floats. Codes: -1 string with a 1-byte
    length, -2 with a 2-byte length, -3 array or map with an inline count, -4 with a
    1-byte count, -5 with a 2-byte count; 0 anything else (rare, or outside the profile:
    left to :func:`_scan_exact`).
    """
    table = []
    for initial in range(256):
        major, info = initial >> 5, initial & 0x1F
        step = 0
        if major <= 1 and info < 28:
            step = 1 + (1 << (info - 24) if info >= 24 else 0)
        elif major in (2, 3):
            step = 1 + info if info < 24 else {24: -1, 25: -2}.get(info, 0)
        elif major in (4, 5):
            step = -3 if info < 24 else {24: -4, 25: -5}.get(info, 0)
        elif major == 7 and info in (20, 21, 22, 25, 26, 27):
            step = {25: 3, 26: 5, 27: 9}.get(info, 1)
        table.append(step)
    return tuple(table)


_SKIP = _skip_table()


def _profile_ok(raw: bytes) -> bool:
    """True only if ``raw`` passes :func:`_scan_exact` (a sound fast path; False: unsure).

    The same walk without error messages or item counting: a header of at most
    MAX_HEADER_ITEMS bytes cannot hold more items than that (each takes a byte), and
    longer ones are left to the exact scan. A declared length past the end moves ``pos``
    past ``end``, which the next item or the final ``pos == end`` turns into False.
    """
    end = len(raw)
    if end > MAX_HEADER_ITEMS:
        return False
    skip = _SKIP
    pos = 0
    outer: list[int] = []
    left = 1
    while True:
        if not left:
            if not outer:
                return pos == end
            left = outer.pop()
            continue
        left -= 1
        if pos >= end:
            return False
        initial = raw[pos]
        step = skip[initial]
        if step > 0:
            pos += step
        elif step == -1:
            if pos + 1 >= end:
                return False
            pos += 2 + raw[pos + 1]
        elif step == -2:
            if pos + 2 >= end:
                return False
            pos += 3 + (raw[pos + 1] << 8 | raw[pos + 2])
        elif step == 0 or len(outer) >= MAX_HEADER_DEPTH:
            return False
        else:  # a container: -3 inline count, -4 one byte, -5 two bytes
            if step == -3:
                count = initial & 0x1F
                pos += 1
            elif step == -4:
                if pos + 1 >= end:
                    return False
                count = raw[pos + 1]
                pos += 2
            else:
                if pos + 2 >= end:
                    return False
                count = raw[pos + 1] << 8 | raw[pos + 2]
                pos += 3
            if initial >= 0xA0:  # a map: keys and values
                count *= 2
            if count:
                outer.append(left)
                left = count


def _scan_exact(raw: bytes) -> None:
    """The reference scan (see :func:`scan_header`): raises SchemaError at the first
    violation, naming it."""
    end = len(raw)
    pos = items = 0
    outer: list[int] = []  # items still expected at each enclosing level
    left = 1  # items still expected at the current level (the first is the top level)
    while True:
        if not left:
            if not outer:
                break
            left = outer.pop()
            continue
        left -= 1
        if pos >= end:
            raise SchemaError(f"header CBOR truncated at byte {pos} of {end}")
        initial = raw[pos]
        start = pos
        pos += 1
        items += 1
        if items > MAX_HEADER_ITEMS:
            raise SchemaError(f"header CBOR has more than {MAX_HEADER_ITEMS} items")
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            arg = info
        elif info <= 27:
            size = 1 << (info - 24)
            if size > end - pos:
                raise SchemaError(f"header CBOR truncated at byte {pos} of {end}")
            arg = raw[pos] if size == 1 else int.from_bytes(raw[pos : pos + size], "big")
            pos += size
        else:
            what = "indefinite lengths are" if info == 31 else f"additional info {info} is"
            raise SchemaError(f"header CBOR byte {start}: {what} not allowed")
        if major == 3 or major == 2:  # text, bytes: the most common items
            if arg > end - pos:
                raise SchemaError(
                    f"header CBOR byte {start}: string of {arg} bytes, only {end - pos} left"
                )
            pos += arg
        elif major <= 1:  # unsigned / negative integer
            continue
        elif major == 7:
            if info in (20, 21, 22, 25, 26, 27):  # false, true, null, f16, f32, f64
                continue
            raise SchemaError(
                f"header CBOR byte {start}: simple value {arg} not allowed "
                "(only false, true, null and floats)"
            )
        elif major == 6:
            raise SchemaError(f"header CBOR byte {start}: tag {arg} not allowed")
        else:  # 4 array, 5 map
            if len(outer) >= MAX_HEADER_DEPTH:
                raise SchemaError(
                    f"header CBOR byte {start}: containers nested deeper than {MAX_HEADER_DEPTH}"
                )
            count = arg * 2 if major == 5 else arg
            if count > end - pos:  # every item takes at least one byte
                raise SchemaError(
                    f"header CBOR byte {start}: container of {count} items, "
                    f"only {end - pos} bytes left"
                )
            if count:
                outer.append(left)
                left = count
    if pos != end:
        raise SchemaError(f"header CBOR has {end - pos} bytes after the header map")
