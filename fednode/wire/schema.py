"""The value rules of the wire header (pure): its CBOR profile and its field types.

Two layers, both applied before the signature is checked (``docs/PROTOCOL.md``, "Header
profile" and "Body value types"):

* :func:`scan_header` walks the raw CBOR once, building nothing, and refuses anything
  outside the header profile, so that only a header that passes reaches ``cbor2``;
* :func:`checker` builds, from a field annotation, the one function that checks and
  normalises a value of that field (bool, int64, finite float, bounded str / bytes,
  ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``). Encoding and decoding use the same
  checkers (``messages.encode_header`` / ``messages.decode_header``), so a node never
  sends what a peer would refuse.

A value that does not fit raises :class:`Mismatch`, which the caller turns into its own
error (SchemaError when decoding, LocalProtocolError when encoding). An annotation the
rules do not cover raises TypeError when its checker is built (at import, for the
message classes).
"""

from __future__ import annotations

import math
import reprlib
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import SchemaError

MAX_STR_LEN = 256
MAX_BODY_ITEMS = 64
MAX_TUPLE_ITEMS = 4096
MAX_HEADER_ITEMS = 8192  # CBOR data items in one header, map keys included
MAX_HEADER_DEPTH = 3  # nested containers: header map > body map > dict / list
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

Check = Callable[[Any], Any]


class Mismatch(Exception):
    """A value does not fit its annotation (internal; mapped to the caller's error)."""


_SCALARS: tuple[Any, ...] = (bool, int, float, str, bytes)
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4
_REPR.maxlevel = 2


def short(value: Any) -> str:
    """Bounded repr for error messages about untrusted values."""
    return _REPR.repr(value)


def names(keys: Iterable[Any]) -> str:
    """Sorted, bounded listing of untrusted map keys."""
    listed = sorted(k if isinstance(k, str) else repr(k) for k in keys)
    more = f", ... {len(listed) - 8} more" if len(listed) > 8 else ""
    return "[" + ", ".join(short(n)[1:-1] if n else "''" for n in listed[:8]) + more + "]"


def describe(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


# ------------------------------------------------------------------------ value rules


def checker(hint: Any) -> Check:
    """The function checking values against the annotation ``hint`` and normalising them.

    Supported: ``bool``, ``int`` (int64; never a bool), ``float`` (finite; an int is
    accepted and converted), ``str`` / ``bytes`` (at most MAX_STR_LEN), ``X | None`` of a
    supported X, ``tuple[X, ...]`` (a CBOR array of at most MAX_TUPLE_ITEMS scalars,
    returned as a tuple) and ``dict[str, X]`` (at most MAX_BODY_ITEMS entries, returned as
    a new dict; ``X = Any`` means bool, int, float or str). Subclasses of the scalar types
    are accepted (an ``IntEnum`` is an int).

    Errors: TypeError if ``hint`` is not supported.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        if len(args) != 2 or len(rest) != 1:
            raise TypeError(f"unsupported union {hint}: only X | None")
        inner = checker(rest[0])

        def optional(value: Any) -> Any:
            return None if value is None else inner(value)

        return optional
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis or args[0] not in _SCALARS:
            raise TypeError(f"unsupported tuple {hint}: only tuple[scalar, ...]")
        item = _scalar(args[0])

        def array(value: Any) -> Any:
            if isinstance(value, list | tuple) and len(value) <= MAX_TUPLE_ITEMS:
                return tuple(map(item, value))
            raise Mismatch

        return array
    if origin is dict:
        if len(args) != 2 or args[0] is not str or not (args[1] in _SCALARS or args[1] is Any):
            raise TypeError(f"unsupported dict {hint}: only dict[str, scalar or Any]")
        key, val = _scalar(str), _scalar(args[1])

        def mapping(value: Any) -> Any:
            if isinstance(value, dict) and len(value) <= MAX_BODY_ITEMS:
                return {key(k): val(v) for k, v in value.items()}
            raise Mismatch

        return mapping
    if hint in _SCALARS:
        return _scalar(hint)
    raise TypeError(f"unsupported annotation {hint}")


def supported(hint: Any) -> bool:
    """Whether :func:`checker` covers ``hint``."""
    try:
        checker(hint)
    except TypeError:
        return False
    return True


def _scalar(hint: Any) -> Check:
    """The checker of one scalar type (or of ``Any``: bool, int, float or str).

    Each tests the exact built-in type first (what cbor2 returns and senders usually
    hold), then the subclass case, with the same result.
    """
    if hint is bool:

        def boolean(value: Any) -> Any:
            if value is True or value is False:
                return value
            raise Mismatch

        return boolean
    if hint is int:

        def integer(value: Any) -> Any:
            if (
                type(value) is int or (isinstance(value, int) and not isinstance(value, bool))
            ) and INT_MIN <= value <= INT_MAX:
                return value
            raise Mismatch

        return integer
    if hint is float:

        def real(value: Any) -> Any:
            if type(value) is float:
                if math.isfinite(value):
                    return value
            elif isinstance(value, float) or (
                isinstance(value, int)
                and not isinstance(value, bool)
                and INT_MIN <= value <= INT_MAX
            ):
                number = float(value)
                if math.isfinite(number):
                    return number
            raise Mismatch

        return real
    if hint is str or hint is bytes:

        def text(value: Any) -> Any:
            if isinstance(value, hint) and len(value) <= MAX_STR_LEN:
                return value
            raise Mismatch

        return text
    options = [(t, _scalar(t)) for t in (bool, int, float, str)]  # Any; bool first: True is an int

    def anything(value: Any) -> Any:
        for kind, check in options:
            if isinstance(value, kind):
                return check(value)
        raise Mismatch

    return anything


# ------------------------------------------------------------------ CBOR header profile


def _initial_table() -> tuple[int, ...]:
    """What the scan does with each CBOR initial byte, as one int.

    > 0: an item of that fixed size (integers, strings of an inline length, false / true /
    null, half / single / double floats). -1, -2, -4, -8: a string whose length follows
    in that many bytes. -16 - s: an array or map whose count is inline (s = 0) or follows
    in s bytes. 0: outside the profile (tags, other simple values, indefinite lengths,
    reserved additional information).
    """
    table = []
    for initial in range(256):
        major, info = initial >> 5, initial & 0x1F
        size = 1 << (info - 24) if 24 <= info < 28 else 0  # bytes of the argument
        step = 0
        if major <= 1 and info < 28:
            step = 1 + size
        elif major in (2, 3) and info < 28:
            step = 1 + info if info < 24 else -size
        elif major in (4, 5) and info < 28:
            step = -16 - size
        elif major == 7 and info in (20, 21, 22, 25, 26, 27):
            step = 1 + size
        table.append(step)
    return tuple(table)


_INITIAL = _initial_table()


def scan_header(raw: bytes) -> None:
    """Check that ``raw`` is exactly one CBOR item in the header profile, building nothing.

    Iterative, one table lookup per item, linear in ``len(raw)``; memory
    O(MAX_HEADER_DEPTH). Refuses: indefinite lengths, reserved additional-info values,
    tags (major type 6), simple values other than false / true / null (so no
    ``undefined``), more than MAX_HEADER_DEPTH nested containers, any declared length or
    count larger than the bytes left, more than MAX_HEADER_ITEMS items in all (counted
    from the containers' declared counts, so refused before those items are walked), and
    bytes after the item. Floats (half, single, double) pass here; their values are
    checked by the schema. Raises SchemaError naming the first violation.
    """
    end = len(raw)
    table = _INITIAL
    pos = 0
    items = 1  # the top-level item, then every container's declared count
    outer: list[int] = []  # items still expected at each enclosing level
    left = 1  # items still expected at the current level
    while True:
        if not left:
            if not outer:
                break
            left = outer.pop()
            continue
        left -= 1
        if pos >= end:
            raise SchemaError(f"header CBOR truncated at byte {end}")
        initial = raw[pos]
        step = table[initial]
        if step > 0:  # a fixed size: an overrun shows at the next item or at the end
            pos += step
            continue
        if step == 0:
            raise SchemaError(_refusal(raw, pos))
        size = -step if step > -16 else -16 - step
        start, pos = pos, pos + 1 + size
        if pos > end:
            raise SchemaError(f"header CBOR truncated at byte {end}")
        if size == 0:
            n = initial & 0x1F
        elif size == 1:
            n = raw[start + 1]
        else:
            n = int.from_bytes(raw[start + 1 : pos], "big")
        if step > -16:  # a string of n bytes
            if n > end - pos:
                raise SchemaError(
                    f"header CBOR byte {start}: string of {n} bytes, only {end - pos} left"
                )
            pos += n
            continue
        if len(outer) >= MAX_HEADER_DEPTH:
            raise SchemaError(
                f"header CBOR byte {start}: containers nested deeper than {MAX_HEADER_DEPTH}"
            )
        if initial >= 0xA0:  # a map: keys and values
            n *= 2
        if n > end - pos:  # every item takes at least one byte
            raise SchemaError(
                f"header CBOR byte {start}: container of {n} items, only {end - pos} bytes left"
            )
        items += n
        if items > MAX_HEADER_ITEMS:
            raise SchemaError(f"header CBOR has more than {MAX_HEADER_ITEMS} items")
        if n:
            outer.append(left)
            left = n
    if pos > end:
        raise SchemaError(f"header CBOR truncated: its last item runs past byte {end}")
    if pos < end:
        raise SchemaError(f"header CBOR has {end - pos} bytes after the header map")


def _refusal(raw: bytes, pos: int) -> str:
    """Why the item at ``pos`` (table code 0) is outside the profile."""
    initial = raw[pos]
    major, info = initial >> 5, initial & 0x1F
    if info >= 28:
        what = "indefinite lengths are" if info == 31 else f"additional info {info} is"
        return f"header CBOR byte {pos}: {what} not allowed"
    size = 1 << (info - 24) if info >= 24 else 0
    if pos + 1 + size > len(raw):
        return f"header CBOR truncated at byte {len(raw)}"
    arg = int.from_bytes(raw[pos + 1 : pos + 1 + size], "big") if size else info
    if major == 6:
        return f"header CBOR byte {pos}: tag {arg} not allowed"
    return (
        f"header CBOR byte {pos}: simple value {arg} not allowed "
        "(only false, true, null and floats)"
    )
