"""The wire's fast paths, behind :mod:`fednode.wire.messages`' API (``docs/BENCHMARKS.md``).

Each is checked by ``tests/test_wire_messages.py`` against the plain way it replaces.

**Message construction** (the one code generator of ``wire/``). A frozen dataclass's
``__init__`` stores each field with ``object.__setattr__`` (its own ``__setattr__``
refuses). Storing through the slot's member descriptor does the same store about twice
as fast; messages are built for every send and every receive (the 20-field ``Gossip``'s
dataclass ``__init__`` alone was 5% of a 10,000-peer gossip step). :func:`install`
replaces a class's ``__init__`` with one generated that way: the same signature
(keyword-only if the dataclass is), defaults and default factories; frozen-ness is
``__setattr__``'s and unchanged. The generated source comes from the class's own
dataclass fields only. The tests check the result against the
dataclass behaviour (defaults, signature, frozen, factories, equality, ``repr``,
``dataclasses.replace``).

**Header bytes.** ``cbor2.dumps(fields, canonical=True)`` sorts every map's keys by
their encoded bytes and picks each float's shortest exact form, ~8 µs for a header.
:func:`header_writer` gives cbor2's plain encoder (~2 µs) what makes its output the same
bytes: the maps with their keys already in canonical order (the top level's and each
body's are fixed; a ``dict`` field's are sorted) and every float already encoded by
cbor2's canonical encoder (a :class:`_Raw`, written as it is). The tests compare it with
``cbor2.dumps(..., canonical=True)`` on generated headers and pin three headers' SHA-256.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

import cbor2


class _Factory:
    """Default of a parameter whose value comes from a ``default_factory``."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def slot_descriptor(cls: type, name: str) -> Any:
    """The member descriptor that stores field ``name`` of slots class ``cls``: its
    ``__set__`` / ``__get__`` store and read the field directly (frozen or not). Also
    used by the unsigned sealer (:mod:`fednode.crypto.unsigned`)."""
    descriptor = next(k.__dict__[name] for k in cls.__mro__ if name in k.__dict__)
    if type(descriptor).__name__ != "member_descriptor":
        raise TypeError(f"{cls.__name__}.{name} is not a slot")
    return descriptor


def install(cls: type) -> None:
    """Give the frozen slots dataclass ``cls`` the generated ``__init__`` (see above)."""
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: __post_init__ is not supported")
    fields = dataclasses.fields(cls)
    namespace: dict[str, Any] = {"FACTORY": _FACTORY}
    params, lines = [], []
    for i, f in enumerate(fields):
        namespace[f"set{i}"] = slot_descriptor(cls, f.name).__set__
        value = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"default{i}"] = f.default
            params.append(f"{f.name}=default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"factory{i}"] = f.default_factory
            params.append(f"{f.name}=FACTORY")
            value = f"factory{i}() if {f.name} is FACTORY else {f.name}"
        else:
            params.append(f.name)
        lines.append(f"    set{i}(self, {value})")
    keyword_only = all(f.kw_only for f in fields)
    if not keyword_only and any(f.kw_only for f in fields):
        raise TypeError(f"{cls.__name__}: mixed positional and keyword-only fields")
    signature = ", ".join((["*"] if keyword_only and params else []) + params)
    source = "\n".join([f"def __init__(self, {signature}):", *lines, "    pass"])
    init = _compile(cls, source, namespace, "__init__")
    init.__annotations__ = dict(vars(cls)["__init__"].__annotations__)
    setattr(cls, "__init__", init)  # noqa: B010 (mypy refuses a direct assignment)


def copier(cls: type, replaced: tuple[str, ...]) -> Callable[..., Any]:
    """``copy(msg, *values)``: a new ``cls`` message with the fields ``replaced`` set to
    ``values`` (in that order) and every other field taken from ``msg`` — the fields of
    an already validated message, stored through their slots without ``__init__``
    (about 1 µs against ~6 µs for ``dataclasses.replace``). For the unsigned sealer
    (:mod:`fednode.crypto.unsigned`), which stamps sender, recipient and timestamp."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(replaced) - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {sorted(unknown)}")
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    args = [f"v{j}" for j in range(len(replaced))]
    lines = [f"def copy(msg, {', '.join(args)}):", "    out = new(cls)"]
    for i, name in enumerate(names):
        descriptor = slot_descriptor(cls, name)
        namespace[f"set{i}"], namespace[f"get{i}"] = descriptor.__set__, descriptor.__get__
        value = args[replaced.index(name)] if name in replaced else f"get{i}(msg)"
        lines.append(f"    set{i}(out, {value})")
    return _compile(cls, "\n".join([*lines, "    return out"]), namespace, "copy")


def _compile(cls: type, source: str, namespace: dict[str, Any], name: str) -> Any:
    """The one code generator of ``wire/``: ``source`` names only ``cls``'s own dataclass
    fields and the helpers in ``namespace``."""
    exec(source, namespace)
    function = namespace[name]
    function.__qualname__ = f"{cls.__qualname__}.{name}"
    return function


class _Raw:
    """Bytes cbor2 writes as they are (through :func:`_write_raw`, its ``default``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _write_raw(encoder: Any, raw: _Raw) -> None:
    encoder.write(raw.data)


def _float(value: float) -> _Raw:
    return _Raw(cbor2.dumps(value, canonical=True))


def _key(key: str) -> tuple[int, bytes]:
    """Canonical order of text keys: by encoded length, then bytewise."""
    raw = key.encode("utf-8")
    return len(raw), raw


def _sorted_map(value: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in sorted(value, key=_key):
        item = value[key]
        out[key] = _float(item) if type(item) is float else item
    return out


def _prepare(hint: Any) -> Callable[[Any], Any] | None:
    """How a checked value of annotation ``hint`` is handed to the plain encoder (None:
    as it is). Checked values are normalised: a float is exactly a ``float``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = _prepare(next(a for a in args if a is not type(None)))
        if inner is None:
            return None
        return lambda value: None if value is None else inner(value)
    if origin is tuple:
        return (lambda value: [_float(v) for v in value]) if args[0] is float else None
    if origin is dict:
        return _sorted_map
    return _float if hint is float else None


def header_writer(keys: list[str], body: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
    """``write(fields)``: the canonical CBOR of checked header ``fields`` with top-level
    ``keys`` (text; "t" a float, "b" the body) and ``body`` (name -> annotation)."""
    top = sorted(keys, key=_key)
    order = [(name, _prepare(body[name])) for name in sorted(body, key=_key)]

    def write(fields: dict[str, Any]) -> bytes:
        given = fields["b"]
        out = {key: fields[key] for key in top}
        out["b"] = {name: given[name] if p is None else p(given[name]) for name, p in order}
        out["t"] = _float(out["t"])
        return cbor2.dumps(out, default=_write_raw)

    return write
